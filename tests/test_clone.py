"""clone(): bytes, snapshot and sharing semantics, protections, holes,
spanning VMAs, unaligned ranges.  The `kernel` ones also run natively in the VM."""
import ctypes
import errno
import mmap
import os
import struct

import pytest

import pvmmap
from pvmmap._api import plan_clone
from pvmmap._emulate import STRATEGY
from child import PAGE, libc, page_bytes, pattern

from _helpers import leftovers, own_state, present_bytes, user_space_end

MiB = 1 << 20
native = pvmmap.features().backend == "native"


def own_maps_entry(addr):
    """The /proc/self/maps line of the VMA holding addr, split."""
    with open("/proc/self/maps") as f:
        for line in f:
            s, e = (int(x, 16) for x in line.split()[0].split("-"))
            if s <= addr < e:
                return line.split()
    raise AssertionError(f"{addr:#x} not mapped")


KIND_SPECS = {
    "private-anon": dict(kind="anon", size=2 * MiB),
    "shared-anon": dict(kind="shared", size=2 * MiB),
    "memfd": dict(kind="memfd", size=2 * MiB),
    "shared-file": dict(kind="shm", size=MiB),      # multiprocessing.shared_memory
    "sysv-shm": dict(kind="sysv", size=MiB),        # shmget + shmat
}


@pytest.mark.kernel
@pytest.mark.parametrize("kind", sorted(KIND_SPECS))
def test_bytes_equal_for_every_kind(source, clones, kind):
    s = source([dict(name="r", seed=9, **KIND_SPECS[kind])])
    m = clones(s.pid, s.addr["r"], KIND_SPECS[kind]["size"])
    assert m.kind == kind
    assert m.tobytes() == s.expected("r")
    assert m.method == ("native" if native else STRATEGY[kind])


@pytest.mark.kernel
def test_private_clone_is_a_snapshot(source, clones):
    s = source([dict(name="r", kind="anon", size=MiB, seed=3)])
    a = s.addr["r"]
    m = clones(s.pid, a, MiB)
    s.write(a, b"after the clone")                      # source writes later
    assert m[:15] == page_bytes(3, 0)[:15]
    m[PAGE:PAGE + 4] = b"ours"                          # we write
    assert s.read(a + PAGE, 4) == page_bytes(3, 1)[:4]
    assert m[PAGE:PAGE + 4] == b"ours"


@pytest.mark.kernel
@pytest.mark.parametrize("kind", ["shared-anon", "memfd", "shared-file"])
def test_shared_clone_shares_both_ways(source, clones, kind):
    s = source([dict(name="r", seed=4, **KIND_SPECS[kind])])
    a = s.addr["r"]
    m = clones(s.pid, a, PAGE * 4)
    m[10:15] = b"hello"
    assert s.read(a + 10, 5) == b"hello"
    s.write(a + 3 * PAGE, b"world")
    assert m[3 * PAGE:3 * PAGE + 5] == b"world"


@pytest.mark.kernel
def test_multiprocessing_shared_memory_block_is_shared(clones):
    from multiprocessing import shared_memory
    shm = shared_memory.SharedMemory(create=True, size=64 * 1024)
    try:
        shm.buf[:5] = b"start"
        addr = ctypes.addressof(ctypes.c_char.from_buffer(shm.buf))
        m = clones(os.getpid(), addr, 64 * 1024)      # ourselves as the source
        assert m.kind == "shared-file" and m[:5] == b"start"
        m[100:103] = b"abc"
        assert bytes(shm.buf[100:103]) == b"abc"
        m.close()
    finally:
        shm.close()
        shm.unlink()


