# Included by _native.pyx: a lazily filled piece of a Mapping, served by the
# C fault server (csrc/uffd.c), which never takes the GIL.

from cpython.exc cimport PyErr_CheckSignals

#: Bytes populate() fetches per call into C, between which Ctrl-C is seen.
FILL_CHUNK = 64 << 20
LAZY_READAHEAD_DEFAULT = PVMMAP_LAZY_READAHEAD_DEFAULT
LAZY_READAHEAD_MAX = PVMMAP_LAZY_READAHEAD_MAX
LAZY_NO_POISON = PVMMAP_LAZY_NO_POISON
LAZY_FILE = PVMMAP_LAZY_FILE
LAZY_HOW_POISON = PVMMAP_LAZY_HOW_POISON
LAZY_HOW_USER_ONLY = PVMMAP_LAZY_HOW_USER_ONLY
COPY_UFFD = PVMMAP_COPY_UFFD


def uffd_info():
    """How this process gets a userfaultfd: a dict with mode (2 full, 1
    user-mode-only), via ("/dev/userfaultfd", "userfaultfd()",
    "UFFD_USER_MODE_ONLY"), dev_errno, syscall_errno, offered, granted;
    or raises OSError when none can be had."""
    cdef pvmmap_uffd_info info
    cdef int fd, err
    with nogil:
        fd = pvmmap_uffd_open_ex(0, &info)
        err = errno
    if fd < 0:
        raise os_error(err, "opening a userfaultfd")
    os.close(fd)
    via = {PVMMAP_UFFD_VIA_DEV: "/dev/userfaultfd",
           PVMMAP_UFFD_VIA_SYSCALL: "userfaultfd()",
           PVMMAP_UFFD_VIA_USER_ONLY: "UFFD_USER_MODE_ONLY"}.get(info.via, "?")
    return dict(mode=info.mode, via=via, dev_errno=info.dev_errno,
                syscall_errno=info.syscall_errno, offered=info.offered,
                granted=info.granted)


cdef class Lazy:
    """One piece of a lazy clone: [address, address+length) registered with
    userfaultfd and filled from the source on first touch."""
    cdef pvmmap_lazy *_lz
    cdef readonly long pid
    cdef readonly uintptr_t source
    cdef readonly uintptr_t address
    cdef readonly size_t length

    def __cinit__(self, long pid, int mem_fd, int pagemap_fd, int maps_fd,
                  uintptr_t src, uintptr_t dst, size_t length, size_t readahead=0,
                  int flags=0):
        cdef int err
        self._lz = NULL
        self.pid, self.source, self.address, self.length = pid, src, dst, length
        with nogil:
            self._lz = pvmmap_lazy_start(<pid_t>pid, mem_fd, pagemap_fd, maps_fd,
                                         src, <void *>dst, length, readahead, flags)
            err = errno
        if self._lz == NULL:
            raise os_error(err, "registering the lazy clone with userfaultfd", pid,
                           src, length)

    def fill(self, size_t max_bytes=FILL_CHUNK):
        """Fetch up to max_bytes not yet fetched (GIL released); returns the
        bytes still missing.  OSError (ESRCH: the source exited or exec'd;
        EFAULT: it unmapped part of the range) once pages are lost."""
        cdef int rc, err
        cdef size_t remaining = 0
        if self._lz == NULL:
            raise ValueError("lazy piece closed")
        with nogil:
            rc = pvmmap_lazy_fill(self._lz, max_bytes, &remaining)
            err = errno
        if rc:
            raise os_error(err, "fetching lazy pages", self.pid, self.source,
                           self.length, "lazy-lost")
        return remaining

    def populate(self):
        """Fetch everything now, in chunks, honouring Ctrl-C between them.
        The server prefetches alongside (a second thread on the same
        pages: whoever claims a page first installs it); after Ctrl-C that
        background prefetch goes on, as after prefetch()."""
        self.prefetch()
        while self.fill(FILL_CHUNK):
            PyErr_CheckSignals()

    def prefetch(self):
        """Let the server complete this piece in the background."""
        if self._lz != NULL:
            pvmmap_lazy_prefetch(self._lz)

    def stats(self):
        """faults, bytes_fetched, pages_zero, pages_lost, pages_done,
        pages_total, how (PVMMAP_LAZY_HOW_* bits)."""
        cdef lazy_stats st
        if self._lz == NULL:
            return None
        pvmmap_lazy_stats(self._lz, &st)
        return dict(faults=st.faults, bytes_fetched=st.bytes_fetched,
                    pages_zero=st.pages_zero, pages_lost=st.pages_lost,
                    pages_done=st.pages_done, pages_total=st.pages_total,
                    how=st.how)

    def close(self):
        """Stop serving: unregister, and the server lets go of it.  The
        caller unmaps afterwards.  Idempotent."""
        cdef int rc, err
        cdef pvmmap_lazy *lz = self._lz
        if lz == NULL:
            return
        self._lz = NULL
        with nogil:
            rc = pvmmap_lazy_close(lz)
            err = errno
        if rc:
            raise os_error(err, "unregistering the lazy clone", self.pid,
                           self.address, self.length)

    def forget(self):
        """In a fork()ed child: the memory was not inherited (MADV_DONTFORK)
        and the server thread does not exist; drop the handle unserved."""
        self._lz = NULL

    def __dealloc__(self):
        if self._lz != NULL:
            pvmmap_lazy_close(self._lz)
