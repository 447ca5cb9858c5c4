"""The emulated process_vm_mmap: the contract's checks in the kernel's order,
then one strategy per kind of source VMA (DESIGN.md §2):

    private anonymous  -> copy   new anonymous memory, filled from the pages
                                 the source has (scan, then process_vm_readv)
    private file       -> file   the same file MAP_PRIVATE at the same offset,
                                 then the source's privately modified pages
    shared (any)       -> share  the same object MAP_SHARED at the same offset
                                 (/proc/PID/map_files, the path, or an fd)

Everything that can refuse is resolved before the destination is touched,
and a failure after that unmaps what was made: nothing half-made is left.
"""

import errno
import functools
import mmap
import os
import stat
from dataclasses import dataclass

from pvmmap import _maps, _native
from pvmmap._errors import os_error

PAGE = mmap.PAGESIZE
PF_KTHREAD = 0x00200000

MAP_FIXED = 0x10
MAP_NORESERVE = 0x4000
MAP_FIXED_NOREPLACE = 0x100000
RW = mmap.PROT_READ | mmap.PROT_WRITE
PROT_NONE = 0

CAPS_HINT = ("needs CAP_SYS_ADMIN or CAP_CHECKPOINT_RESTORE to map "
             "/proc/PID/map_files; run as root, or pass allow_copy=True to get "
             "a private copy instead of shared memory")


def page_down(x):
    return x & ~(PAGE - 1)


def page_up(x):
    return (x + PAGE - 1) & ~(PAGE - 1)


@functools.lru_cache(maxsize=None)
def task_size():
    """The end of the user address space, the kernel's TASK_SIZE_MAX:
    2^47 - PAGE with 4-level page tables, 2^56 - PAGE with 5-level ones
    (x86_64 la57).  A page asked for at 2^47 tells which: only a 5-level
    kernel can place it (and then only when asked, so nothing else moves)."""
    probe = 1 << 47
    try:
        got = _native.mmap_raw(probe, PAGE, PROT_NONE, mmap.MAP_PRIVATE
                               | mmap.MAP_ANONYMOUS | MAP_FIXED_NOREPLACE)
    except OSError as e:
        # EEXIST: something is mapped there already, so it is reachable.
        return probe - PAGE if e.errno != errno.EEXIST else (1 << 56) - PAGE
    _native.munmap_raw(got, PAGE)     # before 4.17 the flag was only a hint
    return (1 << 56) - PAGE if got == probe else probe - PAGE


def check_args(pid, src, length, flags):
    """The contract's EINVAL cases.  Returns the page-rounded (start, end)."""
    for name, v in (("pid", pid), ("address", src), ("length", length),
                    ("flags", flags)):
        if not isinstance(v, int):
            raise TypeError(f"{name} must be an int, not {type(v).__name__}")
    if flags & ~(_native.FIXED | _native.FIXED_NOREPLACE) or flags < 0:
        raise os_error(errno.EINVAL, f"flags {flags:#x}", pid, src, length,
                       "only PVMMAP_FIXED and PVMMAP_FIXED_NOREPLACE exist")
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
                       src, length)
    return start, end


