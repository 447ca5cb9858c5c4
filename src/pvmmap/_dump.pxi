# Included by _native.pyx: streaming a process's pages to a file or socket
# (csrc/dump.c), for pvmmap.dump and CRIU's page server.

from libc.stdlib cimport malloc

def dump_pages(long pid, ranges, int out_fd, buf, *, int mem_fd=-1,
               ps_header=None, dict stats=None, bint by_pid=True):
    """Write the pages of `ranges` ((start, end) pairs, page-aligned, in
    order) of `pid` to out_fd, read through the writable buffer `buf`
    (reused between calls, so it stays in cache); /proc/PID/mem (mem_fd)
    where process_vm_readv cannot read.  ps_header: (cmd, dst_id, shift) to
    put CRIU's page_server_iov before each range.  GIL released.  Adds
    bytes_readv, bytes_mem, calls, bytes_out to `stats`.  by_pid=False:
    read through mem_fd only (the pid is used in messages), for a source
    not frozen, whose pid could be recycled during the call."""
    cdef pvmmap_range *r
    cdef size_t n = len(ranges), i
    cdef pvmmap_dump_stats st
    cdef pvmmap_ps_header ph
    cdef pvmmap_ps_header *php = NULL
    cdef int rc, err
    cdef Py_buffer view
    if n == 0:
        return
    if ps_header is not None:
        ph.cmd, ph.dst_id, ph.shift = ps_header
        php = &ph
    r = <pvmmap_range *>malloc(n * sizeof(pvmmap_range))
    if r == NULL:
        raise MemoryError()
    try:
        for i in range(n):
            r[i].start, r[i].end = ranges[i]
        memset(&st, 0, sizeof(st))
        PyObject_GetBuffer(buf, &view, PyBUF_WRITABLE)
        try:
            with nogil:
                rc = pvmmap_dump_pages(<pid_t>pid if by_pid else 0, mem_fd, r, n, out_fd, view.buf,
                                       <size_t>view.len, php, &st)
                err = errno
        finally:
            PyBuffer_Release(&view)
    finally:
        free(r)
    if stats is not None:
        for key, value in (("bytes_readv", st.bytes_readv), ("bytes_mem", st.bytes_mem),
                           ("calls", st.calls), ("bytes_out", st.bytes_out)):
            stats[key] = stats.get(key, 0) + value
    if rc:
        raise os_error(err, "dumping pages", pid, ranges[0][0],
                       ranges[n - 1][1] - ranges[0][0])
