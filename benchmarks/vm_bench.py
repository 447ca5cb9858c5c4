"""Native clone vs fork() vs the emulated eager clone, in one run (issue 3).

Meant for the VM with the kernel port:
    kernel/run-vm -- python3 benchmarks/vm_bench.py [--size 256M] [--repeat 5]
The source is the tests' child (tests/child.py) with one pattern-filled anon
region (4 KiB pages, or "thp": 2 MiB aligned with MADV_HUGEPAGE); its "fork"
command times os.fork() of itself (the page-table copy the native call
shares).  The parent times the raw sys_process_vm_mmap() call,
clone(method="native") (the call plus pvmmap's Python around it) and
clone(method="copy") of the same region.  Every configuration runs once per
repetition, round robin; medians are printed.
"""
import argparse
import os
import statistics
import struct
import sys
import time

import pvmmap

sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))),
                                "tests"))
import child  # noqa: E402

SEED = 1


def anon_huge_kb(pid):
    with open(f"/proc/{pid}/smaps_rollup") as f:
        for line in f:
            if line.startswith("AnonHugePages:"):
                return int(line.split()[1])
    return 0


def run(size, thp, repeat):
    src = child.Source([{"name": "region", "kind": "anon", "size": size, "seed": SEED,
                         "thp": thp}])
    try:
        huge = anon_huge_kb(src.pid)
        return measure(src, src.addr["region"], size, repeat), huge
    finally:
        src.close()


def measure(src, addr, size, repeat):
    pid = src.pid
    results = {"fork()": [], "sys_process_vm_mmap": [], "clone native": [],
               "clone copy (emulated)": []}

    def do_fork():
        return src.fork()["fork_ns"] / 1e6

    def do_clone(method):
        def f():
            t = time.perf_counter_ns()
            m = pvmmap.clone(pid, addr, size, method=method)
            dt = (time.perf_counter_ns() - t) / 1e6
            # page 1 starts with (seed, 1): child.page_bytes()
            assert m[child.PAGE:child.PAGE + 16] == struct.pack("<QQ", SEED, 1)
            assert m.method == ("native" if method == "native" else "copy")
            m.close()
            return dt
        return f

    def do_raw():
        t = time.perf_counter_ns()
        dst = pvmmap.sys_process_vm_mmap(pid, addr, size, 0, 0)
        dt = (time.perf_counter_ns() - t) / 1e6
        pvmmap.munmap(dst, size)
        return dt

    configs = [("fork()", do_fork), ("sys_process_vm_mmap", do_raw),
               ("clone native", do_clone("native")),
               ("clone copy (emulated)", do_clone("copy"))]
    for rep in range(repeat):
        for name, f in configs[rep % 4:] + configs[:rep % 4]:
            results[name].append(f())
    return results


def parse_size(s):
    units = {"K": 10, "M": 20, "G": 30}
    return int(s[:-1]) << units[s[-1].upper()] if s[-1].upper() in units else int(s)


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--size", default="256M")
    ap.add_argument("--repeat", type=int, default=5)
    args = ap.parse_args(argv)
    size = parse_size(args.size)
    f = pvmmap.features()
    print(f"kernel {os.uname().release}, backend {f.backend}, native: {f.native_reason}")
    if not f.native:
        print("this kernel has no process_vm_mmap: run it inside kernel/run-vm")
        return 1
    for thp in (False, True):
        results, huge = run(size, thp, args.repeat)
        fork = statistics.median(results["fork()"])
        native = statistics.median(results["clone native"])
        raw = statistics.median(results["sys_process_vm_mmap"])
        copy = statistics.median(results["clone copy (emulated)"])
        label = "THP" if thp else "4 KiB pages"
        print(f"\n{size >> 20} MiB, {label} (source AnonHugePages {huge >> 10} MiB), "
              f"medians of {args.repeat}:")
        for name, v in results.items():
            print(f"  {name:24} {statistics.median(v):9.2f} ms   "
                  f"(min {min(v):.2f}, max {max(v):.2f})")
        print(f"  native / fork = {native / fork:.2f} (clone), {raw / fork:.2f} "
              "(raw call)   (target <= 1.5)")
        print(f"  emulated / native = {copy / native:.1f}x   (target >= 20)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
