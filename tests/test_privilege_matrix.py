"""The privilege matrix (issue 9, item 6): each case runs in a child that
drops what it must (tests/_helpers.run_unprivileged), makes the real call
and asks `pvmmap check` the same question first, in the same child.  Each
case gives the clone (its bytes checked) or the right errno with the fix in
the message, and check's verdict (exit status, errno, message) is the
call's outcome."""
import contextlib
import ctypes
import mmap
import os
import shutil
import stat
import subprocess
import tempfile
import time

import psutil  # noqa: F401  (imported while /root is still readable)
import pytest

import pvmmap
from child import PAGE, page_bytes, pattern

from _helpers import (CAP_CHECKPOINT_RESTORE, non_dumpable_child, CAP_SYS_ADMIN, SYS_USERFAULTFD,
                      check_says, leftovers, own_state, run_unprivileged,
                      with_grandchild)

pytestmark = pytest.mark.skipif(os.geteuid() != 0,
                                reason="needs root to drop privileges in a child")


def outcome(call):
    """(0, method, stats) of a clone, its bytes checked by call(), or
    (errno, message)."""
    try:
        return [0] + list(call())
    except OSError as e:
        return [e.errno, e.strerror]


def clone_and_check(pid, addr, length, expect, *options, **kw):
    """check first, then the clone: {"check": (status, errno, message),
    "clone": outcome}.  The clone's bytes must equal expect."""
    said = check_says(pid, addr, length, *options)
    whole = check_says(pid, None, None, *options)

    def call():
        with pvmmap.clone(pid, addr, length, **kw) as m:
            if kw.get("method") == "lazy":
                m.populate()
            if m.tobytes() != expect:
                raise AssertionError("wrong bytes")
            return m.method, dict(m.stats)
    done = outcome(call)
    out = {"check": said, "clone": done}
    if done[0] == 1 and "ptrace" in done[1]:     # the process is refused
        out["whole"] = whole
    return out


def assert_agree(out):
    """check said what the call did: exit 0 and no error for a clone, exit 1
    with the same errno and message for a refusal.  A refusal of the whole
    process is also what `pvmmap check PID` (no range) says, but for the
    range and what was being read."""
    status, err, msg = out["check"]
    if out["clone"][0] == 0:
        assert (status, err) == (0, None), out
    else:
        assert (status, err) == (1, out["clone"][0]), out
        assert msg == out["clone"][1], out
    if "whole" in out:
        status, err, msg = out["whole"]
        assert (status, err) == (1, out["clone"][0]), out
        assert cause(msg) == cause(out["clone"][1]), out


def cause(msg):
    """A message without what was being read and the range: '(<what>: the
    cause, pid P, range): hint' -> ('the cause', 'hint')."""
    head, _, hint = msg.partition("): ")
    what = head.partition("(")[2].split(", pid ")[0]
    return what.partition(": ")[2], hint


def private_memory(size, seed):
    buf = mmap.mmap(-1, size, mmap.MAP_PRIVATE)
    buf[:] = pattern(size, seed)
    return buf, ctypes.addressof(ctypes.c_char.from_buffer(buf))


@pytest.fixture
def root_source(source):
    """A source started by root: private and shared anonymous memory."""
    return source([dict(name="priv", kind="anon", size=8 * PAGE, seed=21),
                   dict(name="shared", kind="shared", size=4 * PAGE, seed=22)])


def test_root_clones_a_root_process(root_source):
    s = root_source

    def body():
        return [clone_and_check(s.pid, s.addr["priv"], 8 * PAGE, pattern(8 * PAGE, 21)),
                clone_and_check(s.pid, s.addr["shared"], 4 * PAGE,
                                pattern(4 * PAGE, 22))]
    for out in run_unprivileged(body, uid=None):
        assert out["clone"][0] == 0, out
        assert_agree(out)
    assert out["clone"][1] == "share"


def test_ordinary_uid_clones_its_own_child():
    def body():
        buf, addr = private_memory(16 * PAGE, 23)
        return with_grandchild(None, lambda gpid: clone_and_check(
            gpid, addr, 16 * PAGE, pattern(16 * PAGE, 23)))
    out = run_unprivileged(body)
    assert out["clone"][:2] == [0, "copy"], out
    assert_agree(out)


