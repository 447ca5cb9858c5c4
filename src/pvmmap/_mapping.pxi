# Included by _native.pyx: the Mapping type, after CPython's mmap object (a
# counted buffer export blocks close; close is idempotent; every method and
# attribute but `closed` raises ValueError once closed).

cdef class Mapping:
    """Memory cloned from another process (see pvmmap.clone).

    Supports the buffer protocol (memoryview, numpy.frombuffer), indexing and
    slicing, slice assignment where writable, and use as a context manager.
    """
    cdef char *_base            # page-aligned start of what we own
    cdef bint _open             # False: closed (any address, 0 included, is valid)
    cdef size_t _maplen         # page-rounded length we own
    cdef size_t _offset         # where the user's bytes start within it
    cdef Py_ssize_t _length
    cdef int _exports
    cdef bint _readable
    cdef bint _writable
    cdef object _pid, _source_address, _method, _kind, _prot, _parts, _stats
    cdef tuple _lazy            # the Lazy pieces of a lazy clone, else ()
    cdef bint _forked           # closed because fork() did not inherit it
    cdef object __weakref__

    def __cinit__(self):
        self._base = NULL
        self._open = False
        self._maplen = 0
        self._exports = 0
        self._lazy = ()
        self._forked = False

    def __init__(self):
        raise TypeError("Mapping objects are made by pvmmap.clone()")

    cdef int _check_open(self) except -1:
        if not self._open:
            if self._forked:
                raise ValueError("mapping closed: a lazy clone is not inherited "
                                 "by fork() (populate() it before forking)")
            raise ValueError("mapping closed")
        return 0

    cdef int _check_readable(self) except -1:
        self._check_open()
        if not self._readable:
            raise PermissionError(
                13, f"mapping at {<uintptr_t>self._base:#x} is not readable "
                f"(prot {_prot_str(self._prot)}, as in the source); "
                "mprotect it before touching its bytes")
        return 0

    @property
    def closed(self):
        return not self._open

    @property
    def address(self):
        """Address of the first byte of the cloned range in this process."""
        self._check_open()
        return <uintptr_t>(self._base + self._offset)

    @property
    def length(self):
        """Bytes in the clone: exactly the length asked for."""
        self._check_open()
        return self._length

    @property
    def pid(self):
        self._check_open()
        return self._pid

    @property
    def source_address(self):
        self._check_open()
        return self._source_address

    @property
    def method(self):
        """How it was cloned: native, copy, share, file, or mixed."""
        self._check_open()
        return self._method

    @property
    def kind(self):
        """The source memory's kind (pvmmap.KINDS), or mixed."""
        self._check_open()
        return self._kind

    @property
    def prot(self):
        """Protection (mmap.PROT_* bits) common to every part."""
        self._check_open()
        return self._prot

    @property
    def parts(self):
        """One pvmmap.Part per source VMA the clone covers."""
        self._check_open()
        return self._parts

    @property
    def stats(self):
        """What the clone cost (see the README's table of keys); a lazy
        clone's counters as they are now."""
        self._check_open()
        if not self._lazy:
            return self._stats
        out = dict(self._stats)
        for lz in self._lazy:
            for key, value in (<Lazy>lz).stats().items():
                if key == "how":
                    out["poison"] = ("UFFDIO_POISON" if value & PVMMAP_LAZY_HOW_POISON
                                     else "SIGBUS mapping")
                    out["uffd"] = ("user-mode-only" if value & PVMMAP_LAZY_HOW_USER_ONLY
                                   else "full")
                else:
                    key = "lost_pages" if key == "pages_lost" else key
                    out[key] = out.get(key, 0) + value
        return out

    @property
    def lost(self):
        """Pages that do not hold the source's bytes: eager clones, pages
        neither path could read (left zero); lazy clones, pages the source
        took away before they were fetched (SIGBUS on touch)."""
        return self.stats.get("lost_pages", 0)

    @property
    def lazy(self):
        """True for a lazy clone (pages fetched on first touch)."""
        self._check_open()
        return bool(self._lazy)

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
        self._check_open()
        return self._length

    def __getitem__(self, key):
        cdef Py_ssize_t i, start, stop, step
        self._check_readable()
        if isinstance(key, int):
            i = key
            if i < 0:
                i += self._length
            if i < 0 or i >= self._length:
                raise IndexError("mapping index out of range")
            return <unsigned char>self._base[self._offset + i]
        if isinstance(key, slice):
            start, stop, step = key.indices(self._length)
            if step == 1:
                return _bytes_at(self._base + self._offset + start,
                                 max(stop - start, 0))
        with memoryview(self) as mv:
            with mv[key] as item:
                return item.tobytes()

    def __setitem__(self, key, value):
        self._check_readable()
        if not self._writable:
            raise TypeError("mapping is read-only (as the source range is)")
        with memoryview(self) as mv:
            mv[key] = value

    def tobytes(self):
        """A copy of the bytes as a bytes object."""
        self._check_readable()
        return _bytes_at(self._base + self._offset, self._length)

    def mprotect(self, int prot):
        """Change the protection of the whole mapping (mmap.PROT_* bits)."""
        cdef int r, err
        self._check_open()
        with nogil:
            r = mprotect(self._base, self._maplen, prot)
            err = errno
        if r:
            raise os_error(err, "mprotect", self._pid, <uintptr_t>self._base,
                           self._maplen)
        self._prot = prot
        self._readable = bool(prot & (c_PROT_READ | c_PROT_WRITE))
        self._writable = bool(prot & c_PROT_WRITE)

    def populate(self):
        """Make every page hold the source's bytes now (lazy clones: fetch
        the rest, GIL released, Ctrl-C honoured between chunks; OSError if
        the source took pages away).  Eager clones already do."""
        self._check_open()
        for lz in self._lazy:
            (<Lazy>lz).populate()

    def prefetch(self):
        """Lazy clones: let the server fetch the rest in the background while
        faults are still served first.  Eager clones: nothing to do."""
        self._check_open()
        for lz in self._lazy:
            (<Lazy>lz).prefetch()

    def close(self):
        """Unmap.  Idempotent; BufferError while a memoryview is alive."""
        cdef int r, err
        if not self._open:
            return
        if self._exports:
            raise BufferError(
                f"cannot close mapping: {self._exports} buffer export(s) alive; "
                "release memoryviews (and numpy arrays) over it first")
        self._open = False
        try:
            for lz in self._lazy:           # unregister and stop serving first
                (<Lazy>lz).close()
        finally:
            self._lazy = ()
            with nogil:
                r = munmap(self._base, self._maplen)
                err = errno
        if r:
            raise os_error(err, "munmap", self._pid, <uintptr_t>self._base,
                           self._maplen)

    def detach(self):
        """Give up ownership and return the address; the memory stays mapped.
        Release it with pvmmap.munmap(address, length)."""
        self._check_open()
        if self._exports:
            raise BufferError("cannot detach mapping: release memoryviews first")
        if self._lazy:
            raise BufferError("cannot detach a lazy clone: its pages are served "
                              "through it; populate() and close(), or keep it")
        self._open = False
        return <uintptr_t>(self._base + self._offset)

    def __enter__(self):
        self._check_open()
        return self

    def __exit__(self, *exc):
        self.close()

    def __repr__(self):
        if not self._open:
            return f"<pvmmap.Mapping closed, pid {self._pid}, {self._length} bytes>"
        progress = ""
        if self._lazy:
            st = self.stats
            progress = f", lazy {st['pages_done']}/{st['pages_total']} pages present"
            if st["lost_pages"]:
                progress += f", {st['lost_pages']} lost"
        return (f"<pvmmap.Mapping pid {self._pid} "
                f"{self._source_address:#x}+{self._length:#x} -> "
                f"{<uintptr_t>(self._base + self._offset):#x}, "
                f"kind {self._kind}, method {self._method}, prot {_prot_str(self._prot)}"
                f"{progress}>")

    def _forget_after_fork(self):
        """In a fork()ed child: a lazy clone's memory was not inherited
        (MADV_DONTFORK) and no server runs here; close without unmapping."""
        for lz in self._lazy:
            (<Lazy>lz).forget()
        self._lazy = ()
        self._open = False
        self._forked = True

    def __del__(self):
        if self._open:
            warnings.warn(f"unclosed {self!r}", ResourceWarning, source=self)
            for lz in self._lazy:
                (<Lazy>lz).close()
            self._lazy = ()
            munmap(self._base, self._maplen)
            self._open = False

    def __dealloc__(self):
        # (Lazy pieces close themselves in their own dealloc, first: the
        # server lets go of the range before it is unmapped.)
        if self._open:
            for lz in self._lazy:
                pvmmap_lazy_close((<Lazy>lz)._lz)
                (<Lazy>lz)._lz = NULL
            munmap(self._base, self._maplen)


