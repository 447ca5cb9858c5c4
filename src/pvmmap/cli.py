"""The pvmmap command: demo, maps, features."""

from __future__ import annotations

import argparse
import sys
from typing import Callable, Dict, List, Optional

import pvmmap
from pvmmap._demo import _size, demo


def show_maps(args: argparse.Namespace) -> int:
    import psutil
    regions = pvmmap.maps(args.pid)
    try:
        p = psutil.Process(args.pid)
        print(f"pid {args.pid} ({p.name()}, user {p.username()}, "
              f"rss {_size(p.memory_info().rss)}): {len(regions)} regions")
    except psutil.Error:
        pass
    for r in regions:
        flags = " ".join(sorted(r.flags or ()))
        print(f"{r.start:012x}-{r.end:012x} {r.perms} {r.kind:13} "
              f"{_size(r.size):>9}  {r.path}  [{flags}]")
    return 0


def show_features(args: argparse.Namespace) -> int:
    f = pvmmap.features()
    for name in ("backend", "native", "syscall_nr", "uffd", "map_files",
                 "pagemap_scan"):
        value = getattr(f, name)
        reason = getattr(f, name + "_reason", "")
        print(f"{name:13} {value!s:16} {reason}")
    return 0


def main(argv: Optional[List[str]] = None) -> int:
    parser = argparse.ArgumentParser(
        prog="pvmmap", description="Clone another process's memory into yours.")
    sub = parser.add_subparsers(dest="cmd", required=True)
    sub.add_parser("demo", help="clone every kind of memory of a sample process")
    p = sub.add_parser("maps", help="the regions of a process and their kinds")
    p.add_argument("pid", type=int)
    sub.add_parser("features", help="what this kernel and these privileges allow")
    args = parser.parse_args(argv)
    commands: Dict[str, Callable[[argparse.Namespace], int]] = {
        "demo": lambda a: demo(), "maps": show_maps, "features": show_features}
    try:
        return commands[args.cmd](args)
    except OSError as e:
        print(f"pvmmap: {e}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