def test_ordinary_uid_refused_another_users_process(root_source):
    s = root_source
    out = run_unprivileged(lambda: clone_and_check(s.pid, s.addr["priv"], PAGE,
                                                   page_bytes(21, 0)))
    err, msg = out["clone"]
    assert err == 1, out                                            # EPERM
    assert "runs as root, this process as nobody" in msg
    assert "run as the source's user, or with CAP_SYS_PTRACE" in msg
    assert_agree(out)


def test_non_dumpable_target():
    def body():
        buf, addr = private_memory(PAGE, 24)
        with non_dumpable_child() as gpid:
            return clone_and_check(gpid, addr, PAGE, page_bytes(24, 0))
    out = run_unprivileged(body)
    err, msg = out["clone"]
    assert err == 1 and "it is not dumpable" in msg, out
    assert "PR_SET_DUMPABLE" in msg
    assert_agree(out)


@contextlib.contextmanager
def setuid_sleep():
    """A copy of sleep(1), setuid root, in a directory uid 65534 can reach;
    skips where the filesystem ignores the setuid bit (nosuid)."""
    where = tempfile.mkdtemp(prefix="pvmmap-setuid-")
    try:
        os.chmod(where, 0o755)
        path = os.path.join(where, "sleep")
        shutil.copy(shutil.which("sleep"), path)
        os.chmod(path, 0o4755)
        if os.statvfs(where).f_flag & os.ST_NOSUID:
            pytest.skip(f"{where} is mounted nosuid: no setuid target")
        yield path
    finally:
        shutil.rmtree(where)


def test_setuid_target():
    """uid 65534 runs a setuid-root program: same real uid, but it is
    another user (effective and saved uid 0) and not dumpable.  Refused,
    and the message says it is setuid, not "runs as nobody"."""
    with setuid_sleep() as path:
        def body():
            proc = subprocess.Popen([path, "60"])
            try:
                deadline = time.monotonic() + 10
                while time.monotonic() < deadline:          # until it has exec'd
                    with open(f"/proc/{proc.pid}/status") as f:
                        uids = next(line for line in f if line.startswith("Uid:"))
                    if uids.split()[2] == "0":
                        break
                    time.sleep(0.01)
                return clone_and_check(proc.pid, 0x10000, PAGE, b"")
            finally:
                proc.kill()
                proc.wait(10)
        out = run_unprivileged(body)
    err, msg = out["clone"]
    assert err == 1, out
    assert "setuid" in msg and "effective uid 0" in msg, msg
    assert "CAP_SYS_PTRACE" in msg
    assert_agree(out)


def test_no_map_files_capability(root_source):
    """Root without CAP_SYS_ADMIN and CAP_CHECKPOINT_RESTORE: shared
    anonymous memory (no path, no fd) is refused naming the capability, or
    copied with allow_copy=True; private memory is cloned as ever."""
    s = root_source

    def body():
        feature = pvmmap.features(refresh=True).map_files
        return {"map_files": feature,
                "shared": clone_and_check(s.pid, s.addr["shared"], 4 * PAGE,
                                          pattern(4 * PAGE, 22)),
                "copied": clone_and_check(s.pid, s.addr["shared"], 4 * PAGE,
                                          pattern(4 * PAGE, 22), "--allow-copy",
                                          allow_copy=True),
                "priv": clone_and_check(s.pid, s.addr["priv"], 8 * PAGE,
                                        pattern(8 * PAGE, 21))}
    out = run_unprivileged(body, uid=None, drop_caps=(CAP_SYS_ADMIN,
                                                     CAP_CHECKPOINT_RESTORE))
    assert out["map_files"] is False
    err, msg = out["shared"]["clone"]
    assert err == 1, out                                            # EPERM
    assert "CAP_SYS_ADMIN or CAP_CHECKPOINT_RESTORE" in msg and "allow_copy=True" in msg
    assert out["copied"]["clone"][:2] == [0, "copy"], out
    assert out["priv"]["clone"][:2] == [0, "copy"], out
    for case in ("shared", "copied", "priv"):
        assert_agree(out[case])


