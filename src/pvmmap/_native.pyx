# cython: language_level=3, embedsignature=True
"""Thin binding over pvmmap's C core (csrc/): argument conversion, GIL release,
errno to OSError, and the Mapping type.  Policy lives in the Python modules."""

from cpython.buffer cimport PyBuffer_FillInfo, PyBUF_WRITABLE
from libc.errno cimport errno
from libc.stdint cimport uint64_t, uintptr_t
from libc.stdlib cimport free
from libc.string cimport memset
from posix.types cimport off_t, pid_t

import mmap as _mmap
import os
import warnings

from pvmmap._errors import os_error

cdef extern from "<sys/mman.h>" nogil:
    void *mmap(void *addr, size_t length, int prot, int flags, int fd, off_t offset)
    int munmap(void *addr, size_t length)
    int mprotect(void *addr, size_t length, int prot)
    int madvise(void *addr, size_t length, int advice)
    void *MAP_FAILED

cdef extern from "pvmmap.h" nogil:
    int PVMMAP_DEFAULT_SYSCALL_NR
    int PVMMAP_FIXED
    int PVMMAP_FIXED_NOREPLACE
    int PVMMAP_COPY_MEM_ONLY
    int PVMMAP_COPY_SKIP
    int PVMMAP_SCAN_DATA
    int PVMMAP_SCAN_ANON

    long pvmmap_sys_process_vm_mmap(long nr, pid_t pid, uintptr_t src, size_t len,
                                    uintptr_t dst, unsigned long flags)
    int pvmmap_kallsyms_find(const char *const *names, int n)
    int pvmmap_probe_native(long nr)
    int pvmmap_uffd_probe()

    struct pvmmap_range:
        uintptr_t start
        uintptr_t end
    int pvmmap_scan(int pagemap_fd, uintptr_t start, uintptr_t end, int mode,
                    pvmmap_range **out, size_t *n_out, int *how)

    struct pvmmap_copy_stats:
        uint64_t bytes_readv
        uint64_t bytes_mem
        uint64_t calls
        uint64_t skipped
        int threads
    int pvmmap_copy(pid_t pid, int mem_fd, const pvmmap_range *r, size_t n,
                    uintptr_t src_base, void *dst_base, int max_threads, int flags,
                    pvmmap_copy_stats *stats)

    struct freeze_state "pvmmap_freeze":
        pid_t pid
        int n
    int pvmmap_freeze(pid_t pid, freeze_state *fz)
    int pvmmap_thaw(freeze_state *fz)

    int pvmmap_bench_readv_fresh(pid_t pid, uintptr_t addr, size_t len, size_t chunk)

DEFAULT_SYSCALL_NR = PVMMAP_DEFAULT_SYSCALL_NR
FIXED = PVMMAP_FIXED
FIXED_NOREPLACE = PVMMAP_FIXED_NOREPLACE
COPY_MEM_ONLY = PVMMAP_COPY_MEM_ONLY
COPY_SKIP = PVMMAP_COPY_SKIP
SCAN_DATA = PVMMAP_SCAN_DATA
SCAN_ANON = PVMMAP_SCAN_ANON
PAGESIZE = _mmap.PAGESIZE


# ---- raw calls ----

def sys_process_vm_mmap(long nr, long pid, uintptr_t src, size_t length,
                        uintptr_t dst, unsigned long flags):
    """Issue process_vm_mmap as syscall `nr`; returns the destination address."""
    cdef long ret
    cdef int err
    with nogil:
        ret = pvmmap_sys_process_vm_mmap(nr, <pid_t>pid, src, length, dst, flags)
        err = errno
    if ret == -1:
        raise os_error(err, "process_vm_mmap", pid, src, length)
    return <uintptr_t>ret


def kallsyms_find(names):
    """Index of the first of `names` that /proc/kallsyms lists, or -1."""
    cdef list encoded = [name.encode() for name in names]
    cdef const char *ptrs[8]
    cdef int i, r, err, n = len(encoded)
    if n > 8:
        raise ValueError("at most 8 names")
    for i in range(n):
        ptrs[i] = encoded[i]
    with nogil:
        r = pvmmap_kallsyms_find(ptrs, n)
        err = errno
    if r < 0 and err:
        raise OSError(err, f"{os.strerror(err)} (reading /proc/kallsyms)")
    return r