def check_process(pid, start, length):
    """ESRCH / EINVAL (kernel thread) / EPERM, in that order.  Returns an open
    /proc/PID/mem fd: opening it is the ptrace-attach permission check."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            stat_line = f.read()
    except FileNotFoundError:
        raise os_error(errno.ESRCH, "no such process", pid, start, length) from None
    fields = stat_line[stat_line.rfind(b")") + 2:].split()
    if int(fields[6]) & PF_KTHREAD:
        raise os_error(errno.EINVAL, "a kernel thread has no memory to map", pid,
                       start, length)
    if fields[0] in (b"Z", b"X"):
        raise os_error(errno.ESRCH, "process has exited (zombie)", pid, start,
                       length)
    try:
        return os.open(f"/proc/{pid}/mem", os.O_RDONLY | os.O_CLOEXEC)
    except FileNotFoundError:
        raise os_error(errno.ESRCH, "no such process", pid, start, length) from None
    except PermissionError:
        # /proc/PID/mem says EACCES; process_vm_readv and the native call EPERM.
        raise os_error(errno.EPERM, "may not ptrace-attach the source", pid,
                       start, length, f"{who_owns(pid)}; run as its user (it "
                       "must be dumpable) or as root (CAP_SYS_PTRACE)") from None


def who_owns(pid):
    """'pid 1 (systemd) runs as root, this process as nobody', for messages."""
    try:
        import psutil
    except ImportError:
        return f"pid {pid} belongs to another user, or is not dumpable"
    try:
        p = psutil.Process(pid)
        theirs = f"pid {pid} ({p.name()}) runs as {p.username()}"
    except (psutil.Error, KeyError):
        theirs = f"pid {pid} belongs to another user"
    try:
        ours = psutil.Process().username()
    except (psutil.Error, KeyError):
        ours = f"uid {os.getuid()}"
    return f"{theirs}, this process as {ours}"


@dataclass
class Piece:
    region: _maps.Region
    start: int
    end: int
    method: str = None
    fd: int = -1                # the file or shmem object, for share/file

    @property
    def length(self):
        return self.end - self.start


def plan(pid, start, end, single, method="auto"):
    """The source VMAs covering [start, end), checked against the contract:
    EFAULT for a hole (or, if `single`, a second VMA) and refused kinds,
    EOPNOTSUPP for userfaultfd-registered ones."""
    regions = _maps.read_maps(pid, start, end)
    if not regions and not _maps.has_memory(pid):
        raise os_error(errno.ESRCH, "process has no memory (exiting)", pid, start,
                       end - start)
    pieces = _cover(pid, regions, start, end, single)
    if _need_flags(pid, pieces, method):
        # One consistent reading: the pieces are made again from smaps, so
        # a VMA split or merged since the maps read is still seen whole.
        pieces = _cover(pid, _maps.read_smaps(pid, start, end), start, end, single)
    for p in pieces:
        _refuse(pid, p.region, start, end)
    return pieces


def _cover(pid, regions, start, end, single):
    """Pieces of `regions` (sorted, overlapping [start, end)) that cover the
    range; EFAULT for a hole or, if `single`, a second VMA."""
    pieces, at = [], start
    for r in regions:
        if r.end <= at:
            continue
        if r.start > at:
            break
        pieces.append(Piece(r, at, min(end, r.end)))
        at = min(end, r.end)
        if at == end:
            break
    if at != end:
        what = "range is not mapped" if not pieces else "range runs into a hole"
        raise os_error(errno.EFAULT, what, pid, start, end - start,
                       "check /proc/PID/maps")
    if single and len(pieces) > 1:
        raise os_error(errno.EFAULT, "range spans more than one VMA", pid, start,
                       end - start, "process_vm_mmap maps one VMA; use "
                       "pvmmap.clone() to span several")
    return pieces


def _refuse(pid, region, start, end):
    """Raise the contract's error if `region` may not be cloned."""
    refusal = region.refusal()
    if not refusal and region.pkey and pid != os.getpid():
        refusal = errno.EFAULT, f"tagged with protection key {region.pkey}"
    if refusal:
        err, why = refusal
        raise os_error(err, f"source VMA {region.start:#x}-{region.end:#x} is "
                       f"{why}", pid, start, end - start)


def _need_flags(pid, pieces, method):
    """Whether the refusals need smaps' VmFlags, which cost a walk of the
    page tables up to the range (about 13 ms per populated GiB).

    Pieces that are copied pay it: the copy walks those pages anyway, and
    a VMA registered with userfaultfd (lazy restore, post-copy migration)
    often belongs to a process that has handed its uffd to a daemon.
    Shared pieces are mapped in well under a millisecond, whatever their
    size, so they are checked only when maps cannot tell (an anon_inode or
    device-like VMA) or when the source holds a userfaultfd itself.  (A
    shared piece that falls back to a copy is checked in resolve().)"""
    if method == "copy" or any(_maps.KINDS[p.region.kind] != "share"
                               or not p.region.plain for p in pieces):
        return True
    return _maps.has_userfaultfd(pid)


