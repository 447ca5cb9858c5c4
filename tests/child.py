"""A source process with a known memory layout, for the tests and the
benchmark (benchmarks/harness.py imports it from here).

Run as `python tests/child.py SPEC_JSON`.  SPEC is a list of regions:
  {"name": str, "kind": "anon"|"shared"|"memfd"|"file"|"shm"|"sysv"|"hugetlb",
   "size": int,
   "fill": "pattern"|"none"|[page indexes], "prot": "rw"|"r"|"w"|"none",
   "seed": int, "path": str (file), "noreserve": bool,
   "thp": bool (anon only: 2 MiB aligned, MADV_HUGEPAGE before the fill),
   "vmas": int (cut the region into that many one-page VMAs: every other
   page gets protection "r", the others keep "prot"; size = vmas pages),
   "after": name (placed right after that region; a spec using "after" is
   laid out in order, each region right after the one before)}
It prints one JSON line {name: address, ..., "pid": pid}, then serves JSON
commands on stdin, one per line (write, read, prot, pkey, unmap, spin,
uffd, close, fork, mremap, thread, exec, spawn, exit), answering each
(exec replaces the image: no answer).
"""
import ctypes
import json
import mmap
import os
import struct
import subprocess
import sys
import time
from array import array

libc = ctypes.CDLL(None, use_errno=True)
libc.mmap.restype = ctypes.c_void_p
libc.mmap.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int,
                      ctypes.c_int, ctypes.c_int, ctypes.c_long]
libc.mprotect.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int]
libc.mremap.restype = ctypes.c_void_p
libc.mremap.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_size_t,
                        ctypes.c_int, ctypes.c_void_p]
libc.shmat.restype = ctypes.c_void_p
libc.shmat.argtypes = [ctypes.c_int, ctypes.c_void_p, ctypes.c_int]
PAGE = mmap.PAGESIZE
PROTS = {"rw": 3, "r": 1, "w": 2, "none": 0, "rx": 5}
MAP_NORESERVE = 0x4000
MADV_HUGEPAGE = 14
HUGE = 2 << 20


