"""The native backend: the kernel's process_vm_mmap() (the project's port,
kernel/), which copies page-table entries as fork() does.  It maps one VMA
per call; a clone that spans several is one call per VMA into a reserved
destination."""

from __future__ import annotations

import errno

from pvmmap import _contract, _maps, _native
from pvmmap._contract import Clone, Part
from pvmmap._errors import os_error
from pvmmap._features import features


def syscall_nr(pid: int, src: int, length: int) -> int:
    """The native call's number; ENOSYS (with the reason) where there is none."""
    f = features()
    if not f.native or f.syscall_nr is None:
        raise os_error(errno.ENOSYS, f"native process_vm_mmap: {f.native_reason}",
                       pid, src, length, "native")
    return f.syscall_nr


def sys_process_vm_mmap(pid: int, src: int, length: int, dst: int,
                        flags: int) -> int:
    """The raw call, never issued blindly."""
    nr = syscall_nr(pid, src, length)
    addr: int = _native.sys_process_vm_mmap(nr, pid, src, length, dst, flags)
    return addr


def process_vm_mmap(pid: int, src: int, length: int, dst: int, flags: int) -> int:
    """The exact contract: the EINVAL checks here, the rest by the kernel."""
    _contract.check_args(pid, src, length, flags, dst)
    return sys_process_vm_mmap(pid, src, length, dst, flags)


def _nothing_copied(region: _maps.Region) -> bool:
    return False    # the kernel copies page tables (and refuses what it must)


def clone(pid: int, src: int, length: int, dst: int, flags: int) -> Clone:
    """Clone a range that may span adjacent VMAs: one call when it is one
    VMA, else one call per VMA into a reserved destination."""
    start, end = _contract.check_args(pid, src, length, flags, dst)
    total = end - start
    nr = syscall_nr(pid, src, length)
    try:
        base: int = _native.sys_process_vm_mmap(nr, pid, start, total, dst, flags)
    except OSError as e:
        if e.errno != errno.EFAULT:
            raise
        # Perhaps several VMAs (the call maps one): the plan says EFAULT
        # itself for a hole.
        pieces = _contract.plan(pid, start, end, False, _nothing_copied)
        if len(pieces) == 1:
            raise
        base = _contract.reserve(pid, total, dst, flags)
        try:
            for p in pieces:
                _native.sys_process_vm_mmap(nr, pid, p.start, p.length,
                                            base + (p.start - start), _native.FIXED)
        except BaseException:
            _native.munmap_raw(base, total)
            raise
        regions = [p.region for p in pieces]
    else:
        try:
            regions = _maps.read_maps(pid, start, end)
        except BaseException:
            _native.munmap_raw(base, total)
            raise
    parts = []
    for r in regions:
        lo, hi = max(r.start, start), min(r.end, end)
        parts.append(Part(lo - start, hi - lo, lo, r.kind, r.prot, "native"))
    return Clone(base, total, parts, {})