@pytest.mark.kernel
def test_private_file_keeps_file_and_offset(source, clones, datafile):
    path, data = datafile
    s = source([dict(name="f", kind="file", size=2 * MiB, path=path, offset=MiB,
                     fill=[1], seed=2)])
    m = clones(s.pid, s.addr["f"], 2 * MiB)
    assert m.kind == "private-file"
    assert m[:PAGE] == data[MiB:MiB + PAGE]                     # file, at offset
    assert m[PAGE:2 * PAGE] == page_bytes(2, 1)                 # source's dirty page
    assert m[2 * PAGE:] == data[MiB + 2 * PAGE:3 * MiB]
    # A clean page of a private file mapping follows the file, as in the source.
    with open(path, "r+b") as f:
        f.seek(MiB + 5 * PAGE)
        f.write(b"changed in the file")
    assert m[5 * PAGE:5 * PAGE + 19] == b"changed in the file"
    assert s.read(s.addr["f"] + 5 * PAGE, 19) == b"changed in the file"
    entry = own_maps_entry(m.address)
    assert entry[5] == path and int(entry[2], 16) == MiB


@pytest.mark.kernel
def test_shared_file_is_shared_with_the_file(source, clones, datafile):
    path, data = datafile
    s = source([dict(name="f", kind="file", shared=True, size=MiB, path=path,
                     fill="none")])
    m = clones(s.pid, s.addr["f"], MiB)
    assert m.kind == "shared-file" and m.tobytes() == data[:MiB]
    m[:6] = b"stored"
    with open(path, "rb") as f:
        assert f.read(6) == b"stored"


@pytest.mark.kernel
@pytest.mark.parametrize("prot,perms", [("r", "r--p"), ("none", "---p")])
def test_protections_are_copied(source, clones, prot, perms):
    s = source([dict(name="r", kind="anon", size=4 * PAGE, seed=7, prot=prot)])
    m = clones(s.pid, s.addr["r"], 4 * PAGE)
    assert own_maps_entry(m.address)[1] == perms
    assert m.prot == (mmap.PROT_READ if prot == "r" else 0)
    if prot == "r":
        assert m[:PAGE] == page_bytes(7, 0)
        with pytest.raises(TypeError):
            m[0:1] = b"x"
        assert memoryview(m).readonly
        with pytest.raises(TypeError, match="not writable"):
            ctypes.c_char.from_buffer(m)               # asks for a writable buffer
        import numpy
        assert not numpy.frombuffer(m, dtype=numpy.uint8).flags.writeable
    else:
        with pytest.raises(PermissionError):
            m.tobytes()
        m.mprotect(mmap.PROT_READ)                      # then it reads
        assert m[PAGE:2 * PAGE] == page_bytes(7, 1)


@pytest.mark.kernel
def test_holes_stay_holes(source, clones):
    size, pages = 64 * MiB, [0, 1, 777, 16383]
    s = source([dict(name="r", kind="anon", size=size, fill=pages, seed=8)])
    a = s.addr["r"]
    before = present_bytes(s.pid, a, a + size)
    assert before == len(pages) * PAGE
    m = clones(s.pid, a, size)
    for i in pages:
        assert m[i * PAGE:(i + 1) * PAGE] == page_bytes(8, i)
    assert present_bytes(s.pid, a, a + size) == before        # source not faulted in
    # In the clone only the source's pages exist (native: shared until written).
    present = pvmmap._native.scan_pages(os.getpid(), m.address, size)
    assert sum(e - b for b, e in present) == len(pages) * PAGE
    assert m[2 * PAGE:3 * PAGE] == bytes(PAGE)          # reading a hole: zeros


