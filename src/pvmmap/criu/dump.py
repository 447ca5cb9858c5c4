"""pvmmap.dump(): a live process's memory as CRIU images.

What is written (CRIU 4.1.1's own choices, from criu/proc_parse.c, mem.c,
shmem.c and memfd.c, so that CRIU can restore from it):

- ``mm-PID.img``: the mm_* fields (/proc/PID/stat, auxv, the [heap]'s end as
  the brk) and one vma_entry per VMA with CRIU's status bits, MAP_* flags
  (plus VmFlags' gd/lo/nr), madv bits (VmFlags' sr/rr/dc/dd/mg/hg/nh),
  pgoff and fdflags (the map_files link's mode).  [vvar] and [vvar_vclock]
  are one VMA, as CRIU records them.
- ``pagemap-PID.img`` + ``pages-N.img``: the private VMAs' pages that exist
  (present or swapped, not the shared zero page; for private file mappings
  only the privately modified, anonymous ones; the whole [vdso]), found with
  the clone's scanner (PAGEMAP_SCAN), one entry per run, flags PE_PRESENT.
- shared anonymous and memfd memory as CRIU 4.x stores it: the VMA is
  VMA_AREA_MEMFD | VMA_FILE_SHARED with ``shmid`` a files.img id; files.img
  has a MEMFD entry pointing at a memfd.img inode, whose ``shmid`` (the
  object's inode number) names ``pagemap-shmem-SHMID.img``.  Its pages are
  the object's data segments (SEEK_DATA/SEEK_HOLE, as CRIU does), at their
  offsets in the object.  SysV shm: VMA_ANON_SHARED | VMA_AREA_SYSVIPC with
  shmid the inode and its pages in pagemap-shmem-SHMID.img.
- ``files.img``: what the VMAs (and mm.exe_file_id) refer to: a REG entry per
  mapped file (path, size, mode) and a MEMFD entry per shmem object; ids
  count from 1, the executable first.  These are *our* ids: a CRIU dump of
  the same process numbers its files its own way (its files.img also holds
  the process's open fds), so to use our mm-PID.img with CRIU's other images
  translate the VMAs' shmid through the two files.img (same path; same memfd
  shmid), as tests/test_criu_dump.py does.
- ``pstree.img`` (one task: the pid, its pgid, sid and threads) and
  ``inventory.img``.

Not written: registers, signals, fds, namespaces (core-PID.img and the rest):
that is CRIU's part, so ``criu restore`` needs a ``criu dump`` of the same
process for them.  Protection keys are not recorded (CRIU does not either);
hugetlb, VM_IO/VM_PFNMAP and userfaultfd-registered VMAs are refused with
the errno clone() gives.

The pages are read with process_vm_readv into a small reused buffer and
written out (csrc/dump.c).  Every image is written under a temporary name
and renamed when complete; on failure everything this dump wrote is removed.
"""

from __future__ import annotations

import errno
import os
import socket
import struct
import time
from dataclasses import dataclass, field
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple

from pvmmap import _contract, _emulate, _maps, _native
from pvmmap._errors import os_error
from pvmmap._maps import Region
from pvmmap.criu import images
from pvmmap.criu.images import (PE_PRESENT, VMA_ANON_PRIVATE, VMA_ANON_SHARED,
                                VMA_AREA_HEAP, VMA_AREA_MEMFD, VMA_AREA_REGULAR,
                                VMA_AREA_SYSVIPC, VMA_AREA_VDSO, VMA_AREA_VSYSCALL,
                                VMA_AREA_VVAR, VMA_FILE_PRIVATE, VMA_FILE_SHARED, Vma)

PAGE = _native.PAGESIZE

#: progress(done_bytes, total_bytes), called between chunks
Progress = Callable[[int, int], None]

MAP_SHARED, MAP_PRIVATE, MAP_ANONYMOUS = 0x01, 0x02, 0x20
MAP_GROWSDOWN, MAP_LOCKED, MAP_NORESERVE = 0x0100, 0x2000, 0x4000
# smaps VmFlags CRIU turns into vma_entry.flags and .madv bits (criu/proc_parse.c)
_VMFLAG_MAP = {"gd": MAP_GROWSDOWN, "lo": MAP_LOCKED, "nr": MAP_NORESERVE}
_VMFLAG_MADV = {"sr": 1 << 2, "rr": 1 << 1, "dc": 1 << 10, "dd": 1 << 16,
                "mg": 1 << 12, "hg": 1 << 14, "nh": 1 << 15}
F_GET_SEALS, F_SEAL_SEAL = 1034, 0x0001
O_RDONLY, O_WRONLY, O_RDWR = os.O_RDONLY, os.O_WRONLY, os.O_RDWR

