"""process_vm_mmap()'s contract, shared by both backends: the argument,
process and permission checks in the kernel's order, the plan of source VMAs
a range covers, the one rule of what is refused, the reserved destination,
and the Part records a Mapping is made of (docs/design.md, "The contract").
"""

from __future__ import annotations

import errno
import os
import stat
from dataclasses import dataclass
from typing import Callable, Dict, List, Optional, Sequence, Tuple

from pvmmap import _maps, _native
from pvmmap._errors import os_error
from pvmmap._features import task_size
from pvmmap._maps import Region

PAGE = _native.PAGESIZE
PID_T_MAX = 2**31 - 1       # pid_t is an int


def page_down(x: int) -> int:
    return x & ~(PAGE - 1)


def page_up(x: int) -> int:
    return (x + PAGE - 1) & ~(PAGE - 1)


@dataclass(frozen=True)
class Part:
    """One source VMA's share of a clone, as Mapping.parts lists it."""
    offset: int         # where it starts in the clone's page-rounded range
    length: int         # bytes
    source: int         # its address in the source
    kind: str           # Region.kind of the source VMA
    prot: int           # PROT_* bits
    method: str         # native, copy, share or file


@dataclass(frozen=True)
class Verdict:
    """One source VMA (or hole) of a planned clone: the Part clone() would
    make of it, or the error clone() raises for it."""
    part: Part          # kind "hole" for a hole; method "" where refused
    perms: str          # the source VMA's perms ("" for a hole)
    path: str           # its path in /proc/PID/maps
    reason: str         # why that method, or why it is refused
    error: Optional[OSError] = None


@dataclass(frozen=True)
class ClonePlan:
    """What clone(pid, address, length, ...) would do (pvmmap._api.plan_clone):
    `error` is the exception it would raise (None: it would succeed) and
    `parts` the verdict on each source VMA and hole of the range."""
    pid: int
    address: int
    length: int
    start: int          # the page-rounded range
    end: int
    backend: str        # "native" or "emulated"
    parts: Tuple[Verdict, ...]
    error: Optional[OSError]

    @property
    def ok(self) -> bool:
        return self.error is None


@dataclass
class Clone:
    """What a backend made: [base, base+total) page-aligned and placed, its
    parts, what it cost, and the lazy pieces still being served."""
    base: int
    total: int
    parts: List[Part]
    stats: Dict[str, object]
    lazy: Tuple[object, ...] = ()


# ---- the EINVAL, ESRCH and EPERM checks ------------------------------------

def check_args(pid: int, src: int, length: int, flags: int,
               dst: int = 0) -> Tuple[int, int]:
    """The contract's EINVAL cases.  Returns the page-rounded (start, end)."""
    for name, v in (("pid", pid), ("address", src), ("length", length),
                    ("flags", flags), ("destination", dst)):
        if not isinstance(v, int):
            raise TypeError(f"{name} must be an int, not {type(v).__name__}")
    if flags & ~(_native.FIXED | _native.FIXED_NOREPLACE) or flags < 0:
        raise os_error(errno.EINVAL, f"unknown flags {flags:#x}", pid, src, length,
                       "flags")
    if not 0 <= dst < 1 << 64:
        # The call's dst_addr is an unsigned long: no hint, no place.
        raise os_error(errno.EINVAL, f"destination {dst:#x} is not an address",
                       pid, src, length, "destination")
    if length <= 0:
        raise os_error(errno.EINVAL, "length must be positive", pid, src, length)
    if page_down(src) <= 0:
        raise os_error(errno.EINVAL, "source address is in page 0", pid, src,
                       length)
    if pid <= 0:
        raise os_error(errno.EINVAL, "pid must be positive", pid, src, length)
    start, end = page_down(src), page_up(src + length)
    if end > task_size():
        raise os_error(errno.EINVAL, "range beyond the user address space", pid,
                       src, length, "address-space")
    if pid > PID_T_MAX:
        # No process has it; the kernel's pid_t would take it modulo 2^32
        # and name another process (2^32 + 1 is init).
        raise os_error(errno.ESRCH, f"no process can have a pid above {PID_T_MAX}",
                       pid, src, length)
    return start, end