def _same_file(st, region):
    dev = f"{os.major(st.st_dev):02x}:{os.minor(st.st_dev):02x}"
    return st.st_ino == region.inode and (dev == region.dev or region.dev == "00:00")


def open_object(pid, region, writable):
    """An fd for the file or shmem object behind `region`, opened the most
    faithful way permitted: /proc/PID/map_files, then the path if it still
    names the same inode, then an fd the source holds open (its memfd).
    Returns (fd, None) or (-1, why)."""
    flags = (os.O_RDWR if writable else os.O_RDONLY) | os.O_CLOEXEC
    why = None
    try:
        return os.open(f"/proc/{pid}/map_files/{region.start:x}-{region.end:x}",
                       flags), None
    except PermissionError:
        why = "map_files refused"
    except FileNotFoundError:
        raise os_error(errno.ESRCH, "source VMA vanished", pid, region.start,
                       region.size) from None
    except OSError as e:
        if e.errno not in (errno.ENXIO, errno.ENODEV):
            raise
        # The object cannot be opened again (aio rings, some drivers): it
        # could not be mapped a second time either.
        raise os_error(errno.EFAULT, f"source VMA {region.start:#x}-"
                       f"{region.end:#x} is a special mapping ({region.path})",
                       pid, region.start, region.size) from None
    candidates = []
    if not region.deleted and region.path.startswith("/"):
        candidates.append(region.path)
    try:
        candidates += [f"/proc/{pid}/fd/{fd}" for fd in os.listdir(f"/proc/{pid}/fd")]
    except OSError:
        pass
    for path in candidates:
        try:
            if not _same_file(os.stat(path), region):
                continue
            return os.open(path, flags), None
        except OSError:
            continue
    return -1, why


def resolve(pid, pieces, method, allow_copy):
    """Choose each piece's method and open what it maps; raises before any
    destination exists.  Closes what it opened on failure."""
    try:
        for p in pieces:
            kind = p.region.kind
            p.method = "copy" if method == "copy" else _maps.KINDS[kind]
            if p.method == "copy":
                continue
            writable = p.method == "share" and "w" in p.region.perms
            p.fd, why = open_object(pid, p.region, writable)
            if p.fd >= 0:
                st = os.fstat(p.fd)
                if stat.S_ISCHR(st.st_mode) or stat.S_ISBLK(st.st_mode):
                    raise os_error(errno.EFAULT, "source VMA maps a device "
                                   "(VM_IO/VM_PFNMAP)", pid, p.start, p.length)
                continue
            if not allow_copy:
                raise os_error(errno.EPERM, f"cannot reach the {kind} object "
                               f"behind {p.region.path or 'the VMA'} ({why})",
                               pid, p.start, p.length, CAPS_HINT)
            p.method = "copy"
        # Shared pieces copied after all: as strictly checked as any copy,
        # with one reading of smaps for all of them.
        unchecked = [p for p in pieces if p.method == "copy" and p.region.flags is None]
        if unchecked:
            for r in _maps.read_smaps(pid, unchecked[0].start, unchecked[-1].end):
                if any(r.start < p.end and r.end > p.start for p in unchecked):
                    _refuse(pid, r, r.start, r.end)
    except BaseException:
        close_fds(pieces)
        raise
    return pieces


def close_fds(pieces):
    for p in pieces:
        if p.fd >= 0:
            os.close(p.fd)
            p.fd = -1


def reserve(pid, start, length, dst, flags):
    """The destination range, PROT_NONE until the pieces are placed."""
    mflags = mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS | MAP_NORESERVE
    if flags & _native.FIXED_NOREPLACE:
        dst = page_down(dst)
        mflags |= MAP_FIXED_NOREPLACE
    elif flags & _native.FIXED:
        dst = page_down(dst)
        mflags |= MAP_FIXED
    try:
        base = _native.mmap_raw(dst, length, PROT_NONE, mflags)
    except FileExistsError:
        raise os_error(errno.EEXIST, "destination is already mapped "
                       "(PVMMAP_FIXED_NOREPLACE)", pid, dst, length) from None
    except OSError as e:
        raise os_error(e.errno, "reserving the destination", pid, dst, length) from None
    if flags & (_native.FIXED | _native.FIXED_NOREPLACE) and base != dst:
        _native.munmap_raw(base, length)   # a kernel that took it as a hint
        raise os_error(errno.EEXIST, "destination is already mapped", pid, dst,
                       length)
    return base


