"""/proc readers: a process's regions (maps, smaps) and what kind of memory
each one is, its state (stat) and its open userfaultfds (fd)."""

from __future__ import annotations

import errno
import os
from dataclasses import dataclass, field
from typing import IO, Dict, FrozenSet, Iterable, List, Optional, Tuple

from pvmmap import _native
from pvmmap._errors import os_error

PF_KTHREAD = 0x00200000         # task flags (/proc/PID/stat field 9)
PF_EXITING = 0x00000004         # set at the start of do_exit(), before the mm goes

#: The values of Region.kind.
KINDS = ("private-anon", "private-file", "shared-anon", "memfd", "sysv-shm",
         "shared-file", "hugetlb", "special")

#: smaps VmFlags that make a VMA "special" (the contract refuses it), by name.
SPECIAL_FLAGS = {"io": "VM_IO", "pf": "VM_PFNMAP", "mm": "VM_MIXEDMAP",
                 "de": "VM_DONTEXPAND"}
#: smaps VmFlags of a VMA registered with userfaultfd (missing, wp, minor).
UFFD_FLAGS = frozenset({"um", "uw", "ui"})
_SPECIAL_PATHS = {"[vvar]", "[vdso]", "[vsyscall]", "[vvar_vclock]"}
# Paths of kernel-made objects whose VMAs may carry the special flags.
# (/sys and /proc hold PCI BARs and the like: VM_IO|VM_PFNMAP regular files;
# "/[aio]" is an aio ring, VM_DONTEXPAND.)
_UNPLAIN_PREFIXES = ("/[", "/dev/", "/dmabuf", "/sys/", "/proc/")


@dataclass
class Region:
    """One VMA of a process, as /proc/PID/maps (and smaps) describe it."""
    start: int
    end: int
    perms: str                  # "rw-p"
    offset: int                 # file offset of start, in bytes
    dev: str                    # "fd:01"
    inode: int
    path: str
    flags: Optional[FrozenSet[str]] = None   # VmFlags from smaps; None: not read
    kind: str = field(default="private-anon")
    pkey: int = 0               # smaps' ProtectionKey (x86 PKU), 0 without
    rss: Optional[int] = None   # resident bytes (smaps' Rss); None: not read

    @property
    def size(self) -> int:
        return self.end - self.start

    @property
    def shared(self) -> bool:
        return self.perms[3] == "s"

    @property
    def readable(self) -> bool:
        return self.perms[0] == "r"

    @property
    def prot(self) -> int:
        """The PROT_* bits of perms."""
        return ((_native.PROT_READ if self.perms[0] == "r" else 0)
                | (_native.PROT_WRITE if self.perms[1] == "w" else 0)
                | (_native.PROT_EXEC if self.perms[2] == "x" else 0))

    @property
    def deleted(self) -> bool:
        return self.path.endswith(" (deleted)")

    @property
    def file_path(self) -> str:
        """The path as it was when mapped (without " (deleted)")."""
        return self.path[:-10] if self.deleted else self.path

    @property
    def plain(self) -> bool:
        """True if maps alone tells all the contract needs about this VMA:
        anonymous memory, SysV shm, memfd or a file with a path.  Others
        (an aio ring "/[aio]", anon_inode:[perf_event], io_uring rings,
        dma-bufs, devices) may carry VM_IO, VM_PFNMAP, VM_MIXEDMAP or
        VM_DONTEXPAND, which only smaps shows."""
        path = self.path
        if (not path or path in ("[heap]", "[stack]")
                or path.startswith(("/dev/zero", "/dev/shm/"))):
            return True
        return (path.startswith("/") and not path.startswith(_UNPLAIN_PREFIXES))

    def __repr__(self) -> str:
        return (f"Region({self.start:#x}-{self.end:#x} {self.perms} "
                f"{self.kind} {self.path!r})")


def classify(perms: str, inode: int, path: str,
             flags: Optional[FrozenSet[str]] = None) -> str:
    """The kind of memory a maps line describes (see KINDS)."""
    if path in _SPECIAL_PATHS:
        return "special"
    if path.startswith("/[aio]"):
        return "special"
    if flags is not None:
        if "ht" in flags:
            return "hugetlb"
        if flags & SPECIAL_FLAGS.keys():
            return "special"
    if path.startswith("/anon_hugepage"):
        return "hugetlb"
    if perms[3] == "s":
        if path.startswith("/SYSV"):
            return "sysv-shm"
        if path.startswith("/memfd:"):
            return "memfd"
        if path.startswith("/dev/zero") or not path:
            return "shared-anon"
        return "shared-file"
    return "private-file" if inode else "private-anon"


def _parse_line(line: str) -> Region:
    # start-end perms offset dev inode [path]; the path may hold spaces.
    fields = line.split(None, 5)
    start, end = fields[0].split("-")
    path = fields[5].rstrip("\n") if len(fields) > 5 else ""
    return Region(int(start, 16), int(end, 16), fields[1], int(fields[2], 16),
                  fields[3], int(fields[4]), path)


def _open_proc(pid: int, name: str) -> IO[str]:
    try:
        return open(f"/proc/{pid}/{name}", "r")
    except FileNotFoundError:
        raise os_error(errno.ESRCH, f"reading /proc/{pid}/{name}", pid) from None
    except PermissionError:
        raise os_error(errno.EPERM, f"reading /proc/{pid}/{name}", pid,
                       hint="ptrace") from None


