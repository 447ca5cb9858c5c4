"""`pvmmap info`: what this kernel and these privileges allow, why, and how
to get the rest.  It describes the process running the command: run it as
the user (and with the capabilities) that will clone."""

from __future__ import annotations

import argparse
import os
import platform
from typing import Any, Dict, List, Optional

import pvmmap
from pvmmap.cli._common import print_json

#: The capabilities pvmmap can use, and what for.
CAPABILITIES = {
    19: ("CAP_SYS_PTRACE", "clone from processes of other users; full userfaultfd"),
    21: ("CAP_SYS_ADMIN", "map shared memory through /proc/PID/map_files"),
    40: ("CAP_CHECKPOINT_RESTORE", "map /proc/PID/map_files (Linux 5.9+), "
                                   "without the rest of CAP_SYS_ADMIN"),
}

_PTRACE_SCOPE = {
    "0": ("classic ptrace rules: a dumpable process of the same user", ""),
    "1": ("restricted: only this process's descendants (or a process that "
          "allowed it with PR_SET_PTRACER) unless CAP_SYS_PTRACE",
          "sysctl -w kernel.yama.ptrace_scope=0 (as root), or run with "
          "CAP_SYS_PTRACE, or start the source from the cloning process"),
    "2": ("admin-only: CAP_SYS_PTRACE is needed",
          "sysctl -w kernel.yama.ptrace_scope=0 or 1 (as root), or run with "
          "CAP_SYS_PTRACE"),
    "3": ("no attach: ptrace is disabled", "cannot be lowered without a reboot"),
}


def _read(path: str) -> Optional[str]:
    try:
        with open(path) as f:
            return f.read().strip()
    except OSError:
        return None


def _cap_effective() -> int:
    for line in (_read("/proc/self/status") or "").splitlines():
        if line.startswith("CapEff:"):
            return int(line.split()[1], 16)
    return 0


def _row(name: str, value: Any, reason: str, how: str = "") -> Dict[str, Any]:
    return {"name": name, "value": value, "reason": reason, "how": how}


def rows() -> List[Dict[str, Any]]:
    """Every line of `pvmmap info`: name, value, reason, how to get more."""
    f = pvmmap.features()
    requested = os.environ.get("PVMMAP_BACKEND") or "auto"
    out = [
        _row("backend", f.backend,
             f"PVMMAP_BACKEND={requested}" + (": the native call where the kernel "
                                              "has it" if requested == "auto" else ""),
             "PVMMAP_BACKEND=" + "|".join(pvmmap.BACKENDS)),
        _row("native", f.native, f.native_reason,
             "" if f.native else "boot a kernel with the process_vm_mmap() port "
             "(kernel/ in the repository); set PVMMAP_SYSCALL_NR if its number "
             "differs"),
        _row("syscall_nr", f.syscall_nr, "the number the native call is made with"),
        _row("uffd", f.uffd or "none", f.uffd_reason,
             "" if f.uffd == "full" else "sysctl -w vm.unprivileged_userfaultfd=1, "
             "or read-write access to /dev/userfaultfd, or run with CAP_SYS_PTRACE"),
    ]
    unpriv = _read("/proc/sys/vm/unprivileged_userfaultfd")
    out.append(_row(
        "unprivileged_userfaultfd", unpriv if unpriv is not None else "absent",
        {"0": "userfaultfd() for every fault needs CAP_SYS_PTRACE; others get "
              "user-mode-only", "1": "any process may call userfaultfd()"}.get(
            unpriv or "", "no such sysctl (kernel before 5.2)"),
        "sysctl -w vm.unprivileged_userfaultfd=1 (as root)" if unpriv == "0" else ""))
    dev = "/dev/userfaultfd"
    if not os.path.exists(dev):
        out.append(_row(dev, "absent", "no /dev/userfaultfd (Linux < 6.1, or not "
                        "in this container)", ""))
    elif os.access(dev, os.R_OK | os.W_OK):
        out.append(_row(dev, "read-write", "this user may open it: full "
                        "userfaultfd without the sysctl", ""))
    else:
        out.append(_row(dev, "no access", "this user may not open it",
                        f"give this user read-write access to {dev} (chgrp and "
                        "chmod g+rw; a udev rule makes it last)"))
    out += [
        _row("map_files", f.map_files, f.map_files_reason,
             "" if f.map_files else "run as root, or grant CAP_CHECKPOINT_RESTORE "
             "(setcap cap_checkpoint_restore+ep, capsh); or --allow-copy for a "
             "private copy of shared memory"),
        _row("pagemap_scan", f.pagemap_scan, f.pagemap_scan_reason,
             "" if f.pagemap_scan else "Linux 6.7 or newer"),
    ]
    scope = _read("/proc/sys/kernel/yama/ptrace_scope")
    if scope is None:
        out.append(_row("ptrace_scope", "none", "no Yama: the classic rules (same "
                        "user and a dumpable source, or CAP_SYS_PTRACE)", ""))
    else:
        reason, how = _PTRACE_SCOPE.get(scope, (f"Yama ptrace_scope {scope}", ""))
        out.append(_row("ptrace_scope", int(scope), reason, how))
    eff = _cap_effective()
    held = [name for bit, (name, _) in CAPABILITIES.items() if eff >> bit & 1]
    missing = [(name, use) for bit, (name, use) in CAPABILITIES.items()
               if not eff >> bit & 1]
    out.append(_row("capabilities", held,
                    f"effective capabilities of uid {os.getuid()}" +
                    (" (all pvmmap uses)" if not missing else ""),
                    "; ".join(f"{name} to {use}" for name, use in missing)))
    return out


def run(args: argparse.Namespace) -> int:
    table = rows()
    if args.json:
        print_json({"version": pvmmap.__version__, "kernel": platform.release(),
                    "uid": os.getuid(), "features": table})
        return 0
    print(f"pvmmap {pvmmap.__version__} on Linux {platform.release()}, "
          f"uid {os.getuid()}")
    for r in table:
        value = r["value"]
        if isinstance(value, bool):
            value = "yes" if value else "no"
        elif isinstance(value, list):
            value = ", ".join(value) or "none"
        print(f"{r['name']:25} {value!s:15} {r['reason']}")
        if r["how"]:
            print(f"{'':25} {'':15} to get it: {r['how']}")
    return 0
