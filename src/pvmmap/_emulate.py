"""The emulated process_vm_mmap: the contract's checks (_contract), then one
strategy per kind of source VMA, chosen by STRATEGY (docs/design.md):

    copy   new anonymous memory, filled from the pages the source has
           (scan, then process_vm_readv)
    file   the same file MAP_PRIVATE at the same offset, then the source's
           privately modified pages copied over it
    share  the same object MAP_SHARED at the same offset
           (/proc/PID/map_files, the path, or an fd the source holds)

Everything that can refuse is resolved before the destination is touched,
and a failure after that unmaps what was made: nothing half-made is left.
"""

from __future__ import annotations

import errno
import os
from typing import Callable, Dict, List, Optional, Sequence, Tuple

from pvmmap import _contract, _lazy, _maps, _native
from pvmmap._contract import Clone, Part, Piece, page_down
from pvmmap._errors import os_error
from pvmmap._maps import Region

#: How each kind of source VMA is cloned (None: refused, see
#: _contract.refusal).
STRATEGY: Dict[str, Optional[str]] = {
    "private-anon": "copy",     # heap, stacks, anonymous mmap
    "private-file": "file",     # libraries, MAP_PRIVATE files
    "shared-anon": "share",     # MAP_SHARED|MAP_ANONYMOUS, /dev/zero
    "memfd": "share",
    "sysv-shm": "share",
    "shared-file": "share",     # MAP_SHARED files, POSIX shm in /dev/shm
    "hugetlb": None,
    "special": None,            # [vvar], [vdso], VM_IO, VM_PFNMAP, ...
}

RW = _native.PROT_READ | _native.PROT_WRITE

#: Fill fresh anonymous destinations with UFFDIO_COPY from a hot staging
#: buffer (no zero-fill, no fault per page; measured in benchmarks/UFFD.md)
#: where a userfaultfd can be had; the benchmark turns it off for its A/B.
EAGER_UFFD = True


def _same_file(st: os.stat_result, region: Region) -> bool:
    dev = f"{os.major(st.st_dev):02x}:{os.minor(st.st_dev):02x}"
    return st.st_ino == region.inode and (dev == region.dev or region.dev == "00:00")


def open_object(pid: int, region: Region, writable: bool) -> Tuple[int, str]:
    """An fd for the file or shmem object behind `region`, opened the most
    faithful way permitted: /proc/PID/map_files, then the path if it still
    names the same inode, then an fd the source holds open (its memfd).
    Returns (fd, how it was reached) or (-1, why not)."""
    flags = (os.O_RDWR if writable else os.O_RDONLY) | os.O_CLOEXEC
    try:
        return os.open(f"/proc/{pid}/map_files/{region.start:x}-{region.end:x}",
                       flags), f"through /proc/{pid}/map_files"
    except PermissionError:
        why = "map_files refused"   # the only way on to the other routes
    except FileNotFoundError:
        raise os_error(errno.ESRCH, "the source VMA vanished", pid, region.start,
                       region.size) from None
    except OSError as e:
        if e.errno not in (errno.ENXIO, errno.ENODEV):
            raise
        # The object cannot be opened again (aio rings, some drivers): it
        # could not be mapped a second time either.
        raise _contract.refused(pid, region, (errno.EFAULT, "a special mapping "
                                f"({region.path})"), region.start,
                                region.end) from None
    candidates = []
    if not region.deleted and region.path.startswith("/"):
        candidates.append(region.path)
    own = len(candidates)
    try:
        candidates += [f"/proc/{pid}/fd/{fd}" for fd in os.listdir(f"/proc/{pid}/fd")]
    except OSError:
        pass
    for i, path in enumerate(candidates):
        try:
            if not _same_file(os.stat(path), region):
                continue
            how = ("by its path" if i < own else
                   f"through the source's fd {path.rsplit('/', 1)[1]}")
            return os.open(path, flags), f"{how} ({why})"
        except OSError:
            continue
    return -1, why


