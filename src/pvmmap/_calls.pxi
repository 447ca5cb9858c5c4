# Included by _native.pyx: the raw calls, the scanner, the copy engine and
# the freeze, each releasing the GIL and turning errno into OSError.

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
        raise os_error(err, "reading /proc/kallsyms")
    return r


def probe_native(long nr):
    """True if syscall `nr` refuses what process_vm_mmap must refuse."""
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
    """mprotect(2); raises OSError."""
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


def vma_query(int maps_fd, uintptr_t addr):
    """The VMA holding addr or the next one above, of the process whose
    /proc/PID/maps is open as maps_fd, by PROCMAP_QUERY (one ioctl whatever
    the number of VMAs): (start, end, offset, inode, dev_major, dev_minor,
    prot, shared, path), or None past the last.  OSError ENOTTY where the
    kernel has no PROCMAP_QUERY (before 6.11)."""
    cdef pvmmap_vma v
    cdef char name[4096]
    cdef int r, err
    memset(&v, 0, sizeof(v))
    v.name = name
    v.name_size = sizeof(name)
    with nogil:
        r = pvmmap_vma_query(maps_fd, addr, &v)
        err = errno
    if r == 0:
        return None
    if r == 2:
        raise OSError(25, "PROCMAP_QUERY is not available (Linux < 6.11)")
    if r < 0:
        raise os_error(err, "PROCMAP_QUERY", None, addr, None)
    return (v.start, v.end, v.offset, v.inode, v.dev_major, v.dev_minor, v.prot,
            bool(v.shared), name[:].decode("utf-8", "surrogateescape"))


def vmas_text(int proc_fd, uintptr_t start, uintptr_t end):
    """The text of the maps or smaps entries overlapping [start, end), read
    from proc_fd (at offset 0) up to the first entry at or above end."""
    cdef char *out = NULL
    cdef long n
    cdef int err
    with nogil:
        n = pvmmap_vmas_text(proc_fd, start, end, &out)
        err = errno
    if n < 0:
        raise os_error(err, "reading /proc/PID/maps or smaps", None, start, end - start)
    try:
        return out[:n].decode("utf-8", "surrogateescape")
    finally:
        free(out)


def pagemap_scan_works():
    """True if this kernel answers the PAGEMAP_SCAN ioctl."""
    cdef pvmmap_range *r = NULL
    cdef size_t n = 0
    cdef int how = 0, rc
    cdef uintptr_t page = pvmmap_page_size()
    fd = os.open("/proc/self/pagemap", os.O_RDONLY | os.O_CLOEXEC)
    try:
        rc = pvmmap_scan(fd, page, 2 * page, PVMMAP_SCAN_DATA, &r, &n, &how)
    finally:
        os.close(fd)
    free(r)
    return rc == 0 and how == 1


def copy_range(long pid, uintptr_t src, size_t length, uintptr_t dst, *,
               int mem_fd=-1, int pagemap_fd=-1, int scan=PVMMAP_SCAN_DATA,
               bint do_scan=True, int flags=0, int threads=2, dict stats=None):
    """Copy [src, src+length) of `pid` to dst: scan (unless do_scan is false),
    then readv the pages found, /proc/PID/mem where readv cannot.  GIL free.
    Adds to `stats`: bytes_readv, bytes_mem, calls, threads, lost_pages
    (pages left zero under COPY_SKIP), when a scan ran scan, and under
    COPY_UFFD fill (which way the destination was filled)."""
    cdef pvmmap_range *r = NULL
    cdef pvmmap_range whole
    cdef size_t n = 0
    cdef int how = 0, rc = 0, err = 0
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
        stats["threads"] = max(stats.get("threads", 0), st.threads)
        stats["lost_pages"] = stats.get("lost_pages", 0) + st.skipped
        if do_scan:
            stats["scan"] = "PAGEMAP_SCAN" if how else "pagemap"
        if flags & PVMMAP_COPY_UFFD:
            stats["fill"] = "UFFDIO_COPY" if st.uffd else "direct"


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
            raise os_error(err, "freezing the source (ptrace seize)", pid)
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
                raise os_error(err, "thawing the source (ptrace detach)", self.pid)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.thaw()

    def __dealloc__(self):
        if self._held:
            pvmmap_thaw(&self._fz)