cdef extern from "<sys/uio.h>" nogil:
    ssize_t process_vm_readv(pid_t pid, const iovec *local, unsigned long nlocal,
                             const iovec *remote, unsigned long nremote,
                             unsigned long flags)


cdef object _bytes_at(const char *p, Py_ssize_t n):
    """A bytes copy of [p, p+n).  (PyBytes_FromStringAndSize(p, n) would
    return n uninitialised bytes for p == NULL, and a clone may be placed
    at address 0.)"""
    out = PyBytes_FromStringAndSize(NULL, n)
    cdef char *dst = PyBytes_AS_STRING(out)
    cdef Py_ssize_t skip = 0
    cdef iovec here, there
    if n and p == NULL:
        # memcpy(dst, NULL, n) is undefined (its source is declared
        # nonnull; UBSan aborts on it, and gcc may assume it never
        # happens), and so is any C read at address 0: the byte there comes
        # through the kernel, the rest from address 1 on.
        here.iov_base = dst
        here.iov_len = 1
        there.iov_base = NULL
        there.iov_len = 1
        if process_vm_readv(os.getpid(), &here, 1, &there, 1, 0) != 1:
            raise OSError(errno, f"{os.strerror(errno)} (reading address 0)")
        skip = 1
    if n > skip:
        memcpy(dst + skip, <const char *><uintptr_t>(<uintptr_t>p + skip),
               n - skip)
    return out


