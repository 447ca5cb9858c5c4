"""Small helpers for the tests: /proc readings of this process and others.
The source process itself is pvmmap._sample.Source (see conftest.py)."""
import os


def fd_count():
    return len(os.listdir("/proc/self/fd"))


def maps_lines():
    with open("/proc/self/maps") as f:
        return sum(1 for _ in f)


def vm_size_kb():
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmSize:"):
                return int(line.split()[1])
    return 0


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
