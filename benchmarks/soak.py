"""Soak: clone/close cycles across every kind and method, then the same from
8 threads at once, sampling what a leak would grow.  Not a benchmark: it
reports resource figures and exits 1 when one is not flat.

    python3 benchmarks/soak.py [--cycles 10000] [--threads 8] [--every N] [--json]

Every cycle clones one region of a source child (tests/child.py) with one
method, checks a page of its bytes against the pattern the source wrote,
and closes it.  The (kind, method) pairs are taken in turn:

  kinds   private anon, shared anon, memfd, private file (its first page
          written privately), shared file, POSIX shm (/dev/shm), SysV shm
  methods auto, copy, lazy + one touch, lazy + populate()

The concurrent phase runs `--cycles` more cycles split over `--threads`
threads, each starting at another pair.

Every `--every` cycles (after gc.collect()) it samples: open fds
(/proc/self/fd), /proc/self/maps lines, split into the allocator's (rw-p
anonymous and [heap]: pymalloc arenas and malloc's large blocks come and
go on their own, so they are counted but not judged, as in
tests/_helpers.leftovers) and the rest, which is what a leaked clone would
add (a clone's reservation is PROT_NONE, its pieces carry the source's
file or protection); threads (/proc/self/task); VmRSS and VmSize.  A leaked
read-write anonymous copy hides among the allocator's lines, but not from
VmSize: each one is a region of 256 KiB here, thousands of times over.

Flat means: fds, non-allocator maps lines and threads at the end of each
phase equal to that phase's first sample, taken after a warm-up of the
same shape (every pair once per thread, the threads joined), and VmRSS and
VmSize at most 1% above it.  The concurrent phase needs its own warm-up:
glibc gives threads arenas of their own (64 MiB of address space each,
PROT_NONE lines in maps) and caches the stacks of joined threads, once.
"""
from __future__ import annotations

import argparse
import gc
import json
import os
import sys
import tempfile
import threading
import time
from typing import Callable, Dict, List, Tuple

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(REPO, "tests"))
import child  # noqa: E402
from child import PAGE, page_bytes  # noqa: E402

import pvmmap  # noqa: E402

SIZE = 64 * PAGE            # 256 KiB per region
KINDS = ("private-anon", "shared-anon", "memfd", "private-file", "shared-file",
         "shm", "sysv")
METHODS = ("auto", "copy", "lazy-touch", "lazy-populate")
RSS_SLACK = 0.01            # 1%


def _under_asan() -> bool:
    with open("/proc/self/maps") as f:
        return "libasan" in f.read()


#: On the sanitized build (.ci/sanitize) ASan's quarantine holds freed
#: memory (256 MiB by default) and its allocator maps more as it fills:
#: RSS and VmSize grow with no leak, so only fds, maps and threads are
#: judged there (a leaked clone is a maps line).
UNDER_ASAN = _under_asan()


def spec(path_private: str, path_shared: str) -> List[dict]:
    return [
        dict(name="private-anon", kind="anon", size=SIZE, seed=11),
        dict(name="shared-anon", kind="shared", size=SIZE, seed=12),
        dict(name="memfd", kind="memfd", size=SIZE, seed=13),
        # A private file mapping whose first page the source wrote: the
        # clone maps the file and copies that page over it.
        dict(name="private-file", kind="file", size=SIZE, path=path_private,
             fill=[0], seed=14),
        dict(name="shared-file", kind="file", size=SIZE, path=path_shared,
             shared=True, seed=15),
        dict(name="shm", kind="shm", size=SIZE, seed=16),
        dict(name="sysv", kind="sysv", size=SIZE, seed=17),
    ]


def sample() -> Dict[str, int]:
    gc.collect()
    alloc = other = 0
    with open("/proc/self/maps") as f:
        for line in f:
            fields = line.split(None, 5)
            path = fields[5].strip() if len(fields) > 5 else ""
            if fields[1] == "rw-p" and path in ("", "[heap]"):
                alloc += 1
            else:
                other += 1
    status = {}
    with open("/proc/self/status") as f:
        for line in f:
            key, _, value = line.partition(":")
            if key in ("VmRSS", "VmSize"):
                status[key] = int(value.split()[0])
    return {"fds": len(os.listdir("/proc/self/fd")), "maps": other,
            "alloc_maps": alloc, "threads": len(os.listdir("/proc/self/task")),
            "rss_kb": status["VmRSS"], "vmsize_kb": status["VmSize"]}


