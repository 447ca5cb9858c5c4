"""Errors: OSError with the contract's errno and a message a user can act on.

Every message has one shape, built in one place:

    "<strerror> (<what failed>, pid <P>, <start>-<end>): <what to do>"

The pid and the range appear once; "what to do" comes from HINTS, the one
table of advice, so the same situation is always worded the same way.
"""

from __future__ import annotations

import errno
import os

#: The backends PVMMAP_BACKEND accepts; error messages are built from it.
BACKENDS = ("auto", "native", "emulated")

class ConfigError(ValueError):
    """A PVMMAP_* environment variable holds a value pvmmap cannot use.
    Raised by every call that picks a backend (never at import, so that
    `pvmmap info` and the image reader still work), naming the variable,
    its value and what it accepts."""


#: What clone(method=...) accepts.
METHODS = ("auto", "native", "copy", "lazy")

#: Advice per situation, formatted with the source's pid.
HINTS = {
    "ptrace": "run as the source's user (the source must be dumpable) or as "
              "root (CAP_SYS_PTRACE)",
    "ptrace-user": "run as the source's user, or with CAP_SYS_PTRACE (root)",
    "ptrace-dumpable": "only CAP_SYS_PTRACE (root) may read a process that is "
                       "not dumpable (it called prctl(PR_SET_DUMPABLE, 0) or "
                       "changed credentials, e.g. setuid)",
    "ptrace-setuid": "only CAP_SYS_PTRACE (root) may read a set-user-ID or "
                     "set-group-ID program (its uids or gids differ, and it is "
                     "not dumpable)",
    "ptrace-caps": "run with at least the capabilities it holds, or with "
                   "CAP_SYS_PTRACE",
    "ptrace-yama1": "start it as a child of this process, have it call "
                    "prctl(PR_SET_PTRACER, <this pid>), set "
                    "kernel.yama.ptrace_scope=0, or run with CAP_SYS_PTRACE",
    "ptrace-yama2": "run with CAP_SYS_PTRACE, or set kernel.yama.ptrace_scope "
                    "to 1 or 0",
    "ptrace-yama3": "kernel.yama.ptrace_scope=3 cannot be lowered until a reboot",
    "ptrace-userns": "trace it from its own user namespace, or from an ancestor "
                     "one with CAP_SYS_PTRACE there",
    "ptrace-lsm": "a security module (SELinux, AppArmor, Landlock) or kernel "
                  "lockdown refused it: see its audit log",
    "traced": "detach that tracer (gdb, strace), or clone without freeze=True",
    "map_files": "mapping /proc/{pid}/map_files needs CAP_SYS_ADMIN or "
                 "CAP_CHECKPOINT_RESTORE: run as root, or pass allow_copy=True "
                 "for a private copy instead of shared memory",
    "maps": "see /proc/{pid}/maps for what the source has mapped",
    "one-vma": "process_vm_mmap() maps one VMA; pvmmap.clone() spans several",
    "flags": "the only flags are PVMMAP_FIXED and PVMMAP_FIXED_NOREPLACE",
    "native": "this kernel has no process_vm_mmap(); use the emulated backend "
              "(PVMMAP_BACKEND=auto or emulated, or method='auto')",
    "syscall-nr": "set PVMMAP_SYSCALL_NR to the number the kernel's "
                  "process_vm_mmap() has",
    "freeze-self": "a process cannot stop itself; clone without freeze=True",
    "overlap": "pick a destination outside the source range, or drop fixed=True",
    "noreplace": "pick a free destination, or use fixed=True to replace it",
    "destination": "give a destination from 0 to 2^64 - 1 (0: let the kernel "
                   "choose)",
    "address-space": "the range must end below the end of the user address space",
    "refused": "this kind of memory cannot be cloned; clone the ranges around it",
    "lazy-uffd": "method='lazy' needs a userfaultfd: allow userfaultfd(2) "
                 "(seccomp, vm.unprivileged_userfaultfd, CAP_SYS_PTRACE) or "
                 "give access to /dev/userfaultfd, or clone with method='copy'",
    "lazy-lost": "the source exited, exec'd or unmapped the range before these "
                 "pages were fetched: they are gone (touching one raises SIGBUS)",
}

#: The hint an error gets when its raiser names none (hint="" for none).
DEFAULT_HINTS = {errno.EPERM: "ptrace", errno.EFAULT: "maps",
                 errno.EEXIST: "noreplace"}


def describe_range(start: int | None, length: int | None) -> str | None:
    """'0x1000-0x3000' (or '0x1000' without a length)."""
    if start is None:
        return None
    if length is None:
        return f"{start:#x}"
    return f"{start:#x}-{start + length:#x}"


def message(err: int, what: str, pid: int | None = None, start: int | None = None,
            length: int | None = None, hint: str | None = None) -> str:
    """The text of an error; `hint` is a key of HINTS, None for the errno's
    default (DEFAULT_HINTS) or "" for none."""
    parts = [what]
    if pid is not None:
        parts.append(f"pid {pid}")
    rng = describe_range(start, length)
    if rng:
        parts.append(rng)
    msg = f"{os.strerror(err)} ({', '.join(parts)})"
    if hint is None:
        hint = DEFAULT_HINTS.get(err)
    if hint and not (pid is None and "{pid}" in HINTS[hint]):
        msg += ": " + HINTS[hint].format(pid=pid)
    return msg


def os_error(err: int, what: str, pid: int | None = None, start: int | None = None,
             length: int | None = None, hint: str | None = None) -> OSError:
    """OSError(err, message(...)); Python picks the subclass
    (ProcessLookupError, PermissionError, FileExistsError, ...)."""
    return OSError(err, message(err, what, pid, start, length, hint))
