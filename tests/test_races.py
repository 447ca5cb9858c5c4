"""Faults under the clone, raced deliberately, and pid reuse (issue 9,
items 2 and 3).

Pid reuse: in a pid namespace of our own, the source (a fork holding "V"
pages) is killed and reaped at a hooked step between the checks and the
copy, and an impostor (a fork of the same process: the same layout,
holding "I" pages) is started with the same pid through ns_last_pid.  The
clone must raise ESRCH or give "V" bytes, never "I" bytes.
"""
import ctypes
import errno
import mmap
import os
import signal
import socket
import sys

import pytest

import pvmmap
from pvmmap import _contract, _emulate, _native
from _helpers import in_pid_namespace, leftovers, own_state

criu_dump = sys.modules["pvmmap.criu.dump"]   # the package's dump is the function

PAGE = mmap.PAGESIZE
REUSE_ROUNDS = 100

emulated_only = pytest.mark.skipif(
    pvmmap.backend == "native",
    reason="the native call reads the source under its mmap lock: no window")


class Holders:
    """Forks of this process holding `pages` private anonymous pages at one
    address, each filled with its own byte; made in a pid namespace of ours,
    so that a pid can be handed out again (ns_last_pid)."""

    def __init__(self, pages):
        self.size = pages * PAGE
        self.buf = mmap.mmap(-1, self.size, flags=mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS)
        self.addr = ctypes.addressof(ctypes.c_char.from_buffer(self.buf))
        self.live = {}

    def start(self, fill, pid=None):
        """A holder of `fill` bytes, with pid `pid` if given; returns its pid
        once its pages are written."""
        if pid is not None:
            with open("/proc/sys/kernel/ns_last_pid", "w") as f:
                f.write(str(pid - 1))
        ready_r, ready_w = os.pipe()
        hold_r, hold_w = os.pipe()
        child = os.fork()
        if child == 0:
            self.buf[:] = fill * self.size
            os.write(ready_w, b"!")
            os.read(hold_r, 1)
            os._exit(0)
        os.close(ready_w)
        os.close(hold_r)
        assert os.read(ready_r, 1) == b"!", "the holder did not start"
        os.close(ready_r)
        self.live[child] = hold_w
        assert pid is None or child == pid, f"ns_last_pid gave {child}, not {pid}"
        return child

    def kill(self, pid):
        os.kill(pid, signal.SIGKILL)
        os.waitpid(pid, 0)
        os.close(self.live.pop(pid))

    def replace(self, pid):
        """The source dies and is reaped; an impostor takes its pid."""
        self.kill(pid)
        return self.start(b"I", pid)

    def close(self):
        for pid in list(self.live):
            self.kill(pid)


def _hooked(module, name, action):
    """Make module.name run action() once before its first call."""
    real, fired = getattr(module, name), []

    def hook(*args, **kw):
        if not fired:
            fired.append(action())
        return real(*args, **kw)
    setattr(module, name, hook)
    return lambda: setattr(module, name, real)


def _outcome(call, size, holders):
    """('V' for the source's bytes, 'ESRCH', or what else came: a failure;
    what a failed call left behind but the holders' own pipes)."""
    before = own_state()
    try:
        m = call()
    except OSError as e:
        left = [x for x in leftovers(before)
                if not any(x.startswith(f"fd {fd} ") for fd in holders.live.values())]
        return "ESRCH" if e.errno == errno.ESRCH else f"errno {e.errno}: {e}", left
    with m:
        data = bytes(m[:size])
    kinds = set(data)
    return ("V" if kinds == {ord("V")} else f"bytes {sorted(kinds)}"), []


# Where the source is replaced: each a step of the emulation's policy
# between opening /proc/PID/mem (the permission check) and the last read.
EAGER_HOOKS = [
    (_contract, "plan", {}),                       # before the VMAs are read
    (_contract, "reserve", {}),                    # after planning
    (_native, "copy_range", {}),                   # right before the copy
    (_native, "Freeze", {"freeze": True}),         # before stopping it
]


@emulated_only
@pytest.mark.parametrize("module,name,kw", EAGER_HOOKS,
                         ids=[f"{m.__name__.rsplit('.', 1)[1]}.{n}" for m, n, _ in EAGER_HOOKS])
def test_pid_reuse_eager_never_reads_the_impostor(module, name, kw):
    def body(report):
        h = Holders(4)
        try:
            for _ in range(REUSE_ROUNDS):
                victim = h.start(b"V")
                undo = _hooked(module, name, lambda: h.replace(victim))
                try:
                    got, left = _outcome(lambda: pvmmap.clone(
                        victim, h.addr, h.size, method="copy", **kw), h.size, h)
                finally:
                    undo()
                report({"got": got, "left": left})
                h.close()
        finally:
            h.close()
    reports, code = in_pid_namespace(body)
    assert code == 0
    assert len(reports) == REUSE_ROUNDS
    outcomes = {r["got"] for r in reports}
    assert outcomes <= {"V", "ESRCH"}, outcomes
    assert [r["left"] for r in reports if r["left"]] == []


