"""`pvmmap dump PID DIR`: the process's memory as CRIU images, with a
progress bar on a terminal (pvmmap.dump, from the checkpoint/restore work)."""

from __future__ import annotations

import argparse
import sys
import time
from typing import Any, Callable, Optional, Tuple

import pvmmap
from pvmmap.cli._common import print_json


def page_server_arg(text: str) -> Tuple[str, int]:
    """HOST:PORT (an IPv6 host in brackets: [::1]:1234)."""
    host, colon, port = text.rpartition(":")
    host = host[1:-1] if host.startswith("[") and host.endswith("]") else host
    if not colon or not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise argparse.ArgumentTypeError(f"not HOST:PORT: {text!r}")
    return host, int(port)


class Progress:
    """progress(done_bytes, total_bytes) for pvmmap.dump: a tqdm bar on
    stderr, made at the first call."""

    def __init__(self) -> None:
        self.bar: Optional[Any] = None

    def __call__(self, done: int, total: int) -> None:
        if self.bar is None:
            from tqdm import tqdm
            self.bar = tqdm(total=total, unit="B", unit_scale=True,
                            unit_divisor=1024, desc="dump", file=sys.stderr,
                            dynamic_ncols=True)
        if total != self.bar.total:
            self.bar.total = total
        self.bar.update(done - self.bar.n)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()


def run(args: argparse.Namespace) -> int:
    dump: Optional[Callable[..., Any]] = getattr(pvmmap, "dump", None)
    if dump is None:
        print("pvmmap dump: not in this version of pvmmap: dump (CRIU memory "
              "images) arrives with the checkpoint/restore work", file=sys.stderr)
        return 1
    show = not args.quiet and not args.json and sys.stderr.isatty()
    progress = Progress() if show else None
    seen = [0, 0]

    def track(done: int, total: int) -> None:
        seen[:] = [done, total]
        if progress is not None:
            progress(done, total)

    t0 = time.perf_counter()
    try:
        result = dump(args.pid, args.directory, freeze=args.freeze,
                      page_server=args.page_server, progress=track)
    finally:
        if progress is not None:
            progress.close()
    seconds = time.perf_counter() - t0
    where = (f"page server {args.page_server[0]}:{args.page_server[1]}"
             if args.page_server else args.directory)
    if args.json:
        print_json({"pid": args.pid, "directory": args.directory,
                    "page_server": args.page_server, "freeze": args.freeze,
                    "bytes": seen[0], "seconds": seconds, "result": result})
    elif not args.quiet:
        print(f"pid {args.pid}: {seen[0]} bytes of memory to {where} in "
              f"{seconds:.2f} s")
    return 0
