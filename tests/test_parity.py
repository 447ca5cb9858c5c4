"""Same input, same exception type and errno, whichever way in: the exact
call, clone() with each method.  Marked `kernel`, so the VM run compares the
native backend against the same table: that is the parity between backends."""
import contextlib
import errno
import re

import pytest

import pvmmap
from child import PAGE

from _helpers import handed_off_uffd

pytestmark = pytest.mark.kernel
NO_SUCH_PID = 0x3FFFFFFF


@pytest.fixture(scope="module")
def src():
    from child import Source
    with contextlib.ExitStack() as stack:
        s = Source([dict(name="a", kind="anon", size=4 * PAGE),
                    dict(name="u", kind="anon", size=4 * PAGE)])
        stack.callback(s.close)
        h = Source([dict(name="h", kind="anon", size=4 * PAGE)])
        stack.callback(h.close)
        s.unmap(s.addr["a"] + 2 * PAGE, PAGE)
        s.register_uffd(s.addr["u"], 4 * PAGE)
        try:
            stack.enter_context(handed_off_uffd(h, h.addr["h"], 4 * PAGE))
        except pytest.skip.Exception:
            h = None                # no pidfd_getfd: that one row goes
        yield s, h


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
    } | ({"uffd handed off": ((h.pid, h.addr["h"], PAGE), errno.EOPNOTSUPP, OSError)}
         if h else {})


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


def _phrases(text, n=3):
    words = re.findall(r"[a-z_]+", re.sub(r"0x[0-9a-f]+|\d+", " ", text.lower()))
    return [tuple(words[i:i + n]) for i in range(len(words) - n + 1)]


@pytest.mark.parametrize("entry", sorted(ENTRY_POINTS))
def test_messages_name_pid_and_range_once(src, entry):
    """Each message: the pid and the range once, no phrase said twice, no
    placeholder, nothing about the project's own layout."""
    for name, (args, _, _) in cases(src).items():
        pid, addr, length = args
        with pytest.raises(OSError) as info:
            ENTRY_POINTS[entry](args)
        msg = str(info.value.strerror)
        assert msg.count(f"pid {pid}") == 1, (name, msg)
        assert msg.count(f"{addr:#x}-{addr + length:#x}") == 1, (name, msg)
        phrases = _phrases(msg)
        assert len(phrases) == len(set(phrases)), (name, msg)
        assert "PID" not in msg and "issue" not in msg and "kernel/" not in msg, msg
