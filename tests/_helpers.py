"""Small helpers for the tests: /proc readings of this process and others.
The source process itself is child.Source (see conftest.py)."""
import contextlib
import errno
import json
import ctypes
import os
import time

import pytest


def own_state():
    """What a failed call must leave as it was: this process's open fds and
    its VMAs (start, end, perms, path)."""
    vmas = set()
    with open("/proc/self/maps") as f:
        for line in f:
            fields = line.split(None, 5)
            start, end = (int(x, 16) for x in fields[0].split("-"))
            path = fields[5].strip() if len(fields) > 5 else ""
            vmas.add((start, end, fields[1], path))
    # The listing's own fd is closed by now: keep the fds that still resolve.
    fds = {fd: _fd_target(fd) for fd in os.listdir("/proc/self/fd")}
    return {(fd, t) for fd, t in fds.items() if t is not None}, vmas


def leftovers(before):
    """What is open or mapped now that was not in `before` (an own_state()).

    Read-write anonymous VMAs and the [heap] are left out: Python's
    allocator maps, unmaps and grows them on its own (1 MiB arenas, malloc's
    large blocks, brk; building an exception may take a new arena), so counting /proc/self/maps lines is
    not stable from one machine to the next.  What pvmmap could leave
    behind still shows: its destination is reserved PROT_NONE before any
    piece is placed, and a placed piece has the source's protection or
    file.  Leaked read-write copies show in the address-space size, which
    test_leaks watches over hundreds of failures."""
    fds, vmas = own_state()
    new_fds = fds - before[0]
    new_vmas = [v for v in sorted(vmas - before[1])
                if not (v[2] == "rw-p" and v[3] in ("", "[heap]"))
                and not _in_asan_allocator(v)]
    return ([f"fd {fd} -> {target}" for fd, target in sorted(new_fds)] +
            [f"{s:x}-{e:x} {perms} {path}" for s, e, perms, path in new_vmas])


# AddressSanitizer's allocator (x86_64: kAllocatorSpace 0x600000000000, 4 TiB)
# is reserved PROT_NONE when the process starts and made read-write piece by
# piece as it grows, so its ---p VMAs split as malloc works.  The kernel
# places nothing else inside the reservation, so no clone can be there.
_ASAN_ALLOCATOR = (0x600000000000, 0x640000000000)


def _under_asan():
    with open("/proc/self/maps") as f:
        return "libasan" in f.read()


#: Running on the sanitized build (.ci/sanitize preloads libasan).
UNDER_ASAN = _under_asan()


def _in_asan_allocator(vma):
    start, end, _, path = vma
    return (UNDER_ASAN and path == "" and _ASAN_ALLOCATOR[0] <= start
            and end <= _ASAN_ALLOCATOR[1])


def _fd_target(fd):
    try:
        return os.readlink(f"/proc/self/fd/{fd}")
    except FileNotFoundError:
        return None


def try_map_at(addr, length=4096):
    """mmap an inaccessible anonymous page at exactly addr
    (MAP_FIXED_NOREPLACE) and unmap it again: (address got, 0), or
    (None, errno)."""
    import mmap
    from child import libc
    got = libc.mmap(addr, length, 0, mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS
                    | 0x100000, -1, 0)
    if got in (None, ctypes.c_void_p(-1).value):
        return None, ctypes.get_errno()
    libc.munmap(ctypes.c_void_p(got), ctypes.c_size_t(length))
    return got, 0


def user_space_end():
    """Where this kernel's user address space ends (TASK_SIZE_MAX): a page
    at 2^47 can be mapped only with 5-level page tables."""
    probe, page = 1 << 47, 4096
    got, _ = try_map_at(probe)
    return (1 << 56) - page if got == probe else probe - page


def vm_size_kb():
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmSize:"):
                return int(line.split()[1])
    return 0


def status_of(pid):
    """(State letter, TracerPid) of pid, from /proc/PID/status: a source
    left stopped shows "t" or "T", one left traced a TracerPid."""
    state = tracer = None
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("State:"):
                state = line.split()[1]
            elif line.startswith("TracerPid:"):
                tracer = int(line.split()[1])
    return state, tracer


def thread_count():
    return len(os.listdir("/proc/self/task"))


def region_at(pid, addr):
    """The pvmmap.maps() region of pid holding addr.  (Looking regions up by
    start address breaks when an anonymous region merges with a neighbour.)"""
    import pvmmap
    return next(r for r in pvmmap.maps(pid) if r.start <= addr < r.end)


