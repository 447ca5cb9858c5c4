"""What the commands share: the user's mistakes (UsageError, exit 2), pids,
addresses, lengths and ranges as typed, errors and records as printed."""

from __future__ import annotations

import argparse
import errno
import json
import re
import sys
from typing import Any, Dict, List, Optional, Sequence, Tuple

import pvmmap
from pvmmap._demo import _size as size_text

__all__ = ["UsageError", "pid_arg", "parse_range", "runs", "error_record",
           "error_text", "region_record", "print_json", "size_text", "who"]


class UsageError(Exception):
    """A mistake in what the user typed: one line, exit status 2."""


def pid_arg(text: str) -> int:
    """argparse type of a PID: an integer (pvmmap decides what it names)."""
    try:
        return int(text, 10)
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"not a process id: {text!r} (a number, as ps prints it)") from None


def _int(text: str) -> Optional[int]:
    """An integer as typed: 0x hex, or decimal; None if it is not one."""
    text = text.strip().replace("_", "")
    try:
        return int(text, 16) if text.lower().startswith("0x") else int(text, 10)
    except ValueError:
        return None


_UNITS = {"": 1, "k": 1 << 10, "m": 1 << 20, "g": 1 << 30, "t": 1 << 40}
_LENGTH = re.compile(r"(0x[0-9a-f]+|[0-9]+)\s*([kmgt]?)(?:i?b)?", re.I)


def parse_length(text: str) -> int:
    """'4096', '0x1000', '64K', '2MiB', '1G' (binary units): bytes."""
    m = _LENGTH.fullmatch(text.strip())
    if not m:
        raise UsageError(f"bad length {text!r}: a number of bytes (4096, 0x1000, "
                         "64K, 2M, 1G)")
    number = _int(m.group(1))
    assert number is not None
    return number * _UNITS[m.group(2).lower()]


def parse_address(text: str) -> int:
    value = _int(text)
    if value is None or value < 0:
        raise UsageError(f"bad address {text!r}: hex with 0x (0x7f3a1c000000), "
                         "decimal, START-END as maps prints it, or a region name")
    return value


_START_END = re.compile(r"(?:0x)?([0-9a-f]+)-(?:0x)?([0-9a-f]+)", re.I)


def runs(regions: Sequence[pvmmap.Region]) -> List[Tuple[int, int]]:
    """The (start, end) of each run of adjacent regions."""
    out: List[Tuple[int, int]] = []
    for r in regions:
        if out and out[-1][1] == r.start:
            out[-1] = (out[-1][0], r.end)
        else:
            out.append((r.start, r.end))
    return out


def parse_range(pid: int, addr: str, length: Optional[str]) -> List[Tuple[int, int]]:
    """The ranges (address, length) that ADDR [LEN] names in process pid:
    ADDR LEN, ADDR:LEN, START-END (hex, as maps prints it), or the name of
    a region ([heap], [stack], a path as maps prints it), which is all the
    VMAs of that name: one range per run of adjacent ones."""
    if length is not None:
        return [(parse_address(addr), parse_length(length))]
    head, colon, tail = addr.rpartition(":")
    if colon and _int(head) is not None:
        return [(parse_address(head), parse_length(tail))]
    m = _START_END.fullmatch(addr.strip())
    if m:
        start, end = int(m.group(1), 16), int(m.group(2), 16)
        if end <= start:
            raise UsageError(f"bad range {addr!r}: the end must be above the start")
        return [(start, end - start)]
    if _int(addr) is not None:
        raise UsageError(f"a length is needed after the address {addr!r} "
                         "(ADDR LEN, ADDR:LEN or START-END)")
    regions = pvmmap.maps(pid)
    named = [r for r in regions if addr in (r.path, r.file_path)]
    if not named:
        close = sorted({r.path for r in regions
                        if r.path and addr.lower() in r.path.lower()})
        looks_hex = re.fullmatch(r"[0-9a-f]+", addr, re.I)
        hint = ("; an address in hex needs 0x" if looks_hex else
                f"; did you mean {', '.join(close[:3])}" if close else
                f"; see pvmmap maps {pid}")
        raise UsageError(f"pid {pid} has no region named {addr!r}{hint}")
    return [(start, end - start) for start, end in runs(named)]


# ---- printing ---------------------------------------------------------------

def error_text(e: BaseException) -> str:
    """One line for an exception: pvmmap's messages already name the pid,
    the range and what to do."""
    if isinstance(e, OSError):
        text = e.strerror or str(e)
        if e.filename is not None:
            text += f": {e.filename}"
        return text
    return str(e)


def error_record(e: Optional[BaseException]) -> Optional[Dict[str, Any]]:
    if e is None:
        return None
    err = getattr(e, "errno", None)
    return {"errno": err, "name": errno.errorcode.get(err, "") if err else "",
            "type": type(e).__name__, "message": error_text(e)}


def region_record(r: pvmmap.Region) -> Dict[str, Any]:
    return {"start": r.start, "end": r.end, "perms": r.perms, "kind": r.kind,
            "size": r.size, "rss": r.rss, "offset": r.offset, "dev": r.dev,
            "inode": r.inode, "path": r.path, "pkey": r.pkey,
            "flags": sorted(r.flags) if r.flags is not None else None}


def print_json(obj: Any) -> None:
    json.dump(obj, sys.stdout, indent=2, default=str)
    sys.stdout.write("\n")


def who(pid: int) -> str:
    """'pid 42 (python3, user alice)', or 'pid 42' if psutil cannot tell."""
    import psutil
    try:
        p = psutil.Process(pid)
        return f"pid {pid} ({p.name()}, user {p.username()})"
    except (psutil.Error, KeyError):
        return f"pid {pid}"