def _prot_str(prot):
    if prot is None:
        return "?"
    return ("r" if prot & c_PROT_READ else "-") + \
           ("w" if prot & c_PROT_WRITE else "-") + \
           ("x" if prot & c_PROT_EXEC else "-")


_lazy_mappings = weakref.WeakSet()


def _forget_lazy_in_child():
    for m in list(_lazy_mappings):
        m._forget_after_fork()


os.register_at_fork(after_in_child=_forget_lazy_in_child)


def make_mapping(uintptr_t base, size_t maplen, size_t offset, Py_ssize_t length, *,
                 pid, source_address, method, kind, int prot, tuple parts,
                 dict stats, tuple lazy=()):
    """Wrap memory we own ([base, base+maplen), page-aligned) as a Mapping
    whose bytes start at base+offset."""
    cdef Mapping m = Mapping.__new__(Mapping)
    m._base = <char *>base
    m._maplen = maplen
    m._offset = offset
    m._length = length
    m._readable = bool(prot & (c_PROT_READ | c_PROT_WRITE))
    m._writable = bool(prot & c_PROT_WRITE)
    m._pid = pid
    m._source_address = source_address
    m._method = method
    m._kind = kind
    m._prot = prot
    m._parts = parts
    m._stats = stats
    m._lazy = lazy
    m._open = True
    if lazy:
        _lazy_mappings.add(m)
    return m