@emulated_only
def test_pid_reuse_lazy_faults_never_read_the_impostor():
    """The lazy server reads the pinned /proc/PID/mem: once the source is
    gone, populate() says ESRCH, every page is lost, and a touch is SIGBUS
    (the last round touches one and dies of it), however the pid is reused."""
    if not pvmmap.features().uffd:
        pytest.skip("no userfaultfd here: lazy clones are unavailable")

    def body(report):
        h = Holders(4)
        for i in range(REUSE_ROUNDS):
            victim = h.start(b"V")
            m = pvmmap.clone(victim, h.addr, h.size, method="lazy")
            h.replace(victim)
            try:
                m.populate()
                got = "populated"
            except OSError as e:
                got = "ESRCH" if e.errno == errno.ESRCH else f"errno {e.errno}"
            report({"got": got, "lost": m.lost})
            if i == REUSE_ROUNDS - 1:
                m[0]                        # SIGBUS: nothing may come back
                report({"got": "touch returned"})
            m.close()
            h.close()
    reports, code = in_pid_namespace(body)
    assert code == -signal.SIGBUS
    assert len(reports) == REUSE_ROUNDS
    assert {r["got"] for r in reports} == {"ESRCH"}
    assert {r["lost"] for r in reports} == {4}


class PageSink:
    """A page server that answers CRIU's protocol and keeps the pages."""

    def __init__(self):
        import threading
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.listener.settimeout(30)
        self.address = "127.0.0.1:%d" % self.listener.getsockname()[1]
        self.pages = bytearray()
        self.thread = threading.Thread(target=self._serve, daemon=True)
        self.thread.start()

    def _serve(self):
        import struct
        try:
            conn, _ = self.listener.accept()
        except OSError:
            return
        conn.settimeout(30)
        with conn:
            def need(n):
                data = b""
                while len(data) < n:
                    chunk = conn.recv(n - len(data))
                    if not chunk:
                        raise EOFError
                    data += chunk
                return data
            try:
                while True:
                    cmd, nr, _, _ = struct.unpack("<IIQQ", need(24))
                    if cmd == criu_dump.PS_IOV_OPEN2:
                        conn.sendall(b"\0")
                    elif cmd & 0xFFFF == criu_dump.PS_IOV_ADD_F:
                        self.pages += need(nr * PAGE)
                    elif cmd == criu_dump.PS_IOV_CLOSE:
                        conn.sendall(struct.pack("<i", 0))
                        return
            except (EOFError, OSError):
                return

    def close(self):
        try:
            self.listener.shutdown(socket.SHUT_RDWR)    # wakes accept()
        except OSError:
            pass
        self.listener.close()
        self.thread.join(30)
        assert not self.thread.is_alive(), "the page sink did not stop"


DUMP_HOOKS = [
    (criu_dump, "_make_plan", {"freeze": False}),
    (criu_dump, "_make_plan", {}),
    (_native, "Freeze", {}),
    (criu_dump, "_write_metadata", {"freeze": False}),
]


@emulated_only
@pytest.mark.parametrize("stream", [False, True], ids=["files", "page-server"])
@pytest.mark.parametrize("module,name,kw", DUMP_HOOKS,
                         ids=[f"{n}{'-nofreeze' if k else ''}" for _, n, k in DUMP_HOOKS])
def test_pid_reuse_dump_never_writes_the_impostor(tmp_path, module, name, kw, stream):
    def body(report):
        h = Holders(4)
        for i in range(REUSE_ROUNDS // 4):          # a dump costs more
            victim = h.start(b"V")
            out = tmp_path / str(i)
            out.mkdir()
            sink = PageSink() if stream else None
            undo = _hooked(module, name, lambda: h.replace(victim))
            try:
                pvmmap.dump(victim, out, page_server=sink and sink.address, **kw)
                got = "dumped"
            except OSError as e:
                got = "ESRCH" if e.errno == errno.ESRCH else f"errno {e.errno}: {e}"
            finally:
                undo()
                if sink:
                    sink.close()
            written = b"".join(p.read_bytes() for p in out.iterdir())
            if sink:
                written += bytes(sink.pages)
            report({"got": got, "files": sorted(p.name for p in out.iterdir()),
                    "impostor": written.count(b"I" * PAGE)})
            h.close()
    reports, code = in_pid_namespace(body)
    assert code == 0 and len(reports) == REUSE_ROUNDS // 4
    assert {r["got"] for r in reports} == {"ESRCH"}
    assert [r for r in reports if r["files"] or r["impostor"]] == []