#: Whether this kernel answers PROCMAP_QUERY (None until first asked).
_procmap_query: Optional[bool] = None


def _query_maps(pid: int, start: int, end: int) -> Optional[List[Region]]:
    """The regions overlapping [start, end) by PROCMAP_QUERY (Linux 6.11):
    one ioctl per region, whatever the number of the process's other VMAs
    (the maps text of a process with 60,000 VMAs takes 33 ms to read).
    None where the kernel has no PROCMAP_QUERY."""
    global _procmap_query
    with _open_proc(pid, "maps") as f:
        fd = f.fileno()
        regions = []
        at = start
        while at < end:
            try:
                vma = _native.vma_query(fd, at)
            except OSError as e:
                if e.errno != errno.ENOTTY:
                    raise
                _procmap_query = False
                return None
            if vma is None or vma[0] >= end:
                break
            vstart, vend, offset, inode, major, minor, prot, shared, path = vma
            perms = ("r" if prot & 1 else "-") + ("w" if prot & 2 else "-") + \
                    ("x" if prot & 4 else "-") + ("s" if shared else "p")
            r = Region(vstart, vend, perms, offset, f"{major:02x}:{minor:02x}",
                       inode, path)
            r.kind = classify(r.perms, r.inode, r.path)
            regions.append(r)
            at = vend
    _procmap_query = True
    return regions


def read_maps(pid: int, start: int = 0, end: Optional[int] = None) -> List[Region]:
    """Regions of pid from /proc/PID/maps, without VmFlags (cheap); only
    those overlapping [start, end) if given: then by PROCMAP_QUERY where the
    kernel has it (the cost does not grow with the process's other VMAs),
    else the maps text up to the range's end, only its lines kept."""
    if end is not None and _procmap_query is not False:
        found = _query_maps(pid, start, end)
        if found is not None:
            return found
    with _open_proc(pid, "maps") as f:
        # Before 6.11: the text from the first VMA on; with a range, the
        # lines below it are skipped in C (csrc/maps.c), not parsed here.
        text = f.read() if end is None else _native.vmas_text(f.fileno(), start, end)
    regions = []
    for line in text.split("\n"):
        if not line:
            continue
        r = _parse_line(line)
        if end is not None and (r.end <= start or r.start >= end):
            continue
        r.kind = classify(r.perms, r.inode, r.path)
        regions.append(r)
    return regions


def has_memory(pid: int) -> bool:
    """False for a process whose mm is gone (exiting, zombie)."""
    with _open_proc(pid, "maps") as f:
        return bool(f.read(1))


def read_smaps(pid: int, start: int = 0, end: Optional[int] = None) -> List[Region]:
    """Regions of pid with VmFlags, Rss (and protection keys) from
    /proc/PID/smaps; only those overlapping [start, end) if given.  The
    kernel prints every VMA from the first one, walking its page tables
    (about 13 ms per populated GiB, and about 5 us per VMA whatever its
    size): reading stops after `end`, and with a range the entries below it
    are skipped in C (csrc/maps.c), so only the kernel's part grows with the
    VMAs below the range."""
    with _open_proc(pid, "smaps") as f:
        if end is None:
            lines: Iterable[str] = f
        else:
            lines = _native.vmas_text(f.fileno(), start, end).split("\n")
        return _parse_smaps(lines, start, end)


def _parse_smaps(lines: Iterable[str], start: int,
                 end: Optional[int]) -> List[Region]:
    regions: List[Region] = []
    keep = False
    for line in lines:
        head = line.split(None, 1)[0] if line.strip() else ""
        if "-" in head and not head.endswith(":"):
            r = _parse_line(line)
            if end is not None and r.start >= end:
                break
            keep = r.end > start
            if keep:
                regions.append(r)
        elif not keep:
            continue
        elif head == "Rss:":
            regions[-1].rss = int(line.split()[1]) * 1024
        elif head == "VmFlags:":
            regions[-1].flags = frozenset(line.split()[1:])
        elif head == "ProtectionKey:":
            regions[-1].pkey = int(line.split()[1])
    for r in regions:
        r.kind = classify(r.perms, r.inode, r.path, r.flags)
    return regions


def has_userfaultfd(pid: int) -> bool:
    """True if pid holds a userfaultfd among its open files, the only way its
    VMAs can be registered (unless it handed its uffd away and closed it)."""
    try:
        fds = os.listdir(f"/proc/{pid}/fd")
    except OSError:
        return True             # cannot tell: let smaps decide
    for fd in fds:
        try:
            if os.readlink(f"/proc/{pid}/fd/{fd}") == "anon_inode:[userfaultfd]":
                return True
        except OSError:
            continue
    return False


def read_status(pid: "int | str") -> Dict[str, str]:
    """The fields of /proc/PID/status (Uid, TracerPid, CapPrm, ...), or {}
    if there is no such process."""
    try:
        with open(f"/proc/{pid}/status") as f:
            return dict(line.rstrip("\n").split(":\t", 1) for line in f if ":\t" in line)
    except (FileNotFoundError, ProcessLookupError):
        return {}


def read_stat(pid: int) -> Optional[Tuple[str, int]]:
    """(state letter, task flags) from /proc/PID/stat, or None if there is
    no such process."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            line = f.read()
    except FileNotFoundError:
        return None
    fields = line[line.rfind(b")") + 2:].split()
    return fields[0].decode(), int(fields[6])
