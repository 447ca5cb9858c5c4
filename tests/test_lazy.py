"""Lazy clones (method="lazy"): pages fetched on first touch by the C fault
server.  Bytes, holes, the source's page tables, many threads, the GIL,
the source going away, fork() of the caller, the unprivileged mode, close
while others fault, populate() and prefetch, and leaks.  All marked
`kernel`: they also run in kernel/'s 6.1 VM (a lazy clone is always the
emulation's), where there is no UFFDIO_POISON, PAGEMAP_SCAN or PROCMAP_QUERY,
so every fallback of the fault server runs for real."""
import ctypes
import errno
import os
import signal
import subprocess
import sys
import textwrap
import threading
import time

import numpy
import pytest

import pvmmap
from child import PAGE, Source, page_bytes, pattern

from _helpers import (leftovers, own_state, present_bytes, run_unprivileged, settled,
                      thread_count, with_grandchild)

MiB = 1 << 20
HERE = os.path.dirname(os.path.abspath(__file__))

pytestmark = [pytest.mark.kernel,
              pytest.mark.skipif(pvmmap.features().uffd is None,
                                 reason="no userfaultfd: " + pvmmap.features().uffd_reason)]


def lazy(clones, s, name, length=None, **kw):
    return clones(s.pid, s.addr[name], length or s.spec[name]["size"],
                  method="lazy", **kw)


KIND_SPECS = {
    "private-anon": dict(kind="anon", size=2 * MiB),
    "shared-anon": dict(kind="shared", size=2 * MiB),
    "memfd": dict(kind="memfd", size=2 * MiB),
    "shared-file": dict(kind="shm", size=MiB),
}


@pytest.mark.parametrize("kind", sorted(KIND_SPECS))
def test_lazy_bytes_equal_eager_bytes(source, clones, kind):
    s = source([dict(name="r", seed=9, **KIND_SPECS[kind])])
    size = KIND_SPECS[kind]["size"]
    eager = clones(s.pid, s.addr["r"], size, method="copy")
    m = clones(s.pid, s.addr["r"], size, method="lazy")
    assert m.kind == kind and m.lazy == (kind == "private-anon")
    assert m.method == ("lazy" if kind == "private-anon" else "share")
    assert m.tobytes() == eager.tobytes() == s.expected("r")


def test_lazy_private_file_keeps_file_and_overlay(source, clones, datafile):
    path, data = datafile
    s = source([dict(name="f", kind="file", size=2 * MiB, path=path, offset=MiB,
                     fill=[1], seed=2)])
    m = clones(s.pid, s.addr["f"], 2 * MiB, method="lazy")
    assert m.method == "file" and not m.lazy
    assert m[:PAGE] == data[MiB:MiB + PAGE]
    assert m[PAGE:2 * PAGE] == page_bytes(2, 1)


def test_the_call_reads_nothing(source, clones):
    """Nothing is fetched at the call; the first touch fetches its
    read-ahead chunk; the source's page tables never grow."""
    size = 64 * MiB
    s = source([dict(name="r", kind="anon", size=size, fill=[0, 1, 5000], seed=4)])
    a = s.addr["r"]
    before = present_bytes(s.pid, a, a + size)
    m = lazy(clones, s, "r")
    st = m.stats
    assert st["bytes_fetched"] == 0 and st["faults"] == 0 and st["pages_done"] == 0
    assert st["pages_total"] == size // PAGE
    assert st["uffd"] == pvmmap.features().uffd
    assert st["poison"] in ("UFFDIO_POISON", "SIGBUS mapping")
    assert m[:16] == page_bytes(4, 0)[:16]
    st = settled(m, lambda st: st["pages_done"] > 0)
    assert st["faults"] >= 1 and 0 < st["pages_done"] <= pvmmap._lazy.READAHEAD_DEFAULT // PAGE
    assert m[5000 * PAGE:5001 * PAGE] == page_bytes(4, 5000)
    assert m[3 * PAGE:4 * PAGE] == bytes(PAGE)           # a hole: zeros
    assert settled(m, lambda st: st["pages_zero"] > 0)["pages_zero"] > 0
    assert present_bytes(s.pid, a, a + size) == before   # source not faulted in