def place(pid, piece, daddr, mem_fd, pagemap_fd, stats):
    """Map one piece at daddr (inside the reservation) and fill it."""
    r, p = piece.region, piece
    if p.method == "share":
        _native.mmap_raw(daddr, p.length, r.prot, mmap.MAP_SHARED | MAP_FIXED,
                         p.fd, r.offset + (p.start - r.start), "mapping shared",
                         pid)
        return
    if p.method == "file":
        _native.mmap_raw(daddr, p.length, RW, mmap.MAP_PRIVATE | MAP_FIXED, p.fd,
                         r.offset + (p.start - r.start), "mapping file", pid)
        _native.copy_range(pid, p.start, p.length, daddr, mem_fd=mem_fd,
                           pagemap_fd=pagemap_fd, scan=_native.SCAN_ANON,
                           flags=0 if r.readable else _native.COPY_MEM_ONLY,
                           stats=stats)
    else:
        _native.mmap_raw(daddr, p.length, RW,
                         mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS | MAP_FIXED
                         | MAP_NORESERVE, -1, 0, "mapping anonymous", pid)
        # Anonymous memory: only pages that exist.  File or shared memory
        # copied (method="copy", allow_copy): every page, as a reader sees it.
        anon = r.kind == "private-anon"
        flags = 0 if r.readable else _native.COPY_MEM_ONLY
        if not anon:
            flags |= _native.COPY_SKIP
        stats["lost_pages"] = stats.get("lost_pages", 0) + _native.copy_range(
            pid, p.start, p.length, daddr, mem_fd=mem_fd, pagemap_fd=pagemap_fd,
            do_scan=anon, flags=flags, stats=stats)
    if r.prot != RW:
        _native.mprotect_raw(daddr, p.length, r.prot)


def emulate(pid, src, length, dst, flags, *, single, method="auto",
            freeze=False, allow_copy=False):
    """Clone [src, src+length) of pid.  Returns (base, total, pieces, stats)
    with base the page-aligned destination of the page-rounded range."""
    start, end = check_args(pid, src, length, flags)
    if freeze and pid == os.getpid():
        raise os_error(errno.EINVAL, "freeze=True cannot stop the calling "
                       "process itself", pid, src, length)
    if (flags == _native.FIXED and pid == os.getpid() and page_down(dst) < end
            and page_down(dst) + (end - start) > start):
        # It would unmap the very memory it is to copy (FIXED_NOREPLACE
        # replaces nothing: it says EEXIST, as the kernel port does).
        raise os_error(errno.EINVAL, "a FIXED destination overlaps the source "
                       "range in the same process", pid, src, length)
    mem_fd = check_process(pid, start, end - start)
    pagemap_fd = -1
    pieces = []
    try:
        pieces = resolve(pid, plan(pid, start, end, single, method), method,
                         allow_copy)
        if any(p.method != "share" for p in pieces):
            pagemap_fd = os.open(f"/proc/{pid}/pagemap", os.O_RDONLY | os.O_CLOEXEC)
        base = reserve(pid, start, end - start, dst, flags)
        stats = {}
        frozen = None
        try:
            if freeze and pagemap_fd >= 0:
                frozen = _native.Freeze(pid)
                stats["frozen_threads"] = frozen.threads
            for p in pieces:
                place(pid, p, base + (p.start - start), mem_fd, pagemap_fd, stats)
        except BaseException:
            _native.munmap_raw(base, end - start)
            raise
        finally:
            if frozen is not None:
                frozen.thaw()
        return base, end - start, pieces, stats
    finally:
        close_fds(pieces)
        os.close(mem_fd)
        if pagemap_fd >= 0:
            os.close(pagemap_fd)
