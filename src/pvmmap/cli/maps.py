"""`pvmmap maps PID`: the regions of a process, their kinds and sizes."""

from __future__ import annotations

import argparse

import pvmmap
from pvmmap.cli._common import print_json, region_record, size_text, who


def run(args: argparse.Namespace) -> int:
    regions = pvmmap.maps(args.pid)
    shown = [r for r in regions
             if (not args.kind or r.kind in args.kind)
             and (args.path is None or args.path in r.path)]
    if args.json:
        print_json({"pid": args.pid, "regions": [region_record(r) for r in shown]})
        return 0
    rss = sum(r.rss or 0 for r in regions)
    count = f"{len(regions)} regions" + (
        f", {len(shown)} shown" if len(shown) != len(regions) else "")
    print(f"{who(args.pid)}, rss {size_text(rss)}: {count}")
    print(f"{'start-end':25} {'perms':5} {'kind':13} {'size':>9} {'rss':>9} "
          f"{'offset':>8} {'dev':5} {'inode':>9}  path")
    for r in shown:
        print(f"{r.start:012x}-{r.end:012x} {r.perms:5} {r.kind:13} "
              f"{size_text(r.size):>9} {size_text(r.rss or 0):>9} "
              f"{r.offset:>8x} {r.dev:5} {r.inode:>9}  {r.path}")
    return 0