def probe_native(long nr):
    """True if syscall `nr` refuses what process_vm_mmap must refuse (EINVAL)."""
    cdef int r
    with nogil:
        r = pvmmap_probe_native(nr)
    return r == 0


def uffd_probe():
    """2: full userfaultfd, 1: UFFD_USER_MODE_ONLY only, 0: none."""
    return pvmmap_uffd_probe()


def mmap_raw(uintptr_t addr, size_t length, int prot, int flags, int fd=-1,
             off_t offset=0, what="mmap", pid=None):
    """mmap(2); returns the address or raises OSError."""
    cdef void *p
    cdef int err
    with nogil:
        p = mmap(<void *>addr, length, prot, flags, fd, offset)
        err = errno
    if p == MAP_FAILED:
        raise os_error(err, what, pid, addr, length)
    return <uintptr_t>p


def munmap_raw(uintptr_t addr, size_t length):
    """munmap(2); raises OSError (EINVAL for an unaligned address)."""
    cdef int r, err
    with nogil:
        r = munmap(<void *>addr, length)
        err = errno
    if r:
        raise os_error(err, "munmap", None, addr, length)


def mprotect_raw(uintptr_t addr, size_t length, int prot):
    cdef int r, err
    with nogil:
        r = mprotect(<void *>addr, length, prot)
        err = errno
    if r:
        raise os_error(err, "mprotect", None, addr, length)


def scan_pages(long pid, uintptr_t addr, size_t length, int mode=PVMMAP_SCAN_DATA,
               int pagemap_fd=-1):
    """(start, end) ranges of [addr, addr+length) that hold data in `pid`
    (present but not the zero page, or swapped); the scanner clone uses."""
    cdef pvmmap_range *r = NULL
    cdef size_t n = 0, i
    cdef int how = 0, rc, err, fd = pagemap_fd
    own = fd < 0
    if own:
        fd = os.open(f"/proc/{pid}/pagemap", os.O_RDONLY | os.O_CLOEXEC)
    try:
        with nogil:
            rc = pvmmap_scan(fd, addr, addr + length, mode, &r, &n, &how)
            err = errno
    finally:
        if own:
            os.close(fd)
    if rc:
        raise os_error(err, "scanning pagemap", pid, addr, length)
    try:
        return [(r[i].start, r[i].end) for i in range(n)]
    finally:
        free(r)


def pagemap_scan_works():
    """True if this kernel answers the PAGEMAP_SCAN ioctl."""
    cdef pvmmap_range *r = NULL
    cdef size_t n = 0
    cdef int how = 0, rc
    fd = os.open("/proc/self/pagemap", os.O_RDONLY | os.O_CLOEXEC)
    try:
        rc = pvmmap_scan(fd, <uintptr_t>PAGESIZE, <uintptr_t>(2 * PAGESIZE),
                         PVMMAP_SCAN_DATA, &r, &n, &how)
    finally:
        os.close(fd)
    free(r)
    return rc == 0 and how == 1


def copy_range(long pid, uintptr_t src, size_t length, uintptr_t dst, *,
               int mem_fd=-1, int pagemap_fd=-1, int scan=PVMMAP_SCAN_DATA,
               bint do_scan=True, int flags=0, int threads=2, dict stats=None):
    """Copy [src, src+length) of `pid` to dst: scan (unless do_scan is false),
    then readv the pages found, /proc/PID/mem where readv cannot.  GIL free."""
    cdef pvmmap_range *r = NULL
    cdef pvmmap_range whole
    cdef size_t n = 0
    cdef int how = 1, rc = 0, err = 0
    cdef pvmmap_copy_stats st
    memset(&st, 0, sizeof(st))
    with nogil:
        if do_scan:
            rc = pvmmap_scan(pagemap_fd, src, src + length, scan, &r, &n, &how)
        else:
            whole.start = src
            whole.end = src + length
        if rc == 0:
            rc = pvmmap_copy(<pid_t>pid, mem_fd, r if do_scan else &whole,
                             n if do_scan else 1, src, <void *>dst, threads,
                             flags, &st)
        err = errno
    free(r)
    if rc:
        raise os_error(err, "copying", pid, src, length)
    if stats is not None:
        stats["bytes_readv"] = stats.get("bytes_readv", 0) + st.bytes_readv
        stats["bytes_mem"] = stats.get("bytes_mem", 0) + st.bytes_mem
        stats["calls"] = stats.get("calls", 0) + st.calls
        stats["skipped_pages"] = stats.get("skipped_pages", 0) + st.skipped
        stats["threads"] = max(stats.get("threads", 0), st.threads)
        stats["pagemap_scan"] = bool(how)
    return st.skipped


