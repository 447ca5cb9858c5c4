"""The benchmark runs the way its users run it: python3 benchmarks/bench.py."""
import os
import subprocess
import sys

BENCH = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))),
                     "benchmarks", "bench.py")
ROWS = ("pvmmap.clone(method='copy')", "pvmmap.clone(method='copy') direct fill",
        "naive Python read of /proc/PID/mem",
        "ctypes process_vm_readv -> fresh mmap",
        "C process_vm_readv loop -> fresh (baseline.c)", "memcpy, prefaulted",
        "ctypes process_vm_readv -> prefaulted", "memset of a fresh mmap",
        "fork() of the source", "scan + copy (core scan_pages)",
        "scan + copy (ctypes PAGEMAP_SCAN)", "pvmmap.clone(method='auto') 16 MiB",
        "pvmmap.clone(method='lazy') call 16 MiB", "pvmmap.clone(method='lazy') call 32 MiB",
        "pvmmap.clone(method='lazy') call 1 GiB, 2000-VMA source",
        "pvmmap.clone(method='auto') shared 1 GiB, 2000-VMA source",
        "lazy clone + sequential touch of every page",
        "C userfaultfd loop, 64 KiB fetches (baseline.c)", "lazy clone + populate()",
        "pvmmap.clone(method='copy'), same region",
        "lazy fault latency, sequential 4 KiB touches",
        "lazy fault latency, random 4 KiB touches")
TARGETS = ("eager clone >= 2.5x the naive", "eager clone >= 1.3x the direct-fill",
           "lazy: call flat in size", "lazy: call from a source with many VMAs",
           "shared: call from a source with many VMAs",
           "lazy: sequential touch of all of it", "lazy: populate()",
           "lazy fault latency, sequential", "lazy fault latency, random")


def test_bench_runs_every_baseline_at_a_small_size():
    out = subprocess.run(
        [sys.executable, BENCH, "--size", "16M", "--repeat", "1", "--warmup", "0",
         "--no-gdb", "--shared-sizes", "16M", "--sparse-reserve", "1G",
         "--sparse-pages", "64", "--quiet-timeout", "1", "--lazy-sizes", "16M,32M",
         "--lazy-vmas", "2000", "--lazy-lat-pages", "256"],
        capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr
    for row in ROWS:
        assert row in out.stdout, row
    assert "ERROR" not in out.stdout, out.stdout
    assert "targets" in out.stdout
    for target in TARGETS:
        assert target in out.stdout, target
    # the direct-fill row really ran with the UFFDIO_COPY fill switched off
    # (stats has no "fill" then, or says "direct")
    direct = out.stdout.split("pvmmap.clone(method='copy') direct fill", 1)[1].split("\n")[1]
    assert "stats " in direct and "fill=UFFDIO_COPY" not in direct, direct