# CRIU's page-server protocol (criu/page-xfer.c)
PS_IOV_OPEN2, PS_IOV_ADD_F, PS_IOV_CLOSE = 4, 6, 0x1023
PS_TYPE_PID, PS_TYPE_SHMEM = 1, 2
_PS_IOV = struct.Struct("<IIQQ")

BUFFER = 256 << 10          # the hot buffer: 256 KiB beat 1 MiB and 8 MiB here
UNIT = 32 << 20             # bytes between two progress() calls
PS_CHUNK = 64 << 20         # progress granularity on a page-server stream
ANSWER_TIMEOUT = 60.0       # seconds the page server may take to answer


@dataclass
class DumpResult:
    """What pvmmap.dump() wrote."""
    pid: int
    directory: str
    images: List[str]               # paths written in directory
    pages: int                      # pages written (private + shmem)
    bytes: int                      # their bytes
    seconds: float
    frozen_threads: int = 0
    page_server: Optional[str] = None
    stats: Dict[str, int] = field(default_factory=dict)


@dataclass
class _Shmem:
    """A shmem object whose pages go to pagemap-shmem-SHMID.img."""
    shmid: int                      # its inode number
    region: Region                  # the first VMA that maps it
    fd: int = -1                    # the object, or -1: read through the VMAs
    size: int = 0
    segments: List[Tuple[int, int]] = field(default_factory=list)  # [off, end)
    file_id: int = 0                # its MEMFD files.img id (0: SysV)
    # without fd: (start, end, offset in the object) of the pages its VMAs show
    vma_ranges: List[Tuple[int, int, int]] = field(default_factory=list)
    meta: Optional[Tuple[Optional[os.stat_result], int]] = None   # (stat, seals)


@dataclass
class _Plan:
    vmas: List[Vma] = field(default_factory=list)
    private: List[Tuple[int, int]] = field(default_factory=list)
    shmem: Dict[int, _Shmem] = field(default_factory=dict)
    files: List[Dict[str, Any]] = field(default_factory=list)
    memfds: List[Dict[str, Any]] = field(default_factory=list)
    exe_file_id: int = 0


def dump(pid: int, directory: "os.PathLike[str] | str", *, freeze: bool = True,
         page_server: Optional[str] = None,
         progress: Optional[Progress] = None) -> DumpResult:
    """Write the memory of process `pid` as CRIU images in `directory`
    (which must exist): mm-PID.img, pagemap-PID.img + pages-N.img,
    pagemap-shmem-SHMID.img + pages for shared anonymous, memfd and SysV
    memory, files.img, memfd.img, pstree.img, inventory.img.  Holes are not
    written.  See pvmmap.criu.dump's docstring for what each holds.

    freeze: hold every thread of the process stopped (ptrace) for the whole
    dump, so that it is one instant (the default).  page_server: "HOST:PORT"
    of a running ``criu page-server``: the pagemaps and pages are streamed
    to it over CRIU's protocol instead of being written here (the rest still
    is).  progress(done_bytes, total_bytes) is called between chunks.

    Raises OSError with the errno clone() would give for the process
    (ESRCH, EPERM, EINVAL, EFAULT for a VMA that cannot be dumped), or that
    of the failed write, naming the pid and the directory; nothing this
    call wrote is left behind then.  Costs: a scan of the page tables, then
    about what writing the pages costs (RESULTS.md, "CRIU dump").
    """
    t0 = time.perf_counter()
    if not isinstance(pid, int):
        raise TypeError(f"pid must be an int, not {type(pid).__name__}")
    directory = os.fspath(directory)
    if pid <= 0:
        raise os_error(errno.EINVAL, "pid must be positive", pid)
    if freeze and pid == os.getpid():
        raise os_error(errno.EINVAL, "freeze=True cannot stop the calling process",
                       pid, hint="freeze-self")
    server = _parse_server(page_server, pid) if page_server is not None else None
    if not os.path.isdir(directory):
        err = errno.ENOTDIR if os.path.exists(directory) else errno.ENOENT
        raise os_error(err, f"dump directory {directory}", pid, hint="")
    pidfd, mem_fd = _contract.open_source(pid, None, None)
    pagemap_fd = -1
    frozen: Optional[_native.Freeze] = None
    writer = _Writer(directory, pid)
    plan: Optional[_Plan] = None
    sock: Optional[socket.socket] = None
    try:
        if server is not None:
            # before the freeze: a server that is not there costs the source nothing
            sock = _ps_connect(server, f"{page_server}", pid)
        pagemap_fd = os.open(f"/proc/{pid}/pagemap", os.O_RDONLY | os.O_CLOEXEC)
        if freeze:
            try:
                frozen = _native.Freeze(pid)
            except PermissionError as e:
                raise _contract.freeze_denial(pid, e, None, None) from None
        plan = _make_plan(pid, pagemap_fd)
        # Before any byte goes out (a page server keeps what it got): the
        # plan was the source's, and a frozen source cannot be reaped now.
        _contract.check_pinned(pidfd, pid, None, None, mem_fd)
        stats: Dict[str, int] = {}
        total = (sum(e - s for s, e in plan.private)
                 + sum(e - s for sh in plan.shmem.values() for s, e in sh.segments)
                 + sum(e - s for sh in plan.shmem.values() if sh.fd < 0
                       for s, e, _ in sh.vma_ranges))
        done = _Done(progress, total)
        done.add(0)
        stage = ["writing the images"]
        try:
            _write_metadata(writer, pid, plan)
            # A frozen source cannot be reaped, so process_vm_readv(pid)
            # reads it; one that runs is read through its pinned mem fd.
            by_pid = frozen is not None
            if server is None:
                _write_pages_here(writer, pid, mem_fd, plan, stats, done, stage, by_pid)
            else:
                stage[0] = f"streaming pages to the page server {page_server}"
                assert sock is not None
                _stream_pages(sock, pid, mem_fd, plan, stats, done, by_pid)
        except OSError as e:
            _contract.check_pinned(pidfd, pid, None, None, mem_fd)   # gone: ESRCH says why
            # The errno stays; the message names the pid and the directory
            # (the cause, chained, has the details; a page server's
            # misbehaviour is told in the message itself).
            why = f": {e.strerror}" if isinstance(e, _PageServerError) else ""
            raise os_error(e.errno or errno.EIO, f"{stage[0]} in {directory}{why}", pid,
                           hint="") from e
        # The plan and the pages were read by pid: the source's only if it
        # was never reaped meanwhile (pvmmap._contract.pin).
        _contract.check_pinned(pidfd, pid, None, None, mem_fd)
        if frozen is None:
            _check_layout_held(pid, plan)
        writer.commit()
        nthreads = frozen.threads if frozen is not None else 0
        return DumpResult(pid, directory, list(writer.final), total // PAGE, total,
                          time.perf_counter() - t0, nthreads, page_server, stats)
    except BaseException as e:
        writer.discard()
        if isinstance(e, OSError) and e.errno != errno.ESRCH:
            # A source reaped or exec'd meanwhile makes its /proc files
            # vanish (ENOENT) or read short: ESRCH says why.
            _contract.check_pinned(pidfd, pid, None, None, mem_fd)
        raise
    finally:
        if frozen is not None:
            frozen.thaw()
        if sock is not None:
            sock.close()
        if plan is not None:
            for sh in plan.shmem.values():
                if sh.fd >= 0:
                    os.close(sh.fd)
        if pagemap_fd >= 0:
            os.close(pagemap_fd)
        os.close(mem_fd)
        if pidfd >= 0:
            os.close(pidfd)


