"""pvmmap: duplicate a memory range of another process into this one.

    with pvmmap.clone(pid, addr, length) as m:
        data = memoryview(m)

On a kernel with process_vm_mmap() (the project's own port, kernel/) the
native call copies page-table entries, as fork() does.  Everywhere else it is
emulated as faithfully as the kernel allows: shared memory is mapped shared
(/proc/PID/map_files), private memory is copied as a snapshot of the pages
that exist (PAGEMAP_SCAN + process_vm_readv), file mappings map the same
file.  See DESIGN.md for the contract.
"""

import errno
import mmap
import os
from dataclasses import dataclass

from pvmmap import _emulate, _maps, _native
from pvmmap._errors import BACKENDS, METHODS, os_error
from pvmmap._maps import KINDS, Region, maps
from pvmmap._native import Mapping

__all__ = [
    "clone", "process_vm_mmap", "sys_process_vm_mmap", "munmap", "maps",
    "features", "Features", "Mapping", "Region", "KINDS",
    "PVMMAP_FIXED", "PVMMAP_FIXED_NOREPLACE", "BACKENDS", "METHODS",
]
__version__ = "0.1.0"

PVMMAP_FIXED = _native.FIXED
PVMMAP_FIXED_NOREPLACE = _native.FIXED_NOREPLACE

_SYMBOLS = ("sys_process_vm_mmap", "__x64_sys_process_vm_mmap",
            "__arm64_sys_process_vm_mmap", "__se_sys_process_vm_mmap")

_requested_backend = os.environ.get("PVMMAP_BACKEND", "auto") or "auto"
if _requested_backend not in BACKENDS:
    raise ValueError(f"PVMMAP_BACKEND={_requested_backend!r}: expected one of "
                     f"{', '.join(BACKENDS)}")


@dataclass(frozen=True)
class Features:
    """What this kernel and these privileges allow; each *_reason says why
    (or why not)."""
    native: bool
    native_reason: str
    syscall_nr: object          # int when known, else None
    uffd: object                # "full", "user-mode-only" or None
    uffd_reason: str
    map_files: bool
    map_files_reason: str
    pagemap_scan: bool
    pagemap_scan_reason: str
    backend: str


_features = None


def _cap_effective(bit):
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("CapEff:"):
                return bool(int(line.split()[1], 16) >> bit & 1)
    return False


def _detect_native():
    env = os.environ.get("PVMMAP_SYSCALL_NR")
    try:
        nr = int(env, 0) if env else _native.DEFAULT_SYSCALL_NR
    except ValueError:
        return False, None, f"PVMMAP_SYSCALL_NR={env!r} is not a number"
    try:
        found = _native.kallsyms_find(_SYMBOLS)
    except OSError as e:
        return False, None, f"cannot read /proc/kallsyms ({e.strerror})"
    if found < 0:
        return False, None, ("this kernel has no process_vm_mmap (/proc/kallsyms "
                             "lists no sys_process_vm_mmap); boot the port in "
                             "kernel/ for the native call")
    if not _native.probe_native(nr):
        return False, nr, (f"/proc/kallsyms lists {_SYMBOLS[found]} but syscall "
                           f"{nr} does not refuse an unknown flag with EINVAL; "
                           "set PVMMAP_SYSCALL_NR to the port's number")
    how = "PVMMAP_SYSCALL_NR" if env else "the port's default"
    return True, nr, f"{_SYMBOLS[found]} in /proc/kallsyms, syscall {nr} ({how})"


def features(refresh=False):
    """Features of this kernel and process, detected once (refresh=True
    detects again)."""
    global _features
    if _features is not None and not refresh:
        return _features
    native, nr, native_reason = _detect_native()
    level = _native.uffd_probe()
    uffd = {2: "full", 1: "user-mode-only", 0: None}[level]
    uffd_reason = {
        2: "userfaultfd() or /dev/userfaultfd is permitted",
        1: "only UFFD_USER_MODE_ONLY (vm.unprivileged_userfaultfd=0 and no "
           "CAP_SYS_PTRACE): kernel accesses to lazy pages fail with EFAULT",
        0: "userfaultfd is not available (kernel config, seccomp or permissions)",
    }[level]
    caps = _cap_effective(21) or _cap_effective(40)
    mf = caps and os.path.isdir("/proc/self/map_files")
    mf_reason = ("CAP_SYS_ADMIN or CAP_CHECKPOINT_RESTORE held" if mf else
                 "needs CAP_SYS_ADMIN or CAP_CHECKPOINT_RESTORE (shared memory "
                 "is then reached by path or the source's fd, if at all)")
    scan = _native.pagemap_scan_works()
    scan_reason = ("PAGEMAP_SCAN ioctl answers" if scan else
                   "no PAGEMAP_SCAN (Linux < 6.7): /proc/PID/pagemap is read instead")
    if _requested_backend == "auto":
        backend = "native" if native else "emulated"
    else:
        backend = _requested_backend
    _features = Features(native, native_reason, nr, uffd, uffd_reason, mf,
                         mf_reason, scan, scan_reason, backend)
    return _features


def __getattr__(name):
    if name == "backend":
        return _active_backend()
    raise AttributeError(f"module 'pvmmap' has no attribute {name!r}")


def _active_backend():
    """The backend in force; a forced one needs no detection (reading
    /proc/kallsyms costs 60-150 ms once)."""
    if _requested_backend != "auto":
        return _requested_backend
    return features().backend


