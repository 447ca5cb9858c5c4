"""What this kernel and these privileges allow: every probe, the Features
record, and the PVMMAP_BACKEND switch (read once, at import)."""

from __future__ import annotations

import errno
import functools
import os
from dataclasses import dataclass
from typing import Optional, Tuple

from pvmmap import _native
from pvmmap._errors import BACKENDS, ConfigError

#: Symbols of the native call in /proc/kallsyms (x86_64, arm64, generic).
SYMBOLS = ("sys_process_vm_mmap", "__x64_sys_process_vm_mmap",
           "__arm64_sys_process_vm_mmap", "__se_sys_process_vm_mmap")

CAP_SYS_ADMIN = 21
CAP_CHECKPOINT_RESTORE = 40


#: The syscall numbers PVMMAP_SYSCALL_NR accepts.  0 is read() on x86_64
#: and io_setup() on arm64, never a new call; no table has 4096 entries.
SYSCALL_NR_RANGE = (1, 4095)


def _read_environment() -> Tuple[str, Optional[int], Optional[str]]:
    """(PVMMAP_BACKEND, PVMMAP_SYSCALL_NR or None, the problem with them
    or None).  Read once, at import; a bad value is kept as a problem, not
    raised, so that importing pvmmap always works."""
    backend = os.environ.get("PVMMAP_BACKEND", "auto") or "auto"
    if backend not in BACKENDS:
        return "auto", None, (f"PVMMAP_BACKEND={backend!r} is not a backend: expected "
                              f"one of {', '.join(BACKENDS)} (or unset for auto)")
    raw = os.environ.get("PVMMAP_SYSCALL_NR")
    if not raw:
        return backend, None, None
    lo, hi = SYSCALL_NR_RANGE
    try:
        nr = int(raw, 0)
    except ValueError:
        nr = None
    if nr is None or not lo <= nr <= hi:
        return backend, None, (f"PVMMAP_SYSCALL_NR={raw!r} is not a syscall number: "
                               f"expected an integer from {lo} to {hi} (decimal or 0x "
                               f"hex), the number of the kernel's process_vm_mmap(), "
                               f"or unset for pvmmap's own ({_native.DEFAULT_SYSCALL_NR})")
    return backend, nr, None


#: The backend PVMMAP_BACKEND asks for ("auto" unless forced), the number
#: PVMMAP_SYSCALL_NR gives (None: the default), and what is wrong with them.
REQUESTED, SYSCALL_NR, ENV_PROBLEM = _read_environment()


def check_environment() -> None:
    """ConfigError if PVMMAP_BACKEND or PVMMAP_SYSCALL_NR is malformed."""
    if ENV_PROBLEM is not None:
        raise ConfigError(ENV_PROBLEM)


@dataclass(frozen=True)
class Features:
    """What this kernel and these privileges allow; each *_reason says why
    (or why not)."""
    native: bool
    native_reason: str
    syscall_nr: Optional[int]
    uffd: Optional[str]         # "full", "user-mode-only" or None
    uffd_reason: str
    map_files: bool
    map_files_reason: str
    pagemap_scan: bool
    pagemap_scan_reason: str
    backend: str


_features: Optional[Features] = None


def cap_effective(bit: int) -> bool:
    """Whether this process holds capability `bit` (CapEff)."""
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("CapEff:"):
                return bool(int(line.split()[1], 16) >> bit & 1)
    return False


def detect_native() -> Tuple[bool, Optional[int], str]:
    """(native call usable, its number, why): the symbol must be in
    /proc/kallsyms and the number must refuse what only process_vm_mmap
    refuses (x86_64 434, the 2019 number, is pidfd_open in mainline)."""
    check_environment()
    env = SYSCALL_NR is not None
    nr = SYSCALL_NR if SYSCALL_NR is not None else _native.DEFAULT_SYSCALL_NR
    try:
        found = _native.kallsyms_find(SYMBOLS)
    except OSError as e:
        return False, None, f"cannot read /proc/kallsyms ({e.strerror})"
    if found < 0:
        return False, None, ("this kernel has no process_vm_mmap (/proc/kallsyms "
                             "lists no sys_process_vm_mmap)")
    if not _native.probe_native(nr):
        return False, nr, (f"/proc/kallsyms lists {SYMBOLS[found]} but syscall "
                           f"{nr} does not answer like process_vm_mmap "
                           "(EINVAL for a bad flag, ESRCH for a missing pid); "
                           "set PVMMAP_SYSCALL_NR to the kernel's number")
    how = "PVMMAP_SYSCALL_NR" if env else "the default"
    return True, nr, f"{SYMBOLS[found]} in /proc/kallsyms, syscall {nr} ({how})"


_UFFD = {
    2: ("full", "userfaultfd() or /dev/userfaultfd is permitted"),
    1: ("user-mode-only", "only UFFD_USER_MODE_ONLY (vm.unprivileged_userfaultfd=0 "
        "and no CAP_SYS_PTRACE): kernel accesses to lazy pages fail with EFAULT"),
    0: (None, "userfaultfd is not available (kernel config, seccomp or "
        "permissions)"),
}


def features(refresh: bool = False) -> Features:
    """Features of this kernel and process, detected once (refresh=True
    detects again)."""
    global _features
    check_environment()
    if _features is not None and not refresh:
        return _features
    native, nr, native_reason = detect_native()
    uffd, uffd_reason = _UFFD[_native.uffd_probe()]
    mf = ((cap_effective(CAP_SYS_ADMIN) or cap_effective(CAP_CHECKPOINT_RESTORE))
          and os.path.isdir("/proc/self/map_files"))
    mf_reason = ("CAP_SYS_ADMIN or CAP_CHECKPOINT_RESTORE held" if mf else
                 "needs CAP_SYS_ADMIN or CAP_CHECKPOINT_RESTORE (shared memory "
                 "is then reached by path or the source's fd, if at all)")
    scan = _native.pagemap_scan_works()
    scan_reason = ("PAGEMAP_SCAN ioctl answers" if scan else
                   "no PAGEMAP_SCAN (Linux < 6.7): the source's pagemap file is read instead")
    if REQUESTED == "auto":
        backend = "native" if native else "emulated"
    else:
        backend = REQUESTED
    _features = Features(native, native_reason, nr, uffd, uffd_reason, bool(mf),
                         mf_reason, scan, scan_reason, backend)
    return _features


def active_backend() -> str:
    """The backend in force; a forced one needs no detection (reading
    /proc/kallsyms costs 60-150 ms once)."""
    check_environment()
    if REQUESTED != "auto":
        return REQUESTED
    return features().backend


@functools.lru_cache(maxsize=None)
def task_size() -> int:
    """The end of the user address space, the kernel's TASK_SIZE_MAX:
    2^47 - PAGE with 4-level page tables, 2^56 - PAGE with 5-level ones
    (x86_64 la57).  A page asked for at 2^47 tells which: only a 5-level
    kernel can place it (and then only when asked, so nothing else moves)."""
    page = _native.PAGESIZE
    probe = 1 << 47
    try:
        got = _native.mmap_raw(probe, page, _native.PROT_NONE,
                               _native.MAP_PRIVATE | _native.MAP_ANONYMOUS
                               | _native.MAP_FIXED_NOREPLACE)
    except OSError as e:
        # EEXIST: something is mapped there already, so it is reachable.
        return probe - page if e.errno != errno.EEXIST else (1 << 56) - page
    _native.munmap_raw(got, page)     # before 4.17 the flag was only a hint
    return (1 << 56) - page if got == probe else probe - page
