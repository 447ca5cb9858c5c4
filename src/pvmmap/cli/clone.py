"""`pvmmap clone PID ADDR [LEN]`: clone a range and write its bytes.

Where the bytes go: to FILE with -o FILE (a summary on stdout, or JSON with
--json); to stdout with -o - ; with no -o, a hexdump when stdout is a
terminal and the raw bytes when it is a pipe or a file."""

from __future__ import annotations

import argparse
import os
import sys
import time
from typing import IO, Any, Dict, Optional

import pvmmap
from pvmmap import _native
from pvmmap.cli._common import UsageError, parse_range, print_json, size_text


def run(args: argparse.Namespace) -> int:
    if args.json and args.output in (None, "-"):
        raise UsageError("--json prints a summary: give the bytes a file with "
                         "-o FILE")
    ranges = parse_range(args.pid, args.addr, args.length)
    if len(ranges) > 1:
        listed = ", ".join(f"{a:x}-{a + n:x}" for a, n in ranges)
        raise UsageError(f"{args.addr!r} names {len(ranges)} separate ranges "
                         f"({listed}): give one as START-END")
    addr, length = ranges[0]
    out: Optional[IO[bytes]] = None
    made = False
    if args.output not in (None, "-"):
        made = not os.path.exists(args.output)
        out = open(args.output, "wb")   # before the clone: a bad path costs nothing
    try:
        t0 = time.perf_counter()
        with pvmmap.clone(args.pid, addr, length, method=args.method,
                          freeze=args.freeze, allow_copy=args.allow_copy) as m:
            seconds = time.perf_counter() - t0
            if not m.prot & _native.PROT_READ:
                m.mprotect(m.prot | _native.PROT_READ)   # PROT_NONE, write-only
            # write(2) is a kernel access: with a user-mode-only userfaultfd
            # it would get EFAULT for pages of a lazy clone not yet fetched.
            m.populate()
            with memoryview(m) as view:
                if out is not None:
                    out.write(view)
                elif args.output is None and sys.stdout.isatty():
                    hexdump(view, addr, sys.stdout)
                else:
                    sys.stdout.flush()
                    sys.stdout.buffer.write(view)
                    sys.stdout.buffer.flush()
            summary = _summary(args, m, addr, length, seconds)
    except BaseException:
        if out is not None:
            out.close()
            if made:
                os.unlink(args.output)      # no empty file for a failed clone
        raise
    if out is not None:
        out.close()
    if args.json:
        print_json(summary)
    elif out is not None:
        print(f"pid {args.pid} {addr:#x}-{addr + length:#x} ({summary['kind']}, "
              f"{summary['method']}): {size_text(length)} to {args.output} "
              f"in {seconds * 1e3:.2f} ms")
    return 0


def _summary(args: argparse.Namespace, m: pvmmap.Mapping, addr: int, length: int,
             seconds: float) -> Dict[str, Any]:
    return {"pid": args.pid, "address": addr, "length": length,
            "output": args.output, "kind": m.kind, "method": m.method,
            "seconds": seconds, "lost": m.lost, "stats": dict(m.stats),
            "parts": [{"offset": p.offset, "length": p.length, "source": p.source,
                       "kind": p.kind, "prot": p.prot, "method": p.method}
                      for p in m.parts]}


def hexdump(data: memoryview, address: int, out: IO[str]) -> None:
    """hexdump -C's layout, at the source's addresses; a run of identical
    lines shows once, then '*'."""
    last: Optional[bytes] = None
    starred = False
    for off in range(0, len(data), 16):
        line = bytes(data[off:off + 16])
        if line == last and off + 16 < len(data):
            if not starred:
                out.write("*\n")
                starred = True
            continue
        last, starred = line, False
        hexes = " ".join(f"{b:02x}" for b in line)
        if len(line) > 8:
            hexes = hexes[:23] + " " + hexes[23:]
        text = "".join(chr(b) if 32 <= b < 127 else "." for b in line)
        out.write(f"{address + off:012x}  {hexes:<49} |{text}|\n")
    out.write(f"{address + len(data):012x}\n")