def check_freeze(pid: int, freeze: bool, src: int, length: int) -> None:
    """EINVAL for freeze=True on the calling process (it cannot stop
    itself), on every backend: the native call needs no freeze, but the
    same call must give the same answer wherever it runs."""
    if freeze and pid == os.getpid():
        raise os_error(errno.EINVAL, "freeze=True cannot stop the calling "
                       "process", pid, src, length, "freeze-self")


def check_pid(pid: int) -> None:
    """The contract's EINVAL for a pid that cannot name a process (what
    pvmmap.maps() checks before check_alive)."""
    if not isinstance(pid, int):
        raise TypeError(f"pid must be an int, not {type(pid).__name__}")
    if pid <= 0:
        raise os_error(errno.EINVAL, "pid must be positive", pid)


def check_alive(pid: int, start: Optional[int] = None,
                length: Optional[int] = None) -> None:
    """ESRCH (no such process, or a zombie) and EINVAL (a kernel thread), in
    the kernel's order: the process checks that need no permission."""
    st = _maps.read_stat(pid)
    if st is None:
        raise os_error(errno.ESRCH, "looking up the source", pid, start, length)
    state, task_flags = st
    if task_flags & _maps.PF_KTHREAD:
        raise os_error(errno.EINVAL, "a kernel thread has no memory to map", pid,
                       start, length)
    if state in ("Z", "X"):
        raise os_error(errno.ESRCH, "the source has exited (zombie)", pid, start,
                       length)


def check_process(pid: int, start: Optional[int], length: Optional[int]) -> int:
    """ESRCH / EINVAL (kernel thread) / EPERM, in that order.  Returns an open
    /proc/PID/mem fd: opening it is the ptrace-attach permission check.
    start/length: the range for messages (None for a whole process)."""
    check_alive(pid, start, length)
    try:
        return os.open(f"/proc/{pid}/mem", os.O_RDONLY | os.O_CLOEXEC)
    except FileNotFoundError:
        raise os_error(errno.ESRCH, "looking up the source", pid, start,
                       length) from None
    except PermissionError:
        # /proc/PID/mem says EACCES; process_vm_readv and the native call EPERM.
        cause, hint = ptrace_denial(pid)
        raise os_error(errno.EPERM, f"may not ptrace-attach the source: {cause}",
                       pid, start, length, hint) from None


#: pidfd_open's flag for a thread rather than a thread-group leader (6.9).
PIDFD_THREAD = os.O_EXCL


def pin(pid: int) -> int:
    """A pidfd for `pid`, taken before any other look at the process, so
    that pinned_alive() can tell afterwards whether the pid still names the
    process every /proc/PID read and process_vm_readv(pid) in between went
    to.  -1 where the kernel gives none (no such pid: check_process says
    so; pidfd_open before 5.3; a thread id before 6.9): then nothing is
    pinned."""
    for flags in (0, PIDFD_THREAD):
        try:
            return os.pidfd_open(pid, flags)
        except OSError as e:
            if e.errno != errno.EINVAL:     # ESRCH, ENOSYS, EMFILE: unpinned
                return -1
    return -1


