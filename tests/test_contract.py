"""process_vm_mmap()'s exact contract (docs/design.md §1), on whichever backend is
active.  Marked `kernel`: the same functions run inside the VM against the
project's kernel port with PVMMAP_BACKEND=native."""
import ctypes
import errno
import mmap
import os

import pytest

import pvmmap
from child import PAGE, libc, page_bytes

from _helpers import leftovers, own_state, region_at, user_space_end

pytestmark = pytest.mark.kernel
MiB = 1 << 20
NO_SUCH_PID = 0x3FFFFFFF        # above PID_MAX_LIMIT: can never exist


def own_bytes(addr, n):
    return ctypes.string_at(addr, n)


@pytest.fixture
def anon(source):
    """A source with two pattern-filled private regions, a and b."""
    return source([dict(name="a", kind="anon", size=MiB, seed=5),
                   dict(name="b", kind="anon", size=MiB, seed=6)])


def test_maps_a_page_rounded_copy(anon, raw_maps):
    src = anon.addr["a"] + 3 * PAGE + 100          # rounded down
    addr = raw_maps(anon.pid, src, 5000)           # rounded up: 2 pages
    assert addr % PAGE == 0
    assert own_bytes(addr, PAGE) == page_bytes(5, 3)
    assert own_bytes(addr + PAGE, PAGE) == page_bytes(5, 4)
    with open("/proc/self/maps") as f:
        vmas = [line.split()[0].split("-") for line in f]
    # The mapping is exactly two pages (it may have merged with neighbours,
    # so look for a VMA covering it, and make sure page 3 is not ours).
    assert any(int(s, 16) <= addr and int(e, 16) >= addr + 2 * PAGE for s, e in vmas)


def test_fixed_replaces_and_rounds_down(anon, raw_maps):
    holder = mmap.mmap(-1, 4 * PAGE)
    holder[:] = b"x" * (4 * PAGE)
    base = ctypes.addressof(ctypes.c_char.from_buffer(holder))
    addr = raw_maps(anon.pid, anon.addr["a"], 2 * PAGE, base + PAGE + 7,
                    pvmmap.PVMMAP_FIXED)
    assert addr == base + PAGE
    assert own_bytes(base, PAGE) == b"x" * PAGE                # untouched
    assert own_bytes(base + PAGE, PAGE) == page_bytes(5, 0)
    assert own_bytes(base + 2 * PAGE, PAGE) == page_bytes(5, 1)
    assert own_bytes(base + 3 * PAGE, PAGE) == b"x" * PAGE


def test_fixed_noreplace_refuses_mapped_destination(anon):
    holder = mmap.mmap(-1, 2 * PAGE)
    holder[:4] = b"keep"
    dst = ctypes.addressof(ctypes.c_char.from_buffer(holder))
    before = own_state()
    with pytest.raises(FileExistsError) as info:
        pvmmap.process_vm_mmap(anon.pid, anon.addr["a"], PAGE, dst,
                               pvmmap.PVMMAP_FIXED_NOREPLACE)
    assert info.value.errno == errno.EEXIST
    assert holder[:4] == b"keep"
    assert leftovers(before) == []


def test_fixed_noreplace_places_at_a_free_destination(anon, raw_maps):
    probe = mmap.mmap(-1, 8 * PAGE)
    dst = ctypes.addressof(ctypes.c_char.from_buffer(probe)) + 2 * PAGE
    probe.close()                                   # now free
    addr = raw_maps(anon.pid, anon.addr["b"], 2 * PAGE, dst,
                    pvmmap.PVMMAP_FIXED_NOREPLACE)
    assert addr == dst
    assert own_bytes(addr, PAGE) == page_bytes(6, 0)


def test_range_across_two_vmas_is_efault(source):
    s = source([dict(name="a", kind="anon", size=4 * PAGE, seed=1)])
    s.mprotect(s.addr["a"] + 2 * PAGE, 2 * PAGE, "r")     # now two VMAs
    before = own_state()
    with pytest.raises(OSError) as info:
        pvmmap.process_vm_mmap(s.pid, s.addr["a"], 4 * PAGE)
    assert info.value.errno == errno.EFAULT
    assert leftovers(before) == []