class Soak:
    def __init__(self, src: child.Source):
        self.src = src
        self.pairs = [(k, m) for k in KINDS for m in METHODS]
        self.expected = {}
        for r in src.spec.values():
            # the page each cycle checks: page i % 64 of the pattern
            self.expected[r["name"]] = r.get("seed", 1)
        self.wrong: List[str] = []

    def cycle(self, i: int) -> None:
        kind, method = self.pairs[i % len(self.pairs)]
        addr = self.src.addr[kind]
        index = 0 if kind == "private-file" else i % (SIZE // PAGE)
        call = "lazy" if method.startswith("lazy") else method
        with pvmmap.clone(self.src.pid, addr, SIZE, method=call) as m:
            if method == "lazy-populate":
                m.populate()
            got = m[index * PAGE:index * PAGE + 64]
            if got != page_bytes(self.expected[kind], index)[:64]:
                self.wrong.append(f"cycle {i}: {kind}/{method} page {index}")


def run_phase(name: str, soak: Soak, cycles: int, threads: int, every: int,
              rows: List[Tuple[str, int, Dict[str, int]]]) -> None:
    """A warm-up (every pair once on each of `threads` threads), its sample
    (cycle 0, the phase's base), then `cycles` cycles on `threads` threads;
    the main thread samples every `every` cycles done (counted over all
    threads) and once the threads are joined."""
    if threads == 1:
        for i in range(len(soak.pairs)):
            soak.cycle(i)
    else:
        _threads(soak, len(soak.pairs) * threads, threads, 0, [])
    rows.append((name, 0, sample()))
    if threads == 1:
        for i in range(cycles):
            soak.cycle(i)
            if (i + 1) % every == 0:
                rows.append((name, i + 1, sample()))
        return
    _threads(soak, cycles, threads, every, rows, name)


def _threads(soak: Soak, cycles: int, threads: int, every: int,
             rows: List[Tuple[str, int, Dict[str, int]]], name: str = "") -> None:
    done = [0]
    lock = threading.Lock()
    errors: List[BaseException] = []

    def worker(first: int, count: int) -> None:
        try:
            for j in range(count):
                soak.cycle(first + j)
                with lock:
                    done[0] += 1
        except BaseException as e:          # reported after the phase
            errors.append(e)

    share = cycles // threads
    pool = [threading.Thread(target=worker, args=(t * 7, share))
            for t in range(threads)]
    for t in pool:
        t.start()
    next_sample, deadline = every, time.monotonic() + 3600
    while any(t.is_alive() for t in pool):
        if time.monotonic() > deadline:
            raise SystemExit(f"{name}: not done within an hour")
        with lock:
            n = done[0]
        if every and n >= next_sample:
            rows.append((name, n, sample()))
            next_sample += every
        time.sleep(0.01)
    for t in pool:
        t.join(60)
    if every:
        rows.append((name, done[0], sample()))
    if errors:
        raise errors[0]


def judge(rows: List[Tuple[str, int, Dict[str, int]]]) -> List[str]:
    """What is not flat at the end of each phase, relative to its base."""
    bad = []
    for phase in dict.fromkeys(r[0] for r in rows):
        samples = [r[2] for r in rows if r[0] == phase]
        base, last = samples[0], samples[-1]
        for key in ("fds", "maps", "threads"):
            if last[key] != base[key]:
                bad.append(f"{phase}: {key} {base[key]} -> {last[key]}")
        for key in ("rss_kb", "vmsize_kb") if not UNDER_ASAN else ():
            if last[key] > base[key] * (1 + RSS_SLACK):
                bad.append(f"{phase}: {key} {base[key]} -> {last[key]} "
                           f"(+{(last[key] / base[key] - 1) * 100:.2f}%, over 1%)")
    return bad


def main(argv: List[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--cycles", type=int, default=10000,
                    help="cycles per phase (default 10000)")
    ap.add_argument("--threads", type=int, default=8)
    ap.add_argument("--every", type=int, default=0,
                    help="sample every N cycles (default cycles/10)")
    ap.add_argument("--json", action="store_true", help="print the samples as JSON")
    args = ap.parse_args(argv)
    every = args.every or max(1, args.cycles // 10)
    files = []
    for seed in (14, 15):
        fd, path = tempfile.mkstemp(prefix="pvmmap-soak-")
        os.write(fd, child.pattern(SIZE, seed))
        os.close(fd)
        files.append(path)
    src = child.Source(spec(*files))
    rows: List[Tuple[str, int, Dict[str, int]]] = []
    t0 = time.monotonic()
    try:
        soak = Soak(src)
        run_phase("serial", soak, args.cycles, 1, every, rows)
        run_phase(f"{args.threads} threads", soak, args.cycles, args.threads,
                  every, rows)
    finally:
        src.close()
        for path in files:
            os.unlink(path)
    seconds = time.monotonic() - t0
    bad = judge(rows) + soak.wrong[:10]
    if args.json:
        print(json.dumps({"rows": rows, "seconds": seconds, "bad": bad,
                          "wrong_bytes": len(soak.wrong)}))
    else:
        print(f"{'phase':12} {'cycles':>7} {'fds':>4} {'maps':>5} {'alloc':>5} "
              f"{'thr':>4} {'RSS KiB':>9} {'VmSize KiB':>10}")
        for phase, n, s in rows:
            print(f"{phase:12} {n:7} {s['fds']:4} {s['maps']:5} {s['alloc_maps']:5} "
                  f"{s['threads']:4} {s['rss_kb']:9} {s['vmsize_kb']:10}")
        if UNDER_ASAN:
            print("RSS and VmSize not judged: ASan's quarantine grows them")
        print(f"{len(soak.pairs)} (kind, method) pairs, {args.cycles} cycles per "
              f"phase, {seconds:.1f} s, {len(soak.wrong)} wrong pages")
        print("flat" if not bad else "NOT FLAT:\n  " + "\n  ".join(bad))
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