class _Done:
    """Counts bytes written and reports them to progress()."""

    def __init__(self, progress: Optional[Progress], total: int):
        self.progress, self.total, self.done = progress, total, 0

    def add(self, n: int) -> None:
        self.done += n
        if self.progress is not None:
            self.progress(self.done, self.total)


# ---- planning: the VMA list and which pages go where ----------------------

def _parse_server(spec: str, pid: int) -> Tuple[str, int]:
    host, sep, port = spec.rpartition(":")
    host = host[1:-1] if host.startswith("[") and host.endswith("]") else host
    if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise ValueError(f"page_server={spec!r}: expected HOST:PORT")
    return host, int(port)


def _vm_bits(region: Region) -> Tuple[int, Optional[int]]:
    """(extra MAP_* flags, madv bits or None) from smaps' VmFlags."""
    flags, madv = 0, 0
    for f in region.flags or ():
        flags |= _VMFLAG_MAP.get(f, 0)
        madv |= _VMFLAG_MADV.get(f, 0)
    return flags, madv or None


def _fdflags(pid: int, region: Region) -> int:
    """O_* mode of the VMA's file, from its map_files link (as CRIU reads
    it), else CRIU's own guess."""
    try:
        mode = os.lstat(f"/proc/{pid}/map_files/{region.start:x}-{region.end:x}").st_mode
        return {0o200: O_WRONLY, 0o400: O_RDONLY, 0o600: O_RDWR}.get(mode & 0o600, O_RDONLY)
    except OSError:
        return O_RDWR if region.shared and "w" in region.perms else O_RDONLY


def _refuse(pid: int, region: Region) -> None:
    """clone()'s refusals, but for protection keys (CRIU dumps that memory,
    without the key)."""
    why = _contract.refusal(region, pid)
    if why is not None and not why[1].startswith("tagged with protection key"):
        raise _contract.refused(pid, region, why, region.start, region.end)


_FOWN = {"uid": 0, "euid": 0, "signum": 0, "pid_type": 0, "pid": 0}


