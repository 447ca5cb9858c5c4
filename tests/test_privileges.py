"""An unprivileged caller: a child drops to uid 65534, makes memory, forks a
grandchild that holds it, and clones from it; it must be refused root's
process.  Results come back over a pipe as JSON."""
import ctypes
import json
import mmap
import os

import psutil  # noqa: F401  (imported while /root is still readable)
import pytest

import pvmmap
from child import PAGE, page_bytes, pattern

from _helpers import non_dumpable_child, run_unprivileged, with_grandchild

pytestmark = pytest.mark.skipif(os.geteuid() != 0,
                                reason="needs root to drop to another uid")


def fill(buf, seed):
    buf[:] = pattern(len(buf), seed)


def errno_of(call):
    try:
        call().close()
        return 0
    except OSError as e:
        return e.errno, str(e)


def test_unprivileged_clone_of_own_child():
    def body():
        priv = mmap.mmap(-1, 16 * PAGE, mmap.MAP_PRIVATE)
        fill(priv, 1)
        shared = mmap.mmap(-1, 4 * PAGE, mmap.MAP_SHARED)
        fill(shared, 2)
        memfd = os.memfd_create("unpriv")
        os.ftruncate(memfd, 4 * PAGE)
        mfd = mmap.mmap(memfd, 4 * PAGE, mmap.MAP_SHARED)
        fill(mfd, 3)
        addr = {name: ctypes.addressof(ctypes.c_char.from_buffer(b))
                for name, b in (("priv", priv), ("shared", shared), ("memfd", mfd))}
        pvmmap.features(refresh=True)

        def work(gpid):
            out = {"map_files": pvmmap.features().map_files}
            with pvmmap.clone(gpid, addr["priv"], 16 * PAGE) as m:
                out["priv_ok"] = m.tobytes() == pattern(16 * PAGE, 1)
                out["priv_method"] = m.method
            # shared anonymous memory: map_files refused, no path, no fd
            out["shared_err"] = errno_of(lambda: pvmmap.clone(gpid, addr["shared"], PAGE))
            with pvmmap.clone(gpid, addr["shared"], PAGE, allow_copy=True) as m:
                out["shared_copy"] = (m.method, m[:16] == page_bytes(2, 0)[:16])
            # a memfd the source holds open: reached through /proc/PID/fd
            with pvmmap.clone(gpid, addr["memfd"], 4 * PAGE) as m:
                m[:5] = b"viafd"
                out["memfd"] = (m.method, bytes(mfd[:5]) == b"viafd")
            out["root_err"] = errno_of(lambda: pvmmap.clone(os.getppid(), 0x1000, PAGE))
            return out
        return with_grandchild(None, work)

    out = run_unprivileged(body)
    assert out["map_files"] is False
    assert out["priv_ok"] and out["priv_method"] == "copy"
    err, msg = out["shared_err"]
    assert err == 1 and "CAP_SYS_ADMIN" in msg and "allow_copy" in msg   # EPERM
    assert out["shared_copy"] == ["copy", True]
    assert out["memfd"] == ["share", True]
    err, msg = out["root_err"]
    assert err == 1 and "ptrace" in msg                                  # EPERM
    assert "runs as root" in msg and "this process as nobody" in msg


def test_unprivileged_process_vm_mmap_of_root_is_eperm():
    def body():
        try:
            pvmmap.process_vm_mmap(1, 0x1000, PAGE)
        except PermissionError as e:
            return {"errno": e.errno}
        return {"errno": 0}
    assert run_unprivileged(body) == {"errno": 1}


def test_non_dumpable_source_is_named_as_the_cause():
    """Same uid, but the source made itself non-dumpable: EPERM says so
    (not "run as its user"), and names the fix."""
    def body():
        buf = mmap.mmap(-1, PAGE, mmap.MAP_PRIVATE)
        buf[:] = page_bytes(4, 0)
        addr = ctypes.addressof(ctypes.c_char.from_buffer(buf))
        with non_dumpable_child() as gpid:
            try:
                pvmmap.clone(gpid, addr, PAGE).close()
                return {"errno": 0}
            except OSError as e:
                return {"errno": e.errno, "msg": str(e)}

    out = run_unprivileged(body)
    assert out["errno"] == 1, out
    assert "not dumpable" in out["msg"] and "PR_SET_DUMPABLE" in out["msg"]
    assert "run as the source's user" not in out["msg"]
