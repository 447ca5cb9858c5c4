"""The public entry points: each checks what it is given and hands the work
to the backend in force (_kernel for the native call, _emulate otherwise)."""

from __future__ import annotations

import errno
import os
from typing import List, Optional, Tuple

from pvmmap import _contract, _emulate, _kernel, _maps, _native
from pvmmap._contract import ClonePlan, Part, Piece, Verdict
from pvmmap._errors import METHODS, os_error
from pvmmap._features import active_backend, check_environment
from pvmmap._native import Mapping


def clone(pid: int, addr: int, length: int, *, dest: int = 0, fixed: bool = False,
          noreplace: bool = False, method: str = "auto", freeze: bool = False,
          allow_copy: bool = False, readahead: Optional[int] = None,
          prefetch: bool = False) -> Mapping:
    """Clone [addr, addr+length) of process `pid` into this process.

    The range may span adjacent VMAs of different kinds (a hole: EFAULT); an
    unaligned addr or length is fine, the Mapping covers exactly those bytes.
    dest: where to put it (a hint, unless fixed=True, which replaces what is
    there, or noreplace=True, which fails with FileExistsError if anything
    is).  method: "auto" (native call if the kernel has it, else the faithful
    emulation per kind), "native" (the kernel call or ENOSYS), "copy" (a
    private snapshot of every kind, shared memory included), "lazy" (private
    anonymous memory fetched on first touch by a C server thread: the call
    returns at once, whatever the size; shared memory is shared as with
    "auto").  freeze: stop the source's threads for the copy, so it is one
    instant.  allow_copy: where sharing is not permitted, copy instead of
    raising PermissionError.  readahead (lazy): bytes fetched per fault
    (default 64 KiB).  prefetch (lazy): fetch the rest in the background,
    faults first.

    A private clone is a snapshot taken now, except a lazy one: each of its
    pages shows the source as it was when that page (or its read-ahead
    chunk) was first touched.  A shared clone stays shared.
    Raises OSError with the errno process_vm_mmap() would give.
    """
    backend = _backend_for(method, freeze)
    if method != "lazy" and (readahead is not None or prefetch):
        raise ValueError("readahead and prefetch apply to method='lazy' only")
    flags = 0
    if noreplace:
        flags = _native.FIXED_NOREPLACE
    elif fixed:
        flags = _native.FIXED
    if backend == "native":
        # The contract's order: the arguments, ENOSYS, then freeze on self.
        _contract.check_args(pid, addr, length, flags, dest)
        _kernel.syscall_nr(pid, addr, length)
        _contract.check_freeze(pid, freeze, addr, length)
        made = _kernel.clone(pid, addr, length, dest, flags)
    else:
        made = _emulate.clone(pid, addr, length, dest, flags, single=False,
                              method=method, freeze=freeze, allow_copy=allow_copy,
                              readahead=readahead, prefetch=prefetch)
    return _contract.to_mapping(pid, addr, length, made)


def _backend_for(method: str, freeze: bool) -> str:
    """The backend a clone with `method` runs on; ValueError for a method
    that is not one, or freeze=True with method='lazy' (clone() and
    plan_clone() refuse the same options); ConfigError for a malformed
    PVMMAP_* variable, whatever the method, so that a bad setting is never
    silently ignored."""
    check_environment()
    if method not in METHODS:
        raise ValueError(f"method={method!r}: expected one of {', '.join(METHODS)}")
    if freeze and method == "lazy":
        raise ValueError("freeze=True does not apply to method='lazy': its "
                         "pages are fetched when first touched")
    if method == "native" or (method == "auto" and active_backend() == "native"):
        return "native"
    return "emulated"