def test_holes_are_zero_pages_and_the_source_does_not_grow(source, clones):
    size = 16 * MiB
    s = source([dict(name="r", kind="anon", size=size, fill=[0, 100, 4095], seed=5)])
    a = s.addr["r"]
    before = present_bytes(s.pid, a, a + size)
    m = lazy(clones, s, "r")
    data = m.tobytes()                                  # every page touched
    for i in (0, 100, 4095):
        assert data[i * PAGE:(i + 1) * PAGE] == page_bytes(5, i)
    assert data.count(0) == size - 3 * PAGE + sum(
        page_bytes(5, i).count(0) for i in (0, 100, 4095))
    assert present_bytes(s.pid, a, a + size) == before
    st = settled(m, lambda st: st["pages_done"] == st["pages_total"])
    assert st["pages_done"] == st["pages_total"] and st["pages_zero"] == 4096 - 3
    assert st["bytes_fetched"] == 3 * PAGE


def test_lazy_snapshot_is_of_the_first_touch(source, clones):
    """The documented difference: a page shows the source as it was when it
    was first touched, not at the call."""
    s = source([dict(name="r", kind="anon", size=4 * MiB, seed=3)])
    m = lazy(clones, s, "r", readahead=PAGE)
    s.write(s.addr["r"] + 2 * MiB, b"later")
    assert m[2 * MiB:2 * MiB + 5] == b"later"           # fetched after the write
    s.write(s.addr["r"] + 2 * MiB, b"LATER")
    assert m[2 * MiB:2 * MiB + 5] == b"later"           # and kept ever since
    m[0:3] = b"own"
    assert s.read(s.addr["r"], 3) == page_bytes(3, 0)[:3]


def test_populate_fetches_everything(source, clones):
    size = 32 * MiB
    s = source([dict(name="r", kind="anon", size=size, seed=6)])
    m = lazy(clones, s, "r")
    m.populate()
    st = m.stats
    assert st["pages_done"] == st["pages_total"] == size // PAGE
    assert st["bytes_fetched"] == size and m.lost == 0
    assert "lazy" in repr(m) and f"{size // PAGE}/{size // PAGE}" in repr(m)
    s.close()                                           # the source may go now
    assert m.tobytes() == pattern(size, 6)


def test_prefetch_completes_in_the_background(source, clones):
    size = 32 * MiB
    s = source([dict(name="r", kind="anon", size=size, seed=7)])
    m = lazy(clones, s, "r", prefetch=True)
    deadline = time.monotonic() + 60
    while m.stats["pages_done"] < size // PAGE and time.monotonic() < deadline:
        time.sleep(0.01)
    assert m.stats["pages_done"] == size // PAGE
    assert m.stats["faults"] == 0
    s.close()
    assert m.tobytes() == pattern(size, 7)


def test_readahead_is_validated(source):
    s = source([dict(name="r", kind="anon", size=MiB)])
    for bad in (0, 100, PAGE + 1, 1 << 30):
        with pytest.raises(ValueError, match="readahead"):
            pvmmap.clone(s.pid, s.addr["r"], MiB, method="lazy", readahead=bad)
    with pytest.raises(ValueError, match="lazy"):
        pvmmap.clone(s.pid, s.addr["r"], MiB, readahead=PAGE)
    with pytest.raises(ValueError, match="freeze"):
        pvmmap.clone(s.pid, s.addr["r"], MiB, method="lazy", freeze=True)


def test_plan_refuses_lazy_freeze_as_clone_does(source):
    """Found by tests/test_fuzz.py: plan_clone(method="lazy", freeze=True)
    said the clone would succeed, and clone() raised ValueError; and clone()
    raised it even for arguments it would refuse with EINVAL."""
    from pvmmap._api import plan_clone
    s = source([dict(name="r", kind="anon", size=MiB)])
    for pid, addr, length in ((s.pid, s.addr["r"], MiB), (s.pid, s.addr["r"], 0)):
        for call in (pvmmap.clone, plan_clone):
            with pytest.raises(ValueError, match="freeze"):
                call(pid, addr, length, method="lazy", freeze=True)