@contextlib.contextmanager
def sysctl(name, value):
    path = "/proc/sys/" + name.replace(".", "/")
    with open(path) as f:
        old = f.read().strip()
    try:
        if old != value:
            with open(path, "w") as f:
                f.write(value)
        yield
    finally:
        if old != value:
            with open(path, "w") as f:
                f.write(old)


def uffd_cases():
    """In a child without full userfaultfd: the uffd mode, a lazy clone
    (check first) and an eager one, whose UFFDIO_COPY fill must fall back."""
    buf, addr = private_memory(32 * PAGE, 25)
    mode = pvmmap.features(refresh=True).uffd

    def work(gpid):
        before = own_state()
        lazy = clone_and_check(gpid, addr, 32 * PAGE, pattern(32 * PAGE, 25),
                               "--method", "lazy", method="lazy")
        return {"mode": mode, "lazy": lazy, "left": leftovers(before),
                "eager": clone_and_check(gpid, addr, 32 * PAGE, pattern(32 * PAGE, 25),
                                         "--method", "copy", method="copy")}
    return with_grandchild(None, work)


def test_userfaultfd_user_mode_only():
    """vm.unprivileged_userfaultfd=0, no CAP_SYS_PTRACE, /dev/userfaultfd
    root's (0600): lazy clones are served user-mode-only."""
    if os.path.exists("/dev/userfaultfd") and \
            stat.S_IMODE(os.stat("/dev/userfaultfd").st_mode) & 0o006:
        pytest.skip("/dev/userfaultfd is open to every user here")
    with sysctl("vm.unprivileged_userfaultfd", "0"):
        out = run_unprivileged(uffd_cases)
    assert out["mode"] == "user-mode-only"
    assert out["lazy"]["clone"][:2] == [0, "lazy"], out
    assert out["eager"]["clone"][:2] == [0, "copy"], out
    assert out["eager"]["clone"][2]["fill"] in ("UFFDIO_COPY", "direct"), out
    assert_agree(out["lazy"])
    assert_agree(out["eager"])


@pytest.mark.skipif(os.uname().machine != "x86_64",
                    reason="the seccomp filter uses x86_64 syscall numbers")
def test_no_userfaultfd_at_all():
    """userfaultfd(2) denied (seccomp) and /dev/userfaultfd not ours: lazy
    fails with EPERM saying why and what to do, and check says so first;
    the eager copy falls back to the direct fill and says so."""
    with sysctl("vm.unprivileged_userfaultfd", "0"):
        out = run_unprivileged(uffd_cases, deny=(SYS_USERFAULTFD,))
    assert out["mode"] is None
    err, msg = out["lazy"]["clone"]
    assert err == 1, out
    assert "userfaultfd" in msg and "method='copy'" in msg, msg
    assert out["left"] == [], out                   # nothing mapped or open
    assert_agree(out["lazy"])
    assert out["eager"]["clone"][:2] == [0, "copy"], out
    assert out["eager"]["clone"][2]["fill"] == "direct", out
    assert_agree(out["eager"])


def test_inside_a_user_namespace(root_source):
    """Root in a user namespace of its own (all capabilities there, none in
    the initial one) may not read a process outside it."""
    s = root_source
    out = run_unprivileged(lambda: clone_and_check(s.pid, s.addr["priv"], PAGE,
                                                   page_bytes(21, 0)),
                           uid=None, userns=True)
    err, msg = out["clone"]
    assert err == 1, out
    assert "it is in another user namespace" in msg, msg
    assert "trace it from its own user namespace" in msg
    assert_agree(out)


def test_inside_a_user_namespace_own_child():
    """The same namespace clones its own child."""
    def body():
        buf, addr = private_memory(8 * PAGE, 26)
        return with_grandchild(None, lambda gpid: clone_and_check(
            gpid, addr, 8 * PAGE, pattern(8 * PAGE, 26)))
    out = run_unprivileged(body, uid=None, userns=True)
    assert out["clone"][:2] == [0, "copy"], out
    assert_agree(out)

