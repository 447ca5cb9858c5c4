"""The public entry points: each checks what it is given and hands the work
to the backend in force (_kernel for the native call, _emulate otherwise)."""

from __future__ import annotations

from typing import List

from pvmmap import _contract, _emulate, _kernel, _maps, _native
from pvmmap._errors import METHODS
from pvmmap._features import active_backend
from pvmmap._native import Mapping


def clone(pid: int, addr: int, length: int, *, dest: int = 0, fixed: bool = False,
          noreplace: bool = False, method: str = "auto", freeze: bool = False,
          allow_copy: bool = False) -> Mapping:
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
            "method='lazy' (pages fetched on first touch) is not available in "
            "this version of pvmmap; use method='auto' or 'copy'")
    flags = 0
    if noreplace:
        flags = _native.FIXED_NOREPLACE
    elif fixed:
        flags = _native.FIXED
    if method == "native" or (method == "auto" and active_backend() == "native"):
        base, total, parts, stats = _kernel.clone(pid, addr, length, dest, flags)
    else:
        base, total, parts, stats = _emulate.clone(
            pid, addr, length, dest, flags, single=False, method=method,
            freeze=freeze, allow_copy=allow_copy)
    return _contract.to_mapping(pid, addr, length, base, total, parts, stats)


def process_vm_mmap(pid: int, src_addr: int, length: int, dst_addr: int = 0,
                    flags: int = 0) -> int:
    """process_vm_mmap() with its exact C contract, on the active backend:
    map [src_addr, src_addr+length) of `pid` (one VMA, page-rounded) into this
    process and return the page-aligned address.  Release it with munmap()."""
    if active_backend() == "native":
        return _kernel.process_vm_mmap(pid, src_addr, length, dst_addr, flags)
    return _emulate.process_vm_mmap(pid, src_addr, length, dst_addr, flags)


def sys_process_vm_mmap(pid: int, src: int, length: int, dst: int,
                        flags: int) -> int:
    """The raw process_vm_mmap syscall (GIL released).  Returns the
    destination address; raises OSError with the kernel's errno, or ENOSYS
    where the kernel does not have the call (it is never called blindly)."""
    return _kernel.sys_process_vm_mmap(pid, src, length, dst, flags)


def munmap(addr: int, length: int) -> None:
    """Unmap memory made by process_vm_mmap() or Mapping.detach():
    [addr, addr+length) rounded out to whole pages, so the address and
    length a Mapping had (unaligned or not) are accepted as they are."""
    start = _contract.page_down(addr)
    _native.munmap_raw(start, _contract.page_up(addr + length) - start)


def maps(pid: int) -> List[_maps.Region]:
    """The regions of process `pid` (/proc/PID/maps with smaps' VmFlags),
    each with its kind (pvmmap.KINDS)."""
    return _maps.read_smaps(pid)
