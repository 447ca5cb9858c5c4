"""`pvmmap dump PID DIR`: the process's memory as CRIU images (pvmmap.dump),
with a progress bar on a terminal."""

from __future__ import annotations

import argparse
import dataclasses
import os
import sys
from typing import Any, Optional, Tuple

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
    show = not args.quiet and not args.json and sys.stderr.isatty()
    progress = Progress() if show else None
    seen = [0, 0]

    def track(done: int, total: int) -> None:
        seen[:] = [done, total]
        if progress is not None:
            progress(done, total)

    server = None
    if args.page_server:
        host, port = args.page_server
        server = f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
    made = not os.path.exists(args.directory)
    if made:
        os.makedirs(args.directory)         # as `mkdir -p` would; undone on failure
    try:
        result = pvmmap.dump(args.pid, args.directory, freeze=args.freeze,
                             page_server=server, progress=track)
    except BaseException:
        if made:
            try:
                os.rmdir(args.directory)    # dump removed what it wrote
            except OSError:
                pass
        raise
    finally:
        if progress is not None:
            progress.close()
    where = f"page server {server}" if server else args.directory
    if args.json:
        fields = (dataclasses.asdict(result) if dataclasses.is_dataclass(result)
                  else {"result": result})
        print_json({"freeze": args.freeze, **fields})
    elif not args.quiet:
        print(f"pid {args.pid}: {result.pages} pages ({result.bytes} bytes) to "
              f"{where} in {result.seconds:.2f} s")
    return 0