class _Files:
    """files.img ids: one per mapped file (by device and inode) and per
    shmem object, counting from 1."""

    def __init__(self, plan: _Plan):
        self.plan = plan
        self.by_inode: Dict[Tuple[int, int], int] = {}

    def reg(self, path: str, st: os.stat_result, flags: int) -> int:
        key = (st.st_dev, st.st_ino)
        if key not in self.by_inode:
            fid = len(self.plan.files) + 1
            self.by_inode[key] = fid
            self.plan.files.append({
                "type": images.FD_TYPE_REG, "id": fid,
                "reg": {"id": fid, "flags": flags, "pos": 0, "fown": _FOWN, "name": path,
                        "size": st.st_size, "mode": st.st_mode}})
        return self.by_inode[key]

    def memfd(self, sh: _Shmem, name: str, st: Optional[os.stat_result],
              seals: int) -> int:
        if not sh.file_id:
            fid = len(self.plan.files) + 1
            inode_id = len(self.plan.memfds) + 1
            self.plan.files.append({
                "type": images.FD_TYPE_MEMFD, "id": fid,
                "memfd": {"id": fid, "flags": 0, "pos": 0, "fown": _FOWN,
                          "inode_id": inode_id}})
            self.plan.memfds.append({
                "name": name, "uid": st.st_uid if st else os.getuid(),
                "gid": st.st_gid if st else os.getgid(), "size": sh.size,
                "shmid": sh.shmid, "seals": seals, "inode_id": inode_id,
                "mode": st.st_mode if st else 0o100777})
            sh.file_id = fid
        return sh.file_id


def _file_stat(pid: int, region: Region) -> Tuple[str, os.stat_result]:
    """The path and stat of the file a VMA maps."""
    path = region.file_path
    try:
        st = os.stat(f"/proc/{pid}/map_files/{region.start:x}-{region.end:x}")
        return path, st
    except OSError:
        pass
    try:
        st = os.stat(path)
        if st.st_ino == region.inode:
            return path, st
    except OSError:
        pass
    fd, why = _emulate.open_object(pid, region, False)
    if fd < 0:
        raise os_error(errno.EPERM, f"cannot reach the file behind {region.path} "
                       f"({why})", pid, region.start, region.size, "map_files")
    try:
        return path, os.fstat(fd)
    finally:
        os.close(fd)


def _memfd_name(region: Region) -> str:
    """memfd.img's name: the path without "/memfd:" and " (deleted)"."""
    path = region.file_path
    return path[len("/memfd:"):] if path.startswith("/memfd:") else path