def check_pinned(pidfd: int, pid: int, start: Optional[int],
                 length: Optional[int], mem_fd: int = -1) -> None:
    """ESRCH unless the memory the call read is still the source's: the
    process pin() took is unreaped (a pid is only recycled once its process
    is reaped, so every read by pid since pin() was of that process), not
    exiting, and, given the call's /proc/PID/mem fd, still on the address
    space that fd was opened on.  An exiting source's reads come back empty
    (its maps list nothing, its pagemap and mem read 0 bytes) and an exec'd
    one's pinned fds read nothing: without this a dump of either "succeeds"
    with the pages it never saw.  Costs a pidfd_send_signal, a read of
    /proc/PID/stat and a 1-byte pread."""
    import signal
    if pidfd >= 0:
        try:
            signal.pidfd_send_signal(pidfd, 0)
        except ProcessLookupError:
            raise os_error(errno.ESRCH, "the source exited during the call (its pid "
                           "may name another process now)", pid, start, length) from None
        except PermissionError:
            pass            # kill() is not ours to send, but the process lives
    st = _maps.read_stat(pid)
    if st is None or st[0] in ("Z", "X") or st[1] & _maps.PF_EXITING:
        raise os_error(errno.ESRCH, "the source exited during the call", pid, start,
                       length)
    if mem_fd >= 0 and not _mm_alive(mem_fd):
        raise os_error(errno.ESRCH, "the source exec'd or exited during the call: "
                       "the memory it was read from is gone", pid, start, length)


def _mm_alive(mem_fd: int) -> bool:
    """Whether the address space a /proc/PID/mem fd was opened on still
    exists.  mem reads 0 bytes once it is gone (mem_rw: mmget_not_zero
    fails); while it lives, address 0 gives EIO (unmapped) or its byte."""
    try:
        return os.pread(mem_fd, 1, 0) != b""
    except OSError:
        return True


def open_source(pid: int, start: Optional[int],
                length: Optional[int]) -> Tuple[int, int]:
    """pin() then check_process(): (pidfd or -1, /proc/PID/mem fd), both
    for the caller to close; closes the pidfd if a check fails."""
    pidfd = pin(pid)
    try:
        return pidfd, check_process(pid, start, length)
    except BaseException:
        if pidfd >= 0:
            os.close(pidfd)
        raise


CAP_SYS_PTRACE = 19


def _yama_scope() -> int:
    try:
        with open("/proc/sys/kernel/yama/ptrace_scope") as f:
            return int(f.read())
    except (OSError, ValueError):
        return 0                    # no Yama: classic ptrace rules


def _is_descendant(pid: int) -> bool:
    me, seen = os.getpid(), 0
    while pid > 1 and seen < 4096:
        st = _maps.read_status(pid)
        if not st:
            return False
        pid = int(st.get("PPid", "0"))
        if pid == me:
            return True
        seen += 1
    return False


def ptrace_denial(pid: int) -> Tuple[str, str]:
    """Why this process may not ptrace `pid`, as (cause, HINTS key): the
    checks of the kernel's __ptrace_may_access and Yama, in their order."""
    theirs, ours = _maps.read_status(pid), _maps.read_status("self")
    if not theirs or not ours:
        return "the kernel refused", "ptrace"
    have_cap = bool(int(ours.get("CapEff", "0"), 16) >> CAP_SYS_PTRACE & 1)
    their_uids = set(theirs.get("Uid", "").split()) | set(theirs.get("Gid", "").split())
    our_uid, our_gid = ours.get("Uid", "").split()[:1], ours.get("Gid", "").split()[:1]
    if not have_cap:
        same = their_uids <= set(our_uid + our_gid) | {str(os.getuid()),
                                                         str(os.getgid())}
        setid = _setid(theirs)
        if not same and setid:
            return setid, "ptrace-setuid"
        if not same:
            return who_owns(pid), "ptrace-user"
        # A non-dumpable process's /proc files (not its directory) belong
        # to root (task_dump_owner).
        try:
            dumpable = os.stat(f"/proc/{pid}/status").st_uid != 0 or \
                theirs.get("Uid", "").split()[0] == "0"
        except OSError:
            dumpable = True
        if not dumpable:
            return "it is not dumpable", "ptrace-dumpable"
        their_caps = int(theirs.get("CapPrm", "0"), 16)
        if their_caps & ~int(ours.get("CapPrm", "0"), 16):
            return (f"it holds capabilities this process does not (CapPrm "
                    f"{their_caps:#x})"), "ptrace-caps"
    try:
        other_ns = os.readlink(f"/proc/{pid}/ns/user") != os.readlink("/proc/self/ns/user")
    except OSError:
        # Reading another namespace's link needs the very access refused:
        # from a user namespace of our own, a process we cannot see into
        # is outside it (its uids are unmapped here).
        other_ns = not _initial_user_ns()
    scope = _yama_scope()
    if scope == 3:
        return "kernel.yama.ptrace_scope=3 forbids ptrace entirely", "ptrace-yama3"
    if scope == 2 and not have_cap:
        return "kernel.yama.ptrace_scope=2 lets only CAP_SYS_PTRACE trace", "ptrace-yama2"
    if scope == 1 and not have_cap and not _is_descendant(pid):
        return ("kernel.yama.ptrace_scope=1 lets a process trace only its "
                "descendants"), "ptrace-yama1"
    if other_ns:
        return "it is in another user namespace", "ptrace-userns"
    return "the kernel refused, though uid, capabilities and Yama allow it", "ptrace-lsm"


