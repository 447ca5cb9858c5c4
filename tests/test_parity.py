"""Same input, same exception type and errno, whichever way in: the exact
call, clone() with each method.  Marked `kernel`, so the VM run compares the
native backend against the same table: that is the parity between backends."""
import ctypes
import errno
import os

import pytest

import pvmmap
from pvmmap._sample import PAGE

from _helpers import region_at

pytestmark = pytest.mark.kernel
NO_SUCH_PID = 0x3FFFFFFF


@pytest.fixture(scope="module")
def src():
    from pvmmap._sample import Source
    s = Source([dict(name="a", kind="anon", size=4 * PAGE),
                dict(name="u", kind="anon", size=4 * PAGE)])
    h = Source([dict(name="h", kind="anon", size=4 * PAGE)])
    try:
        s.unmap(s.addr["a"] + 2 * PAGE, PAGE)
        s.register_uffd(s.addr["u"], 4 * PAGE)
        held = hand_off_uffd(h, h.addr["h"], 4 * PAGE)
        yield s, h
        os.close(held)
    finally:
        s.close()
        h.close()


def hand_off_uffd(s, addr, n):
    """Register [addr, addr+n) in s, then take the uffd over as a lazy-pages
    daemon would (pidfd_getfd) and have s close its own: the VMA stays
    registered while s holds no userfaultfd at all."""
    theirs = s.register_uffd(addr, n)
    pidfd = os.pidfd_open(s.pid)
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        ours = libc.syscall(438, pidfd, theirs, 0)          # pidfd_getfd
        if ours < 0:
            raise OSError(ctypes.get_errno(), "pidfd_getfd")
    finally:
        os.close(pidfd)
    s.close_fd(theirs)
    fds = os.listdir(f"/proc/{s.pid}/fd")
    assert not any(os.readlink(f"/proc/{s.pid}/fd/{fd}") == "anon_inode:[userfaultfd]"
                   for fd in fds if os.path.exists(f"/proc/{s.pid}/fd/{fd}"))
    assert "um" in region_at(s.pid, addr).flags
    return ours


def cases(sources):
    s, h = sources
    vdso = next(r.start for r in pvmmap.maps(s.pid) if r.path == "[vdso]")
    return {
        "length 0": ((s.pid, s.addr["a"], 0), errno.EINVAL, OSError),
        "src 0": ((s.pid, 0, PAGE), errno.EINVAL, OSError),
        "pid 0": ((0, s.addr["a"], PAGE), errno.EINVAL, OSError),
        "kernel thread": ((2, s.addr["a"], PAGE), errno.EINVAL, OSError),
        "no such pid": ((NO_SUCH_PID, s.addr["a"], PAGE), errno.ESRCH,
                        ProcessLookupError),
        "hole": ((s.pid, s.addr["a"] + 2 * PAGE, PAGE), errno.EFAULT, OSError),
        "vdso": ((s.pid, vdso, PAGE), errno.EFAULT, OSError),
        "uffd": ((s.pid, s.addr["u"], PAGE), errno.EOPNOTSUPP, OSError),
        "uffd handed off": ((h.pid, h.addr["h"], PAGE), errno.EOPNOTSUPP, OSError),
    }


ENTRY_POINTS = {
    "process_vm_mmap": lambda a: pvmmap.process_vm_mmap(*a),
    "clone auto": lambda a: pvmmap.clone(*a),
    "clone copy": lambda a: pvmmap.clone(*a, method="copy"),
}


@pytest.mark.parametrize("entry", sorted(ENTRY_POINTS))
def test_same_errors_every_way_in(src, entry):
    if pvmmap.features().uffd != "full":
        pytest.skip("userfaultfd not available: " + pvmmap.features().uffd_reason)
    got = {}
    for name, (args, err, exc) in cases(src).items():
        with pytest.raises(exc) as info:
            ENTRY_POINTS[entry](args)
        got[name] = (type(info.value), info.value.errno)
        assert info.value.errno == err, (entry, name, info.value)
    # and exactly the classes Python picks from the errno
    assert all(t is type(OSError(e, "x")) for t, e in got.values())
