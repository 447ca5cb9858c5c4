"""The benchmark runs the way its users run it: python3 benchmarks/bench.py."""
import os
import subprocess
import sys

BENCH = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))),
                     "benchmarks", "bench.py")
ROWS = ("pvmmap.clone(method='copy')", "naive Python read of /proc/PID/mem",
        "ctypes process_vm_readv -> fresh mmap",
        "C process_vm_readv loop -> fresh (baseline.c)", "memcpy, prefaulted",
        "ctypes process_vm_readv -> prefaulted", "memset of a fresh mmap",
        "fork() of the source", "scan + copy (core scan_pages)",
        "scan + copy (ctypes PAGEMAP_SCAN)", "pvmmap.clone(method='auto') 16 MiB")


def test_bench_runs_every_baseline_at_a_small_size():
    out = subprocess.run(
        [sys.executable, BENCH, "--size", "16M", "--repeat", "1", "--warmup", "0",
         "--no-gdb", "--shared-sizes", "16M", "--sparse-reserve", "1G",
         "--sparse-pages", "64", "--quiet-timeout", "1"],
        capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr
    for row in ROWS:
        assert row in out.stdout, row
    assert "ERROR" not in out.stdout, out.stdout
    assert "targets" in out.stdout