def freeze_denial(pid: int, err: OSError, start: Optional[int],
                  length: Optional[int]) -> OSError:
    """The error for a freeze (PTRACE_SEIZE) that failed with EPERM: an
    other tracer, or the same reasons as any ptrace."""
    tracer = int(_maps.read_status(pid).get("TracerPid", "0") or 0)
    if tracer:
        name = _maps.read_status(tracer).get("Name", "?")
        return os_error(errno.EPERM, f"cannot freeze the source: it is already "
                        f"traced by pid {tracer} ({name})", pid, start, length, "traced")
    cause, hint = ptrace_denial(pid)
    return os_error(errno.EPERM, f"cannot freeze the source: {cause}", pid, start,
                    length, hint)


def _setid(status: Dict[str, str]) -> str:
    """'it (sleep) runs setuid: real uid 65534, effective uid 0, saved uid
    0' for a process whose real, effective and saved uids (or gids) are not
    all the same (a set-user-ID program), else ''."""
    for what, key in (("uid", "Uid"), ("gid", "Gid")):
        ids = status.get(key, "").split()[:3]
        if len(set(ids)) > 1:
            return (f"it ({status.get('Name', '?')}) runs set{what}: real {what} "
                    f"{ids[0]}, effective {what} {ids[1]}, saved {what} {ids[2]}")
    return ""


def _initial_user_ns() -> bool:
    """Whether this process is in the initial user namespace (its uid map
    is the identity over all 2^32 - 1 uids)."""
    try:
        with open("/proc/self/uid_map") as f:
            return f.read().split() == ["0", "0", "4294967295"]
    except OSError:
        return True


def who_owns(pid: int) -> str:
    """'it (systemd) runs as root, this process as nobody', for messages."""
    import psutil
    try:
        p = psutil.Process(pid)
        theirs = f"it ({p.name()}) runs as {p.username()}"
    except (psutil.Error, KeyError):
        theirs = "it belongs to another user"
    try:
        ours = psutil.Process().username()
    except (psutil.Error, KeyError):
        ours = f"uid {os.getuid()}"
    return f"{theirs}, this process as {ours}"


# ---- planning: which source VMAs, and may they be cloned -------------------

@dataclass
class Piece:
    """One source VMA's share of a range while a clone is being made."""
    region: Region
    start: int
    end: int
    method: str = ""            # chosen by the backend's strategy table
    fd: int = -1                # the file or shmem object, for share/file
    route: str = ""             # how that object was reached, or why copied

    @property
    def length(self) -> int:
        return self.end - self.start


