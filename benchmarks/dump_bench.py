"""Benchmark of pvmmap.dump() and pvmmap.criu.open() against CRIU and gdb.

    sudo python3 benchmarks/dump_bench.py [--size 1G] [--repeat 3] [--dir /dev/shm]

One dense private anonymous source (tests/child.py's Source, every page
written, as benchmarks/harness.py makes it), then, round-robin (the order
rotated by one per repetition), each of:

* pvmmap.dump(pid, DIR) (frozen, the default);
* criu dump -t PID -D DIR --leave-running --shell-job (CRIU 4.1.1 from
  tools/build-criu);
* gdb -p PID -batch -ex 'gcore DIR/core';
* pvmmap.dump(pid, DIR, page_server=127.0.0.1:P) to a `criu page-server`
  on this host, and criu dump --page-server to one (the page server's
  time to exit after the stream ends is included in both);
* pvmmap.criu.open() of the pvmmap dump: open() + mapping() of the big VMA
  (its mmaps), then the first full read of it (numpy sum of its words), next
  to the same read of the pages file mapped directly (page-cache speed).

Output files go under DIR (a tmpfs by default) and are removed after each
sample.  Prints medians (and all samples) in ms and the ratios; nothing is
asserted.  Needs root (CRIU, ptrace of gdb); rows whose tool is missing are
skipped with the reason.
"""

from __future__ import annotations

import argparse
import mmap
import os
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(REPO, "tests"))
import child  # noqa: E402

import numpy  # noqa: E402
import pvmmap  # noqa: E402
from pvmmap import criu  # noqa: E402


def size_arg(text):
    units = {"K": 1 << 10, "M": 1 << 20, "G": 1 << 30}
    return int(text[:-1]) * units[text[-1].upper()] if text[-1].upper() in units else int(text)