def present_bytes(pid, start, end):
    """Bytes of [start, end) of pid that have a page (present or swapped),
    from /proc/PID/pagemap.  Unlike smaps' Rss it does not depend on how
    the VMAs around the range merged, and it counts the shared zero page
    (which reading a hole maps)."""
    import struct
    page = os.sysconf("SC_PAGE_SIZE")
    n = (end - start) // page
    with open(f"/proc/{pid}/pagemap", "rb") as f:
        f.seek(start // page * 8)
        data = f.read(n * 8)
    return page * sum(1 for (e,) in struct.iter_unpack("<Q", data) if e >> 62)


@contextlib.contextmanager
def handed_off_uffd(s, addr, n):
    """Register [addr, addr+n) of source s with userfaultfd, then take the
    uffd over as a lazy-pages daemon would (pidfd_getfd) and have s close
    its own: the VMA stays registered while s holds no userfaultfd at all.
    Yields our fd; skips where pidfd_getfd is missing or refused."""
    import pvmmap
    theirs = s.register_uffd(addr, n)
    pidfd = os.pidfd_open(s.pid)
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        ours = libc.syscall(438, pidfd, theirs, 0)          # pidfd_getfd
        if ours < 0:
            pytest.skip(f"pidfd_getfd: {os.strerror(ctypes.get_errno())}")
    finally:
        os.close(pidfd)
    try:
        s.close_fd(theirs)
        links = []
        for fd in os.listdir(f"/proc/{s.pid}/fd"):
            with contextlib.suppress(FileNotFoundError):
                links.append(os.readlink(f"/proc/{s.pid}/fd/{fd}"))
        assert "anon_inode:[userfaultfd]" not in links
        assert "um" in region_at(s.pid, addr).flags
        yield ours
    finally:
        os.close(ours)


def kernel_thread():
    """The pid of a kernel thread we can see (kthreadd is 2), or skip."""
    for name in sorted(os.listdir("/proc"), key=lambda n: (len(n), n)):
        if not name.isdigit():
            continue
        try:
            with open(f"/proc/{name}/stat", "rb") as f:
                line = f.read()
        except OSError:
            continue
        if int(line[line.rfind(b")") + 2:].split()[6]) & 0x00200000:   # PF_KTHREAD
            return int(name)
    pytest.skip("no kernel thread is visible in this pid namespace")


@contextlib.contextmanager
def zombie():
    """Yields the pid of a child that has exited and is not yet reaped."""
    import subprocess
    import sys
    import time
    proc = subprocess.Popen([sys.executable, "-c", ""])
    try:
        deadline = time.monotonic() + 30
        while True:
            with open(f"/proc/{proc.pid}/stat", "rb") as f:
                line = f.read()
            if line[line.rfind(b")") + 2:].split()[0] == b"Z":
                break
            assert time.monotonic() < deadline, "the child did not exit"
            time.sleep(0.01)
        yield proc.pid
    finally:
        proc.wait()


NOBODY = 65534
CAP_SYS_ADMIN, CAP_CHECKPOINT_RESTORE = 21, 40
SYS_USERFAULTFD = 323                   # x86_64


def drop_capabilities(caps):
    """Drop caps (numbers) from this process's bounding, effective,
    permitted and inheritable sets (PR_CAPBSET_DROP, then capset(2))."""
    libc = ctypes.CDLL(None, use_errno=True)
    header = (ctypes.c_uint32 * 2)(0x20080522, 0)           # _LINUX_CAPABILITY_VERSION_3
    data = (ctypes.c_uint32 * 6)()      # {effective, permitted, inheritable} x 2
    if libc.syscall(125, header, data):                     # capget
        raise OSError(ctypes.get_errno(), "capget")
    for cap in caps:
        if libc.prctl(24, cap, 0, 0, 0):                    # PR_CAPBSET_DROP
            raise OSError(ctypes.get_errno(), f"PR_CAPBSET_DROP {cap}")
        for field in range(3):
            data[cap // 32 * 3 + field] &= ~(1 << cap % 32)
    if libc.syscall(126, header, data):                     # capset
        raise OSError(ctypes.get_errno(), "capset")


def deny_syscalls(numbers, err=1):
    """A seccomp filter failing each syscall in numbers with err (EPERM),
    after PR_SET_NO_NEW_PRIVS (which a filter needs without CAP_SYS_ADMIN).
    x86_64 numbers; the filter does not check the architecture."""
    libc = ctypes.CDLL(None, use_errno=True)

    class SockFilter(ctypes.Structure):
        _fields_ = [("code", ctypes.c_uint16), ("jt", ctypes.c_uint8),
                    ("jf", ctypes.c_uint8), ("k", ctypes.c_uint32)]

    class SockFprog(ctypes.Structure):
        _fields_ = [("len", ctypes.c_uint16), ("filter", ctypes.POINTER(SockFilter))]

    prog = [SockFilter(0x20, 0, 0, 0)]                      # ld [nr]
    for i, nr in enumerate(numbers):                        # jeq nr -> deny
        prog.append(SockFilter(0x15, len(numbers) - i, 0, nr))
    prog += [SockFilter(0x06, 0, 0, 0x7FFF0000),            # ret ALLOW
             SockFilter(0x06, 0, 0, 0x00050000 | err)]      # ret ERRNO(err)
    array = (SockFilter * len(prog))(*prog)
    fprog = SockFprog(len(prog), array)
    if libc.prctl(38, 1, 0, 0, 0):                          # PR_SET_NO_NEW_PRIVS
        raise OSError(ctypes.get_errno(), "PR_SET_NO_NEW_PRIVS")
    if libc.prctl(22, 2, ctypes.byref(fprog), 0, 0):        # SECCOMP_MODE_FILTER
        raise OSError(ctypes.get_errno(), "PR_SET_SECCOMP")


def require_kernel_features(userns=False, pidns=False, seccomp=False):
    """Skip, naming the kernel option, where this kernel was built without
    what a test needs (the 6.1 test kernel of kernel/ has none of these:
    unshare() and PR_SET_SECCOMP then fail with EINVAL).  Each shows as a
    /proc entry only when compiled in."""
    need = [("user namespaces (CONFIG_USER_NS)", userns, "/proc/self/ns/user"),
            ("pid namespaces (CONFIG_PID_NS)", pidns, "/proc/self/ns/pid"),
            ("seccomp filters (CONFIG_SECCOMP_FILTER)", seccomp, None)]
    for what, wanted, path in need:
        if not wanted:
            continue
        if path is not None:
            present = os.path.exists(path)
        else:
            with open("/proc/self/status") as f:
                present = any(line.startswith("Seccomp_filters:") for line in f)
        if not present:
            pytest.skip(f"this kernel has no {what}")


def run_unprivileged(body, uid=NOBODY, drop_caps=(), deny=(), userns=False,
                     timeout=120):
    """Run body() in a forked child (no exec: the interpreter under /root is
    not readable to uid 65534) that first drops what it is told to, in this
    order: the capabilities drop_caps (numbers), a user namespace of its own
    (userns: unshare(CLONE_NEWUSER), no uid map written), the uid and gid
    (uid=None keeps root's), the syscalls deny (seccomp, EPERM).  Returns
    body()'s JSON result; the child is killed after `timeout` seconds."""
    import select
    import signal
    import time
    require_kernel_features(userns=userns, seccomp=bool(deny))
    r, w = os.pipe()
    pid = os.fork()
    if pid == 0:
        status = 1
        try:
            os.close(r)
            libc = ctypes.CDLL(None, use_errno=True)
            if drop_caps:
                drop_capabilities(drop_caps)
            if userns and libc.unshare(0x10000000):         # CLONE_NEWUSER
                raise OSError(ctypes.get_errno(), "unshare(CLONE_NEWUSER)")
            if uid is not None:
                os.setgroups([])
                os.setgid(uid)
                os.setuid(uid)
                # Changing uid made us non-dumpable: nobody could ptrace our
                # children either.  A normal process started by this user is.
                libc.prctl(4, 1, 0, 0, 0)                   # PR_SET_DUMPABLE
            if deny:
                deny_syscalls(deny)
            result = body()
            os.write(w, json.dumps(result).encode())
            status = 0
        except BaseException as e:          # report, never return into pytest
            os.write(w, json.dumps({"crash": repr(e)}).encode())
        finally:
            os._exit(status)
    os.close(w)
    deadline, data = time.monotonic() + timeout, b""
    with os.fdopen(r, "rb") as f:
        while True:             # until EOF: the child (and all it forked) is done
            left = deadline - time.monotonic()
            if left <= 0 or not select.select([f], [], [], left)[0]:
                os.kill(pid, signal.SIGKILL)
                os.waitpid(pid, 0)
                pytest.fail(f"the unprivileged child did not finish in {timeout} s")
            chunk = os.read(f.fileno(), 65536)
            if not chunk:
                break
            data += chunk
    os.waitpid(pid, 0)
    result = json.loads(data)
    assert "crash" not in result, result["crash"]
    return result


def check_says(pid, addr, length, *options):
    """What `pvmmap check PID ADDR LEN [options] --json` says (addr None:
    `pvmmap check PID`, every range), run in this process as the CLI runs
    it: (exit status, errno or None, message or None).  A process-level
    refusal is the command's one-line error."""
    import io
    import re
    from pvmmap.cli import main
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        where = [] if addr is None else [hex(addr), str(length)]
        status = main(["check", str(pid), *where, "--json", *options])
    if not out.getvalue():
        text = err.getvalue().strip()
        code = re.match(r"pvmmap check: (.*)", text)
        assert code, text
        err_no = next((n for n in errno.errorcode
                       if code.group(1).startswith(os.strerror(n) + " (")), None)
        return status, err_no, code.group(1)
    plan = json.loads(out.getvalue())["ranges"][0]
    e = plan["error"]
    return status, e and e["errno"], e and e["message"]


def with_grandchild(regions, work):
    """Fork a grandchild that holds the current memory; run work(pid); end it."""
    r, w = os.pipe()
    gpid = os.fork()
    if gpid == 0:
        os.close(w)
        os.read(r, 1)                       # until the parent closes w
        os._exit(0)
    os.close(r)
    try:
        return work(gpid)
    finally:
        os.close(w)
        os.waitpid(gpid, 0)


CLONE_NEWNS, CLONE_NEWPID = 0x00020000, 0x20000000


def in_pid_namespace(body, timeout=120):
    """Run body(report) as pid 1 of a new pid namespace with its own /proc
    (root only: skips otherwise), in a forked child; report(obj) sends one
    JSON object back.  Returns (the reported objects, how pid 1 ended: its
    exit code, or -signal).  Bounded: past `timeout` seconds the namespace
    is killed and the test fails."""
    import select
    import signal
    import time
    if os.geteuid() != 0:
        pytest.skip("a new pid namespace and /proc mount need root")
    require_kernel_features(pidns=True)
    libc = ctypes.CDLL(None, use_errno=True)
    r, w = os.pipe()
    outer = os.fork()
    if outer == 0:                          # unshares, then waits for pid 1
        code = 1
        try:
            os.close(r)
            if libc.unshare(CLONE_NEWPID | CLONE_NEWNS):
                raise OSError(ctypes.get_errno(), "unshare(CLONE_NEWPID|CLONE_NEWNS)")
            init = os.fork()
            if init == 0:
                code = 1
                try:
                    libc.prctl(1, signal.SIGKILL, 0, 0, 0)  # PR_SET_PDEATHSIG
                    # Our mounts stay ours: a private / first, then /proc of
                    # the new namespace over the old one.
                    if libc.mount(None, b"/", None, 0x4000 | 0x40000, None):  # MS_REC|MS_PRIVATE
                        raise OSError(ctypes.get_errno(), "mount --make-rprivate /")
                    if libc.mount(b"proc", b"/proc", b"proc", 0, None):
                        raise OSError(ctypes.get_errno(), "mount proc")
                    body(lambda obj: os.write(w, (json.dumps(obj) + "\n").encode()))
                    code = 0
                except BaseException as e:  # report, never return into pytest
                    os.write(w, (json.dumps({"crash": repr(e)}) + "\n").encode())
                finally:
                    os._exit(code)
            os.close(w)
            _, status = os.waitpid(init, 0)
            code = os.waitstatus_to_exitcode(status) & 0xFF
            if os.WIFSIGNALED(status):
                code = 128 + os.WTERMSIG(status)
        except BaseException as e:
            os.write(w, (json.dumps({"crash": repr(e)}) + "\n").encode())
        finally:
            os._exit(code)
    os.close(w)
    data, deadline = b"", time.monotonic() + timeout
    try:
        while True:
            left = deadline - time.monotonic()
            assert left > 0, f"the pid namespace's work took over {timeout} s"
            if select.select([r], [], [], left)[0]:
                chunk = os.read(r, 65536)
                if not chunk:
                    break
                data += chunk
    finally:
        os.close(r)
        if time.monotonic() >= deadline:
            os.kill(outer, signal.SIGKILL)
        _, status = os.waitpid(outer, 0)
    reports = [json.loads(line) for line in data.decode().splitlines()]
    crashes = [x["crash"] for x in reports if "crash" in x]
    assert not crashes, crashes
    code = os.waitstatus_to_exitcode(status)
    return reports, 128 - code if code > 128 else code


@contextlib.contextmanager
def non_dumpable_child():
    """A forked child that made itself non-dumpable (PR_SET_DUMPABLE 0) and
    waits; yields its pid once /proc shows it root-owned (bounded wait)."""
    import time
    r, w = os.pipe()
    gpid = os.fork()
    if gpid == 0:
        os.close(w)
        ctypes.CDLL(None).prctl(4, 0, 0, 0, 0)        # PR_SET_DUMPABLE 0
        os.read(r, 1)
        os._exit(0)
    os.close(r)
    try:
        deadline = time.monotonic() + 10
        while (os.stat(f"/proc/{gpid}/status").st_uid != 0
               and time.monotonic() < deadline):
            time.sleep(0.01)                        # until prctl took effect
        yield gpid
    finally:
        os.close(w)
        os.waitpid(gpid, 0)


def settled(m, done):
    """m.stats once done(stats) holds: a lazy mapping's counters are updated
    by the server right after it wakes the faulting thread, so they may lag
    a moment behind it (bounded wait, 10 s)."""
    deadline = time.monotonic() + 10
    while not done(m.stats) and time.monotonic() < deadline:
        time.sleep(0.001)
    return m.stats