def bench_readv_fresh(long pid, uintptr_t addr, size_t length, size_t chunk=1 << 20):
    """Benchmark baseline: the raw C process_vm_readv loop into fresh memory."""
    cdef int rc, err
    with nogil:
        rc = pvmmap_bench_readv_fresh(<pid_t>pid, addr, length, chunk)
        err = errno
    if rc:
        raise os_error(err, "process_vm_readv", pid, addr, length)


cdef class Freeze:
    """Every thread of a process held stopped (ptrace) until thaw().
    Must be thawed from the thread that froze it."""
    cdef freeze_state _fz
    cdef readonly long pid
    cdef bint _held

    def __cinit__(self, long pid):
        cdef int rc, err
        self.pid = pid
        self._held = False
        with nogil:
            rc = pvmmap_freeze(<pid_t>pid, &self._fz)
            err = errno
        if rc:
            raise os_error(err, "freezing (ptrace seize)", pid, None, None)
        self._held = True

    @property
    def threads(self):
        return self._fz.n if self._held else 0

    def thaw(self):
        cdef int rc = 0, err = 0
        if self._held:
            self._held = False
            with nogil:
                rc = pvmmap_thaw(&self._fz)
                err = errno
            if rc:
                raise os_error(err, "thawing (ptrace detach)", self.pid, None, None)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.thaw()

    def __dealloc__(self):
        if self._held:
            pvmmap_thaw(&self._fz)


# ---- the Mapping ----