def plan(pid: int, start: int, end: int, single: bool,
         copied: Callable[[Region], bool]) -> List[Piece]:
    """The source VMAs covering [start, end), checked against the contract:
    EFAULT for a hole (or, if `single`, a second VMA) and refused kinds,
    EOPNOTSUPP for userfaultfd-registered ones.  copied(region) says whether
    the strategy will copy that VMA's pages (see need_flags)."""
    regions = _maps.read_maps(pid, start, end)
    if not regions and not _maps.has_memory(pid):
        raise os_error(errno.ESRCH, "the source has no memory (exiting)", pid,
                       start, end - start)
    pieces = cover(pid, regions, start, end, single)
    if need_flags(pid, pieces, copied):
        # One consistent reading: the pieces are made again from smaps, so
        # a VMA split or merged since the maps read is still seen whole.
        pieces = cover(pid, _maps.read_smaps(pid, start, end), start, end, single)
    for p in pieces:
        refuse(pid, p.region, start, end)
    return pieces


def cover(pid: int, regions: Sequence[Region], start: int, end: int,
          single: bool) -> List[Piece]:
    """Pieces of `regions` (sorted, overlapping [start, end)) that cover the
    range; EFAULT for a hole or, if `single`, a second VMA."""
    pieces, holes = cover_all(regions, start, end)
    if holes:
        what = ("range is not mapped" if holes[0][0] == start
                else "range runs into a hole")
        raise os_error(errno.EFAULT, what, pid, start, end - start, "maps")
    if single and len(pieces) > 1:
        raise os_error(errno.EFAULT, "range spans more than one VMA", pid, start,
                       end - start, "one-vma")
    return pieces


def cover_all(regions: Sequence[Region], start: int,
              end: int) -> Tuple[List[Piece], List[Tuple[int, int]]]:
    """The pieces of `regions` inside [start, end) and the holes between
    them, (start, end) each, in address order."""
    pieces: List[Piece] = []
    holes: List[Tuple[int, int]] = []
    at = start
    for r in regions:
        if r.end <= at:
            continue
        if r.start >= end:
            break
        if r.start > at:
            holes.append((at, r.start))
            at = r.start
        pieces.append(Piece(r, at, min(end, r.end)))
        at = min(end, r.end)
        if at == end:
            break
    if at != end:
        holes.append((at, end))
    return pieces, holes


def survey(pid: int, start: int, end: int,
           copied: Callable[[Region], bool]) -> Tuple[List[Piece],
                                                      List[Tuple[int, int]]]:
    """What plan() looks at, without raising for holes or refusals: the
    pieces of [start, end) (read with VmFlags when need_flags says so, as
    plan() reads them) and the holes between them.  The caller applies
    refusal() to each piece."""
    regions = _maps.read_maps(pid, start, end)
    if not regions and not _maps.has_memory(pid):
        raise os_error(errno.ESRCH, "the source has no memory (exiting)", pid,
                       start, end - start)
    pieces, holes = cover_all(regions, start, end)
    if need_flags(pid, pieces, copied):
        pieces, holes = cover_all(_maps.read_smaps(pid, start, end), start, end)
    return pieces, holes


def need_flags(pid: int, pieces: Sequence[Piece],
               copied: Callable[[Region], bool]) -> bool:
    """Whether the refusals need smaps' VmFlags, which cost a walk of the
    page tables up to the range (about 13 ms per populated GiB).

    Pieces that are copied pay it: the copy walks those
    pages anyway, and a VMA registered with userfaultfd (lazy restore,
    post-copy migration) often belongs to a process that has handed its
    uffd to a daemon.  Pieces that can be mapped in well under a millisecond
    whatever their size (shared or file memory) are checked only when maps
    cannot tell (an anon_inode or device-like VMA) or when the source holds
    a userfaultfd itself."""
    if any(copied(p.region) or not p.region.plain for p in pieces):
        return True
    return _maps.has_userfaultfd(pid)


