#!/usr/bin/env python3
"""Run pvmmap's benchmark (benchmarks/harness.py; results in benchmarks/RESULTS.md).

    python3 benchmarks/bench.py [--quick | --size 1G --repeat 5] [--json FILE]

Uses the installed pvmmap (`pip install -e .`) and the tests' child process.
"""
import sys

from harness import main

if __name__ == "__main__":
    sys.exit(main(sys.argv[1:], prog="benchmarks/bench.py"))
