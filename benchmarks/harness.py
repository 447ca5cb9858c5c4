"""The pvmmap benchmark harness, run as ``python3 benchmarks/bench.py``.

It uses the installed pvmmap (its public API, and ``pvmmap._native.scan_pages``
for a sparse baseline) and the tests' source process, ``tests/child.py``.

It measures, in one run, ``pvmmap.clone()`` against what a user would do
without it, and prints ratios of medians:

* dense: one private anonymous region (default 1 GiB, every page written)
  cloned eagerly (``method="copy"``) against a naive Python read of
  /proc/PID/mem, ctypes process_vm_readv into a fresh mmap, a raw C
  process_vm_readv loop into fresh memory (``benchmarks/baseline.c``), memcpy between two prefaulted
  buffers (the copying limit), ``gdb -p PID -batch -ex 'gcore F'`` and fork()
  of the source (the page-table limit the native call shares);
* sparse: a 64 GiB MAP_NORESERVE reservation with 4096 single pages written
  at seeded random offsets, cloned against "scan the page tables, then
  process_vm_readv exactly those pages into fresh memory";
* shared: MAP_SHARED|MAP_ANONYMOUS regions of several sizes, cloned with
  ``method="auto"`` (zero copy), which should cost the same at every size;
* lazy: ``method="lazy"`` (userfaultfd, filled on first touch): the call on
  MAP_NORESERVE regions of several sizes with a few pages written, and on a
  source with tens of thousands of VMAs; a sequential touch of every page of
  the dense region against a raw C userfaultfd loop (``benchmarks/baseline.c``);
  fault latencies of sequential and random touches; ``populate()`` against
  the eager clone of the same region.

The dense group also runs the eager clone with ``pvmmap._emulate.EAGER_UFFD``
off (the direct process_vm_readv fill) next to the default (UFFDIO_COPY
fill), for the A/B in one run.

Each repetition runs every configuration once, in an order rotated by one per
repetition, after waiting (bounded) for the machine to be quiet; the CPU that
other processes used during each timed operation is recorded, so disturbed
samples can be seen. Only the operation is timed: source set-up, checks and
freeing the destination are not (freeing is timed separately as "teardown").
Targets are reported, never asserted: the exit status is 0 whatever the
numbers.
"""

from __future__ import annotations

import argparse
import ctypes
import gc
import importlib
import json
import os
import platform
import random
import shutil
import statistics
import struct
import subprocess
import sys
import tempfile
import time
from array import array
from itertools import accumulate

PAGE = os.sysconf("SC_PAGE_SIZE")
CLK_TCK = os.sysconf("SC_CLK_TCK")
KIB, MIB, GIB = 1 << 10, 1 << 20, 1 << 30

PROT_READ, PROT_WRITE = 0x1, 0x2
MAP_SHARED, MAP_PRIVATE, MAP_ANONYMOUS, MAP_NORESERVE = 0x01, 0x02, 0x20, 0x4000
MAP_FAILED = ctypes.c_void_p(-1).value

# Fill byte of the memset baselines (the prefaulted pair, the fault cost).
FILL_BYTE = 0x5A

_libc = ctypes.CDLL(None, use_errno=True)
_libc.mmap.restype = ctypes.c_void_p
_libc.mmap.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int,
                       ctypes.c_int, ctypes.c_int, ctypes.c_long]
_libc.munmap.restype = ctypes.c_int
_libc.munmap.argtypes = [ctypes.c_void_p, ctypes.c_size_t]
_libc.process_vm_readv.restype = ctypes.c_ssize_t
_libc.process_vm_readv.argtypes = [ctypes.c_int, ctypes.c_void_p, ctypes.c_ulong,
                                   ctypes.c_void_p, ctypes.c_ulong, ctypes.c_ulong]
_libc.ioctl.restype = ctypes.c_int
_libc.ioctl.argtypes = [ctypes.c_int, ctypes.c_ulong, ctypes.c_void_p]


class _Iovec(ctypes.Structure):
    _fields_ = [("iov_base", ctypes.c_void_p), ("iov_len", ctypes.c_size_t)]


def _oserror(what):
    err = ctypes.get_errno()
    return OSError(err, f"{os.strerror(err)} ({what})")


def _mmap_anon(length, flags=MAP_PRIVATE | MAP_ANONYMOUS):
    """Fresh anonymous memory; raises OSError."""
    addr = _libc.mmap(None, length, PROT_READ | PROT_WRITE, flags, -1, 0)
    if addr in (None, MAP_FAILED):
        raise _oserror(f"mmap {length} bytes")
    return addr


def _munmap(addr, length):
    if _libc.munmap(addr, length) != 0:
        raise _oserror(f"munmap {addr:#x}+{length:#x}")


# ----------------------------------------------------------------------------
# Source processes

# The sources are tests/child.py, the tests' child with a known layout: a
# pattern-filled page `i` of a region with seed `seed` starts with the two
# u64 (seed, i), which is what the checks below read.
REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(REPO, "tests"))
import child  # noqa: E402


def _die_with_parent(parent=os.getpid()):
    """preexec_fn of the sources: never outlive the harness (PR_SET_PDEATHSIG, SIGKILL)."""
    _libc.prctl(1, 9, 0, 0, 0)
    if os.getppid() != parent:
        os._exit(1)


def start_source(spec):
    """A tests/child.py source holding the regions of `spec` (its vocabulary)."""
    return child.Source(spec, preexec_fn=_die_with_parent)


def sparse_pages(npages, k, seed):
    """The seeded random page indexes written in a sparse region (sorted)."""
    return sorted(random.Random(seed).sample(range(npages), k))


