"""pvmmap.dump(page_server=...) against page servers that misbehave: a fake
server on a loopback socket thread refuses, answers garbage, closes
mid-stream, or accepts and then stalls (before answering, and mid-stream
with its receive buffer full).

Each must give one OSError with its errno and a message naming the server,
within a bound (the client's timeout, shortened here); the source must be
left running (not stopped, not traced), and no fd or temporary image left.
"""

import errno
import os
import socket
import subprocess
import sys
import time

import pytest

import pvmmap

from _helpers import leftovers, own_state, status_of

dump_module = sys.modules["pvmmap.criu.dump"]     # pvmmap.criu.dump is the function

MiB = 1 << 20
TIMEOUT = 2.0           # the client's answer timeout for these tests (60 s by default)
SPEC = [{"name": "big", "kind": "anon", "size": 48 * MiB},
        {"name": "shared", "kind": "shared", "size": 1 * MiB}]


SERVER = r"""
import socket, sys, time
mode = sys.argv[1]
listener = socket.create_server(("127.0.0.1", 0))
print(listener.getsockname()[1], flush=True)
listener.settimeout(60)
conn, _ = listener.accept()
conn.settimeout(60)
try:
    if mode == "garbage":
        conn.sendall(b"\xff" * 64)
        while conn.recv(1 << 16):
            pass
    elif mode == "close-mid":
        conn.sendall(bytes(16))             # every PS_IOV_OPEN2 answered
        got = 0
        while got < 256 << 10:
            chunk = conn.recv(1 << 16)
            if not chunk:
                break
            got += len(chunk)
        conn.close()
    elif mode == "stall-stream":
        conn.sendall(bytes(16))
        time.sleep(60)
    else:
        time.sleep(60)
except OSError:
    pass
"""


class FakeServer:
    """A page server on 127.0.0.1, in a child process (no thread of ours
    whose allocator arena would look like a leak), that behaves as `mode`
    says: garbage: sends 64 bytes of 0xff at once, then reads to the end;
    close-mid: answers every PS_IOV_OPEN2 up front, reads 256 KiB, closes;
    stall-answer: accepts and never reads or answers; stall-stream: answers
    every PS_IOV_OPEN2 up front, then never reads."""

    def __init__(self, mode):
        self.proc = subprocess.Popen([sys.executable, "-c", SERVER, mode],
                                     stdout=subprocess.PIPE, text=True)
        self.port = int(self.proc.stdout.readline())

    def close(self):
        self.proc.kill()
        self.proc.wait(30)
        self.proc.stdout.close()


@pytest.fixture
def short_timeout(monkeypatch):
    monkeypatch.setattr(dump_module, "ANSWER_TIMEOUT", TIMEOUT)


def _check_source_runs(s):
    state, tracer = status_of(s.pid)
    assert state in ("S", "R"), state
    assert tracer == 0
    assert s.read(s.addr["big"], 16)            # it answers


@pytest.mark.parametrize("mode,errnos,words", [
    ("garbage", (errno.EPROTO,), "not a criu page-server"),
    ("close-mid", (errno.EPIPE, errno.ECONNRESET), "closed the connection"),
    ("stall-answer", (errno.ETIMEDOUT,), "did not answer"),
    ("stall-stream", (errno.ETIMEDOUT,), "stopped reading"),
])
def test_misbehaving_page_server(tmp_path, source, short_timeout, mode, errnos, words):
    s = source(SPEC)
    before = own_state()
    server = FakeServer(mode)
    spec = f"127.0.0.1:{server.port}"
    t0 = time.monotonic()
    try:
        with pytest.raises(OSError) as e:
            pvmmap.dump(s.pid, tmp_path, page_server=spec)
        took = time.monotonic() - t0
    finally:
        server.close()
    assert e.value.errno in errnos, (e.value.errno, str(e.value))
    message = str(e.value)
    assert spec in message and f"pid {s.pid}" in message, message
    assert words in message, message
    assert took < 8 * TIMEOUT + 20, took            # bounded: no hang
    assert os.listdir(tmp_path) == []
    assert leftovers(before) == []
    _check_source_runs(s)


def test_refused_connection(tmp_path, source):
    s = source(SPEC[:1])
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]        # bound, not listening: refused
        before = own_state()
        with pytest.raises(ConnectionRefusedError) as e:
            pvmmap.dump(s.pid, tmp_path, page_server=f"127.0.0.1:{port}")
    assert e.value.errno == errno.ECONNREFUSED
    assert f"127.0.0.1:{port}" in str(e.value) and "criu page-server" in str(e.value)
    assert os.listdir(tmp_path) == []
    assert leftovers(before) == []
    _check_source_runs(s)


def test_cli_dump_to_a_refusing_server_is_one_line(tmp_path, source):
    """`pvmmap dump --page-server` as a user runs it: one line, exit 1."""
    s = source(SPEC[:1])
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
        out = subprocess.run([sys.executable, "-m", "pvmmap", "dump", str(s.pid),
                              str(tmp_path), "--page-server", f"127.0.0.1:{port}"],
                             capture_output=True, text=True, timeout=120)
    assert out.returncode == 1, out
    lines = out.stderr.splitlines()
    assert len(lines) == 1 and "Traceback" not in out.stderr, out.stderr
    assert lines[0].startswith("pvmmap dump: Connection refused (connecting to the "
                               f"page server 127.0.0.1:{port}: is `criu page-server"), lines
    assert os.listdir(tmp_path) == []
    _check_source_runs(s)