def resolve(pid: int, pieces: List[Piece], method: str,
            allow_copy: bool) -> List[Piece]:
    """Choose each piece's method and open what it maps; raises before any
    destination exists.  Closes what it opened on failure."""
    try:
        for p in pieces:
            kind = p.region.kind
            p.method = "copy" if method == "copy" else STRATEGY[kind] or "copy"
            if p.method == "copy" and method == "lazy" and kind == "private-anon":
                p.method = "lazy"
            if p.method in ("copy", "lazy"):
                continue
            writable = p.method == "share" and "w" in p.region.perms
            p.fd, p.route = open_object(pid, p.region, writable)
            why = p.route
            if p.fd >= 0:
                _contract.refuse(pid, p.region, p.start, p.end, os.fstat(p.fd))
                continue
            if not allow_copy:
                raise os_error(errno.EPERM, f"cannot reach the {kind} object "
                               f"behind {p.region.path or 'the VMA'} ({why})",
                               pid, p.start, p.length, "map_files")
            p.method = "copy"
            p.route = f"allow_copy, since {why}"
        if any(p.method == "lazy" for p in pieces):
            _lazy.require_uffd(pid, pieces[0].start, pieces[-1].end)
        # Shared pieces copied after all: as strictly checked as any copy,
        # with one reading of smaps for all of them.
        unchecked = [p for p in pieces if p.method == "copy" and p.region.flags is None]
        if unchecked:
            for r in _maps.read_smaps(pid, unchecked[0].start, unchecked[-1].end):
                if any(r.start < p.end and r.end > p.start for p in unchecked):
                    _contract.refuse(pid, r, r.start, r.end)
    except BaseException:
        close_fds(pieces)
        raise
    return pieces


def close_fds(pieces: Sequence[Piece]) -> None:
    for p in pieces:
        if p.fd >= 0:
            os.close(p.fd)
            p.fd = -1


def place(pid: int, piece: Piece, daddr: int, mem_fd: int, pagemap_fd: int,
          stats: Dict[str, object]) -> None:
    """Map one piece at daddr (inside the reservation) and fill it."""
    r, p = piece.region, piece
    fixed = _native.MAP_FIXED
    if p.method == "share":
        _native.mmap_raw(daddr, p.length, r.prot, _native.MAP_SHARED | fixed,
                         p.fd, r.offset + (p.start - r.start), "mapping shared",
                         pid)
        return
    if p.method == "file":
        _native.mmap_raw(daddr, p.length, RW, _native.MAP_PRIVATE | fixed, p.fd,
                         r.offset + (p.start - r.start), "mapping the file", pid)
        _native.copy_range(pid, p.start, p.length, daddr, mem_fd=mem_fd,
                           pagemap_fd=pagemap_fd, scan=_native.SCAN_ANON,
                           flags=0 if r.readable else _native.COPY_MEM_ONLY,
                           stats=stats)
    else:
        _native.mmap_raw(daddr, p.length, RW,
                         _native.MAP_PRIVATE | _native.MAP_ANONYMOUS | fixed
                         | _native.MAP_NORESERVE, -1, 0, "mapping anonymous", pid)
        # Anonymous memory: only pages that exist.  File or shared memory
        # copied (method="copy", allow_copy): every page, as a reader sees it.
        anon = r.kind == "private-anon"
        flags = 0 if r.readable else _native.COPY_MEM_ONLY
        if not anon:
            flags |= _native.COPY_SKIP
        if EAGER_UFFD:
            flags |= _native.COPY_UFFD
        _native.copy_range(pid, p.start, p.length, daddr, mem_fd=mem_fd,
                           pagemap_fd=pagemap_fd, do_scan=anon, flags=flags,
                           stats=stats)
        stats.setdefault("fill", "direct")
    if r.prot != RW:
        _native.mprotect_raw(daddr, p.length, r.prot)