cdef class Mapping:
    """Memory cloned from another process (see pvmmap.clone).

    Supports the buffer protocol (memoryview, numpy.frombuffer), indexing and
    slicing, slice assignment where writable, and use as a context manager.
    """
    cdef char *_base            # page-aligned start of what we own; NULL: closed
    cdef size_t _maplen         # page-rounded length we own
    cdef size_t _offset         # where the user's bytes start within it
    cdef Py_ssize_t _length
    cdef int _exports
    cdef bint _readable
    cdef bint _writable
    cdef readonly object pid
    cdef readonly object source_address
    cdef readonly object method
    cdef readonly object kind
    cdef readonly object prot
    cdef readonly object parts
    cdef readonly object stats
    cdef readonly object lost

    def __cinit__(self):
        self._base = NULL
        self._maplen = 0
        self._exports = 0

    def __init__(self):
        raise TypeError("Mapping objects are made by pvmmap.clone()")

    @property
    def address(self):
        """Address of the first byte of the cloned range in this process."""
        self._check_open()
        return <uintptr_t>(self._base + self._offset)

    @property
    def length(self):
        return self._length

    @property
    def closed(self):
        return self._base == NULL

    cdef int _check_open(self) except -1:
        if self._base == NULL:
            raise ValueError("mapping closed")
        return 0

    cdef int _check_readable(self) except -1:
        self._check_open()
        if not self._readable:
            raise PermissionError(
                13, f"mapping at {<uintptr_t>self._base:#x} is not readable "
                f"(prot {_prot_str(self.prot)}, as in the source); "
                "mprotect it before touching its bytes")
        return 0

    def __getbuffer__(self, Py_buffer *view, int flags):
        self._check_readable()
        if (flags & PyBUF_WRITABLE) and not self._writable:
            raise BufferError("mapping is read-only (as the source range is)")
        PyBuffer_FillInfo(view, self, self._base + self._offset, self._length,
                          not self._writable, flags)
        self._exports += 1

    def __releasebuffer__(self, Py_buffer *view):
        self._exports -= 1

    def __len__(self):
        return self._length

    def __getitem__(self, key):
        self._check_readable()
        with memoryview(self) as mv:
            item = mv[key]
            if isinstance(item, memoryview):
                with item:
                    return item.tobytes()
            return item

    def __setitem__(self, key, value):
        self._check_readable()
        if not self._writable:
            raise TypeError("mapping is read-only (as the source range is)")
        with memoryview(self) as mv:
            mv[key] = value

    def tobytes(self):
        """A copy of the bytes as a bytes object."""
        self._check_readable()
        with memoryview(self) as mv:
            return mv.tobytes()

    def mprotect(self, int prot):
        """Change the protection of the whole mapping (mmap.PROT_* bits)."""
        cdef int r, err
        self._check_open()
        with nogil:
            r = mprotect(self._base, self._maplen, prot)
            err = errno
        if r:
            raise os_error(err, "mprotect", self.pid, <uintptr_t>self._base,
                           self._maplen)
        self.prot = prot
        self._readable = bool(prot & (_mmap.PROT_READ | _mmap.PROT_WRITE))
        self._writable = bool(prot & _mmap.PROT_WRITE)

    def populate(self):
        """Make every page resident now.  Eager clones already are: no-op."""
        self._check_open()

    def close(self):
        """Unmap.  Idempotent; BufferError while a memoryview is alive."""
        cdef int r, err
        if self._base == NULL:
            return
        if self._exports:
            raise BufferError(
                f"cannot close mapping: {self._exports} buffer export(s) alive; "
                "release memoryviews (and numpy arrays) over it first")
        with nogil:
            r = munmap(self._base, self._maplen)
            err = errno
        base = <uintptr_t>self._base
        self._base = NULL
        if r:
            raise os_error(err, "munmap", self.pid, base, self._maplen)

    def detach(self):
        """Give up ownership: returns the address; the memory stays mapped
        (release it with pvmmap.munmap(address, length))."""
        self._check_open()
        if self._exports:
            raise BufferError("cannot detach mapping: release memoryviews first")
        addr = <uintptr_t>(self._base + self._offset)
        self._base = NULL
        return addr

    def __enter__(self):
        self._check_open()
        return self

    def __exit__(self, *exc):
        self.close()

    def __repr__(self):
        if self._base == NULL:
            return f"<pvmmap.Mapping closed, pid {self.pid}, {self._length} bytes>"
        return (f"<pvmmap.Mapping pid {self.pid} "
                f"{self.source_address:#x}+{self._length:#x} -> "
                f"{<uintptr_t>(self._base + self._offset):#x}, "
                f"kind {self.kind}, method {self.method}, prot {_prot_str(self.prot)}>")

    def __del__(self):
        if self._base != NULL:
            warnings.warn(f"unclosed {self!r}", ResourceWarning, source=self)
            munmap(self._base, self._maplen)
            self._base = NULL

    def __dealloc__(self):
        if self._base != NULL:
            munmap(self._base, self._maplen)


def _prot_str(prot):
    if prot is None:
        return "?"
    return ("r" if prot & _mmap.PROT_READ else "-") + \
           ("w" if prot & _mmap.PROT_WRITE else "-") + \
           ("x" if prot & _mmap.PROT_EXEC else "-")


def make_mapping(uintptr_t base, size_t maplen, size_t offset, Py_ssize_t length,
                 pid, source_address, method, kind, int prot, parts, stats):
    """Wrap memory we own (page-aligned base, maplen) as a Mapping."""
    cdef Mapping m = Mapping.__new__(Mapping)
    m._base = <char *>base
    m._maplen = maplen
    m._offset = offset
    m._length = length
    m._readable = bool(prot & _mmap.PROT_READ) or bool(prot & _mmap.PROT_WRITE)
    m._writable = bool(prot & _mmap.PROT_WRITE)
    m.pid = pid
    m.source_address = source_address
    m.method = method
    m.kind = kind
    m.prot = prot
    m.parts = tuple(parts)
    m.stats = stats
    m.lost = 0
    return m