@pytest.mark.kernel
def test_sparse_64gib_reservation(source, clones):
    size = 64 << 30
    pages = list(range(0, size // PAGE, (size // PAGE) // 512))   # 512 pages
    s = source([dict(name="r", kind="anon", size=size, fill=pages, seed=11,
                     noreserve=True)])
    m = clones(s.pid, s.addr["r"], size)
    assert len(m) == size
    for i in pages[::37]:
        assert m[i * PAGE:(i + 1) * PAGE] == page_bytes(11, i)
    present = pvmmap._native.scan_pages(os.getpid(), m.address, size)
    assert sum(e - b for b, e in present) == len(pages) * PAGE


@pytest.mark.kernel
def test_clone_spans_adjacent_vmas_of_different_kinds(source, clones):
    s = source([dict(name="a", kind="anon", size=4 * PAGE, seed=1),
                dict(name="b", kind="shared", size=4 * PAGE, seed=2, after="a"),
                dict(name="c", kind="anon", size=4 * PAGE, seed=3, after="b")])
    s.mprotect(s.addr["c"] + 2 * PAGE, 2 * PAGE, "r")
    m = clones(s.pid, s.addr["a"], 12 * PAGE)
    assert m.tobytes() == (pattern(4 * PAGE, 1) + pattern(4 * PAGE, 2)
                           + pattern(4 * PAGE, 3))
    assert [p.kind for p in m.parts] == ["private-anon", "shared-anon",
                                            "private-anon", "private-anon"]
    assert m.kind == "mixed" and m.prot == mmap.PROT_READ
    m.mprotect(mmap.PROT_READ | mmap.PROT_WRITE)
    m[4 * PAGE:4 * PAGE + 3] = b"shr"                   # the shared part shares
    assert s.read(s.addr["b"], 3) == b"shr"
    m[0:3] = b"prv"                                     # the private part does not
    assert s.read(s.addr["a"], 3) == page_bytes(1, 0)[:3]


@pytest.mark.kernel
def test_hole_inside_the_range_is_efault_and_leaves_nothing(source):
    s = source([dict(name="a", kind="anon", size=8 * PAGE, seed=1)])
    s.unmap(s.addr["a"] + 4 * PAGE, PAGE)
    before = own_state()
    with pytest.raises(OSError) as info:
        pvmmap.clone(s.pid, s.addr["a"], 8 * PAGE)
    assert info.value.errno == errno.EFAULT
    assert "hole" in str(info.value) or native
    assert leftovers(before) == []


@pytest.mark.kernel
def test_unaligned_range_covers_exactly_those_bytes(source, clones):
    s = source([dict(name="r", kind="anon", size=8 * PAGE, seed=6)])
    start = s.addr["r"] + PAGE + 123
    m = clones(s.pid, start, 10000)
    assert len(m) == 10000 and m.address % PAGE == 123 % PAGE
    assert m.source_address == start
    assert m.tobytes() == s.expected("r")[PAGE + 123:PAGE + 123 + 10000]
    assert len(memoryview(m)) == 10000


@pytest.mark.kernel
def test_adjacent_clones_merge_into_one_vma(source, clones):
    s = source([dict(name="r", kind="anon", size=8 * PAGE, seed=6)])
    room = mmap.mmap(-1, 8 * PAGE)          # find 8 free pages, then free them
    dst = ctypes.addressof(ctypes.c_char.from_buffer(room))
    room.close()
    first = clones(s.pid, s.addr["r"], 4 * PAGE, dest=dst, noreplace=True)
    second = clones(s.pid, s.addr["r"] + 4 * PAGE, 4 * PAGE,
                    dest=first.address + 4 * PAGE, noreplace=True)
    assert second.address == first.address + 4 * PAGE
    assert first.tobytes() + second.tobytes() == s.expected("r")
    start, end = (int(x, 16) for x in own_maps_entry(first.address)[0].split("-"))
    # Native: the kernel merges the second clone into the first VMA.
    # Emulated: the second clone's fresh anonymous mapping has no anon_vma yet,
    # so mmap merges it with its neighbour before the copy faults its pages.
    assert start <= first.address and end >= second.address + 4 * PAGE


def test_method_copy_snapshots_shared_memory(source, clones):
    s = source([dict(name="r", kind="shared", size=4 * PAGE, seed=2)])
    m = clones(s.pid, s.addr["r"], 4 * PAGE, method="copy")
    assert m.method == "copy" and m.tobytes() == s.expected("r")
    m[:4] = b"mine"
    assert s.read(s.addr["r"], 4) == page_bytes(2, 0)[:4]


def test_unknown_method_is_refused():
    with pytest.raises(ValueError, match="auto, native, copy, lazy"):
        pvmmap.clone(os.getpid(), 0x1000, PAGE, method="fast")


@pytest.mark.skipif(native, reason="freeze applies to the emulated copy")
def test_freeze_gives_one_instant(source, clones):
    size = 32 * MiB
    s = source([dict(name="r", kind="anon", size=size, seed=1)])
    first, last = s.addr["r"], s.addr["r"] + size - 8
    s.spin(first, last)
    for _ in range(3):
        m = clones(s.pid, first, size, freeze=True)
        a = struct.unpack("<Q", m[:8])[0]
        b = struct.unpack("<Q", m[size - 8:])[0]
        assert a - b in (0, 1), (a, b)
        assert m.stats["frozen_threads"] == 2
        m.close()
    # Everything runs again: the spinner moves on, nobody traces the source.
    count = struct.unpack("<Q", s.read(first, 8))[0]
    assert struct.unpack("<Q", s.read(first, 8))[0] >= count
    with open(f"/proc/{s.pid}/status") as f:
        status = dict(line.split(":", 1) for line in f)
    assert status["TracerPid"].strip() == "0"
    assert status["State"].split()[0] in ("R", "S")


def test_freeze_of_ourselves_is_einval():
    buf = mmap.mmap(-1, PAGE)
    addr = ctypes.addressof(ctypes.c_char.from_buffer(buf))
    with pytest.raises(OSError) as info:
        pvmmap.clone(os.getpid(), addr, PAGE, freeze=True)
    assert info.value.errno == errno.EINVAL


def test_destination_beyond_the_address_space_is_enomem(source):
    s = source([dict(name="r", kind="anon", size=4 * PAGE)])
    before = own_state()
    with pytest.raises(OSError) as info:
        pvmmap.clone(s.pid, s.addr["r"], 2 * PAGE, dest=user_space_end(), fixed=True)
    assert info.value.errno == errno.ENOMEM
    assert "destination" in str(info.value)
    assert leftovers(before) == []


def _need_uffd():
    if pvmmap.features().uffd != "full":
        pytest.skip("userfaultfd not available: " + pvmmap.features().uffd_reason)


def test_copy_of_shared_memory_checks_uffd_like_any_copy(source):
    """A shared VMA registered by a process that handed its uffd away is
    refused once it is to be copied: by method="copy", or by allow_copy
    when the object cannot be mapped."""
    from _helpers import handed_off_uffd
    _need_uffd()
    s = source([dict(name="sh", kind="shared", size=4 * PAGE)])
    with handed_off_uffd(s, s.addr["sh"], 4 * PAGE):
        with pytest.raises(OSError) as info:
            pvmmap.clone(s.pid, s.addr["sh"], PAGE, method="copy")
        assert info.value.errno == errno.EOPNOTSUPP


def test_allow_copy_fallback_checks_uffd_like_any_copy(source, monkeypatch):
    from pvmmap import _emulate
    from _helpers import handed_off_uffd
    _need_uffd()
    s = source([dict(name="sh", kind="shared", size=4 * PAGE),
                dict(name="ok", kind="shared", size=4 * PAGE, seed=3)])
    # As for an unprivileged caller that reaches neither map_files nor an fd.
    monkeypatch.setattr(_emulate, "open_object",
                        lambda pid, region, writable: (-1, "map_files refused"))
    with pvmmap.clone(s.pid, s.addr["ok"], PAGE, allow_copy=True) as m:
        assert m.method == "copy" and m.tobytes() == page_bytes(3, 0)
    with handed_off_uffd(s, s.addr["sh"], 4 * PAGE):
        before = own_state()
        with pytest.raises(OSError) as info:
            pvmmap.clone(s.pid, s.addr["sh"], PAGE, allow_copy=True)
        assert info.value.errno == errno.EOPNOTSUPP
        assert leftovers(before) == []


def test_vma_changed_between_maps_and_smaps_is_still_refused(source, monkeypatch):
    """The source splits its uffd-registered VMA while the plan is made (it
    is not frozen): the refusal must not depend on the boundaries that
    /proc/PID/maps showed a moment before."""
    from pvmmap import _maps
    _need_uffd()
    s = source([dict(name="u", kind="anon", size=8 * PAGE)])
    s.register_uffd(s.addr["u"], 8 * PAGE)
    real = _maps.read_smaps

    def racing(pid, *args):
        s.mprotect(s.addr["u"] + 4 * PAGE, 4 * PAGE, "r")     # now two VMAs
        return real(pid, *args)

    monkeypatch.setattr(_maps, "read_smaps", racing)
    with pytest.raises(OSError) as info:
        pvmmap.clone(s.pid, s.addr["u"], 8 * PAGE)
    assert info.value.errno == errno.EOPNOTSUPP


@pytest.mark.skipif(native, reason="freeze applies to the emulated copy")
def test_freeze_of_a_traced_source_names_the_tracer(source):
    """freeze=True on a process gdb or strace already traces: EPERM that
    names the tracer and the way out, not a bare 'Operation not permitted'."""
    import subprocess
    import sys
    s = source([dict(name="r", kind="anon", size=4 * PAGE, seed=1)])
    tracer = subprocess.Popen([sys.executable, "-c", f"""
import ctypes, sys, time
libc = ctypes.CDLL(None, use_errno=True)
if libc.ptrace(0x4206, {s.pid}, 0, 0) != 0:          # PTRACE_SEIZE
    sys.exit(1)
print("seized", flush=True)
time.sleep(60)
"""], stdout=subprocess.PIPE, text=True)
    try:
        assert tracer.stdout.readline().strip() == "seized"
        before = own_state()
        with pytest.raises(PermissionError) as info:
            pvmmap.clone(s.pid, s.addr["r"], 4 * PAGE, freeze=True)
        msg = str(info.value)
        assert f"already traced by pid {tracer.pid}" in msg and "without freeze=True" in msg
        assert leftovers(before) == []
        with pvmmap.clone(s.pid, s.addr["r"], 4 * PAGE) as m:      # without: fine
            assert m[:16] == page_bytes(1, 0)[:16]
    finally:
        tracer.kill()
        tracer.wait()
        tracer.stdout.close()


@pytest.mark.kernel
@pytest.mark.parametrize("method", ["auto", "copy"])
@pytest.mark.parametrize("mapped", [True, False])
def test_freeze_on_ourselves_is_einval_on_every_backend(method, mapped):
    """freeze=True cannot stop the calling process: EINVAL before any VMA
    is looked at, whether the range is mapped or not, on the native
    backend (which needs no freeze) as on the emulated one.  The native
    fuzz run in the 6.1 VM found auto (native there) saying EFAULT for an
    unmapped range instead."""
    addr = libc.mmap(None, PAGE, 3, mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS, -1, 0)
    try:
        if not mapped:
            libc.munmap(ctypes.c_void_p(addr), ctypes.c_size_t(PAGE))
        with pytest.raises(OSError) as e:
            pvmmap.clone(os.getpid(), addr, PAGE, method=method, freeze=True)
        assert e.value.errno == errno.EINVAL, e.value
        assert "freeze=True cannot stop the calling process" in str(e.value)
        with pytest.raises(OSError) as e:
            plan_clone(os.getpid(), addr, PAGE, method=method, freeze=True)
        assert e.value.errno == errno.EINVAL, e.value
    finally:
        if mapped:
            libc.munmap(ctypes.c_void_p(addr), ctypes.c_size_t(PAGE))