def check_unchanged(pid: int, pieces: Sequence[Piece], start: int, end: int) -> None:
    """EFAULT if a VMA a piece was copied from is no longer where the plan
    found it.  A range unmapped or moved (mremap) after planning reads as
    holes to the scan: the copy would be zeros the source never held there
    and report success.  Costs a maps lookup of the range."""
    copied = [p for p in pieces if p.method in ("copy", "file")]
    if not copied:
        return
    regions = _maps.read_maps(pid, start, end)
    if not regions and not _maps.has_memory(pid):
        raise os_error(errno.ESRCH, "the source exited during the copy", pid, start,
                       end - start)
    now = {(r.start, r.end, r.inode) for r in regions}
    for p in copied:
        if (p.region.start, p.region.end, p.region.inode) not in now:
            raise os_error(errno.EFAULT, f"the source unmapped or moved "
                           f"{p.region.start:#x}-{p.region.end:#x} during the copy",
                           pid, start, end - start, "maps")


def _copier(method: str) -> Callable[[Region], bool]:
    """copied(region) for _contract.plan: does the strategy copy its pages
    at the call?  (A lazy piece reads nothing then, like a shared one.)"""
    if method == "copy":
        return lambda region: True
    if method == "lazy":
        return lambda region: STRATEGY.get(region.kind) not in ("share", "copy")
    return lambda region: STRATEGY.get(region.kind) != "share"


def admit(pid: int, src: int, length: int, dst: int, flags: int,
          freeze: bool) -> Tuple[int, int, int, int]:
    """The checks clone() makes before it looks at the source's VMAs: the
    arguments, then the process.  Returns (start, end, pidfd, mem_fd): the
    page-rounded range, the process pinned (_contract.pin, -1 if it could
    not be) and /proc/PID/mem, both open for the caller to close."""
    start, end = _contract.check_args(pid, src, length, flags, dst)
    _contract.check_freeze(pid, freeze, src, length)
    if (flags == _native.FIXED and pid == os.getpid() and page_down(dst) < end
            and page_down(dst) + (end - start) > start):
        # It would unmap the very memory it is to copy (FIXED_NOREPLACE
        # replaces nothing: it says EEXIST, as the kernel port does).
        raise os_error(errno.EINVAL, "a FIXED destination overlaps the source "
                       "range in the same process", pid, src, length, "overlap")
    return (start, end) + _contract.open_source(pid, start, end - start)


def choose(pid: int, start: int, end: int, single: bool, method: str,
           allow_copy: bool) -> List[Piece]:
    """The pieces of [start, end) with their methods and open objects (the
    caller closes them: close_fds), or the contract's error."""
    return resolve(pid, _contract.plan(pid, start, end, single, _copier(method)),
                   method, allow_copy)


def parts_of(pieces: Sequence[Piece], start: int) -> List[Part]:
    """The Parts a Mapping of [start, ...) made of `pieces` lists."""
    return [Part(p.start - start, p.length, p.start, p.region.kind, p.region.prot,
                 p.method) for p in pieces]


def explain(piece: Piece, method: str) -> str:
    """Why `piece` gets its method, in words (pvmmap check)."""
    if piece.method == "share":
        return f"mapped shared, {piece.route}"
    if piece.method == "file":
        return f"the file mapped private, {piece.route}; modified pages copied"
    if piece.method == "lazy":
        return "fetched on first touch (userfaultfd)"
    if method == "copy":
        return "method='copy': a snapshot of the pages it has"
    if piece.route:
        return f"a snapshot of the pages it has ({piece.route})"
    return "a snapshot of the pages it has"