def test_range_over_a_hole_is_efault(source):
    s = source([dict(name="a", kind="anon", size=4 * PAGE, seed=1)])
    s.unmap(s.addr["a"] + PAGE, PAGE)
    for length in (4 * PAGE, 2 * PAGE):
        with pytest.raises(OSError) as info:
            pvmmap.process_vm_mmap(s.pid, s.addr["a"], length)
        assert info.value.errno == errno.EFAULT
    with pytest.raises(OSError) as info:           # starts in the hole
        pvmmap.process_vm_mmap(s.pid, s.addr["a"] + PAGE, PAGE)
    assert info.value.errno == errno.EFAULT


@pytest.mark.parametrize("name", ["[vdso]", "[vvar]"])
def test_special_mappings_are_efault(anon, name):
    regions = [r for r in pvmmap.maps(anon.pid) if r.path == name]
    if not regions:
        pytest.skip(f"this kernel shows no {name} mapping")
    r = regions[0]
    with pytest.raises(OSError) as info:
        pvmmap.process_vm_mmap(anon.pid, r.start, PAGE)
    assert info.value.errno == errno.EFAULT


def test_aio_ring_is_efault():
    """An aio ring ("/[aio]") is VM_DONTEXPAND behind a path that looks like
    a file: maps alone would let it through."""
    libc = ctypes.CDLL(None, use_errno=True)
    ctx = ctypes.c_ulong(0)
    if libc.syscall(206, 1, ctypes.byref(ctx)) < 0:             # io_setup
        pytest.skip(f"io_setup: {os.strerror(ctypes.get_errno())} (no CONFIG_AIO?)")
    try:
        ring = next(r for r in pvmmap.maps(os.getpid()) if r.path.startswith("/[aio]"))
        assert "de" in ring.flags
        before = own_state()
        with pytest.raises(OSError) as info:
            pvmmap.process_vm_mmap(os.getpid(), ring.start, PAGE)
        assert info.value.errno == errno.EFAULT
        with pytest.raises(OSError) as info:
            pvmmap.clone(os.getpid(), ring.start, PAGE)
        assert info.value.errno == errno.EFAULT
        assert leftovers(before) == []
    finally:
        libc.syscall(207, ctx)                                  # io_destroy


def test_protection_key_of_another_process_is_efault(anon):
    try:
        key = anon.pkey_mprotect(anon.addr["b"], 2 * PAGE)
    except OSError as e:
        pytest.skip(f"pkey_alloc/pkey_mprotect: {e.strerror} (no PKU?)")
    assert key > 0
    with pytest.raises(OSError) as info:
        pvmmap.process_vm_mmap(anon.pid, anon.addr["b"], PAGE)
    assert info.value.errno == errno.EFAULT
    # The untagged rest of b is its own VMA again and clones.
    with pvmmap.clone(anon.pid, anon.addr["b"] + 2 * PAGE, PAGE) as m:
        assert m.tobytes() == page_bytes(6, 2)


def test_userfaultfd_registered_source_is_eopnotsupp(anon):
    if not pvmmap.features().uffd == "full":
        pytest.skip("userfaultfd not available: " + pvmmap.features().uffd_reason)
    anon.register_uffd(anon.addr["b"], MiB)
    assert "um" in region_at(anon.pid, anon.addr["b"]).flags           # smaps agrees it is registered
    before = own_state()
    with pytest.raises(OSError) as info:
        pvmmap.process_vm_mmap(anon.pid, anon.addr["b"], PAGE)
    assert info.value.errno == errno.EOPNOTSUPP
    assert leftovers(before) == []
    # The other region is not registered and still clones.
    addr = pvmmap.process_vm_mmap(anon.pid, anon.addr["a"], PAGE)
    assert own_bytes(addr, PAGE) == page_bytes(5, 0)
    pvmmap.munmap(addr, PAGE)