def refusal(region: Region, pid: int,
            st: Optional[os.stat_result] = None) -> Optional[Tuple[int, str]]:
    """(errno, why) if the contract refuses to clone `region` of `pid`, else
    None: the one rule for every refused kind, in the kernel port's order.
    `st`: the stat of the object behind the VMA, once it has been opened."""
    if region.kind == "hugetlb":
        return errno.EFAULT, "a hugetlb mapping"
    if region.kind == "special":
        named = ", ".join(v for k, v in _maps.SPECIAL_FLAGS.items()
                          if region.flags and k in region.flags)
        what = ": ".join(x for x in (region.file_path, named) if x)
        return errno.EFAULT, f"a special mapping ({what or 'VM_IO/VM_PFNMAP'})"
    if region.flags and region.flags & _maps.UFFD_FLAGS:
        return errno.EOPNOTSUPP, "registered with userfaultfd"
    if region.pkey and pid != os.getpid():
        return errno.EFAULT, f"tagged with protection key {region.pkey}"
    if st is not None and (stat.S_ISCHR(st.st_mode) or stat.S_ISBLK(st.st_mode)):
        return errno.EFAULT, f"a device mapping ({region.path}: VM_IO/VM_PFNMAP)"
    return None


def refuse(pid: int, region: Region, start: int, end: int,
           st: Optional[os.stat_result] = None) -> None:
    """Raise the contract's error if `region` may not be cloned."""
    why = refusal(region, pid, st)
    if why:
        raise refused(pid, region, why, start, end)


def refused(pid: int, region: Region, why: Tuple[int, str], start: int,
            end: int) -> OSError:
    err, what = why
    vma = "" if (region.start, region.end) == (start, end) else \
        f" {region.start:#x}-{region.end:#x}"
    return os_error(err, f"source VMA{vma} is {what}", pid, start, end - start,
                    "refused" if err == errno.EFAULT else "")


# ---- the destination -------------------------------------------------------

def reserve(pid: int, length: int, dst: int, flags: int) -> int:
    """The destination range, PROT_NONE until the pieces are placed."""
    mflags = _native.MAP_PRIVATE | _native.MAP_ANONYMOUS | _native.MAP_NORESERVE
    if flags & _native.FIXED_NOREPLACE:
        dst = page_down(dst)
        mflags |= _native.MAP_FIXED_NOREPLACE
    elif flags & _native.FIXED:
        dst = page_down(dst)
        mflags |= _native.MAP_FIXED
    try:
        base: int = _native.mmap_raw(dst, length, _native.PROT_NONE, mflags)
    except FileExistsError:
        raise os_error(errno.EEXIST, "destination is already mapped", pid, dst,
                       length, "noreplace") from None
    except OSError as e:
        raise os_error(e.errno or errno.ENOMEM, "reserving the destination", pid, dst,
                       length) from None
    if flags & (_native.FIXED | _native.FIXED_NOREPLACE) and base != dst:
        _native.munmap_raw(base, length)   # a kernel that took it as a hint
        raise os_error(errno.EEXIST, "destination is already mapped", pid, dst,
                       length, "noreplace")
    return base


def _summary(values: Sequence[str]) -> str:
    return values[0] if len(set(values)) == 1 else "mixed"


def to_mapping(pid: int, addr: int, length: int, made: Clone) -> _native.Mapping:
    """The Mapping over what a backend made, holding the clone of
    [addr, addr+length) (made.base is addr's page)."""
    prot = _native.PROT_READ | _native.PROT_WRITE | _native.PROT_EXEC
    for p in made.parts:
        prot &= p.prot
    return _native.make_mapping(
        made.base, made.total, addr - page_down(addr), length, pid=pid,
        source_address=addr, method=_summary([p.method for p in made.parts]),
        kind=_summary([p.kind for p in made.parts]), prot=prot,
        parts=tuple(made.parts), stats=made.stats, lazy=made.lazy)