def _open_shmem(pid: int, region: Region, sh: _Shmem) -> Tuple[Optional[os.stat_result], int]:
    """Open the object (for its size, seals and pages), or fall back to
    reading it through the VMAs.  Returns (stat or None, seals)."""
    fd, _ = _emulate.open_object(pid, region, False)
    if fd < 0:
        return None, F_SEAL_SEAL
    sh.fd = fd
    st = os.fstat(fd)
    sh.size = st.st_size
    try:
        import fcntl
        seals = fcntl.fcntl(fd, F_GET_SEALS)
    except OSError:
        seals = F_SEAL_SEAL
    # its data segments, as CRIU finds them (criu/shmem.c, next_data_segment)
    end = -(-st.st_size // PAGE) * PAGE
    off = 0
    while off < end:
        try:
            data = os.lseek(fd, off, os.SEEK_DATA)
        except OSError as e:
            if e.errno == errno.ENXIO:
                break
            raise
        hole = min(os.lseek(fd, data, os.SEEK_HOLE), end)
        data -= data % PAGE
        hole = -(-hole // PAGE) * PAGE
        if hole > data:
            sh.segments.append((data, hole))
        off = hole
    return st, seals


def _check_layout_held(pid: int, plan: _Plan) -> None:
    """EFAULT if a VMA the plan holds is no longer all mapped (an unfrozen
    source munmapped or moved it during the dump).  Its pages were scanned
    and read after the plan: moved away in between, they read as holes,
    and the image would restore zeros where the source held data.  A VMA
    that grew, or a new one, is harmless (the image is the plan's layout).
    Costs a maps read."""
    now = _maps.read_maps(pid)
    i = 0
    for v in sorted(plan.vmas, key=lambda v: v.start):
        addr = v.start                    # walk the current VMAs over [start, end)
        while i < len(now) and now[i].end <= addr:
            i += 1
        j = i
        while addr < v.end and j < len(now) and now[j].start <= addr:
            addr = now[j].end
            j += 1
        if addr < v.end:
            raise os_error(errno.EFAULT, f"the source unmapped or moved "
                           f"{v.start:#x}-{v.end:#x} during the dump (freeze=True "
                           f"holds it still)", pid, hint="maps")


def _make_plan(pid: int, pagemap_fd: int) -> _Plan:
    plan = _Plan()
    files = _Files(plan)
    regions = _maps.read_smaps(pid)
    try:
        exe = os.readlink(f"/proc/{pid}/exe")
        exe_st = os.stat(f"/proc/{pid}/exe")
        plan.exe_file_id = files.reg(exe[:-10] if exe.endswith(" (deleted)") else exe,
                                     exe_st, O_RDONLY)
    except OSError:
        pass                        # a process without an executable (exiting)
    i = 0
    while i < len(regions):
        r = regions[i]
        i += 1
        extra, madv = _vm_bits(r)
        prot = r.prot
        if r.path in ("[vvar]", "[vvar_vclock]"):
            end = r.end
            while i < len(regions) and regions[i].path in ("[vvar]", "[vvar_vclock]") \
                    and regions[i].start == end:
                end = regions[i].end
                i += 1
            plan.vmas.append(Vma(r.start, end, 0, 0, prot, MAP_PRIVATE | MAP_ANONYMOUS | extra,
                                 VMA_AREA_REGULAR | VMA_AREA_VVAR | VMA_ANON_PRIVATE,
                                 madv=madv))
            continue
        if r.path == "[vsyscall]":
            plan.vmas.append(Vma(r.start, r.end, 0, 0, prot, MAP_PRIVATE | MAP_ANONYMOUS,
                                 VMA_AREA_VSYSCALL | VMA_ANON_PRIVATE, madv=madv))
            continue
        if r.path == "[vdso]":
            plan.vmas.append(Vma(r.start, r.end, 0, 0, prot, MAP_PRIVATE | MAP_ANONYMOUS,
                                 VMA_AREA_REGULAR | VMA_AREA_VDSO | VMA_ANON_PRIVATE,
                                 madv=madv))
            plan.private.append((r.start, r.end))      # CRIU dumps all of it
            continue
        _refuse(pid, r)
        kind = r.kind
        if kind == "private-anon":
            status = VMA_AREA_REGULAR | VMA_ANON_PRIVATE
            if r.path == "[heap]":
                status |= VMA_AREA_HEAP
            plan.vmas.append(Vma(r.start, r.end, 0, 0, prot,
                                 MAP_PRIVATE | MAP_ANONYMOUS | extra, status, madv=madv))
            plan.private += _native.scan_pages(pid, r.start, r.size, _native.SCAN_DATA,
                                               pagemap_fd)
        elif kind == "private-file":
            fdflags = _fdflags(pid, r)
            status = VMA_AREA_REGULAR | VMA_FILE_PRIVATE
            if r.path.startswith("/memfd:"):
                sh = _shmem_of(pid, plan, r)
                fid = files.memfd(sh, _memfd_name(r), *_shmem_meta(pid, r, sh, pagemap_fd))
                status |= VMA_AREA_MEMFD
            else:
                path, st = _file_stat(pid, r)
                fid = files.reg(path, st, fdflags)
            plan.vmas.append(Vma(r.start, r.end, r.offset, fid, prot, MAP_PRIVATE | extra,
                                 status, madv=madv, fdflags=fdflags))
            plan.private += _native.scan_pages(pid, r.start, r.size, _native.SCAN_ANON,
                                               pagemap_fd)
        elif kind in ("shared-anon", "memfd"):
            sh = _shmem_of(pid, plan, r)
            fid = files.memfd(sh, _memfd_name(r), *_shmem_meta(pid, r, sh, pagemap_fd))
            plan.vmas.append(Vma(r.start, r.end, r.offset, fid, prot, MAP_SHARED | extra,
                                 VMA_AREA_REGULAR | VMA_FILE_SHARED | VMA_AREA_MEMFD,
                                 madv=madv, fdflags=_fdflags(pid, r)))
        elif kind == "sysv-shm":
            sh = _shmem_of(pid, plan, r)
            _shmem_meta(pid, r, sh, pagemap_fd)
            plan.vmas.append(Vma(r.start, r.end, r.offset, sh.shmid, prot,
                                 MAP_SHARED | MAP_ANONYMOUS | extra,
                                 VMA_AREA_REGULAR | VMA_ANON_SHARED | VMA_AREA_SYSVIPC,
                                 madv=madv))
        elif kind == "shared-file":
            fdflags = _fdflags(pid, r)
            path, st = _file_stat(pid, r)
            plan.vmas.append(Vma(r.start, r.end, r.offset, files.reg(path, st, fdflags), prot,
                                 MAP_SHARED | extra, VMA_AREA_REGULAR | VMA_FILE_SHARED,
                                 madv=madv, fdflags=fdflags))
        else:                       # refused above
            raise AssertionError(kind)
    return plan


def _shmem_of(pid: int, plan: _Plan, r: Region) -> _Shmem:
    sh = plan.shmem.get(r.inode)
    if sh is None:
        sh = plan.shmem[r.inode] = _Shmem(r.inode, r)
    return sh


def _shmem_meta(pid: int, r: Region, sh: _Shmem,
                pagemap_fd: int) -> Tuple[Optional[os.stat_result], int]:
    """Open the object the first time one of its VMAs is seen; where it
    cannot be opened, take the pages each of its VMAs shows (offsets not
    seen before only).  Returns (its stat or None, its seals)."""
    if sh.meta is None:
        sh.meta = _open_shmem(pid, r, sh)
    if sh.fd < 0:
        sh.size = max(sh.size, r.offset + r.size)
        seen = list(sh.vma_ranges)
        for s, e in _native.scan_pages(pid, r.start, r.size, _native.SCAN_DATA, pagemap_fd):
            off = r.offset + (s - r.start)
            if not any(o < off + (e - s) and off < o + (ee - ss) for ss, ee, o in seen):
                sh.vma_ranges.append((s, e, off))
    return sh.meta


# ---- writing -----------------------------------------------------------------

class _Writer:
    """Images written under temporary names, renamed by commit(), removed
    by discard()."""

    def __init__(self, directory: str, pid: int):
        self.directory, self.pid = directory, pid
        self.pending: List[Tuple[str, str]] = []    # (tmp, final)
        self.final: List[str] = []

    def create(self, name: str) -> Tuple[int, str]:
        """An fd open for writing on NAME's temporary file, and its path."""
        final = os.path.join(self.directory, name)
        tmp = os.path.join(self.directory, f".{name}.pvmmap-{os.getpid()}.tmp")
        self.pending.append((tmp, final))
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o644)
        return fd, tmp

    def put(self, name: str, data: bytes) -> None:
        fd, _ = self.create(name)
        try:
            view = memoryview(data)
            while view:
                view = view[os.write(fd, view):]
        finally:
            os.close(fd)

    def commit(self) -> None:
        for tmp, final in self.pending:
            os.rename(tmp, final)
            self.final.append(final)
        self.pending = []

    def discard(self) -> None:
        """Best effort, never raising over the error that called it: on a
        read-only filesystem unlink(2) says EROFS even for a name that does
        not exist (the write check comes before the lookup), which used to
        replace the dump's own error."""
        for path in [t for t, _ in self.pending] + self.final:
            try:
                os.unlink(path)
            except OSError:
                pass
        self.pending, self.final = [], []


def _stat_fields(pid: int) -> List[int]:
    with open(f"/proc/{pid}/stat", "rb") as f:
        line = f.read()
    rest = line[line.rfind(b")") + 2:].split()
    # 1-based as proc(5) numbers them: [3] is the state (0 here), [4] the ppid
    return [0, 0, 0] + [int(x) if x.lstrip(b"-").isdigit() else 0 for x in rest]


def _mm(pid: int, plan: _Plan) -> images.Mm:
    # /proc/PID/stat fields, 1-based as proc(5) numbers them
    f = _stat_fields(pid)
    with open(f"/proc/{pid}/auxv", "rb") as fa:
        raw = fa.read()
    auxv = list(struct.unpack(f"<{len(raw) // 8}Q", raw[:len(raw) // 8 * 8]))
    while auxv[-2:] == [0, 0]:      # CRIU 4.1.1 keeps no AT_NULL pair
        del auxv[-2:]
    heap = [v for v in plan.vmas if v.status & VMA_AREA_HEAP]
    thp_disabled = False
    with open(f"/proc/{pid}/status") as fs:
        for line in fs:
            if line.startswith("THP_enabled:"):
                thp_disabled = line.split()[1] == "0"
    return images.Mm(
        vmas=plan.vmas, mm_start_code=f[26], mm_end_code=f[27], mm_start_data=f[45],
        mm_end_data=f[46], mm_start_stack=f[28], mm_start_brk=f[47],
        mm_brk=heap[0].end if heap else f[47], mm_arg_start=f[48], mm_arg_end=f[49],
        mm_env_start=f[50], mm_env_end=f[51], exe_file_id=plan.exe_file_id,
        mm_saved_auxv=auxv, dumpable=1, thp_disabled=thp_disabled)


def _pstree(pid: int) -> Dict[str, Any]:
    f = _stat_fields(pid)
    threads = sorted(int(t) for t in os.listdir(f"/proc/{pid}/task"))
    return {"pid": pid, "ppid": 0, "pgid": f[5], "sid": f[6], "threads": threads}


def _write_metadata(w: _Writer, pid: int, plan: _Plan) -> None:
    w.put("inventory.img", images.encode_image("inventory", [images.DEFAULT_INVENTORY]))
    w.put("pstree.img", images.encode_image("pstree", [_pstree(pid)]))
    if plan.files:
        w.put("files.img", images.encode_image("files", plan.files))
    if plan.memfds:
        w.put("memfd.img", images.encode_image("memfd", plan.memfds))
    w.put(f"mm-{pid}.img", images.encode_mm(_mm(pid, plan)))


def _shmem_entries(sh: _Shmem) -> List[Tuple[int, int, int]]:
    if sh.fd >= 0:
        return [(s, (e - s) // PAGE, PE_PRESENT) for s, e in sh.segments]
    return [(off, (e - s) // PAGE, PE_PRESENT) for s, e, off in sorted(
        sh.vma_ranges, key=lambda x: x[2])]


def _write_pages_here(w: _Writer, pid: int, mem_fd: int, plan: _Plan,
                      stats: Dict[str, int], done: _Done, stage: List[str],
                      by_pid: bool) -> None:
    pages_id = 1
    for shmid, sh in sorted(plan.shmem.items()):
        w.put(f"pagemap-shmem-{shmid}.img",
              images.encode_pagemap(pages_id, _shmem_entries(sh)))
        stage[0] = f"writing pages-{pages_id}.img (shmem {shmid})"
        fd, _ = w.create(f"pages-{pages_id}.img")
        try:
            _copy_shmem(sh, fd, pid, mem_fd, stats, done, by_pid)
        finally:
            os.close(fd)
        pages_id += 1
    w.put(f"pagemap-{pid}.img", images.encode_pagemap(
        pages_id, [(s, (e - s) // PAGE, PE_PRESENT) for s, e in plan.private]))
    stage[0] = f"writing pages-{pages_id}.img"
    fd, _ = w.create(f"pages-{pages_id}.img")
    try:
        _copy_private(pid, mem_fd, plan.private, fd, stats, done, by_pid)
    finally:
        os.close(fd)


def _copy_shmem(sh: _Shmem, out_fd: int, pid: int, mem_fd: int,
                stats: Dict[str, int], done: _Done, by_pid: bool) -> None:
    """The object's pages, in pagemap order, to out_fd (a file or socket)."""
    if sh.fd < 0:
        for s, e, _ in sorted(sh.vma_ranges, key=lambda x: x[2]):
            _native.dump_pages(pid, [(s, e)], out_fd, bytearray(BUFFER), mem_fd=mem_fd,
                               stats=stats, by_pid=by_pid)
            done.add(e - s)
        return
    for s, e in sh.segments:
        _sendfile(out_fd, sh.fd, s, e - s, done)
        stats["bytes_shmem"] = stats.get("bytes_shmem", 0) + e - s


def _sendfile(out_fd: int, in_fd: int, offset: int, count: int, done: _Done) -> None:
    while count:
        n = os.sendfile(out_fd, in_fd, offset, min(count, PS_CHUNK))
        if n == 0:
            raise OSError(errno.EIO, f"shmem object shorter than its size at {offset:#x}")
        offset += n
        count -= n
        done.add(n)


def _units(ranges: Sequence[Tuple[int, int]]) -> List[Tuple[int, List[Tuple[int, int]]]]:
    """The ranges cut into units of about UNIT bytes: (offset in the pages
    file, ranges)."""
    out: List[Tuple[int, List[Tuple[int, int]]]] = []
    cur: List[Tuple[int, int]] = []
    size = offset = 0
    for s, e in ranges:
        while s < e:
            take = min(e - s, UNIT - size)
            cur.append((s, s + take))
            size += take
            s += take
            if size == UNIT:
                out.append((offset, cur))
                offset += size
                cur, size = [], 0
    if cur:
        out.append((offset, cur))
    return out


def _copy_private(pid: int, mem_fd: int, ranges: Sequence[Tuple[int, int]], fd: int,
                  stats: Dict[str, int], done: _Done, by_pid: bool) -> None:
    """The private pages, in pagemap order, to the pages file (open as fd),
    a unit at a time so that progress is reported between units.

    One thread: two threads writing their own parts of the file through
    fds of their own were slower on tmpfs (its writes take the inode lock)
    and within the noise on ext4 (RESULTS.md, "CRIU dump")."""
    buf = bytearray(BUFFER)
    for _, unit in _units(ranges):
        _native.dump_pages(pid, unit, fd, buf, mem_fd=mem_fd, stats=stats,
                           by_pid=by_pid)
        done.add(sum(e - s for s, e in unit))


# ---- CRIU's page server --------------------------------------------------------

class _PageServerError(OSError):
    """What the page server did wrong, said in the message (dump() keeps it)."""


def _ps_connect(server: Tuple[str, int], spec: str, pid: int) -> socket.socket:
    """A connected socket to the page server, blocking, with every send
    bounded by ANSWER_TIMEOUT (SO_SNDTIMEO: csrc/dump.c writes to it with
    write(2), which then fails with EAGAIN instead of blocking forever on a
    server that stopped reading)."""
    try:
        sock = socket.create_connection(server, timeout=ANSWER_TIMEOUT)
    except socket.timeout:
        raise os_error(errno.ETIMEDOUT, f"connecting to the page server {spec}: no answer "
                       f"in {ANSWER_TIMEOUT:.0f} s", pid, hint="") from None
    except OSError as e:
        raise os_error(e.errno or errno.EIO, f"connecting to the page server {spec}: is "
                       f"`criu page-server --port {server[1]}` running there and "
                       f"reachable?", pid, hint="") from None
    try:
        sock.settimeout(None)
        whole = int(ANSWER_TIMEOUT)
        tv = struct.pack("@ll", whole, int((ANSWER_TIMEOUT - whole) * 1e6))
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDTIMEO, tv)
    except BaseException:
        sock.close()
        raise
    return sock


def _ps_recv(sock: socket.socket, n: int, what: str) -> bytes:
    sock.settimeout(ANSWER_TIMEOUT)
    try:
        data = b""
        while len(data) < n:
            chunk = sock.recv(n - len(data))
            if not chunk:
                raise _PageServerError(errno.ECONNRESET, f"the page server closed the "
                                       f"connection instead of answering {what}")
            data += chunk
        return data
    except socket.timeout:
        raise _PageServerError(errno.ETIMEDOUT, f"the page server did not answer {what} "
                               f"in {ANSWER_TIMEOUT:.0f} s") from None
    finally:
        sock.settimeout(None)       # blocking again: csrc/dump.c writes to it


def _ps_open(sock: socket.socket, dst_id: int) -> None:
    sock.sendall(_PS_IOV.pack(PS_IOV_OPEN2, 0, 0, dst_id))
    (has_parent,) = _ps_recv(sock, 1, "PS_IOV_OPEN2")    # we send no holes
    if has_parent not in (0, 1):
        raise _PageServerError(errno.EPROTO, f"the page server answered PS_IOV_OPEN2 with "
                               f"{has_parent:#04x}, not 0 or 1: not a criu page-server, "
                               f"or not speaking its protocol")


def _stream_pages(sock: socket.socket, pid: int, mem_fd: int, plan: _Plan,
                  stats: Dict[str, int], done: _Done, by_pid: bool) -> None:
    """Send every pagemap to a `criu page-server`: for each, PS_IOV_OPEN2
    (answered by one has_parent byte), then one PS_IOV_ADD_F (flags
    PE_PRESENT in the upper 16 bits) per run followed by its pages; at the
    end PS_IOV_CLOSE, answered by an int32 status (criu/page-xfer.c)."""
    try:
        _stream(sock, pid, mem_fd, plan, stats, done, by_pid)
    except _PageServerError:
        raise
    except OSError as e:
        if e.errno in (errno.EAGAIN, errno.EWOULDBLOCK):
            raise _PageServerError(errno.ETIMEDOUT, f"the page server stopped reading "
                                   f"for {ANSWER_TIMEOUT:.0f} s (stalled, or its disk is "
                                   f"full: see its log)") from e
        if e.errno in (errno.EPIPE, errno.ECONNRESET):
            raise _PageServerError(e.errno, "the page server closed the connection "
                                   "mid-stream (see its log)") from e
        raise


def _stream(sock: socket.socket, pid: int, mem_fd: int, plan: _Plan,
            stats: Dict[str, int], done: _Done, by_pid: bool) -> None:
    """The protocol itself (see _stream_pages)."""
    add = PS_IOV_ADD_F | PE_PRESENT << 16
    buf = bytearray(BUFFER)
    for shmid, sh in sorted(plan.shmem.items()):
        dst_id = shmid << 8 | PS_TYPE_SHMEM
        _ps_open(sock, dst_id)
        if sh.fd < 0:
            for s, e, off in sorted(sh.vma_ranges, key=lambda x: x[2]):
                _native.dump_pages(pid, [(s, e)], sock.fileno(), buf, mem_fd=mem_fd,
                                   ps_header=(add, dst_id, s - off), stats=stats,
                                   by_pid=by_pid)
                done.add(e - s)
            continue
        for s, e in sh.segments:
            sock.sendall(_PS_IOV.pack(add, (e - s) // PAGE, s, dst_id))
            _sendfile(sock.fileno(), sh.fd, s, e - s, done)
    dst_id = pid << 8 | PS_TYPE_PID
    _ps_open(sock, dst_id)
    for _, unit in _units(plan.private):
        _native.dump_pages(pid, unit, sock.fileno(), buf, mem_fd=mem_fd,
                           ps_header=(add, dst_id, 0), stats=stats, by_pid=by_pid)
        done.add(sum(e - s for s, e in unit))
    sock.sendall(_PS_IOV.pack(PS_IOV_CLOSE, 0, 0, 0))
    (status,) = struct.unpack("<i", _ps_recv(sock, 4, "PS_IOV_CLOSE"))
    if status:
        raise _PageServerError(errno.EIO, f"the page server answered PS_IOV_CLOSE "
                               f"with status {status}: it failed (see its log)")