@pytest.fixture
def hugepages():
    path = "/proc/sys/vm/nr_hugepages"
    try:
        with open(path) as f:
            old = int(f.read())
        if old < 2:
            with open(path, "w") as f:
                f.write("2")
    except OSError as e:
        pytest.skip(f"cannot reserve huge pages ({e.strerror})")
    yield
    if old < 2:
        with open(path, "w") as f:
            f.write(str(old))


def test_hugetlb_source_is_efault(source, hugepages):
    try:
        s = source([dict(name="h", kind="hugetlb", size=2 * MiB, fill=[0])])
    except RuntimeError:
        pytest.skip("MAP_HUGETLB failed in the source (no hugetlbfs or no pages)")
    assert region_at(s.pid, s.addr["h"]).kind == "hugetlb"
    with pytest.raises(OSError) as info:
        pvmmap.process_vm_mmap(s.pid, s.addr["h"], PAGE)
    assert info.value.errno == errno.EFAULT


@pytest.mark.parametrize("case", ["flags", "length0", "src0", "src_in_page0", "pid0",
                                  "pid_negative",
                                  "beyond_address_space", "kernel_thread"])
def test_einval(anon, case):
    pid, src, length, flags = anon.pid, anon.addr["a"], PAGE, 0
    if case == "flags":
        flags = 0x4
    elif case == "length0":
        length = 0
    elif case == "src0":
        src = 0
    elif case == "src_in_page0":
        src = 100                                   # rounds down to 0
    elif case == "pid0":
        pid = 0
    elif case == "pid_negative":
        pid = -5
    elif case == "beyond_address_space":
        src, length = user_space_end(), 2 * PAGE
    elif case == "kernel_thread":
        pid = 2                                     # kthreadd
        with open("/proc/2/stat") as f:
            assert "kthreadd" in f.read()
    before = own_state()
    with pytest.raises(OSError) as info:
        pvmmap.process_vm_mmap(pid, src, length, 0, flags)
    assert info.value.errno == errno.EINVAL
    assert leftovers(before) == []


def test_fixed_onto_own_source_range_is_refused():
    buf = mmap.mmap(-1, 4 * PAGE)
    buf[:4] = b"safe"
    addr = ctypes.addressof(ctypes.c_char.from_buffer(buf))
    for flags, err in ((pvmmap.PVMMAP_FIXED, errno.EINVAL),
                       (pvmmap.PVMMAP_FIXED_NOREPLACE, errno.EEXIST)):
        with pytest.raises(OSError) as info:
            pvmmap.process_vm_mmap(os.getpid(), addr, 2 * PAGE, addr + PAGE, flags)
        assert info.value.errno == err
    assert buf[:4] == b"safe"


NR_MSEAL = 462                  # x86_64, Linux 6.10+


def sealed_pages(n, fill):
    """n private pages filled with `fill`, sealed with mseal(): they stay
    mapped until the process exits (a seal cannot be undone)."""
    addr = libc.mmap(None, n * PAGE, 3, mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS, -1, 0)
    assert addr not in (None, ctypes.c_void_p(-1).value)
    ctypes.memset(addr, fill, n * PAGE)
    if libc.syscall(NR_MSEAL, ctypes.c_void_p(addr), ctypes.c_size_t(n * PAGE),
                    ctypes.c_ulong(0)) != 0:
        e = ctypes.get_errno()
        libc.munmap(ctypes.c_void_p(addr), ctypes.c_size_t(n * PAGE))
        if e == errno.ENOSYS:
            pytest.skip("no mseal() on this kernel (Linux 6.10+)")
        raise OSError(e, os.strerror(e))
    return addr