def criu_binary():
    r = subprocess.run([os.path.join(REPO, "tools", "build-criu")], capture_output=True,
                       text=True)
    if r.returncode:
        return None, (r.stderr.strip().splitlines() or ["tools/build-criu failed"])[-1]
    return r.stdout.strip(), None


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def page_server(criu_bin, directory, port):
    os.makedirs(directory)
    rfd, wfd = os.pipe()
    p = subprocess.Popen([criu_bin, "page-server", "-D", directory, "--port", str(port),
                          "--status-fd", str(wfd), "-o", "ps.log"], pass_fds=(wfd,),
                         stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                         stderr=subprocess.DEVNULL)
    os.close(wfd)
    ok = os.read(rfd, 1)
    os.close(rfd)
    if not ok:
        p.wait()
        raise RuntimeError("criu page-server did not start")
    return p


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--size", type=size_arg, default=1 << 30)
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--dir", default="/dev/shm", help="where the images go (default tmpfs)")
    args = ap.parse_args()
    size = args.size
    criu_bin, criu_why = criu_binary()
    gdb = shutil.which("gdb")
    base = tempfile.mkdtemp(prefix="pvmmap-dump-bench-", dir=args.dir)
    src = child.Source([{"name": "big", "kind": "anon", "size": size, "seed": 11}],
                       preexec_fn=os.setsid)
    pid, addr = src.pid, src.addr["big"]
    samples = {}

    def out_dir(name):
        d = os.path.join(base, name)
        shutil.rmtree(d, ignore_errors=True)
        os.makedirs(d)
        return d

    def timed(name, fn):
        t = time.perf_counter()
        extra = fn()
        el = time.perf_counter() - t
        samples.setdefault(name, []).append(el)
        if extra:
            for k, v in extra.items():
                samples.setdefault(k, []).append(v)

    def run_pvmmap():
        d = out_dir("pvmmap")
        t = time.perf_counter()
        pvmmap.dump(pid, d)
        el = time.perf_counter() - t
        samples.setdefault("pvmmap.dump", []).append(el)
        shutil.rmtree(d)

    def run_criu():
        d = out_dir("criu")
        t = time.perf_counter()
        r = subprocess.run([criu_bin, "dump", "-t", str(pid), "-D", d, "--leave-running",
                            "--shell-job", "-o", "dump.log"], capture_output=True)
        el = time.perf_counter() - t
        if r.returncode:
            raise RuntimeError(f"criu dump failed, see {d}/dump.log")
        samples.setdefault("criu dump --leave-running", []).append(el)
        shutil.rmtree(d)

    def run_gcore():
        d = out_dir("gcore")
        t = time.perf_counter()
        r = subprocess.run([gdb, "-p", str(pid), "-batch", "-ex", f"gcore {d}/core"],
                           stdin=subprocess.DEVNULL, capture_output=True)
        el = time.perf_counter() - t
        if r.returncode or not os.path.exists(f"{d}/core"):
            raise RuntimeError("gdb gcore failed")
        samples.setdefault("gdb gcore", []).append(el)
        shutil.rmtree(d)

    def run_ps_pvmmap():
        d, served = out_dir("ps-local"), os.path.join(base, "ps-served")
        shutil.rmtree(served, ignore_errors=True)
        port = free_port()
        ps = page_server(criu_bin, served, port)
        t = time.perf_counter()
        pvmmap.dump(pid, d, page_server=f"127.0.0.1:{port}")
        rc = ps.wait()
        el = time.perf_counter() - t
        if rc:
            raise RuntimeError("page server failed")
        samples.setdefault("pvmmap.dump page_server=", []).append(el)
        shutil.rmtree(d)
        shutil.rmtree(served)

    def run_ps_criu():
        d, served = out_dir("ps-criu"), os.path.join(base, "ps-served")
        shutil.rmtree(served, ignore_errors=True)
        port = free_port()
        ps = page_server(criu_bin, served, port)
        t = time.perf_counter()
        r = subprocess.run([criu_bin, "dump", "-t", str(pid), "-D", d, "--leave-running",
                            "--shell-job", "--page-server", "--address", "127.0.0.1",
                            "--port", str(port), "-o", "dump.log"], capture_output=True)
        rc = ps.wait()
        el = time.perf_counter() - t
        if r.returncode or rc:
            raise RuntimeError(f"criu dump --page-server failed, see {d}/dump.log")
        samples.setdefault("criu dump --page-server", []).append(el)
        shutil.rmtree(d)
        shutil.rmtree(served)

    def run_open():
        d = out_dir("open")
        pvmmap.dump(pid, d)
        # cold start of the reading process's side: drop nothing from the
        # page cache (the images were just written: page-cache speed)
        t = time.perf_counter()
        img = criu.open(d)
        t1 = time.perf_counter()
        (vma,) = [v for v in img.vmas if v.start <= addr < v.end]
        m = img.mapping(vma)
        t2 = time.perf_counter()
        with memoryview(m) as view:
            total = int(numpy.frombuffer(view, dtype=numpy.uint64).sum(dtype=numpy.uint64))
        t3 = time.perf_counter()
        img.close()
        pages = img.dump.pagemap.pages_path
        with open(pages, "rb") as f:
            mm = mmap.mmap(f.fileno(), 0, prot=mmap.PROT_READ)
            t4 = time.perf_counter()
            arr = numpy.frombuffer(mm, dtype=numpy.uint64)
            total2 = int(arr.sum(dtype=numpy.uint64))
            t5 = time.perf_counter()
            del arr
            mm.close()
        assert total and total2
        for k, v in (("criu.open() (read the images)", t1 - t), ("Image.mapping() of the VMA", t2 - t1),
                     ("first full read of the Mapping", t3 - t2),
                     ("same read of pages-N.img mmapped", t5 - t4)):
            samples.setdefault(k, []).append(v)
        shutil.rmtree(d)

    rows = [("pvmmap.dump", run_pvmmap)]
    skipped = []
    if criu_bin:
        rows += [("criu dump", run_criu), ("page server: pvmmap", run_ps_pvmmap),
                 ("page server: criu", run_ps_criu)]
    else:
        skipped.append(f"CRIU rows: {criu_why}")
    if gdb:
        rows.append(("gcore", run_gcore))
    else:
        skipped.append("gcore: gdb not installed")
    rows.append(("open", run_open))
    try:
        for rep in range(args.repeat):
            order = rows[rep % len(rows):] + rows[:rep % len(rows)]
            for _, fn in order:
                fn()
    finally:
        src.close()
        shutil.rmtree(base, ignore_errors=True)

    print(f"dense {size >> 20} MiB source, images in {args.dir}, {args.repeat} rounds, "
          f"kernel {os.uname().release}, {os.cpu_count()} CPUs")
    med = {k: statistics.median(v) for k, v in samples.items()}
    for k, v in samples.items():
        print(f"  {k:40s} median {med[k] * 1e3:9.2f} ms   samples "
              + " ".join(f"{x * 1e3:.2f}" for x in v))
    for a, b in (("criu dump --leave-running", "pvmmap.dump"), ("gdb gcore", "pvmmap.dump"),
                 ("criu dump --page-server", "pvmmap.dump page_server=")):
        if a in med and b in med:
            print(f"  {a} / {b}: {med[a] / med[b]:.2f}x")
    for s in skipped:
        print("  skipped:", s)


if __name__ == "__main__":
    main()
