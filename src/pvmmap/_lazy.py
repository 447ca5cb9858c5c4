"""Lazy clones (method="lazy"): private anonymous pieces become anonymous
memory registered with userfaultfd, filled on first touch by the C fault
server (csrc/uffd.c), which reads the source through the /proc/PID/mem and
pagemap fds opened at clone time.  Those fds pin the source's mm, so an
exec or a recycled pid can never hand out another image's bytes: pages not
yet fetched when the source exits, execs or unmaps the range are poisoned
(SIGBUS on touch) and counted in Mapping.lost, never silent zeros.

Shared pieces are shared as with method="auto" (zero copy already); private
file pieces map the file and copy the source's privately modified pages at
the call, as the eager `file` strategy does (the one part of a lazy clone
that reads data at the call: a scan of that VMA, usually a library's few
pages).  A lazy clone is MADV_DONTFORK: a fork()ed child has no copy of it
and its Mapping reports itself closed there.
"""

from __future__ import annotations

import errno
import os

from pvmmap import _native
from pvmmap._contract import Piece
from pvmmap._errors import os_error

RW = _native.PROT_READ | _native.PROT_WRITE

#: The first read-ahead window unless clone(readahead=) says otherwise:
#: 16 KiB, doubled on each sequential fault up to 1 MiB.  Measured here
#: (benchmarks/UFFD.md, 1 GiB): a fixed 16 KiB window costs 1.95 s for a
#: sequential touch and a fixed 1 MiB one 0.86 s, but 1 MiB makes a random
#: 4 KiB touch wait for a whole MiB; the growing window gave 0.87 s
#: sequentially with the 16 KiB window's random-touch latency (p50 32 us).
#: The server spins 50 us after each fault before it blocks: blocking,
#: spinning and busy-polling measured the same within noise on this VM,
#: and busy-polling would keep one of its two vCPUs.
READAHEAD_DEFAULT: int = _native.LAZY_READAHEAD_DEFAULT


def check_readahead(readahead: int) -> int:
    """The read-ahead in bytes, validated (ValueError otherwise)."""
    page = _native.PAGESIZE
    if not isinstance(readahead, int) or readahead < page or \
            readahead > _native.LAZY_READAHEAD_MAX or readahead % page:
        raise ValueError(f"readahead={readahead!r}: a multiple of {page} from "
                         f"{page} to {_native.LAZY_READAHEAD_MAX} bytes")
    return readahead


def require_uffd(pid: int, start: int, end: int) -> None:
    """Raises the errno a userfaultfd cannot be had with (seccomp, no
    permission, a kernel without it), with what to do, before anything is
    mapped: the check clone() and `pvmmap check` share."""
    try:
        _native.uffd_info()
    except OSError as e:
        raise os_error(e.errno or errno.EPERM,
                       "method='lazy': no userfaultfd can be opened", pid, start,
                       end - start, "lazy-uffd") from None


class SourceFds:
    """The source's mem, pagemap and maps fds a lazy clone is served from
    (the server dups what it keeps)."""

    def __init__(self, pid: int, mem_fd: int, pagemap_fd: int) -> None:
        self.mem_fd, self.pagemap_fd = mem_fd, pagemap_fd
        self.maps_fd = os.open(f"/proc/{pid}/maps", os.O_RDONLY | os.O_CLOEXEC)

    def close(self) -> None:
        os.close(self.maps_fd)


def place(pid: int, piece: Piece, daddr: int, fds: SourceFds,
          readahead: int) -> _native.Lazy:
    """Map a private anonymous piece at daddr (inside the reservation) and
    hand it to the fault server; nothing is read now."""
    r = piece.region
    _native.mmap_raw(daddr, piece.length, RW,
                     _native.MAP_PRIVATE | _native.MAP_ANONYMOUS | _native.MAP_FIXED
                     | _native.MAP_NORESERVE, -1, 0, "mapping anonymous", pid)
    lazy = _native.Lazy(pid, fds.mem_fd, fds.pagemap_fd, fds.maps_fd, piece.start,
                        daddr, piece.length, readahead)
    if r.prot != RW:
        _native.mprotect_raw(daddr, piece.length, r.prot)
    return lazy
