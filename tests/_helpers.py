"""Parent side of the test source process (tests/_source.py)."""
import json
import os
import subprocess
import sys

sys.path.insert(0, os.path.dirname(__file__))
from _source import PAGE, page_bytes, pattern  # noqa: E402,F401

SOURCE = os.path.join(os.path.dirname(__file__), "_source.py")


class Source:
    """A child process holding regions laid out by `spec`; .addr[name] gives
    each region's address.  Commands write/read its memory from inside."""

    def __init__(self, spec, preexec_fn=None):
        self.spec = {r["name"]: r for r in spec}
        self.proc = subprocess.Popen(
            [sys.executable, SOURCE, json.dumps(spec)], stdin=subprocess.PIPE,
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

    def mprotect(self, addr, n, prot):
        assert self._ask(op="prot", addr=addr, n=n, prot=prot)["ok"]

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


def fd_count():
    return len(os.listdir("/proc/self/fd"))


def maps_lines():
    with open("/proc/self/maps") as f:
        return sum(1 for _ in f)


def thread_count():
    return len(os.listdir("/proc/self/task"))


def rss_of(pid, start, end):
    """Resident bytes of [start, end) of pid, from smaps' Rss of the VMAs
    entirely inside it."""
    total, inside = 0, False
    with open(f"/proc/{pid}/smaps") as f:
        for line in f:
            head = line.split(None, 1)[0]
            if "-" in head and not head.endswith(":"):
                s, e = (int(x, 16) for x in head.split("-"))
                inside = s >= start and e <= end
            elif head == "Rss:" and inside:
                total += int(line.split()[1]) * 1024
    return total


def vm_pte_kb(pid):
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmPTE:"):
                return int(line.split()[1])
    return 0