_RAMP = bytes(range(256)) * (2 * PAGE // 256)


def page_bytes(seed, index):
    """The content of page `index` of a pattern-filled region: its seed and
    index, then a byte ramp starting where they say.  Never all zero."""
    shift = (index * 31 + seed) % 256
    return struct.pack("<QQ", seed, index) + _RAMP[shift + 16:shift + PAGE]


def pattern(size, seed):
    out = bytearray(size)
    for index in range(size // PAGE):
        out[index * PAGE:(index + 1) * PAGE] = page_bytes(seed, index)
    return bytes(out)


def fill_pattern(addr, size, seed):
    """Write pattern(size, seed) at addr, fast enough for GiBs: the ramp
    repeats every 256 pages, so one such block is copied over and over,
    then each page's index word is set in one strided assignment."""
    npages = size // PAGE
    block = pattern(min(npages, 256) * PAGE, seed)
    for off in range(0, size, len(block)):
        ctypes.memmove(addr + off, block, min(len(block), size - off))
    with memoryview((ctypes.c_char * size).from_address(addr)) as raw:
        with raw.cast("B").cast("Q") as words:
            words[1::PAGE // 8] = array("Q", range(npages))


def attach_sysv(size):
    """A SysV shared memory segment of `size`, attached; removed at once
    (IPC_RMID), so it goes away with the process.  Returns its address."""
    shmid = libc.shmget(0, size, 0o1000 | 0o600)         # IPC_PRIVATE, IPC_CREAT
    if shmid < 0:
        raise OSError(ctypes.get_errno(), "shmget")
    addr = libc.shmat(shmid, None, 0)
    err = ctypes.get_errno()
    libc.shmctl(shmid, 0, None)                          # IPC_RMID
    if addr in (None, ctypes.c_void_p(-1).value):
        raise OSError(err, "shmat")
    return addr


def map_thp(size, flags):
    """An anonymous mapping of `size` at a 2 MiB boundary (so that THP can
    back all of it), with MADV_HUGEPAGE; returns its address."""
    raw = libc.mmap(None, size + HUGE, 3, flags, -1, 0)
    if raw in (None, ctypes.c_void_p(-1).value):
        raise OSError(ctypes.get_errno(), "mmap")
    addr = (raw + HUGE - 1) & ~(HUGE - 1)
    for start, end in ((raw, addr), (addr + size, raw + size + HUGE)):
        if end > start:
            libc.munmap(ctypes.c_void_p(start), ctypes.c_size_t(end - start))
    if libc.madvise(ctypes.c_void_p(addr), ctypes.c_size_t(size), MADV_HUGEPAGE):
        raise OSError(ctypes.get_errno(), "madvise(MADV_HUGEPAGE)")
    return addr


def split_vmas(addr, size, n, prot):
    """Cut [addr, addr+size) into n one-page VMAs: odd pages get "r" (or
    "rw" when prot is "r"), so no two neighbours can merge."""
    assert size == n * PAGE, "vmas: the region must be exactly that many pages"
    other = PROTS["rw" if prot == "r" else "r"]
    for i in range(1, n, 2):
        if libc.mprotect(ctypes.c_void_p(addr + i * PAGE), PAGE, other):
            raise OSError(ctypes.get_errno(), f"mprotect (vmas, page {i})")


def time_fork():
    """Time os.fork() of this process (the page-table copy), then the
    child's exit and the wait for it, in ns."""
    t0 = time.perf_counter_ns()
    pid = os.fork()
    if pid == 0:
        os._exit(0)
    t1 = time.perf_counter_ns()
    os.waitpid(pid, 0)
    return {"fork_ns": t1 - t0, "exit_wait_ns": time.perf_counter_ns() - t1}


def start_spinner(first, last):
    """A thread that forever writes an increasing counter to `first`, then to
    `last`: a consistent snapshot has last == first or last == first - 1."""
    import threading

    def spin():
        count = 0
        while True:
            count += 1
            value = struct.pack("<Q", count)
            ctypes.memmove(first, value, 8)
            ctypes.memmove(last, value, 8)

    ctypes.memmove(first, bytes(8), 8)      # consistent before the first turn
    ctypes.memmove(last, bytes(8), 8)
    threading.Thread(target=spin, daemon=True).start()


def start_idle_thread():
    """A thread that sleeps until the process exits; returns its tid (a
    task id that is not the process's pid)."""
    import threading
    started, tid = threading.Event(), []

    def idle():
        tid.append(threading.get_native_id())
        started.set()
        threading.Event().wait()

    threading.Thread(target=idle, daemon=True).start()
    started.wait(10)
    return tid[0]


def register_uffd(addr, n):
    """Register [addr, addr+n) with a new userfaultfd (missing mode); returns
    the fd, which must stay open for the registration to last."""
    import fcntl
    fd = libc.syscall(323, os.O_CLOEXEC | os.O_NONBLOCK)   # userfaultfd
    if fd < 0:
        raise OSError(ctypes.get_errno(), "userfaultfd")
    api = bytearray(struct.pack("<QQQ", 0xAA, 0, 0))
    fcntl.ioctl(fd, 0xC018AA3F, api)                       # UFFDIO_API
    reg = bytearray(struct.pack("<QQQQ", addr, n, 1, 0))   # MODE_MISSING
    fcntl.ioctl(fd, 0xC020AA00, reg)                       # UFFDIO_REGISTER
    return fd


def main():
    keep = []
    serve(lay_out(json.loads(sys.argv[1]), keep), keep)


def lay_out(spec, keep):
    """Map the regions of spec; returns {name: address}.  What must live as
    long as the process (fds, shm objects) is appended to keep."""
    addrs, sizes = {}, {}
    arena = None
    if any("after" in r for r in spec):
        # Free space right after a mapping is rare (mmap goes top-down):
        # reserve room for the whole layout first.
        arena = libc.mmap(None, sum(r["size"] for r in spec), 0,
                          mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS | 0x4000, -1, 0)
    for r in spec:
        size, kind = r["size"], r["kind"]
        fd, flags = -1, mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS
        if r.get("noreserve"):
            flags |= MAP_NORESERVE
        if kind == "hugetlb":
            flags |= 0x40000                                 # MAP_HUGETLB
        if kind == "shared":
            flags = mmap.MAP_SHARED | mmap.MAP_ANONYMOUS
        elif kind == "memfd":
            fd = os.memfd_create(r["name"])
            os.ftruncate(fd, size)
            flags = mmap.MAP_SHARED
        elif kind == "file":
            fd = os.open(r["path"], os.O_RDWR)
            flags = mmap.MAP_SHARED if r.get("shared") else mmap.MAP_PRIVATE
        elif kind == "shm":
            from multiprocessing import shared_memory
            shm = shared_memory.SharedMemory(create=True, size=size)
            keep.append(shm)
            fd = os.open(f"/dev/shm/{shm.name}", os.O_RDWR)
            flags = mmap.MAP_SHARED
            addrs[r["name"] + ":shm_name"] = shm.name
        want = None
        if arena:                   # laid out one after the other
            flags |= 0x10           # MAP_FIXED, inside the arena
            want = arena + sum(sizes.values())
            if "after" in r:
                assert want == addrs[r["after"]] + sizes[r["after"]]
        if r.get("thp"):
            assert kind == "anon" and not arena, "thp: anon regions, no 'after'"
            addr = map_thp(size, flags)
        elif kind == "sysv":
            assert not arena, "sysv: no 'after'"
            addr = attach_sysv(size)
        else:
            addr = libc.mmap(want, size, 3, flags, fd, r.get("offset", 0))
        if addr in (None, ctypes.c_void_p(-1).value):
            raise OSError(ctypes.get_errno(), "mmap")
        if fd >= 0 and kind != "memfd":
            os.close(fd)
        fill = r.get("fill", "pattern")
        if fill == "pattern":
            fill_pattern(addr, size, r.get("seed", 1))
        for index in [] if fill in ("pattern", "none") else fill:
            ctypes.memmove(addr + index * PAGE, page_bytes(r.get("seed", 1), index), PAGE)
        if r.get("prot", "rw") != "rw":
            libc.mprotect(addr, size, PROTS[r["prot"]])
        if r.get("vmas"):
            split_vmas(addr, size, r["vmas"], r.get("prot", "rw"))
        addrs[r["name"]] = addr
        sizes[r["name"]] = size
    return addrs


def spawn(cmd):
    """The "spawn" command: fork a new source laid out by cmd["spec"] that
    serves its commands on the FIFOs cmd["cmd"] (in) and cmd["ans"] (out),
    so a test gets a small source for the price of a fork, not of an
    interpreter's start.  Its children are reaped by the kernel (SIGCHLD
    ignored): a killed one is gone at once.  Answers {"pid": pid}."""
    import signal
    signal.signal(signal.SIGCHLD, signal.SIG_IGN)
    pid = os.fork()
    if pid == 0:
        try:
            signal.signal(signal.SIGCHLD, signal.SIG_DFL)
            sys.stdin = open(cmd["cmd"])
            sys.stdout = open(cmd["ans"], "w")
            keep = []
            serve(lay_out(cmd["spec"], keep), keep)
        finally:
            os._exit(0)
    return {"pid": pid}


def serve(addrs, keep):
    """Print addrs (with our pid), then answer commands from stdin."""
    addrs["pid"] = os.getpid()
    print(json.dumps(addrs), flush=True)
    for line in sys.stdin:
        cmd = json.loads(line)
        op = cmd["op"]
        if op == "exit":
            break
        if op == "write":
            data = bytes.fromhex(cmd["data"])
            ctypes.memmove(cmd["addr"], data, len(data))
            print(json.dumps({"ok": True}), flush=True)
        elif op == "read":
            print(json.dumps({"data": ctypes.string_at(cmd["addr"], cmd["n"]).hex()}),
                  flush=True)
        elif op == "unmap":
            libc.munmap(ctypes.c_void_p(cmd["addr"]), ctypes.c_size_t(cmd["n"]))
            print(json.dumps({"ok": True}), flush=True)
        elif op == "spin":
            start_spinner(cmd["first"], cmd["last"])
            print(json.dumps({"ok": True}), flush=True)
        elif op == "uffd":
            fd = register_uffd(cmd["addr"], cmd["n"])
            keep.append(fd)
            print(json.dumps({"ok": True, "fd": fd}), flush=True)
        elif op == "close":
            os.close(cmd["fd"])
            keep.remove(cmd["fd"])
            print(json.dumps({"ok": True}), flush=True)
        elif op == "pkey":
            key = libc.syscall(330, 0, 0)                  # pkey_alloc
            rc = key if key < 0 else libc.syscall(        # pkey_mprotect
                329, ctypes.c_void_p(cmd["addr"]), ctypes.c_size_t(cmd["n"]),
                PROTS[cmd["prot"]], key)
            print(json.dumps({"key": key, "errno": ctypes.get_errno() if rc < 0 else 0}),
                  flush=True)
        elif op == "prot":
            rc = libc.mprotect(cmd["addr"], cmd["n"], PROTS[cmd["prot"]])
            print(json.dumps({"ok": rc == 0}), flush=True)
        elif op == "fork":
            print(json.dumps(time_fork()), flush=True)
        elif op == "mremap":            # move [addr, addr+n) to a new place
            n = cmd["n"]
            away = libc.mmap(None, n, 0, mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS, -1, 0)
            moved = libc.mremap(ctypes.c_void_p(cmd["addr"]), ctypes.c_size_t(n),
                                ctypes.c_size_t(n), 3, ctypes.c_void_p(away))
            print(json.dumps({"ok": moved == away}), flush=True)
        elif op == "exec":              # a new image: sleep, for cmd["seconds"]
            os.execv("/bin/sleep", ["sleep", str(cmd["seconds"])])
        elif op == "thread":
            print(json.dumps({"tid": start_idle_thread()}), flush=True)
        elif op == "spawn":
            print(json.dumps(spawn(cmd)), flush=True)
    for obj in keep:
        if not isinstance(obj, int):
            obj.close()
            obj.unlink()


class Source:
    """A child process holding regions laid out by `spec`; .addr[name] gives
    each region's address.  Commands write/read its memory from inside."""

    def __init__(self, spec, preexec_fn=None):
        self.spec = {r["name"]: r for r in spec}
        self.proc = subprocess.Popen(
            [sys.executable, os.path.abspath(__file__), json.dumps(spec)],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE, text=True, preexec_fn=preexec_fn)
        line = self.proc.stdout.readline()
        if not line:
            self.proc.wait()
            raise RuntimeError(f"source process failed ({self.proc.returncode})")
        self.addr = json.loads(line)
        self.pid = self.addr["pid"]

    def _ask(self, **cmd):
        self.proc.stdin.write(json.dumps(cmd) + "\n")
        self.proc.stdin.flush()
        return json.loads(self.proc.stdout.readline())

    def write(self, addr, data):
        assert self._ask(op="write", addr=addr, data=bytes(data).hex())["ok"]

    def read(self, addr, n):
        return bytes.fromhex(self._ask(op="read", addr=addr, n=n)["data"])

    def unmap(self, addr, n):
        assert self._ask(op="unmap", addr=addr, n=n)["ok"]

    def spin(self, first, last):
        assert self._ask(op="spin", first=first, last=last)["ok"]

    def register_uffd(self, addr, n):
        """Registers [addr, addr+n) with a new userfaultfd held by the
        source; returns its fd number there."""
        return self._ask(op="uffd", addr=addr, n=n)["fd"]

    def start_thread(self):
        """Starts an idle thread in the source; returns its tid."""
        return self._ask(op="thread")["tid"]

    def close_fd(self, fd):
        assert self._ask(op="close", fd=fd)["ok"]

    def pkey_mprotect(self, addr, n, prot="rw"):
        """Tags [addr, addr+n) with a new protection key; returns the key
        or raises OSError (ENOSPC, EINVAL, ENOSYS without PKU)."""
        answer = self._ask(op="pkey", addr=addr, n=n, prot=prot)
        if answer["errno"]:
            raise OSError(answer["errno"], os.strerror(answer["errno"]))
        return answer["key"]

    def mprotect(self, addr, n, prot):
        assert self._ask(op="prot", addr=addr, n=n, prot=prot)["ok"]

    def fork(self):
        """Times a fork() of the source: {"fork_ns", "exit_wait_ns"}."""
        return self._ask(op="fork")

    def region(self, name):
        """The spec of region `name` with its "addr" in the source."""
        return dict(self.spec[name], addr=self.addr[name])

    def expected(self, name):
        r = self.spec[name]
        return pattern(r["size"], r.get("seed", 1))

    def close(self):
        if self.proc.poll() is None:
            try:
                self.proc.stdin.write(json.dumps({"op": "exit"}) + "\n")
                self.proc.stdin.close()
                self.proc.wait(timeout=10)
            except (OSError, subprocess.TimeoutExpired):
                self.proc.kill()
                self.proc.wait()
        self.proc.stdout.close()
        if not self.proc.stdin.closed:
            self.proc.stdin.close()



if __name__ == "__main__":
    main()
