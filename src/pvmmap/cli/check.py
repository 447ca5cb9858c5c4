"""`pvmmap check PID [RANGE]`: whether clone would succeed and how it would
map each VMA, from the planning clone itself runs (_api.plan_clone)."""

from __future__ import annotations

import argparse
import errno
from typing import Any, Dict, List, Tuple

import pvmmap
from pvmmap._api import plan_clone
from pvmmap._contract import ClonePlan, Verdict
from pvmmap.cli._common import (error_record, error_text, parse_range, print_json,
                                runs, size_text, who)

#: Errors about the process, not the range: every range would get them.
_PROCESS_ERRORS = (errno.ESRCH, errno.EPERM, errno.ENOSYS)


def plan_record(plan: ClonePlan) -> Dict[str, Any]:
    return {"address": plan.address, "length": plan.length, "start": plan.start,
            "end": plan.end, "backend": plan.backend, "ok": plan.ok,
            "error": error_record(plan.error),
            "parts": [verdict_record(v) for v in plan.parts]}


def verdict_record(v: Verdict) -> Dict[str, Any]:
    p = v.part
    return {"start": p.source, "end": p.source + p.length, "offset": p.offset,
            "length": p.length, "kind": p.kind, "perms": v.perms, "path": v.path,
            "method": p.method, "reason": v.reason, "error": error_record(v.error)}


def run(args: argparse.Namespace) -> int:
    ranges: List[Tuple[int, int]]
    if args.range is None:
        whole = True
        ranges = [(lo, hi - lo) for lo, hi in runs(pvmmap.maps(args.pid))]
    else:
        whole = False
        ranges = parse_range(args.pid, args.range, args.length)
    plans: List[ClonePlan] = []
    failed: List[Tuple[int, int, OSError]] = []
    for addr, length in ranges:
        try:
            plans.append(plan_clone(args.pid, addr, length, method=args.method,
                                    freeze=args.freeze, allow_copy=args.allow_copy))
        except OSError as e:
            # Refused before the VMAs are looked at.  What is about the
            # process is the command's error, as it is clone's; what is
            # about one of several ranges ([vsyscall] lies beyond the user
            # address space) is that range's verdict.
            if e.errno in _PROCESS_ERRORS or len(ranges) == 1:
                raise
            failed.append((addr, length, e))
    ok = all(p.ok for p in plans) and not failed
    if args.json:
        print_json({"pid": args.pid, "ok": ok,
                    "ranges": [plan_record(p) for p in plans] +
                    [{"address": a, "length": n, "ok": False,
                      "error": error_record(e), "parts": []} for a, n, e in failed]})
    else:
        _print(args.pid, plans, failed)
    return 0 if ok or whole else 1


def _print(pid: int, plans: List[ClonePlan],
           failed: List[Tuple[int, int, OSError]]) -> None:
    vmas = [v for p in plans for v in p.parts if v.part.kind != "hole"]
    good = sum(v.error is None for v in vmas)
    backend = plans[0].backend if plans else pvmmap.backend
    print(f"{who(pid)}: backend {backend}; {good} of {len(vmas)} VMAs can be "
          "cloned")
    rows: List[Tuple[int, str]] = []
    for plan in plans:
        verdict = "clone ok" if plan.ok else f"clone fails: {error_text(plan.error)}" \
            if plan.error else ""
        rows.append((plan.start, f"{plan.start:012x}-{plan.end:012x} "
                     f"{size_text(plan.end - plan.start)}: {verdict}"))
        for v in plan.parts:
            p = v.part
            method = p.method or "-"
            why = v.reason if v.error is None else f"refused: {error_text(v.error)}"
            rows.append((plan.start, f"  {p.source:012x}-{p.source + p.length:012x} "
                         f"{v.perms or '----':4} {p.kind:13} {method:6} "
                         f"{size_text(p.length):>9}  {v.path or '-'}: {why}"))
    for addr, length, e in failed:
        rows.append((addr, f"{addr:012x}-{addr + length:012x} "
                     f"{size_text(length)}: clone fails: {error_text(e)}"))
    for _, line in sorted(rows, key=lambda r: r[0]):
        print(line)