def test_fixed_onto_a_sealed_range_is_eperm_and_leaves_it(anon):
    """mseal()'s contract: the sealed range cannot be unmapped or replaced,
    so FIXED onto it is EPERM, and the range and the caller stay as they
    were; NOREPLACE is EEXIST as for any mapping."""
    target = sealed_pages(2, 0x5A)
    before = own_state()
    with pytest.raises(PermissionError) as info:
        pvmmap.process_vm_mmap(anon.pid, anon.addr["a"], 2 * PAGE, target, pvmmap.PVMMAP_FIXED)
    assert info.value.errno == errno.EPERM
    with pytest.raises(FileExistsError):
        pvmmap.process_vm_mmap(anon.pid, anon.addr["a"], 2 * PAGE, target,
                               pvmmap.PVMMAP_FIXED_NOREPLACE)
    assert own_bytes(target, 2 * PAGE) == b"\x5a" * (2 * PAGE)
    assert leftovers(before) == []


def test_clone_of_a_sealed_range_is_not_sealed():
    """The seal stays with the sealed mapping: a clone is a new mapping of
    the caller, which may change and unmap it (Linux 6.12 port: VM_SEALED
    is not inherited, like VM_LOCKED)."""
    src = sealed_pages(2, 0x3C)
    m = pvmmap.clone(os.getpid(), src, 2 * PAGE)
    addr = m.address
    assert m.tobytes() == b"\x3c" * (2 * PAGE)
    m[0] = 0x11
    assert own_bytes(src, 1) == b"\x3c"
    assert libc.mprotect(addr, 2 * PAGE, 1) == 0, os.strerror(ctypes.get_errno())
    m.close()
    with open("/proc/self/maps") as f:
        spans = [[int(x, 16) for x in line.split()[0].split("-")] for line in f]
    assert not any(start <= addr < end for start, end in spans), "the clone is still mapped"


def test_no_such_process_is_esrch():
    with pytest.raises(ProcessLookupError) as info:
        pvmmap.process_vm_mmap(NO_SUCH_PID, 0x10000, PAGE)
    assert info.value.errno == errno.ESRCH
    assert str(NO_SUCH_PID) in str(info.value)


def test_pid_beyond_pid_t_is_esrch(anon):
    """Found by tests/test_fuzz.py: 2^32 + pid names no process, but the
    kernel's pid_t would truncate it to pid; every entry point says ESRCH
    before any call (method="native" too, not ENOSYS or another process)."""
    for pid in (2**32 + anon.pid, 2**31, 2**64):
        for call in (lambda: pvmmap.process_vm_mmap(pid, anon.addr["a"], PAGE),
                     lambda: pvmmap.clone(pid, anon.addr["a"], PAGE),
                     lambda: pvmmap.clone(pid, anon.addr["a"], PAGE, method="native")):
            with pytest.raises(ProcessLookupError) as info:
                call()
            assert str(2**31 - 1) in str(info.value)


def test_destination_beyond_unsigned_long_is_einval(anon):
    """Found by tests/test_fuzz.py: a destination below 0 or at 2^64 and
    above raised OverflowError ("can't convert negative value to size_t")
    once the source had been planned; it is EINVAL with the argument
    checks, hint or fixed alike, and maps nothing."""
    before = own_state()
    for dst in (-1, -PAGE, 2**64, 2**70):
        for flags in (0, 1, 2):
            with pytest.raises(OSError) as info:
                pvmmap.process_vm_mmap(anon.pid, anon.addr["a"], PAGE, dst, flags)
            assert info.value.errno == errno.EINVAL and "destination" in str(info.value)
        for kw in ({}, {"fixed": True}, {"noreplace": True}):
            with pytest.raises(OSError) as info:
                pvmmap.clone(anon.pid, anon.addr["a"], PAGE, dest=dst, **kw)
            assert info.value.errno == errno.EINVAL and "destination" in str(info.value)
    assert leftovers(before) == []


def test_same_errors_through_clone(anon):
    """clone() reports the contract's errno for the same inputs."""
    cases = [((anon.pid, anon.addr["a"], 0), errno.EINVAL),
             ((NO_SUCH_PID, 0x10000, PAGE), errno.ESRCH),
             ((2, 0x10000, PAGE), errno.EINVAL)]
    for args, err in cases:
        with pytest.raises(OSError) as info:
            pvmmap.clone(*args)
        assert info.value.errno == err, args