def plan_clone(pid: int, addr: int, length: int, *, method: str = "auto",
               freeze: bool = False, allow_copy: bool = False) -> ClonePlan:
    """What clone(pid, addr, length, method=..., freeze=..., allow_copy=...)
    would do, found by the checks and the planning clone() itself runs, with
    nothing mapped and every fd it opened closed again.

    Raises what clone() raises before it looks at the source's VMAs (bad
    arguments, no such process, no permission, ENOSYS for a native call the
    kernel lacks).  Otherwise the plan's `error` is the exception clone()
    would raise (None: it would succeed) and its `parts` the verdict on each
    source VMA and hole of the range: the Part clone() would make and why,
    or the error that VMA alone is refused with.  freeze=True is checked as
    clone() checks it (not on yourself), but no thread is stopped: whether
    the source can be stopped (another tracer) shows only when it is."""
    backend = _backend_for(method, freeze)
    err: Optional[OSError] = None
    pieces: List[Piece] = []
    if backend == "native":
        start, end = _contract.check_args(pid, addr, length, 0)
        _kernel.syscall_nr(pid, addr, length)
        _contract.check_freeze(pid, freeze, addr, length)
        os.close(_contract.check_process(pid, start, end - start))
        try:
            pieces = _contract.plan(pid, start, end, False, _kernel._nothing_copied)
            for p in pieces:
                p.method = "native"
        except OSError as e:
            if e.errno == errno.ESRCH:      # the process, not the range
                raise
            err = e
    else:
        start, end, pidfd, mem_fd = _emulate.admit(pid, addr, length, 0, 0, freeze)
        os.close(mem_fd)
        if pidfd >= 0:
            os.close(pidfd)
        try:
            pieces = _emulate.choose(pid, start, end, False, method, allow_copy)
            _emulate.close_fds(pieces)
        except OSError as e:
            if e.errno == errno.ESRCH:      # the process, not the range
                raise
            err = e
    if err is None:
        verdicts = [_verdict(p, None, start, method) for p in pieces]
    else:
        verdicts = _survey(pid, start, end, backend, method, allow_copy)
    return ClonePlan(pid, addr, length, start, end, backend, tuple(verdicts), err)


def _verdict(p: Piece, err: Optional[OSError], start: int, method: str) -> Verdict:
    part = Part(p.start - start, p.length, p.start, p.region.kind, p.region.prot,
                "" if err else p.method)
    if err:
        reason = f"refused: {err.strerror}"
    elif p.method == "native":
        reason = "the kernel's process_vm_mmap() copies its page tables"
    else:
        reason = _emulate.explain(p, method)
    return Verdict(part, p.region.perms, p.region.path, reason, err)


def _survey(pid: int, start: int, end: int, backend: str, method: str,
            allow_copy: bool) -> List[Verdict]:
    """The verdict VMA by VMA, for a range clone() refuses as a whole."""
    found: List[Tuple[Piece, Optional[OSError]]]
    if backend == "native":
        pieces, holes = _contract.survey(pid, start, end, _kernel._nothing_copied)
        found = []
        for p in pieces:
            why = _contract.refusal(p.region, pid)
            p.method = "native"
            found.append((p, _contract.refused(pid, p.region, why, start, end)
                          if why else None))
    else:
        found, holes = _emulate.survey(pid, start, end, method, allow_copy)
    verdicts = [_verdict(p, e, start, method) for p, e in found]
    for lo, hi in holes:
        err = os_error(errno.EFAULT, f"nothing is mapped at {lo:#x}-{hi:#x}", pid,
                       start, end - start, "maps")
        verdicts.append(Verdict(Part(lo - start, hi - lo, lo, "hole", 0, ""), "", "",
                                "a hole: nothing is mapped there", err))
    verdicts.sort(key=lambda v: v.part.source)
    return verdicts


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
    """The regions of process `pid` (/proc/PID/smaps: VmFlags and Rss),
    each with its kind (pvmmap.KINDS).  The process is checked as clone()
    checks it: EINVAL for pid <= 0 or a kernel thread, ESRCH for no such
    process or a zombie.  Reading needs only what /proc asks
    (PTRACE_MODE_READ), less than clone(): _api.plan_clone tells whether
    a clone is permitted."""
    _contract.check_pid(pid)
    _contract.check_alive(pid)
    try:
        regions = _maps.read_smaps(pid)
    except PermissionError:
        # The same cause and advice clone() gives (pvmmap check PID lists
        # the regions first).
        cause, hint = _contract.ptrace_denial(pid)
        raise os_error(errno.EPERM, f"reading /proc/{pid}/smaps: {cause}", pid,
                       hint=hint) from None
    if not regions:
        _contract.check_alive(pid)          # it became a zombie meanwhile
        raise os_error(errno.ESRCH, "the source has no memory (exiting)", pid)
    return regions