def survey(pid: int, start: int, end: int, method: str, allow_copy: bool
           ) -> Tuple[List[Tuple[Piece, Optional[OSError]]], List[Tuple[int, int]]]:
    """choose() VMA by VMA, without stopping at the first error: each piece
    of [start, end) with its method (or the error clone() would raise for
    it), and the holes.  Opens nothing that it does not close."""
    pieces, holes = _contract.survey(pid, start, end, _copier(method))
    out: List[Tuple[Piece, Optional[OSError]]] = []
    for p in pieces:
        why = _contract.refusal(p.region, pid)
        if why:
            out.append((p, _contract.refused(pid, p.region, why, start, end)))
            continue
        try:
            resolve(pid, [p], method, allow_copy)
        except OSError as e:
            out.append((p, e))
        else:
            out.append((p, None))
        finally:
            close_fds([p])
    return out, holes


def clone(pid: int, src: int, length: int, dst: int, flags: int, *,
          single: bool, method: str = "auto", freeze: bool = False,
          allow_copy: bool = False, readahead: Optional[int] = None,
          prefetch: bool = False) -> Clone:
    """Clone [src, src+length) of pid into a page-aligned destination of the
    page-rounded range."""
    if method == "lazy":
        readahead = _lazy.check_readahead(
            _lazy.READAHEAD_DEFAULT if readahead is None else readahead)
    start, end, pidfd, mem_fd = admit(pid, src, length, dst, flags, freeze)
    pagemap_fd = -1
    fds = None
    pieces: List[Piece] = []
    lazies: List[_native.Lazy] = []
    try:
        pieces = choose(pid, start, end, single, method, allow_copy)
        if any(p.method != "share" for p in pieces):
            pagemap_fd = os.open(f"/proc/{pid}/pagemap", os.O_RDONLY | os.O_CLOEXEC)
        if any(p.method == "lazy" for p in pieces):
            fds = _lazy.SourceFds(pid, mem_fd, pagemap_fd)
        base = _contract.reserve(pid, end - start, dst, flags)
        stats: Dict[str, object] = {}
        frozen = None
        try:
            if freeze and pagemap_fd >= 0:
                try:
                    frozen = _native.Freeze(pid)
                except PermissionError as e:
                    raise _contract.freeze_denial(pid, e, start, end - start) from None
                stats["frozen_threads"] = frozen.threads
            for p in pieces:
                daddr = base + (p.start - start)
                if p.method == "lazy":
                    assert fds is not None and readahead is not None
                    lazies.append(_lazy.place(pid, p, daddr, fds, readahead))
                else:
                    place(pid, p, daddr, mem_fd, pagemap_fd, stats)
            # The maps, pagemap and process_vm_readv(pid) reads above went
            # by pid: they were the source's only if it was never reaped.
            # (A lazy clone's later faults read its pinned mem fd.)
            _contract.check_pinned(pidfd, pid, start, end - start, mem_fd)
            check_unchanged(pid, pieces, start, end)
            if prefetch:
                for lz in lazies:
                    lz.prefetch()
        except BaseException as e:
            for lz in lazies:
                lz.close()
            _native.munmap_raw(base, end - start)
            if isinstance(e, OSError):      # the source gone: ESRCH says why
                _contract.check_pinned(pidfd, pid, start, end - start, mem_fd)
            raise
        finally:
            if frozen is not None:
                frozen.thaw()
        return Clone(base, end - start, parts_of(pieces, start), stats, tuple(lazies))
    except OSError as e:
        if e.errno != errno.ESRCH:      # a source reaped meanwhile: its /proc
            _contract.check_pinned(pidfd, pid, start, end - start, mem_fd)  # files vanish
        raise
    finally:
        close_fds(pieces)
        if fds is not None:
            fds.close()
        os.close(mem_fd)
        if pidfd >= 0:
            os.close(pidfd)
        if pagemap_fd >= 0:
            os.close(pagemap_fd)


def process_vm_mmap(pid: int, src: int, length: int, dst: int, flags: int) -> int:
    """The exact contract, emulated: one VMA, returns the page-aligned
    destination address."""
    return clone(pid, src, length, dst, flags, single=True).base
