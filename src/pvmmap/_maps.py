"""/proc/PID/maps and smaps: the regions of a process and what kind of memory
each one is, which decides how it is cloned."""

import errno
import mmap
import os
from dataclasses import dataclass, field

from pvmmap._errors import os_error

#: Region.kind values, and how the emulation clones each (DESIGN.md §2).
KINDS = {
    "private-anon": "copy",     # heap, stacks, anonymous mmap
    "private-file": "file",     # libraries, MAP_PRIVATE files
    "shared-anon": "share",     # MAP_SHARED|MAP_ANONYMOUS, /dev/zero
    "memfd": "share",
    "sysv-shm": "share",
    "shared-file": "share",     # MAP_SHARED files, POSIX shm in /dev/shm
    "hugetlb": None,            # refused: EFAULT
    "special": None,            # [vvar], [vdso], VM_IO, VM_PFNMAP, ...: EFAULT
}

# VmFlags (fs/proc/task_mmu.c) that make the contract refuse a source VMA.
_EFAULT_FLAGS = {"ht": "hugetlb", "io": "VM_IO", "pf": "VM_PFNMAP",
                 "mm": "VM_MIXEDMAP", "de": "VM_DONTEXPAND"}
_UFFD_FLAGS = {"um", "uw", "ui"}
_SPECIAL_PATHS = {"[vvar]", "[vdso]", "[vsyscall]", "[vvar_vclock]"}
HUGETLBFS_MAGIC = 0x958458F6
# Paths of kernel-made objects whose VMAs may carry the refused flags.
# (/sys and /proc hold PCI BARs and the like: VM_IO|VM_PFNMAP regular files.)
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
    flags: frozenset = None     # VmFlags from smaps; None when not read
    kind: str = field(default="private-anon")
    pkey: int = 0               # smaps' ProtectionKey (x86 PKU), 0 without

    @property
    def size(self):
        return self.end - self.start

    @property
    def shared(self):
        return self.perms[3] == "s"

    @property
    def readable(self):
        return self.perms[0] == "r"

    @property
    def prot(self):
        return ((mmap.PROT_READ if self.perms[0] == "r" else 0)
                | (mmap.PROT_WRITE if self.perms[1] == "w" else 0)
                | (mmap.PROT_EXEC if self.perms[2] == "x" else 0))

    @property
    def deleted(self):
        return self.path.endswith(" (deleted)")

    @property
    def file_path(self):
        """The path as it was when mapped (without " (deleted)")."""
        return self.path[:-10] if self.deleted else self.path

    def refusal(self):
        """(errno, reason) if process_vm_mmap must refuse this VMA, else None."""
        if self.kind == "hugetlb":
            return errno.EFAULT, "a hugetlb mapping"
        if self.kind == "special":
            named = ", ".join(v for k, v in _EFAULT_FLAGS.items()
                              if self.flags and k in self.flags)
            what = ": ".join(x for x in (self.file_path, named) if x)
            return errno.EFAULT, f"a special mapping ({what or 'VM_IO/VM_PFNMAP'})"
        if self.flags and self.flags & _UFFD_FLAGS:
            return errno.EOPNOTSUPP, "registered with userfaultfd"
        return None

    @property
    def plain(self):
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

    def __repr__(self):
        return (f"Region({self.start:#x}-{self.end:#x} {self.perms} "
                f"{self.kind} {self.path!r})")


def classify(perms, inode, path, flags=None):
    """The kind of memory a maps line describes (see KINDS)."""
    if path in _SPECIAL_PATHS:
        return "special"
    if flags is not None:
        if "ht" in flags:
            return "hugetlb"
        if flags & {"io", "pf", "mm", "de"}:
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


def _parse_line(line):
    # start-end perms offset dev inode [path]; the path may hold spaces.
    fields = line.split(None, 5)
    start, end = fields[0].split("-")
    path = fields[5].rstrip("\n") if len(fields) > 5 else ""
    return Region(int(start, 16), int(end, 16), fields[1], int(fields[2], 16),
                  fields[3], int(fields[4]), path)


def _open_proc(pid, name):
    try:
        return open(f"/proc/{pid}/{name}", "r")
    except FileNotFoundError:
        raise os_error(errno.ESRCH, f"reading /proc/{pid}/{name}", pid,
                       hint="no such process") from None
    except PermissionError as e:
        raise os_error(errno.EPERM, f"reading /proc/{pid}/{name}", pid,
                       hint="the caller may not ptrace this process "
                       "(different user, or it is not dumpable)") from e


def read_maps(pid, start=0, end=None):
    """Regions of pid from /proc/PID/maps, without VmFlags (cheap); only
    those overlapping [start, end) if given (the rest are not parsed)."""
    with _open_proc(pid, "maps") as f:
        text = f.read()
    regions = []
    for line in text.splitlines():
        if end is not None:
            lo, _, hi = line[:line.index(" ")].partition("-")
            if int(hi, 16) <= start:
                continue
            if int(lo, 16) >= end:
                break
        r = _parse_line(line)
        r.kind = classify(r.perms, r.inode, r.path)
        regions.append(r)
    return regions


def has_memory(pid):
    """False for a process whose mm is gone (exiting, zombie)."""
    with _open_proc(pid, "maps") as f:
        return bool(f.read(1))


def read_smaps(pid, start=0, end=None):
    """Regions of pid with VmFlags (and protection keys) from
    /proc/PID/smaps; only those overlapping [start, end) if given.  Costs a
    walk of the page tables (about 13 ms per populated GiB here) of every
    VMA it prints: reading stops after `end`, so of the VMAs above the range
    only the few the last read() took in (a few KiB of text) are walked."""
    regions, keep = [], False
    with _open_proc(pid, "smaps") as f:
        for line in f:
            head = line.split(None, 1)[0]
            if "-" in head and not head.endswith(":"):
                r = _parse_line(line)
                if end is not None and r.start >= end:
                    break
                keep = r.end > start
                if keep:
                    regions.append(r)
            elif not keep:
                continue
            elif head == "VmFlags:":
                regions[-1].flags = frozenset(line.split()[1:])
            elif head == "ProtectionKey:":
                regions[-1].pkey = int(line.split()[1])
    for r in regions:
        r.kind = classify(r.perms, r.inode, r.path, r.flags)
    return regions


def has_userfaultfd(pid):
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


def maps(pid):
    """The regions of process `pid` (/proc/PID/maps with smaps' VmFlags),
    each with its kind: private-anon, private-file, shared-anon, memfd,
    sysv-shm, shared-file, hugetlb or special."""
    return read_smaps(pid)