def _cpu_seconds(pid):
    """utime + stime of a source so far (0 once it is gone)."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
        # utime, stime, cutime, cstime: fork()ed grandchildren count too
        return sum(int(x) for x in fields[11:15]) / CLK_TCK
    except (OSError, IndexError, ValueError):
        return 0.0


# ----------------------------------------------------------------------------
# Machine noise: CPU used by other processes

class _Cpu:
    """CPU accounting: the whole machine (/proc/stat), us and our children, and every
    other process (/proc/PID/stat), so that other work during a measurement shows."""

    def __init__(self, sources=()):
        self.sources = list(sources)
        self.exclude = {os.getpid()} | {s.pid for s in self.sources}

    def snapshot(self):
        with open("/proc/stat") as f:
            v = [int(x) for x in f.readline().split()[1:]] + [0] * 10
        user, nice, system, idle, iowait, irq, softirq, steal = v[:8]
        t = os.times()
        return (time.monotonic(),
                (user + nice + system + irq + softirq) / CLK_TCK,
                steal / CLK_TCK,
                t.user + t.system + t.children_user + t.children_system,
                sum(_cpu_seconds(s.pid) for s in self.sources),
                _proc_cpu_table(self.exclude))

    @staticmethod
    def others(a, b):
        """(CPU-seconds used by other processes and kernel threads, steal seconds) between snapshots.

        /proc/stat is sampled at the tick and misses tasks that run in short bursts
        between ticks (an idle TCG qemu: a quarter of a CPU by its own counters, about
        0 in /proc/stat); the per-process counters are exact. Take the larger."""
        busy = b[1] - a[1]
        ours = (b[3] - a[3]) + (b[4] - a[4])
        per_process = sum(d for d in _by_comm(a[5], b[5]).values() if d > 0) / CLK_TCK
        return max(0.0, busy - ours, per_process), b[2] - a[2]


def _proc_cpu_table(exclude):
    """pid -> (comm, CPU ticks incl. reaped children) of every process that is not in
    `exclude` and not a child of one (gdb under the harness, fork() under a source)."""
    table = {}
    for name in os.listdir("/proc"):
        if not name.isdigit() or int(name) in exclude:
            continue
        try:
            with open(f"/proc/{name}/stat") as f:
                data = f.read()
        except OSError:
            continue
        comm = data[data.find("(") + 1:data.rfind(")")]
        fields = data.rsplit(")", 1)[1].split()
        if int(fields[1]) in exclude:
            continue
        # with cutime/cstime: short-lived children (cc1 under make) show up in their parent
        table[int(name)] = (comm, sum(int(x) for x in fields[11:15]))
    return table


def _by_comm(before, after):
    """CPU ticks per command between two tables; processes born in between count whole."""
    by_comm = {}
    for p, (c, t) in after.items():
        by_comm[c] = by_comm.get(c, 0) + t - (before[p][1] if p in before else 0)
    return by_comm


def _sample_others(cpu, seconds):
    """Sleep `seconds`; return (others' CPU in CPUs, top offenders as 'comm:pct')."""
    a = cpu.snapshot()
    time.sleep(seconds)
    b = cpu.snapshot()
    used, _ = cpu.others(a, b)
    wall = b[0] - a[0]
    top = sorted(((d, c) for c, d in _by_comm(a[5], b[5]).items() if d > 0), reverse=True)[:3]
    return used / wall, [f"{c}:{100 * d / CLK_TCK / wall:.0f}%" for d, c in top]


def wait_quiet(cpu, max_wait, threshold, sample=0.5):
    """Wait (at most max_wait s) until other processes use <= threshold CPUs; report how it went."""
    t0 = time.monotonic()
    while True:
        busy, offenders = _sample_others(cpu, sample)
        waited = time.monotonic() - t0
        if busy <= threshold or waited >= max_wait:
            with open("/proc/loadavg") as f:
                load1 = float(f.read().split()[0])
            return {"waited_s": round(waited, 1), "others_cpus": round(busy, 3),
                    "quiet": busy <= threshold, "loadavg1": load1, "offenders": offenders}


# ----------------------------------------------------------------------------
# What gets measured

class Skip(Exception):
    """A configuration that cannot run here (missing tool or compiler); the message says why."""


class Timer:
    """Times the body with perf_counter_ns, GC off; records other processes' CPU meanwhile."""

    def __init__(self, cpu):
        self.cpu = cpu

    def __enter__(self):
        self.a = self.cpu.snapshot()
        gc.disable()
        self.t0 = time.perf_counter_ns()
        return self

    def __exit__(self, *exc):
        self.t1 = time.perf_counter_ns()
        gc.enable()
        self.b = self.cpu.snapshot()
        self.others_s, self.steal_s = self.cpu.others(self.a, self.b)

    @property
    def ns(self):
        return self.t1 - self.t0


def _teardown_ns(fn, *args):
    t0 = time.perf_counter_ns()
    fn(*args)
    return time.perf_counter_ns() - t0


def _check_stamps(buf, seed, pages, label):
    """buf holds a region from its first page; every listed page i must start
    with child.page_bytes(seed, i)'s (seed, i)."""
    for i in pages:
        got = struct.unpack_from("<QQ", buf, i * PAGE)
        if got != (seed, i):
            raise AssertionError(f"{label}: page {i} starts with {got}, expected {(seed, i)}")


def _sample_pages(npages, k=64):
    return sorted({0, npages - 1, *random.Random(1).sample(range(npages), min(k, npages))})


class Config:
    """One measured configuration: run() returns a sample dict (ns, teardown_ns, extras)."""

    def __init__(self, group, name, run, *, reference=False, bytes_moved=0, note="", ref=None):
        self.group, self.name, self.run = group, name, run
        self.reference, self.bytes_moved, self.note = reference, bytes_moved, note
        # the row of the same group the ratio divides by: None = the group's
        # reference row (or the first shared row), a name, or False = no ratio
        self.ref = ref
        self.samples, self.error, self.skipped = [], None, None


def _pvmmap_clone(pvm, cpu, src, region, method, check_pages, expect_method=None,
                  eager_uffd=None):
    """clone() timed alone. eager_uffd=False: with pvmmap._emulate.EAGER_UFFD off for
    this call only (the eager engine's direct process_vm_readv fill), restored after."""
    def run():
        r = src.region(region)
        if eager_uffd is not None:
            emulate = importlib.import_module("pvmmap._emulate")
            saved = emulate.EAGER_UFFD
            emulate.EAGER_UFFD = eager_uffd
        try:
            with Timer(cpu) as t:
                m = pvm.clone(src.pid, r["addr"], r["size"], method=method)
        finally:
            if eager_uffd is not None:
                emulate.EAGER_UFFD = saved
        try:
            got = getattr(m, "method", None)
            stats = getattr(m, "stats", None)
            if expect_method and got != expect_method:
                raise AssertionError(f"clone(method={method!r}) of a {r['kind']} region "
                                     f"used method {got!r}, expected {expect_method!r}")
            if eager_uffd is False and isinstance(stats, dict) and \
                    stats.get("fill", "direct") != "direct":
                raise AssertionError(f"EAGER_UFFD=False, yet stats['fill'] = {stats['fill']!r}")
            with memoryview(m) as mv:
                if len(mv) != r["size"]:
                    raise AssertionError(f"clone length {len(mv)} != {r['size']}")
                _check_stamps(mv, r["seed"], check_pages(r), "pvmmap.clone")
                if isinstance(r["fill"], list):  # sparse: a hole must read as zeros
                    written = set(r["fill"])
                    hole = next(i for i in range(r["size"] // PAGE) if i not in written)
                    if any(mv[hole * PAGE:hole * PAGE + 64]):
                        raise AssertionError(f"hole page {hole} of the sparse clone is not zero")
        finally:
            td = _teardown_ns(m.close)
        return {"ns": t.ns, "teardown_ns": td, "others_s": t.others_s, "steal_s": t.steal_s,
                "method": got, "stats": dict(stats) if isinstance(stats, dict) else stats}
    return run


def _naive_proc_mem(cpu, src, region):
    def run():
        r = src.region(region)
        with Timer(cpu) as t:
            with open(f"/proc/{src.pid}/mem", "rb") as f:
                f.seek(r["addr"])
                data = f.read(r["size"])
        if len(data) != r["size"]:
            raise AssertionError(f"read {len(data)} of {r['size']} bytes")
        _check_stamps(data, r["seed"], _sample_pages(r["size"] // PAGE), "naive read")
        t0 = time.perf_counter_ns()
        del data
        td = time.perf_counter_ns() - t0
        return {"ns": t.ns, "teardown_ns": td, "others_s": t.others_s, "steal_s": t.steal_s}
    return run


def _readv_into(pid, dst, remote_addr, length, chunk):
    """process_vm_readv [remote_addr, +length) into dst, `chunk` bytes per call."""
    local, remote = _Iovec(), _Iovec()
    done = 0
    while done < length:
        k = min(chunk, length - done)
        local.iov_base, local.iov_len = dst + done, k
        remote.iov_base, remote.iov_len = remote_addr + done, k
        n = _libc.process_vm_readv(pid, ctypes.byref(local), 1, ctypes.byref(remote), 1, 0)
        if n <= 0:
            raise _oserror(f"process_vm_readv pid {pid} at {remote_addr + done:#x}")
        done += n


def _ctypes_readv_fresh(cpu, src, region, chunk):
    def run():
        r = src.region(region)
        n = r["size"]
        with Timer(cpu) as t:
            dst = _mmap_anon(n)
            _readv_into(src.pid, dst, r["addr"], n, chunk)
        try:
            buf = (ctypes.c_char * n).from_address(dst)
            _check_stamps(memoryview(buf).cast("B"), r["seed"], _sample_pages(n // PAGE), "ctypes readv")
        finally:
            td = _teardown_ns(_munmap, dst, n)
        return {"ns": t.ns, "teardown_ns": td, "others_s": t.others_s, "steal_s": t.steal_s}
    return run


def _native_scan_pages():
    try:
        return importlib.import_module("pvmmap._native").scan_pages
    except Exception as e:  # noqa: BLE001 - any import failure means "not built"
        raise Skip(f"pvmmap._native.scan_pages not importable "
                   f"({e.__class__.__name__}: {e})") from None


_BASELINE_C = os.path.join(REPO, "benchmarks", "baseline.c")
_BASELINE_SO = os.path.join(REPO, "benchmarks", "build", "baseline.so")


def _baseline_lib():
    """benchmarks/baseline.c through ctypes, compiled on first use (again when
    the source is newer); raises Skip when there is no compiler or it fails."""
    so_fresh = (os.path.exists(_BASELINE_SO)
                and os.path.getmtime(_BASELINE_SO) >= os.path.getmtime(_BASELINE_C))
    if not so_fresh:
        name = os.environ.get("CC", "cc")
        cc = shutil.which(name)
        if cc is None:
            raise Skip(f"no C compiler ({name}) to build benchmarks/baseline.c")
        os.makedirs(os.path.dirname(_BASELINE_SO), exist_ok=True)
        tmp = f"{_BASELINE_SO}.{os.getpid()}"
        p = subprocess.run([cc, "-O2", "-shared", "-fPIC", "-pthread", "-o", tmp, _BASELINE_C],
                           capture_output=True, text=True)
        if p.returncode != 0:
            raise Skip(f"{cc} failed on benchmarks/baseline.c: {p.stderr.strip()[-300:]}")
        os.replace(tmp, _BASELINE_SO)
    lib = ctypes.CDLL(_BASELINE_SO, use_errno=True)
    lib.bench_readv_fresh.restype = ctypes.c_int
    lib.bench_readv_fresh.argtypes = [ctypes.c_int, ctypes.c_size_t, ctypes.c_size_t,
                                      ctypes.c_size_t]
    lib.bench_uffd_touch.restype = ctypes.c_void_p
    lib.bench_uffd_touch.argtypes = [ctypes.c_int, ctypes.c_size_t, ctypes.c_size_t,
                                     ctypes.c_size_t, ctypes.POINTER(ctypes.c_uint64),
                                     ctypes.POINTER(ctypes.c_uint64)]
    lib.bench_unmap.restype = ctypes.c_int
    lib.bench_unmap.argtypes = [ctypes.c_void_p, ctypes.c_size_t]
    return lib


def _c_readv_fresh(cpu, src, region, chunk):
    def run():
        lib = _baseline_lib()
        r = src.region(region)
        with Timer(cpu) as t:
            rc = lib.bench_readv_fresh(src.pid, r["addr"], r["size"], chunk)
        if rc != 0:
            raise _oserror(f"bench_readv_fresh pid {src.pid}")
        return {"ns": t.ns, "others_s": t.others_s, "steal_s": t.steal_s}
    return run


class _PrefaultedPair:
    """Two prefaulted buffers in our own process, kept for the whole run (memcpy limit)."""

    def __init__(self, n):
        self.n, self.src, self.dst = n, None, None

    def ensure(self):
        if self.src is None:
            self.src = _mmap_anon(self.n)
            self.dst = _mmap_anon(self.n)
            ctypes.memset(self.src, FILL_BYTE, self.n)
            ctypes.memset(self.dst, 0, self.n)

    def close(self):
        for a in (self.src, self.dst):
            if a is not None:
                _munmap(a, self.n)
        self.src = self.dst = None


def _readv_prefaulted(cpu, src, region, pair, chunk):
    """process_vm_readv into already-faulted memory: the copy without the destination faults."""
    def run():
        pair.ensure()
        r = src.region(region)
        with Timer(cpu) as t:
            _readv_into(src.pid, pair.dst, r["addr"], r["size"], chunk)
        return {"ns": t.ns, "others_s": t.others_s, "steal_s": t.steal_s}
    return run


def _memcpy(cpu, pair):
    def run():
        pair.ensure()
        with Timer(cpu) as t:
            ctypes.memmove(pair.dst, pair.src, pair.n)
        return {"ns": t.ns, "others_s": t.others_s, "steal_s": t.steal_s}
    return run


def _fresh_faults(cpu, n):
    """mmap + memset of fresh memory: what destination page faults cost in this run."""
    def run():
        with Timer(cpu) as t:
            dst = _mmap_anon(n)
            ctypes.memset(dst, FILL_BYTE, n)
        td = _teardown_ns(_munmap, dst, n)
        return {"ns": t.ns, "teardown_ns": td, "others_s": t.others_s, "steal_s": t.steal_s,
                "us_per_page": t.ns / 1e3 / (n // PAGE)}
    return run


def _gcore(cpu, src, core_dir):
    gdb = shutil.which("gdb")

    def run():
        if gdb is None:
            raise Skip("gdb not installed")
        path = os.path.join(core_dir, f"core.{src.pid}")
        cmd = [gdb, "-p", str(src.pid), "-batch", "-ex", f"gcore {path}"]
        try:
            with Timer(cpu) as t:
                p = subprocess.run(cmd, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                                   stderr=subprocess.PIPE, timeout=600)
            if p.returncode != 0 or not os.path.exists(path):
                raise RuntimeError(f"gdb gcore failed ({p.returncode}): "
                                   f"{p.stderr.decode(errors='replace')[-300:]}")
            size = os.path.getsize(path)
        finally:
            td = _teardown_ns(lambda: os.path.exists(path) and os.unlink(path))
        return {"ns": t.ns, "teardown_ns": td, "others_s": t.others_s, "steal_s": t.steal_s,
                "core_bytes": size}
    return run


def _fork(cpu, src):
    def run():
        with Timer(cpu) as t:
            r = src.fork()
        return {"ns": r["fork_ns"], "teardown_ns": r["exit_wait_ns"],
                "others_s": t.others_s, "steal_s": t.steal_s, "roundtrip_ns": t.ns}
    return run


# ----------------------------------------------------------------------------
# Lazy clones (method="lazy")

def _few_pages(npages):
    """The pages written in a lazy-call region: first, middle, last."""
    return sorted({0, npages // 2, npages - 1})


def _touch_all(mv):
    """One read per page, in order, in C (a strided memoryview copied out)."""
    return mv[::PAGE].tobytes()


def _lazy_done(m, label):
    # The server updates its counters just after it wakes the faulting
    # thread: let them settle (bounded) before checking.
    deadline = time.monotonic() + 10
    st = m.stats
    while st.get("pages_done") != st.get("pages_total") and time.monotonic() < deadline:
        time.sleep(0.001)
        st = m.stats
    if st.get("pages_done") != st.get("pages_total") or st.get("lost_pages"):
        raise AssertionError(f"{label}: {st.get('pages_done')} of {st.get('pages_total')} "
                             f"pages present, {st.get('lost_pages')} lost")
    return st


def _lazy_touch(pvm, cpu, src, region):
    """clone(method='lazy') + a sequential read of every page (the faults included)."""
    def run():
        r = src.region(region)
        n = r["size"]
        with Timer(cpu) as t:
            m = pvm.clone(src.pid, r["addr"], n, method="lazy")
            with memoryview(m) as mv:
                first = _touch_all(mv)
        try:
            if first[0] != r["seed"] & 0xFF:
                raise AssertionError(f"lazy touch: first byte {first[0]}")
            with memoryview(m) as mv:
                _check_stamps(mv, r["seed"], _sample_pages(n // PAGE), "lazy touch")
            st = _lazy_done(m, "lazy touch")
        finally:
            td = _teardown_ns(m.close)
        return {"ns": t.ns, "teardown_ns": td, "others_s": t.others_s, "steal_s": t.steal_s,
                "method": "lazy", "stats": dict(st)}
    return run


def _c_uffd_touch(cpu, src, region, chunk):
    """benchmarks/baseline.c's raw userfaultfd loop (chunk bytes per fault), touched in order."""
    def run():
        lib = _baseline_lib()
        r = src.region(region)
        n = r["size"]
        ns, faults = ctypes.c_uint64(), ctypes.c_uint64()
        with Timer(cpu) as t:
            dst = lib.bench_uffd_touch(src.pid, r["addr"], n, chunk,
                                       ctypes.byref(ns), ctypes.byref(faults))
        if not dst:
            raise _oserror(f"bench_uffd_touch pid {src.pid}")
        try:
            buf = (ctypes.c_char * n).from_address(dst)
            _check_stamps(memoryview(buf).cast("B"), r["seed"], _sample_pages(n // PAGE),
                          "C uffd loop")
        finally:
            td = _teardown_ns(lib.bench_unmap, dst, n)
        # ns: measured inside, from its mmap to the last touch (not the server's stop)
        return {"ns": ns.value, "teardown_ns": td, "others_s": t.others_s,
                "steal_s": t.steal_s, "faults": faults.value}
    return run


def _lazy_populate(pvm, cpu, src, region):
    """clone(method='lazy') + populate(): completing a lazy clone up front."""
    def run():
        r = src.region(region)
        n = r["size"]
        with Timer(cpu) as t:
            m = pvm.clone(src.pid, r["addr"], n, method="lazy")
            m.populate()
        try:
            st = _lazy_done(m, "lazy populate")
            with memoryview(m) as mv:
                _check_stamps(mv, r["seed"], _sample_pages(n // PAGE), "lazy populate")
        finally:
            td = _teardown_ns(m.close)
        return {"ns": t.ns, "teardown_ns": td, "others_s": t.others_s, "steal_s": t.steal_s,
                "method": "lazy", "stats": dict(st)}
    return run


def _pct(sorted_vals, p):
    return sorted_vals[min(len(sorted_vals) - 1, int(p * (len(sorted_vals) - 1) + 0.5))]


def _lazy_latency(pvm, cpu, src, region, pages_of):
    """Each touch (one byte read) of a fresh lazy clone timed with perf_counter_ns;
    only touches during which the server's fault counter moved count as faults.
    ns = the whole loop (with the Mapping.stats reads between touches)."""
    def run():
        r = src.region(region)
        pages = pages_of(r["size"] // PAGE)
        m = pvm.clone(src.pid, r["addr"], r["size"], method="lazy")
        lat, hit = [], []
        clock = time.perf_counter_ns
        try:
            with memoryview(m) as mv:
                faults = m.stats["faults"]
                with Timer(cpu) as t:
                    for i in pages:
                        off = i * PAGE
                        a = clock()
                        mv[off]
                        b = clock()
                        f = m.stats["faults"]
                        (lat if f != faults else hit).append(b - a)
                        faults = f
                _check_stamps(mv, r["seed"], pages[:: max(1, len(pages) // 64)], "lazy latency")
        finally:
            td = _teardown_ns(m.close)
        if not lat:
            raise AssertionError("no touch faulted")
        lat.sort()
        hit.sort()
        return {"ns": t.ns, "teardown_ns": td, "others_s": t.others_s, "steal_s": t.steal_s,
                "p50_ns": _pct(lat, 0.5), "p99_ns": _pct(lat, 0.99), "faults": len(lat),
                "touches": len(pages), "hit_p50_ns": _pct(hit, 0.5) if hit else None}
    return run


# PAGEMAP_SCAN (Linux 6.7), defined here because the installed headers are older.
_PAGE_IS_PRESENT, _PAGE_IS_SWAPPED = 1 << 3, 1 << 4


class _PageRegion(ctypes.Structure):
    _fields_ = [("start", ctypes.c_uint64), ("end", ctypes.c_uint64),
                ("categories", ctypes.c_uint64)]


class _PmScanArg(ctypes.Structure):
    _fields_ = [(f, ctypes.c_uint64) for f in (
        "size", "flags", "start", "end", "walk_end", "vec", "vec_len", "max_pages",
        "category_inverted", "category_mask", "category_anyof_mask", "return_mask")]


_PAGEMAP_SCAN = (3 << 30) | (ctypes.sizeof(_PmScanArg) << 16) | (ord("f") << 8) | 16


def scan_pages_ctypes(pid, addr, length, vec_len=1024):
    """Present-or-swapped ranges of [addr, addr+length) in pid, by PAGEMAP_SCAN (ctypes)."""
    vec = (_PageRegion * vec_len)()
    flat = memoryview(vec).cast("B").cast("Q")  # start, end, categories, start, ...
    arg = _PmScanArg(size=ctypes.sizeof(_PmScanArg), start=addr, end=addr + length,
                     vec=ctypes.addressof(vec), vec_len=vec_len,
                     category_anyof_mask=_PAGE_IS_PRESENT | _PAGE_IS_SWAPPED,
                     return_mask=_PAGE_IS_PRESENT | _PAGE_IS_SWAPPED)
    fd = os.open(f"/proc/{pid}/pagemap", os.O_RDONLY)
    ranges = []
    try:
        while arg.start < arg.end:
            n = _libc.ioctl(fd, _PAGEMAP_SCAN, ctypes.byref(arg))
            if n < 0:
                raise _oserror(f"PAGEMAP_SCAN pid {pid}")
            ranges.extend(zip(flat[0:3 * n:3].tolist(), flat[1:3 * n:3].tolist()))
            # Only a full vector means "more to come": walk_end can be stale
            # after the walk ended (perf-anchors §8), so never re-walk from it alone.
            if n < vec_len:
                break
            arg.start = max(arg.walk_end, ranges[-1][1])
    finally:
        flat.release()
        os.close(fd)
    return ranges


def _scan_copy(cpu, src, region, scanner):
    """Sparse baseline: scan, then process_vm_readv those ranges (1024 iovecs a call) into fresh memory."""
    def run():
        scan = scanner()
        r = src.region(region)
        with Timer(cpu) as t:
            ranges = scan(src.pid, r["addr"], r["size"])
            t_scan = time.perf_counter_ns()
            nr = len(ranges)
            starts, ends = zip(*ranges) if nr else ((), ())
            lens = array("Q", map(int.__sub__, ends, starts))
            total = sum(lens)
            dst = _mmap_anon(total)
            remote, local = array("Q", bytes(16 * nr)), array("Q", bytes(16 * nr))
            remote[0::2], remote[1::2] = array("Q", starts), lens
            local[0::2], local[1::2] = array("Q", accumulate(lens[:-1], initial=dst)), lens
            rbase, lbase = remote.buffer_info()[0], local.buffer_info()[0]
            t_prep = time.perf_counter_ns()
            for i in range(0, nr, 1024):
                k = min(1024, nr - i)
                want = sum(lens[i:i + k])
                got = _libc.process_vm_readv(src.pid, lbase + 16 * i, k, rbase + 16 * i, k, 0)
                if got != want:
                    raise _oserror(f"process_vm_readv of {k} ranges: got {got} of {want}")
        try:
            npages = total // PAGE
            if npages != len(r["fill"]):
                raise AssertionError(f"scan found {npages} pages, the source wrote {len(r['fill'])}")
            buf = memoryview((ctypes.c_char * total).from_address(dst)).cast("B")
            # ranges are sorted, so the k-th found page is the k-th written page
            for k in (0, npages // 2, npages - 1):
                got = struct.unpack_from("<QQ", buf, k * PAGE)
                if got != (r["seed"], r["fill"][k]):
                    raise AssertionError(f"scan+copy page {k} starts with {got}")
            buf.release()
        finally:
            td = _teardown_ns(_munmap, dst, total)
        return {"ns": t.ns, "teardown_ns": td, "others_s": t.others_s, "steal_s": t.steal_s,
                "scan_ns": t_scan - t.t0, "prep_ns": t_prep - t_scan, "copy_ns": t.t1 - t_prep,
                "ranges": nr}
    return run


def _pick_scanner(prefer):
    """"native": the core's scanner (the one clone uses); else PAGEMAP_SCAN via ctypes."""
    def scanner():
        if prefer == "native":
            return _native_scan_pages()
        from pvmmap import _native
        if not _native.pagemap_scan_works():
            raise Skip("no PAGEMAP_SCAN ioctl on this kernel (Linux < 6.7)")
        return scan_pages_ctypes
    return scanner


# ----------------------------------------------------------------------------
# Running and reporting

def parse_size(text):
    t = text.strip().upper().removesuffix("IB").removesuffix("B")
    mult = {"K": KIB, "M": MIB, "G": GIB, "T": 1 << 40}.get(t[-1:], 1)
    n = int(float(t[:-1] if t[-1:] in "KMGT" else t) * mult)
    if n <= 0 or n % PAGE:
        raise argparse.ArgumentTypeError(f"{text!r}: need a positive multiple of {PAGE}")
    return n


def fmt_size(n):
    for unit, mult in (("GiB", GIB), ("MiB", MIB), ("KiB", KIB)):
        if n >= mult and n % mult == 0:
            return f"{n // mult} {unit}"
    return f"{n} B"


def fmt_ns(ns):
    if ns is None:
        return "-"
    if ns >= 1e9:
        return f"{ns / 1e9:.2f} s"
    if ns >= 1e6:
        return f"{ns / 1e6:.1f} ms"
    return f"{ns / 1e3:.0f} µs"


def _machine():
    info = {"date_utc": time.strftime("%Y-%m-%d %H:%M:%SZ", time.gmtime()),
            "kernel": platform.release(), "nproc": os.cpu_count(),
            "python": platform.python_version()}
    try:
        with open("/proc/meminfo") as f:
            info["mem_total_gib"] = round(int(f.readline().split()[1]) / (1 << 20), 1)
        with open("/proc/cpuinfo") as f:
            info["cpu"] = next((l.split(":", 1)[1].strip() for l in f if l.startswith("model name")), "?")
        for key in ("enabled", "defrag"):
            with open(f"/sys/kernel/mm/transparent_hugepage/{key}") as f:
                info[f"thp_{key}"] = f.read().split("[")[1].split("]")[0]
    except (OSError, IndexError):
        pass
    return info


def _load_pvmmap():
    try:
        pvm = importlib.import_module("pvmmap")
    except Exception as e:  # noqa: BLE001
        return None, f"import pvmmap failed ({e.__class__.__name__}: {e})"
    if not hasattr(pvm, "clone"):
        return None, "pvmmap.clone does not exist yet (core not built or not installed)"
    return pvm, None


def _warm_up(pvm, sources):
    """One untimed clone of one page before the samples: the first clone() of a process
    also detects features (reads /proc/kallsyms...), a one-time cost. Returns its ns."""
    for src in sources:
        for name in src.spec:
            r = src.region(name)
            addr = r["addr"] + (r["fill"][0] * PAGE if isinstance(r["fill"], list) else 0)
            t0 = time.perf_counter_ns()
            try:
                pvm.clone(src.pid, addr, PAGE).close()
            except Exception:  # noqa: BLE001 - the real runs will report it
                return None
            return time.perf_counter_ns() - t0
    return None


EAGER_ROW = "pvmmap.clone(method='copy')"
DIRECT_ROW = "pvmmap.clone(method='copy') direct fill"
LAZY_CALL = "pvmmap.clone(method='lazy') call"
LAZY_VMAS = "pvmmap.clone(method='lazy') call 1 GiB, {n}-VMA source"
SHARED_VMAS = "pvmmap.clone(method='auto') shared 1 GiB, {n}-VMA source"
EAGER_VMAS = "pvmmap.clone(method='copy') 1 GiB, 3 pages, {n}-VMA source"
EAGER_FEW = "pvmmap.clone(method='copy') 1 GiB, 3 pages, few-VMA source"
LAZY_TOUCH = "lazy clone + sequential touch of every page"
C_UFFD = "C userfaultfd loop, 64 KiB fetches (baseline.c)"
LAZY_POPULATE = "lazy clone + populate()"
LAZY_EAGER = "pvmmap.clone(method='copy'), same region"
LAT_SEQ = "lazy fault latency, sequential 4 KiB touches"
LAT_RANDOM = "lazy fault latency, random 4 KiB touches"


def _readahead_note():
    try:
        nat = importlib.import_module("pvmmap._native")
        return (f"default readahead {fmt_size(nat.LAZY_READAHEAD_DEFAULT)}, growing to "
                f"{fmt_size(nat.LAZY_READAHEAD_MAX)} on sequential streams")
    except Exception:  # noqa: BLE001
        return "default readahead"


def build_configs(args, pvm, cpu, dense, sparse, shared, pair, core_dir, lazy=None):
    dn = args.size
    cs = []
    if dense:
        d = "dense"
        if pvm:
            cs.append(Config(d, EAGER_ROW,
                             _pvmmap_clone(pvm, cpu, dense, d, "copy",
                                           lambda r: _sample_pages(r["size"] // PAGE)),
                             reference=True, bytes_moved=dn,
                             note="default engine: UFFDIO_COPY fill where a userfaultfd can be had"))
            cs.append(Config(d, DIRECT_ROW,
                             _pvmmap_clone(pvm, cpu, dense, d, "copy",
                                           lambda r: _sample_pages(r["size"] // PAGE),
                                           eager_uffd=False),
                             bytes_moved=dn,
                             note="pvmmap._emulate.EAGER_UFFD=False for this row only: "
                                  "process_vm_readv straight into the fresh destination"))
        cs.append(Config(d, "naive Python read of /proc/PID/mem", _naive_proc_mem(cpu, dense, d),
                         bytes_moved=dn, note="open, seek, read(n): one bytes object"))
        cs.append(Config(d, "ctypes process_vm_readv -> fresh mmap",
                         _ctypes_readv_fresh(cpu, dense, d, args.chunk), bytes_moved=dn,
                         note=f"{fmt_size(args.chunk)} per call, time includes mmap"))
        cs.append(Config(d, "C process_vm_readv loop -> fresh (baseline.c)",
                         _c_readv_fresh(cpu, dense, d, args.chunk), bytes_moved=dn,
                         note="benchmarks/baseline.c via ctypes; time includes munmap"))
        cs.append(Config(d, "memcpy, prefaulted (the limit)", _memcpy(cpu, pair), bytes_moved=dn,
                         note="ctypes.memmove between two prefaulted buffers"))
        cs.append(Config(d, "ctypes process_vm_readv -> prefaulted",
                         _readv_prefaulted(cpu, dense, d, pair, args.chunk), bytes_moved=dn,
                         note="the copy alone, no destination faults"))
        cs.append(Config(d, "memset of a fresh mmap (dest. fault cost)", _fresh_faults(cpu, dn),
                         bytes_moved=dn, note="no copy: the page faults any fresh destination pays"))
        if args.gdb:
            cs.append(Config(d, "gdb -p PID -batch -ex 'gcore F'", _gcore(cpu, dense, core_dir),
                             bytes_moved=dn, note="whole process, core in a temp dir"))
        cs.append(Config(d, "fork() of the source (page-table limit)", _fork(cpu, dense),
                         note="timed inside the source; teardown = child exit + wait"))
    if sparse:
        s = "sparse"
        moved = args.sparse_pages * PAGE
        if pvm:
            cs.append(Config(s, "pvmmap.clone(method='copy')",
                             _pvmmap_clone(pvm, cpu, sparse, s, "copy",
                                           lambda r: r["fill"][::64] + r["fill"][-1:]),
                             reference=True, bytes_moved=moved))
        for which in args.scanners:
            label = ("core scan_pages" if which == "native" else "ctypes PAGEMAP_SCAN")
            cs.append(Config(s, f"scan + copy ({label})",
                             _scan_copy(cpu, sparse, s, _pick_scanner(which)), bytes_moved=moved,
                             note="scan, then process_vm_readv 1024 iovecs/call -> fresh"))
    if shared:
        for name in shared.spec:
            r = shared.region(name)
            if pvm:
                cs.append(Config("shared", f"pvmmap.clone(method='auto') {fmt_size(r['size'])}",
                                 _pvmmap_clone(pvm, cpu, shared, name, "auto",
                                               lambda r: _sample_pages(r["size"] // PAGE, 4),
                                               expect_method=args.shared_method),
                                 note="ratio: vs the smallest size"))
    if lazy and pvm:
        cs += _lazy_configs(args, pvm, cpu, lazy)
    return cs


def _lazy_configs(args, pvm, cpu, lazy):
    """The lazy group; `lazy` = {"calls": source, "vmas": source or None, "dense": source}."""
    g, cs = "lazy", []
    calls, vmas, ld = lazy["calls"], lazy.get("vmas"), lazy["dense"]
    first = None
    for name in calls.spec:
        r = calls.region(name)
        row = f"{LAZY_CALL} {fmt_size(r['size'])}"
        first = first or row
        cs.append(Config(g, row, _pvmmap_clone(pvm, cpu, calls, name, "lazy",
                                               lambda r: r["fill"], expect_method="lazy"),
                         ref=first, note="MAP_NORESERVE, 3 pages written; ratio: vs the "
                                         "smallest size"))
    if vmas:
        nv = args.lazy_vmas
        cs.append(Config(g, LAZY_VMAS.format(n=nv),
                         _pvmmap_clone(pvm, cpu, vmas, "far", "lazy", lambda r: r["fill"],
                                       expect_method="lazy"),
                         ref=first, note=f"{nv} one-page VMAs below it in /proc/PID/maps; "
                                         f"ratio: vs the smallest size"))
        cs.append(Config(g, SHARED_VMAS.format(n=nv),
                         _pvmmap_clone(pvm, cpu, vmas, "far_shared", "auto", lambda r: r["fill"],
                                       expect_method=args.shared_method),
                         ref=first, note="the same source; ratio: vs the smallest lazy call"))
        # An eager copy checks smaps' VmFlags (uffd, protection keys), which the
        # kernel prints from the first VMA on: the one part that still grows.
        big = next((name for name in calls.spec if calls.region(name)["size"] == GIB), None)
        if big:
            cs.append(Config(g, EAGER_FEW, _pvmmap_clone(pvm, cpu, calls, big, "copy",
                                                          lambda r: r["fill"]),
                             ref=EAGER_FEW, note="the lazy calls' 1 GiB source"))
        cs.append(Config(g, EAGER_VMAS.format(n=nv),
                         _pvmmap_clone(pvm, cpu, vmas, "far", "copy", lambda r: r["fill"]),
                         ref=EAGER_FEW if big else False,
                         note=f"{nv} one-page VMAs below it; ratio: vs the few-VMA source"))
    n = ld.region("dense")["size"]
    cs.append(Config(g, LAZY_TOUCH, _lazy_touch(pvm, cpu, ld, "dense"), ref=LAZY_TOUCH,
                     bytes_moved=n, note="clone() + one read per page through a strided "
                                         f"memoryview, {_readahead_note()}"))
    cs.append(Config(g, C_UFFD, _c_uffd_touch(cpu, ld, "dense", 64 * KIB), ref=LAZY_TOUCH,
                     bytes_moved=n, note="uffd_bench.c's raw loop: one blocking server "
                                         "thread, process_vm_readv + UFFDIO_COPY per fault; "
                                         "from its mmap to the last touch"))
    cs.append(Config(g, LAZY_POPULATE, _lazy_populate(pvm, cpu, ld, "dense"), ref=LAZY_POPULATE,
                     bytes_moved=n, note="clone() + populate()"))
    cs.append(Config(g, LAZY_EAGER,
                     _pvmmap_clone(pvm, cpu, ld, "dense", "copy",
                                   lambda r: _sample_pages(r["size"] // PAGE)),
                     ref=LAZY_POPULATE, bytes_moved=n, note="ratio: vs lazy + populate()"))
    k = args.lazy_lat_pages
    cs.append(Config(g, LAT_SEQ,
                     _lazy_latency(pvm, cpu, ld, "dense", lambda np_: list(range(np_))),
                     ref=False, note=f"every page in order, {_readahead_note()}; "
                                     "time = the whole loop"))
    cs.append(Config(g, LAT_RANDOM,
                     _lazy_latency(pvm, cpu, ld, "dense",
                                   lambda np_: random.Random(7).sample(range(np_), min(k, np_))),
                     ref=False, note=f"{k} distinct pages in a seeded random order; "
                                     "time = the whole loop"))
    return cs


def run_all(args, configs, cpu, log):
    reps, noise = [], []
    k = len(configs)
    attempts = redos = 0
    for w in range(args.warmup):
        # Discarded: the first big allocations of a run pay extra (the host backs
        # freed guest memory again), and config 0 would always be first.
        for c in configs[w % k:] + configs[:w % k] if k else []:
            try:
                c.run()
            except Exception:  # noqa: BLE001 - the measured repetitions report it
                pass
        log(f"warm-up repetition {w + 1}/{args.warmup} done (discarded)")
    while len(reps) < args.repeat:
        attempts += 1
        q = wait_quiet(cpu, args.quiet_timeout, args.quiet_cpus)
        # rotate so that a different configuration goes first each time, spread over k
        rot = (attempts - 1) * max(1, k // max(1, args.repeat)) % k if k else 0
        order = configs[rot:] + configs[:rot]
        rep = {}
        for c in order:
            if c.error or c.skipped:
                continue
            try:
                rep[c] = c.run()
            except Skip as e:
                c.skipped = str(e)
            except Exception as e:  # noqa: BLE001 - report and go on with the others
                c.error = f"{e.__class__.__name__}: {e}"
                log(f"  {c.group}/{c.name}: {c.error}")
        # CPU times tick at 1/CLK_TCK (10 ms): allow two ticks of rounding.
        disturbed = [c for c, smp in rep.items()
                     if smp["others_s"] > args.disturbed_frac * smp["ns"] / 1e9 + 2 / CLK_TCK]
        q.update(rss_mib=_rss_mib(), disturbed=[f"{c.group}/{c.name}" for c in disturbed])
        noisy = bool(disturbed) or not q["quiet"]
        if noisy and redos < args.redo_noisy:
            redos += 1
            q["discarded"] = True
            noise.append(q)
            log(f"rep {attempts}: noisy ({q['others_cpus']} CPUs busy before, "
                f"{len(disturbed)} disturbed samples: {' '.join(q['offenders'])}), "
                f"discarded; redoing")
            continue
        for c, smp in rep.items():
            smp["disturbed"] = c in disturbed
            c.samples.append(smp)
        q["discarded"] = False
        noise.append(q)
        reps.append(rep)
        log(f"rep {len(reps)}/{args.repeat}: waited {q['waited_s']} s, others "
            f"{q['others_cpus']} CPUs before"
            f"{' (NOT quiet: ' + ' '.join(q['offenders']) + ')' if not q['quiet'] else ''}, "
            f"{len(disturbed)} disturbed samples, RSS {q['rss_mib']} MiB")
    return noise


def _rss_mib():
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) // 1024
    return -1


def summarize(configs):
    rows = []
    refs = {c.group: c for c in configs if c.reference and c.samples}
    shared_ref = next((c for c in configs if c.group == "shared" and c.samples), None)
    named = {(c.group, c.name): c for c in configs}
    for c in configs:
        ns = [s["ns"] for s in c.samples]
        row = {"group": c.group, "name": c.name, "note": c.note, "n": len(ns),
               "median_ns": statistics.median(ns) if ns else None,
               "min_ns": min(ns) if ns else None,
               "disturbed": sum(s.get("disturbed", False) for s in c.samples),
               "error": c.error, "skipped": c.skipped, "reference": c.reference}
        td = [s["teardown_ns"] for s in c.samples if "teardown_ns" in s]
        row["teardown_median_ns"] = statistics.median(td) if td else None
        for key in ("scan_ns", "prep_ns", "copy_ns", "ranges", "core_bytes", "method",
                    "us_per_page", "stats", "p50_ns", "p99_ns", "faults", "touches",
                    "hit_p50_ns"):
            vals = [s[key] for s in c.samples if s.get(key) is not None]
            if vals:
                row[key] = (vals[-1] if key in ("method", "ranges", "stats", "touches")
                            else statistics.median(vals))
        if c.bytes_moved and row["median_ns"]:
            row["gb_s"] = c.bytes_moved / row["median_ns"]
        if c.ref is False:
            ref = None
        elif c.ref:
            ref = named.get((c.group, c.ref))
            row["versus"] = c.ref
        else:
            ref = refs.get(c.group) or (shared_ref if c.group == "shared" else None)
        if ref is not None and ref.samples and row["median_ns"]:
            row["ratio"] = row["median_ns"] / statistics.median(s["ns"] for s in ref.samples)
        rows.append(row)
    return rows


# Mapping.stats keys, in the order printed (a key not listed here is printed after them).
STATS_KEYS = ("fill", "bytes_readv", "bytes_mem", "calls", "threads", "lost_pages", "scan",
              "frozen_threads", "faults", "bytes_fetched", "pages_zero", "pages_done",
              "pages_total")


def _fmt_stats(stats):
    keys = [k for k in STATS_KEYS if k in stats] + sorted(set(stats) - set(STATS_KEYS))
    return ", ".join(f"{k}={stats[k]}" for k in keys)


def print_table(rows, out):
    w = max(len(r["name"]) for r in rows) if rows else 10
    out.write(f"{'group':7} {'configuration':{w}} {'median':>9} {'min':>9} {'x pvmmap':>8} "
              f"{'GB/s':>5} {'teardown':>9} {'dist':>4}\n")
    for r in rows:
        if r["error"] or r["skipped"]:
            out.write(f"{r['group']:7} {r['name']:{w}} {'ERROR: ' + r['error'] if r['error'] else 'skipped: ' + r['skipped']}\n")
            continue
        ratio = f"{r['ratio']:.2f}" if "ratio" in r else "-"
        gbs = f"{r['gb_s']:.2f}" if "gb_s" in r else "-"
        out.write(f"{r['group']:7} {r['name']:{w}} {fmt_ns(r['median_ns']):>9} "
                  f"{fmt_ns(r['min_ns']):>9} {ratio:>8} {gbs:>5} "
                  f"{fmt_ns(r['teardown_median_ns']):>9} {r['disturbed']}/{r['n']}\n")
        extra = []
        if "scan_ns" in r:
            extra.append(f"scan {fmt_ns(r['scan_ns'])} + Python iovec prep {fmt_ns(r['prep_ns'])}"
                         f" + mmap/readv {fmt_ns(r['copy_ns'])}, {r['ranges']} ranges")
        if "core_bytes" in r:
            extra.append(f"core file {r['core_bytes'] / MIB:.0f} MiB")
        if "us_per_page" in r:
            extra.append(f"{r['us_per_page']:.2f} µs per 4 KiB page")
        if "p50_ns" in r:
            extra.append(f"faulting touches p50 {r['p50_ns'] / 1e3:.1f} µs, p99 "
                         f"{r['p99_ns'] / 1e3:.1f} µs ({r['faults']:.0f} of "
                         f"{r.get('touches')} touches faulted"
                         + (f"; a touch that did not fault: {r['hit_p50_ns'] / 1e3:.2f} µs"
                            if r.get("hit_p50_ns") is not None else "") + ")")
        elif "faults" in r:
            extra.append(f"{r['faults']:.0f} faults")
        if r.get("versus") and r["versus"] != r["name"]:
            extra.append(f"x = vs {r['versus']!r}")
        if r.get("method"):
            extra.append(f"Mapping.method={r['method']!r}")
        if isinstance(r.get("stats"), dict) and r["stats"]:
            extra.append("stats " + _fmt_stats(r["stats"]))
        if extra:
            out.write(f"{'':7} {'':{w}}   ({'; '.join(extra)})\n")
    out.write("x pvmmap = median / median of the pvmmap row of the group, or of the row "
              "named after 'x = vs' (> 1: pvmmap is faster); "
              "dist = samples during which other processes used CPU\n")


def targets(rows, dense_size=GIB):
    """The issue's targets (stated for 1 GiB), on this run's medians (reported, never asserted)."""
    by = {(r["group"], r["name"]): r for r in rows}

    def med(group, prefix):
        return next((r["median_ns"] for (g, n), r in by.items()
                     if g == group and n.startswith(prefix) and r["median_ns"]), None)

    def exact(group, name):
        r = by.get((group, name))
        return r["median_ns"] if r and r["median_ns"] else None

    out = []
    pv = exact("dense", EAGER_ROW)
    naive = med("dense", "naive Python read")
    cloop = med("dense", "C process_vm_readv")
    pv_td = next((r.get("teardown_median_ns") for r in rows
                  if r["group"] == "dense" and r["reference"]), None)
    if pv and naive:
        out.append((f"dense {fmt_size(dense_size)}: pvmmap >= 2x faster than the naive "
                    "/proc/PID/mem read",
                    naive / pv >= 2, f"naive/pvmmap = {naive / pv:.2f}x"))
    if pv and cloop:
        both = pv + (pv_td or 0)
        out.append((f"dense {fmt_size(dense_size)}: pvmmap no slower than the raw C readv "
                    "loop into fresh memory",
                    pv <= cloop,
                    f"pvmmap/C = {pv / cloop:.2f}x (clone+close vs C loop incl. munmap: "
                    f"{both / cloop:.2f}x)"))
    fill = (by.get(("dense", EAGER_ROW)) or {}).get("stats") or {}
    # stats["fill"] is only recorded when the UFFDIO_COPY path was asked for
    if pv and naive:
        out.append((f"dense {fmt_size(dense_size)}: eager clone >= 2.5x the naive Python read "
                    "(issue 10)", naive / pv >= 2.5,
                    f"naive/pvmmap = {naive / pv:.2f}x (fill {fill.get('fill', '?')})"))
    direct = exact("dense", DIRECT_ROW)
    if pv and direct:
        out.append((f"dense {fmt_size(dense_size)}: eager clone >= 1.3x the direct-fill engine "
                    "(EAGER_UFFD=False)", direct / pv >= 1.3,
                    f"direct/default = {direct / pv:.2f}x ({fmt_ns(direct)} vs {fmt_ns(pv)}, "
                    f"fill {fill.get('fill', '?')})"))
    sp = med("sparse", "pvmmap.clone")
    base = [r for r in rows if r["group"] == "sparse"
            and r["name"].startswith("scan + copy") and r["median_ns"]]
    if sp and base:
        b = min(base, key=lambda r: r["median_ns"])
        net = b["median_ns"] - b.get("prep_ns", 0)
        out.append(("sparse: pvmmap <= 3x scan + copy of the written pages", sp <= 3 * b["median_ns"],
                    f"pvmmap/(scan+copy) = {sp / b['median_ns']:.2f}x; without the baseline's "
                    f"Python iovec prep: {sp / net:.2f}x"))
    sh = [(r["name"], r["median_ns"]) for r in rows if r["group"] == "shared" and r["median_ns"]]
    if sh:
        one = next((ns for n, ns in sh if n.endswith(" 1 GiB")), None)
        if one is not None:
            out.append(("shared: 1 GiB clone <= 1 ms", one <= 1e6, f"{fmt_ns(one)}"))
        lo, hi = min(ns for _, ns in sh), max(ns for _, ns in sh)
        out.append(("shared: flat in size (max/min of medians <= 2)", hi / lo <= 2,
                    ", ".join(f"{n.rsplit(' ', 2)[-2]} {n.rsplit(' ', 1)[-1]}: {fmt_ns(ns)}"
                              for n, ns in sh) + f"; max/min = {hi / lo:.2f}"))
    out += _lazy_targets(rows, by)
    return out


def _lazy_targets(rows, by):
    out = []
    calls = [(r["name"][len(LAZY_CALL) + 1:], r["median_ns"]) for r in rows
             if r["group"] == "lazy" and r["name"].startswith(LAZY_CALL + " ")
             and "VMA" not in r["name"] and r["median_ns"]]
    one = next((ns for n, ns in calls if n == "1 GiB"), None)
    if one is not None:
        out.append(("lazy: 1 GiB clone call <= 1 ms", one <= 1e6, fmt_ns(one)))
    if len(calls) > 1:
        lo, hi = min(ns for _, ns in calls), max(ns for _, ns in calls)
        out.append(("lazy: call flat in size (max/min of medians <= 2)", hi / lo <= 2,
                    ", ".join(f"{n}: {fmt_ns(ns)}" for n, ns in calls)
                    + f"; max/min = {hi / lo:.2f}"))
    for r in rows:
        if r["group"] != "lazy" or not r["median_ns"]:
            continue
        if r["name"].startswith(LAZY_CALL + " 1 GiB, "):
            out.append((f"lazy: call from a source with many VMAs <= 2 ms ({r['name'][len(LAZY_CALL) + 8:]})",
                        r["median_ns"] <= 2e6, fmt_ns(r["median_ns"])
                        + (f" ({r['median_ns'] / one:.1f}x the 1 GiB call above)" if one else "")))
        if r["name"].startswith("pvmmap.clone(method='auto') shared 1 GiB, "):
            out.append((f"shared: call from a source with many VMAs <= 2 ms", r["median_ns"] <= 2e6,
                        fmt_ns(r["median_ns"])))
    med = {n: (by.get(("lazy", n)) or {}).get("median_ns") for n in
           (LAZY_TOUCH, C_UFFD, LAZY_POPULATE, LAZY_EAGER)}
    if med[LAZY_TOUCH] and med[C_UFFD]:
        out.append(("lazy: sequential touch of all of it >= 0.9x the raw C userfaultfd loop "
                    "(64 KiB fetches)", med[C_UFFD] / med[LAZY_TOUCH] >= 0.9,
                    f"C/pvmmap = {med[C_UFFD] / med[LAZY_TOUCH]:.2f}x ({fmt_ns(med[LAZY_TOUCH])} "
                    f"vs {fmt_ns(med[C_UFFD])})"))
    if med[LAZY_POPULATE] and med[LAZY_EAGER]:
        out.append(("lazy: populate() >= 0.9x the eager clone of the same region",
                    med[LAZY_EAGER] / med[LAZY_POPULATE] >= 0.9,
                    f"eager/(lazy+populate) = {med[LAZY_EAGER] / med[LAZY_POPULATE]:.2f}x "
                    f"({fmt_ns(med[LAZY_POPULATE])} vs {fmt_ns(med[LAZY_EAGER])})"))
    for name in (LAT_SEQ, LAT_RANDOM):
        r = by.get(("lazy", name))
        if r and r.get("p50_ns") is not None:
            out.append((f"{name} (reported only)", None,
                        f"p50 {r['p50_ns'] / 1e3:.1f} µs, p99 {r['p99_ns'] / 1e3:.1f} µs "
                        f"over {r['faults']:.0f} faulting touches (medians of the repetitions)"))
    return out


def build_parser(prog="benchmarks/bench.py"):
    p = argparse.ArgumentParser(
        prog=prog, description="Time pvmmap.clone() against the copies a user would write "
        "without it (dense, sparse and shared memory of a child process) and print ratios.")
    p.add_argument("--size", type=parse_size, default=GIB, help="dense region size (default 1G)")
    p.add_argument("--repeat", type=int, default=5, help="repetitions (default 5)")
    p.add_argument("--warmup", type=int, default=1,
                   help="discarded repetitions run first (default 1)")
    p.add_argument("--quick", action="store_true",
                   help="preset: --size 256M --repeat 3 --shared-sizes 64M,256M --quiet-timeout 10")
    p.add_argument("--groups", default="dense,sparse,shared,lazy",
                   help="comma list of dense, sparse, shared, lazy (default: all)")
    p.add_argument("--chunk", type=parse_size, default=MIB,
                   help="process_vm_readv piece size of the readv baselines (default 1M)")
    p.add_argument("--sparse-reserve", type=parse_size, default=64 * GIB,
                   help="sparse MAP_NORESERVE reservation (default 64G)")
    p.add_argument("--sparse-pages", type=int, default=4096,
                   help="4 KiB pages written in it at random offsets (default 4096)")
    p.add_argument("--seed", type=int, default=2019, help="seed of the sparse offsets")
    p.add_argument("--shared-sizes", default="64M,1G,4G",
                   help="MAP_SHARED|MAP_ANONYMOUS region sizes (default 64M,1G,4G)")
    p.add_argument("--shared-method", default="share",
                   help="Mapping.method expected from method='auto' on shared memory ('' = any)")
    p.add_argument("--lazy-sizes", default="64M,1G,4G,16G",
                   help="lazy call: MAP_NORESERVE region sizes, 3 pages written "
                        "(default 64M,1G,4G,16G)")
    p.add_argument("--lazy-vmas", type=int, default=60000,
                   help="lazy/shared call from a source with this many extra one-page VMAs "
                        "(default 60000; 0: skip)")
    p.add_argument("--lazy-lat-pages", type=int, default=8192,
                   help="random-touch latency: pages touched (default 8192)")
    p.add_argument("--scanners", default="native,ctypes",
                   help="sparse baselines: native (core scan_pages), ctypes (PAGEMAP_SCAN)")
    p.add_argument("--no-gdb", dest="gdb", action="store_false", help="skip the gdb gcore row")
    p.add_argument("--core-dir", default=None, help="where gcore writes (default: a temp dir)")
    p.add_argument("--quiet-timeout", type=float, default=60.0,
                   help="max seconds to wait for a quiet machine before each repetition")
    p.add_argument("--quiet-cpus", type=float, default=0.15,
                   help="'quiet' = other processes use at most this many CPUs (default 0.15)")
    p.add_argument("--disturbed-frac", type=float, default=0.10,
                   help="a sample is disturbed if others used more CPU than this fraction of its time")
    p.add_argument("--redo-noisy", type=int, default=0,
                   help="extra repetitions allowed to replace noisy ones (default 0: keep all)")
    p.add_argument("--json", metavar="FILE", help="write every sample and the summary as JSON")
    return p


def main(argv=None, prog="benchmarks/bench.py"):
    args = build_parser(prog).parse_args(argv)
    if args.quick:
        args.size, args.repeat = min(args.size, 256 * MIB), min(args.repeat, 3)
        args.shared_sizes, args.quiet_timeout = "64M,256M", min(args.quiet_timeout, 10)
    groups = {g.strip() for g in args.groups.split(",") if g.strip()}
    args.scanners = [s.strip() for s in args.scanners.split(",") if s.strip()]
    args.shared_method = args.shared_method or None
    shared_sizes = [parse_size(s) for s in args.shared_sizes.split(",") if s.strip()]
    lazy_sizes = [parse_size(s) for s in args.lazy_sizes.split(",") if s.strip()]

    def log(msg):
        print(msg, file=sys.stderr, flush=True)

    pvm, why = _load_pvmmap()
    if pvm is None:
        log(f"pvmmap rows skipped: {why}; running the baselines only")
    machine = _machine()
    command = " ".join([prog] + (sys.argv[1:] if argv is None else list(argv)))
    log(f"{command}: setting up sources ...")
    pair = _PrefaultedPair(args.size)
    core_dir = tempfile.mkdtemp(prefix="pvmmap-bench-", dir=args.core_dir)
    sources = []
    cold_ns = None
    try:
        dense = sparse = shared = None
        dense_spec = [{"name": "dense", "kind": "anon", "size": args.size,
                       "seed": 1, "fill": "pattern"}]
        if "dense" in groups:
            dense = start_source(dense_spec)
            sources.append(dense)
        if "sparse" in groups:
            fill = sparse_pages(args.sparse_reserve // PAGE, args.sparse_pages, args.seed)
            sparse = start_source([{"name": "sparse", "kind": "anon", "noreserve": True,
                                    "size": args.sparse_reserve, "seed": args.seed,
                                    "fill": fill}])
            sources.append(sparse)
        if "shared" in groups and shared_sizes:
            shared = start_source([{"name": f"shared_{i}", "kind": "shared", "size": n,
                                    "seed": 3 + i, "fill": "pattern"}
                                   for i, n in enumerate(shared_sizes)])
            sources.append(shared)
        lazy = None
        if "lazy" in groups and pvm and lazy_sizes:
            lazy = {"calls": start_source([
                {"name": f"lazy_{i}", "kind": "anon", "noreserve": True, "size": n,
                 "seed": 10 + i, "fill": _few_pages(n // PAGE)}
                for i, n in enumerate(lazy_sizes)])}
            sources.append(lazy["calls"])
            if args.lazy_vmas:
                # mapped first, so at higher addresses: /proc/PID/maps lists the
                # many VMAs before the cloned ranges
                lazy["vmas"] = start_source([
                    {"name": "far", "kind": "anon", "noreserve": True, "size": GIB,
                     "seed": 30, "fill": _few_pages(GIB // PAGE)},
                    {"name": "far_shared", "kind": "shared", "size": GIB, "seed": 31,
                     "fill": _few_pages(GIB // PAGE)},
                    {"name": "vmas", "kind": "anon", "size": args.lazy_vmas * PAGE,
                     "fill": "none", "vmas": args.lazy_vmas}])
                sources.append(lazy["vmas"])
            lazy["dense"] = dense or start_source(dense_spec)
            if lazy["dense"] is not dense:
                sources.append(lazy["dense"])
        cpu = _Cpu(sources)
        cold_ns = _warm_up(pvm, sources) if pvm else None
        configs = build_configs(args, pvm, cpu, dense, sparse, shared, pair, core_dir, lazy)
        noise = run_all(args, configs, cpu, log)
    finally:
        for s in sources:
            s.close()
        pair.close()
        shutil.rmtree(core_dir, ignore_errors=True)

    rows = summarize(configs)
    out = sys.stdout
    out.write(f"\n{command}\n")
    out.write(f"machine: {machine.get('nproc')} CPUs ({machine.get('cpu')}), "
              f"{machine.get('mem_total_gib')} GiB RAM, kernel {machine['kernel']}, "
              f"THP {machine.get('thp_enabled')}/{machine.get('thp_defrag')}, "
              f"Python {machine['python']}, {machine['date_utc']}\n")
    if pvm is not None:
        out.write(f"pvmmap {getattr(pvm, '__version__', '?')}, "
                  f"backend {getattr(pvm, 'backend', '?')}; first clone() of the process "
                  f"(one page, untimed warm-up, includes feature detection): "
                  f"{fmt_ns(cold_ns)}\n")
    out.write(f"dense {fmt_size(args.size)}; sparse {fmt_size(args.sparse_reserve)} reservation "
              f"with {args.sparse_pages} x 4 KiB pages (seed {args.seed}); shared "
              f"{', '.join(fmt_size(n) for n in shared_sizes)}; lazy calls "
              f"{', '.join(fmt_size(n) for n in lazy_sizes)} and from a source with "
              f"{args.lazy_vmas} extra VMAs; {args.repeat} repetitions "
              f"(+{args.warmup} discarded warm-up), round-robin\n\n")
    print_table(rows, out)
    kept = [q for q in noise if not q["discarded"]]
    out.write("\nnoise per kept repetition (others' CPUs in a 0.5 s sample before it; waited s; "
              "load): " + "; ".join(f"{q['others_cpus']:.2f}/{q['waited_s']}s/{q['loadavg1']}"
                                   + ("" if q["quiet"] else " NOT QUIET "
                                      + ",".join(q["offenders"])) for q in kept) + "\n")
    if len(kept) < len(noise):
        out.write(f"{len(noise) - len(kept)} noisy repetitions were discarded and redone\n")
    out.write(f"max RSS of the harness between repetitions: "
              f"{max((q['rss_mib'] for q in noise), default=0)} MiB\n")
    res = targets(rows, args.size)
    if res:
        out.write("\ntargets (stated for 1 GiB; reported, never asserted):\n")
        for what, met, detail in res:
            tag = "info" if met is None else "met" if met else "NOT met"
            out.write(f"  [{tag}] {what}: {detail}\n")
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"command": command, "machine": machine, "args": {
                k: v for k, v in vars(args).items() if k != "json"},
                "rows": rows, "noise": noise, "first_clone_ns": cold_ns,
                "targets": [{"what": w, "met": m, "detail": d} for w, m, d in res],
                "samples": {f"{c.group}/{c.name}": c.samples for c in configs}},
                f, indent=1, default=str)
    return 0

