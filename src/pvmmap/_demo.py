"""`pvmmap demo`: start a small child holding every kind of memory, clone
each region, check the bytes (and that shared memory is shared, private
memory a snapshot) and print a table."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
import time
from typing import Any, Dict, List

import pvmmap
from pvmmap import _native

PAGE = _native.PAGESIZE
MiB = 1 << 20

# The child: maps the regions of argv[1] (JSON), fills them, prints their
# addresses as one JSON line, then answers "read ADDR N" / "write ADDR HEX"
# lines on stdin until EOF.  Page i of a region with seed s holds the 16
# bytes (s, i) repeated.
_CHILD = r"""
import ctypes, json, mmap, os, sys
from multiprocessing import shared_memory
PAGE = mmap.PAGESIZE
NORESERVE = getattr(mmap, "MAP_NORESERVE", 0x4000)
libc = ctypes.CDLL(None, use_errno=True)
libc.mprotect.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int]
keep, out = [], {"pid": os.getpid()}
for r in json.loads(sys.argv[1]):
    size, kind, fd = r["size"], r["kind"], -1
    flags = mmap.MAP_PRIVATE
    if kind == "sparse":
        flags |= NORESERVE
    elif kind == "shared":
        flags = mmap.MAP_SHARED
    elif kind == "memfd":
        fd = os.memfd_create(r["name"])
        os.ftruncate(fd, size)
        flags = mmap.MAP_SHARED
    elif kind == "shm":
        shm = shared_memory.SharedMemory(create=True, size=size)
        keep.append(shm)
        fd = os.open("/dev/shm/" + shm.name, os.O_RDWR)
        flags = mmap.MAP_SHARED
    elif kind == "file":
        fd = os.open(r["path"], os.O_RDWR)
    m = mmap.mmap(fd, size, flags=flags)
    addr = ctypes.addressof(ctypes.c_char.from_buffer(m))
    keep.append(m)
    for i in r.get("pages", range(size // PAGE)):
        m[i * PAGE:(i + 1) * PAGE] = (r["seed"].to_bytes(8, "little")
                                      + i.to_bytes(8, "little")) * (PAGE // 16)
    if "prot" in r:
        libc.mprotect(addr, size, r["prot"])
    out[r["name"]] = addr
print(json.dumps(out), flush=True)
for line in sys.stdin:
    op, addr, arg = line.split()
    if op == "write":
        data = bytes.fromhex(arg)
        ctypes.memmove(int(addr), data, len(data))
        print("ok", flush=True)
    else:
        print(ctypes.string_at(int(addr), int(arg)).hex(), flush=True)
for obj in keep:
    if isinstance(obj, shared_memory.SharedMemory):
        obj.close()
        obj.unlink()
"""


def page_bytes(seed: int, index: int) -> bytes:
    """Page `index` of a demo region with `seed`."""
    return (seed.to_bytes(8, "little") + index.to_bytes(8, "little")) * (PAGE // 16)


class Child:
    """The demo's source process."""

    def __init__(self, spec: List[Dict[str, Any]]) -> None:
        self.proc = subprocess.Popen([sys.executable, "-c", _CHILD, json.dumps(spec)],
                                     stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                     text=True)
        line = self.proc.stdout.readline() if self.proc.stdout else ""
        if not line:
            self.close()
            raise RuntimeError("the demo's source process failed to start")
        self.addr: Dict[str, int] = json.loads(line)
        self.pid = self.addr["pid"]

    def _ask(self, line: str) -> str:
        assert self.proc.stdin and self.proc.stdout
        self.proc.stdin.write(line + "\n")
        self.proc.stdin.flush()
        return self.proc.stdout.readline().strip()

    def read(self, addr: int, n: int) -> bytes:
        return bytes.fromhex(self._ask(f"read {addr} {n}"))

    def write(self, addr: int, data: bytes) -> None:
        self._ask(f"write {addr} {data.hex()}")

    def close(self) -> None:
        if self.proc.stdin:
            self.proc.stdin.close()
        try:
            self.proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        if self.proc.stdout:
            self.proc.stdout.close()


def _spec(path: str) -> List[Dict[str, Any]]:
    return [
        dict(name="heap (private anon)", kind="anon", size=64 * MiB, seed=1),
        dict(name="sparse 4 GiB, 64 pages", kind="sparse", size=4 << 30, seed=2,
             pages=list(range(0, 1 << 20, 1 << 14))),
        dict(name="shared anon", kind="shared", size=16 * MiB, seed=3),
        dict(name="memfd", kind="memfd", size=16 * MiB, seed=4),
        dict(name="POSIX shm", kind="shm", size=4 * MiB, seed=5),
        dict(name="private file, 2 dirty pages", kind="file", size=4 * MiB,
             seed=6, pages=[0, 7], path=path),
        dict(name="read-only anon", kind="anon", size=4 * MiB, seed=7,
             prot=_native.PROT_READ),
        dict(name="PROT_NONE anon", kind="anon", size=1 * MiB, seed=8,
             prot=_native.PROT_NONE),
    ]


def _verify(child: Child, r: Dict[str, Any], m: pvmmap.Mapping) -> str:
    """Check the clone's bytes (and sharing) against the source."""
    addr = child.addr[r["name"]]
    if r.get("prot") == _native.PROT_NONE:
        m.mprotect(_native.PROT_READ)
        ok = m[:PAGE] == page_bytes(r["seed"], 0)
        return "bytes ok (read after mprotect)" if ok else "BYTES DIFFER"
    pages = r.get("pages", range(r["size"] // PAGE))
    if not all(m[i * PAGE:(i + 1) * PAGE] == page_bytes(r["seed"], i) for i in pages):
        return "BYTES DIFFER"
    if m.method == "share":
        m[0:4] = b"PVMM"
        seen = child.read(addr, 4) == b"PVMM"
        child.write(addr + 8, b"back")
        back = m[8:12] == b"back"
        return "bytes ok, shared both ways" if seen and back else "NOT SHARED"
    if m.method in ("copy", "file") and "prot" not in r:
        child.write(addr, b"late")
        snap = m[0:4] != b"late"
        return "bytes ok, snapshot" if snap else "NOT A SNAPSHOT"
    return "bytes ok"


def _size(n: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB"):
        if n < 1024 or unit == "GiB":
            return f"{n:.0f} {unit}" if n == int(n) else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n} GiB"


def demo() -> int:
    """Run the demo; returns the exit status (1 if any check failed)."""
    f = pvmmap.features()
    print(f"pvmmap {pvmmap.__version__}: backend {f.backend} ({f.native_reason})")
    failures = 0
    with tempfile.TemporaryDirectory() as tmp:
        path = os.path.join(tmp, "data.bin")
        with open(path, "wb") as out:
            out.write(os.urandom(4 * MiB))
        spec = _spec(path)
        child = Child(spec)
        try:
            print(f"source pid {child.pid}\n")
            print(f"{'region':30} {'kind':13} {'method':7} {'size':>10} "
                  f"{'time':>10}  check")
            for r in spec:
                t0 = time.perf_counter()
                m = pvmmap.clone(child.pid, child.addr[r["name"]], r["size"],
                                 allow_copy=True)
                dt = time.perf_counter() - t0
                with m:
                    check = _verify(child, r, m)
                    kind, method = m.kind, m.method
                failures += "DIFFER" in check or "NOT" in check
                print(f"{r['name']:30} {kind:13} {method:7} "
                      f"{_size(r['size']):>10} {dt * 1e3:8.2f} ms  {check}")
        finally:
            child.close()
    print("\nall regions verified" if not failures else f"\n{failures} FAILED")
    return 1 if failures else 0
