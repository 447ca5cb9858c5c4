#!/usr/bin/env python3
"""Run pvmmap's benchmark: the same harness as `pvmmap bench` (src/pvmmap/_bench.py).

    python3 benchmarks/bench.py [--quick | --size 1G --repeat 5] [--json FILE]

Uses the installed pvmmap; falls back to this checkout's src/ when pvmmap is not installed.
"""
import os
import sys

try:
    from pvmmap import _bench
except ImportError:
    sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "src"))
    from pvmmap import _bench

if __name__ == "__main__":
    sys.exit(_bench.main(sys.argv[1:], prog="benchmarks/bench.py"))