def test_threads_running_numpy_reductions_over_one_lazy_mapping(source, clones):
    size = 64 * MiB
    s = source([dict(name="r", kind="anon", size=size, seed=8)])
    expected = numpy.frombuffer(pattern(size, 8), dtype=numpy.uint64)
    m = lazy(clones, s, "r", readahead=16 * PAGE)
    arr = numpy.frombuffer(m, dtype=numpy.uint64)
    n = len(arr) // 8
    sums, errors = [0] * 8, []

    def work(i):
        try:
            sums[i] = int(arr[i * n:(i + 1) * n].sum(dtype=numpy.uint64))
        except BaseException as e:          # reported below
            errors.append(e)

    threads = [threading.Thread(target=work, args=(i,)) for i in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(120)
    assert not any(t.is_alive() for t in threads), "a faulting thread hung"
    assert not errors
    assert sums == [int(expected[i * n:(i + 1) * n].sum(dtype=numpy.uint64))
                    for i in range(8)]
    del arr


def run_python(code, timeout=120, **kw):
    kw.setdefault("cwd", HERE)
    return subprocess.run([sys.executable, "-c", textwrap.dedent(code)],
                          capture_output=True, text=True, timeout=timeout, **kw)


def test_fault_while_another_thread_holds_the_gil_in_c():
    """A fault taken with the GIL held (tobytes() copies in C without
    releasing it) while another thread sits in a GIL-holding C call: the
    server never needs the GIL, so neither waits on the other.  Run in a
    child with a timeout, so that a deadlock fails instead of hanging."""
    out = run_python("""
        import re, threading, pvmmap
        from child import Source, pattern
        s = Source([dict(name="r", kind="anon", size=32 << 20, seed=2)])
        m = pvmmap.clone(s.pid, s.addr["r"], 32 << 20, method="lazy",
                         readahead=4096)
        hog = threading.Thread(target=lambda: re.match(r"(a+)+b", "a" * 26))
        hog.start()                      # holds the GIL in the regex engine
        data = m.tobytes()               # every fault taken with the GIL held
        hog.join()
        print(data == pattern(32 << 20, 2), m.stats["faults"] > 1)
        m.close(); s.close()
    """)
    assert out.returncode == 0, out.stderr
    assert out.stdout.split() == ["True", "True"]


def test_killed_source_poisons_unfetched_pages():
    """The source dies after the clone: a fetched page still reads, an
    unfetched one raises SIGBUS (the touching process dies of it, never
    reads zeros), populate() raises OSError, lost counts the pages, and
    close() is clean."""
    code = """
        import errno, os, signal, sys, pvmmap
        from child import Source, page_bytes
        s = Source([dict(name="r", kind="anon", size=8 << 20, seed=3)])
        m = pvmmap.clone(s.pid, s.addr["r"], 8 << 20, method="lazy",
                         readahead=4096)
        assert m[:16] == page_bytes(3, 0)[:16]
        s.proc.kill(); s.proc.wait()
        if sys.argv[1] == "populate":
            try:
                m.populate()
                print("populated")
            except OSError as e:
                print(errno.errorcode[e.errno], m.lost, m[:16] == page_bytes(3, 0)[:16])
            m.close()
            print("closed", m.closed)
        else:
            print("touching", flush=True)
            m[4 << 20]
            print("read a value")
    """
    touched = subprocess.run([sys.executable, "-c", textwrap.dedent(code), "touch"],
                             cwd=HERE, capture_output=True, text=True, timeout=120)
    assert touched.returncode == -signal.SIGBUS, (touched.returncode, touched.stderr)
    assert touched.stdout.split() == ["touching"]
    out = subprocess.run([sys.executable, "-c", textwrap.dedent(code), "populate"],
                         cwd=HERE, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    first, second = out.stdout.splitlines()
    err, lost, still = first.split()
    assert err == "ESRCH" and int(lost) == (8 << 20) // PAGE - 1 and still == "True"
    assert second == "closed True"


def test_unmapped_source_range_poisons_too(source, clones):
    s = source([dict(name="r", kind="anon", size=4 * MiB, seed=4)])
    m = lazy(clones, s, "r", readahead=PAGE)
    assert m[:8] == page_bytes(4, 0)[:8]
    s.unmap(s.addr["r"] + 2 * MiB, 2 * MiB)
    with pytest.raises(OSError) as info:
        m.populate()
    assert info.value.errno == errno.EFAULT
    assert m.lost == (2 * MiB) // PAGE
    assert m[MiB:MiB + 8] == page_bytes(4, MiB // PAGE)[:8]   # still mapped part


def test_fork_of_the_caller_never_sees_silent_zeros(source, clones):
    s = source([dict(name="r", kind="anon", size=4 * MiB, seed=5)])
    m = lazy(clones, s, "r")
    r, w = os.pipe()
    pid = os.fork()
    if pid == 0:
        try:
            os.close(r)
            try:
                m[0]
                answer = b"read"
            except ValueError as e:
                answer = b"closed" if "fork" in str(e) else b"other"
            os.write(w, answer + (b" closed" if m.closed else b" open"))
        finally:
            os._exit(0)
    os.close(w)
    with os.fdopen(r, "rb") as f:
        answer = f.read()
    os.waitpid(pid, 0)
    assert answer == b"closed closed"
    assert m[:16] == page_bytes(5, 0)[:16]               # the parent's is fine


def test_close_while_other_threads_fault_on_other_mappings(source):
    s = source([dict(name="r", kind="anon", size=64 * MiB, seed=6)])
    stop, errors = threading.Event(), []
    keep = pvmmap.clone(s.pid, s.addr["r"], 64 * MiB, method="lazy", readahead=PAGE)

    def fault():
        try:
            step = 0
            while not stop.is_set() and step < 64 * MiB:
                assert keep[step:step + 16] == page_bytes(6, step // PAGE)[:16]
                step += PAGE
        except BaseException as e:
            errors.append(e)

    threads = [threading.Thread(target=fault) for _ in range(2)]
    for t in threads:
        t.start()
    for _ in range(50):
        m = pvmmap.clone(s.pid, s.addr["r"], 4 * MiB, method="lazy")
        assert m[:8] == page_bytes(6, 0)[:8]
        m.close()
    stop.set()
    for t in threads:
        t.join(60)
    keep.close()
    assert not errors and not any(t.is_alive() for t in threads)


def test_thousand_lazy_cycles_leave_nothing(source):
    s = source([dict(name="r", kind="anon", size=4 * MiB, seed=7)])
    pvmmap.clone(s.pid, s.addr["r"], MiB, method="lazy").close()   # server up
    before, threads = own_state(), thread_count()
    for i in range(1000):
        with pvmmap.clone(s.pid, s.addr["r"], 4 * MiB, method="lazy") as m:
            assert m[(i % 1024) * PAGE] == page_bytes(7, i % 1024)[0]
    assert leftovers(before) == []
    assert thread_count() == threads


def test_populate_honours_ctrl_c(source, clones):
    """A signal during populate() raises out of it (checked between chunks),
    and populate() goes on afterwards.  The timer can lose the race on a
    loaded machine (the server's prefetch alongside may finish first), so
    each attempt is a fresh clone and the timer gets shorter."""
    size = 512 * MiB
    s = source([dict(name="r", kind="anon", size=size, fill=list(range(0, size // PAGE, 64)),
                     seed=8)])
    old = signal.signal(signal.SIGALRM, lambda *a: (_ for _ in ()).throw(KeyboardInterrupt))
    interrupted = None
    try:
        for delay in (0.02, 0.005, 0.001, 0.0002):
            m = lazy(clones, s, "r")
            try:
                signal.setitimer(signal.ITIMER_REAL, delay)
                m.populate()
                signal.setitimer(signal.ITIMER_REAL, 0)
            except KeyboardInterrupt:
                interrupted = m
                break
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, old)
    assert interrupted is not None, "no attempt was interrupted"
    interrupted.populate()                          # and goes on afterwards
    assert interrupted.stats["pages_done"] == size // PAGE
    assert interrupted[64 * PAGE:64 * PAGE + 8] == page_bytes(8, 64)[:8]


def test_features_say_which_uffd_mode():
    f = pvmmap.features()
    assert f.uffd in ("full", "user-mode-only") and f.uffd_reason


def test_unprivileged_lazy_clone_is_user_mode_only():
    """As uid 65534 (vm.unprivileged_userfaultfd=0): only user-mode-only
    faults are served; a write(2) from an unfetched page (a kernel access)
    fails with EFAULT; after populate() it works."""
    if os.geteuid() != 0:
        pytest.skip("needs root to drop to another uid")
    with open("/proc/sys/vm/unprivileged_userfaultfd") as f:
        if f.read().strip() != "0":
            pytest.skip("vm.unprivileged_userfaultfd=1: full userfaultfd for all")

    def body():
        import mmap
        buf = mmap.mmap(-1, 64 * PAGE, mmap.MAP_PRIVATE)
        buf[:] = pattern(64 * PAGE, 9)
        addr = ctypes.addressof(ctypes.c_char.from_buffer(buf))
        mode = pvmmap.features(refresh=True).uffd

        def work(gpid):
            out = [mode]
            m = pvmmap.clone(gpid, addr, 64 * PAGE, method="lazy", readahead=PAGE)
            out.append(m[:16] == page_bytes(9, 0)[:16])
            r, w = os.pipe()
            try:
                os.write(w, memoryview(m)[8 * PAGE:8 * PAGE + 100])
                out.append("wrote")
            except OSError as e:
                out.append(errno.errorcode[e.errno])
            m.populate()
            out.append(os.write(w, memoryview(m)[8 * PAGE:8 * PAGE + 100]))
            out.append(os.read(r, 100) == page_bytes(9, 8)[:100])
            os.close(r)
            os.close(w)
            m.close()
            return out
        return with_grandchild(None, work)

    assert run_unprivileged(body) == ["user-mode-only", True, "EFAULT", 100, True]