def _require_native(pid, src, length):
    f = features()
    if not f.native:
        raise os_error(errno.ENOSYS, "native process_vm_mmap", pid, src, length,
                       f.native_reason)
    return f.syscall_nr


def sys_process_vm_mmap(pid, src, length, dst, flags):
    """The raw process_vm_mmap syscall (GIL released).  Returns the
    destination address; raises OSError with the kernel's errno, or ENOSYS
    where the kernel does not have the call (it is never called blindly)."""
    nr = _require_native(pid, src, length)
    return _native.sys_process_vm_mmap(nr, pid, src, length, dst, flags)


def process_vm_mmap(pid, src_addr, length, dst_addr=0, flags=0):
    """process_vm_mmap() with its exact C contract, on the active backend:
    map [src_addr, src_addr+length) of `pid` (one VMA, page-rounded) into this
    process and return the address.  Release it with munmap()."""
    if _active_backend() == "native":
        _emulate.check_args(pid, src_addr, length, flags)
        return sys_process_vm_mmap(pid, src_addr, length, dst_addr, flags)
    base, _, _, _ = _emulate.emulate(pid, src_addr, length, dst_addr, flags,
                                     single=True)
    return base


def munmap(addr, length):
    """Unmap memory made by process_vm_mmap() or Mapping.detach()."""
    _native.munmap_raw(addr, _emulate.page_up(length))


def _native_clone(pid, src, length, dst, flags):
    """Native clone of a range that may span adjacent VMAs: one call when it
    is one VMA, else one call per VMA into a reserved destination.
    Returns (base, total, [(offset, length, kind, prot)])."""
    start, end = _emulate.check_args(pid, src, length, flags)
    total = end - start
    nr = _require_native(pid, src, length)
    try:
        base = _native.sys_process_vm_mmap(nr, pid, start, total, dst, flags)
        pieces = None
    except OSError as e:
        if e.errno != errno.EFAULT:
            raise
        # Perhaps several VMAs (the call maps one): the plan says EFAULT
        # itself for a hole or a refused VMA.
        pieces = _emulate.plan(pid, start, end, single=False)
        if len(pieces) == 1:
            raise
        base = _emulate.reserve(pid, start, total, dst, flags)
        try:
            for p in pieces:
                _native.sys_process_vm_mmap(nr, pid, p.start, p.length,
                                            base + (p.start - start), _native.FIXED)
        except BaseException:
            _native.munmap_raw(base, total)
            raise
    regions = [p.region for p in pieces] if pieces else \
        _maps.read_maps(pid, start, end)
    return base, total, [(max(r.start, start) - start,
                          min(r.end, end) - max(r.start, start), r.kind, r.prot)
                         for r in regions]


def _summary(values, mixed="mixed"):
    values = set(values)
    return values.pop() if len(values) == 1 else mixed


def clone(pid, addr, length, *, dest=0, fixed=False, noreplace=False,
          method="auto", freeze=False, allow_copy=False):
    """Clone [addr, addr+length) of process `pid` into this process.

    The range may span adjacent VMAs of different kinds (a hole: EFAULT); an
    unaligned addr or length is fine, the Mapping covers exactly those bytes.
    dest: where to put it (a hint, unless fixed=True, which replaces what is
    there, or noreplace=True, which fails with FileExistsError if anything
    is).  method: "auto" (native call if the kernel has it, else the faithful
    emulation per kind), "native" (the kernel call or ENOSYS), "copy" (a
    private snapshot of every kind, shared memory included).  freeze: stop
    the source's threads for the copy, so it is one instant.  allow_copy:
    where sharing is not permitted, copy instead of raising PermissionError.

    A private clone is a snapshot taken now; a shared clone stays shared.
    Raises OSError with the errno process_vm_mmap() would give.
    """
    if method not in METHODS:
        raise ValueError(f"method={method!r}: expected one of {', '.join(METHODS)}")
    if method == "lazy":
        raise NotImplementedError(
            "method='lazy' (userfaultfd, pages fetched on first touch) is not "
            "implemented yet: it comes with the lazy-pages issue; use 'auto' or 'copy'")
    flags = 0
    if noreplace:
        flags = _native.FIXED_NOREPLACE
    elif fixed:
        flags = _native.FIXED
    native = method == "native" or (method == "auto" and _active_backend() == "native")
    if native:
        base, total, parts = _native_clone(pid, addr, length, dest, flags)
        methods, stats = ["native"] * len(parts), {}
    else:
        base, total, pieces, stats = _emulate.emulate(
            pid, addr, length, dest, flags, single=False, method=method,
            freeze=freeze, allow_copy=allow_copy)
        parts = [(p.start - pieces[0].start, p.length, p.region.kind, p.region.prot)
                 for p in pieces]
        methods = [p.method for p in pieces]
    prot = mmap.PROT_READ | mmap.PROT_WRITE | mmap.PROT_EXEC
    for part in parts:
        prot &= part[3]
    parts = [dict(offset=o, length=n, kind=k, prot=pr, method=m)
             for (o, n, k, pr), m in zip(parts, methods)]
    return _native.make_mapping(
        base, total, addr - _emulate.page_down(addr), length, pid, addr,
        _summary(methods), _summary(p["kind"] for p in parts), prot, parts, stats)
