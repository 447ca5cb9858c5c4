# cython: language_level=3, embedsignature=True
"""Thin binding over pvmmap's C core (csrc/): argument conversion, GIL release,
errno to OSError, and the Mapping type.  Policy lives in the Python modules.

The C declarations are in _cpvmmap.pxd.  The binding grows by include files
under this one extension: _calls.pxi (raw calls, scan, copy, freeze),
_lazy.pxi (lazy pieces over the C fault server), _mapping.pxi (the
Mapping type) and _dump.pxi (pages to a file or socket)."""

from cpython.buffer cimport (PyBuffer_FillInfo, PyBuffer_Release, PyBUF_WRITABLE,
                             PyObject_GetBuffer)
from cpython.bytes cimport PyBytes_AS_STRING, PyBytes_FromStringAndSize
from libc.errno cimport errno
from libc.stdint cimport uint64_t, uintptr_t
from libc.stdlib cimport free
from libc.string cimport memcpy, memset
from posix.types cimport off_t, pid_t
from posix.uio cimport iovec

from pvmmap._cpvmmap cimport *

import os
import warnings
import weakref

from pvmmap._errors import os_error

# The C core's and the kernel's constants, stated here once for Python.
DEFAULT_SYSCALL_NR = PVMMAP_DEFAULT_SYSCALL_NR
FIXED = PVMMAP_FIXED
FIXED_NOREPLACE = PVMMAP_FIXED_NOREPLACE
COPY_MEM_ONLY = PVMMAP_COPY_MEM_ONLY
COPY_SKIP = PVMMAP_COPY_SKIP
SCAN_DATA = PVMMAP_SCAN_DATA
SCAN_ANON = PVMMAP_SCAN_ANON
PAGESIZE = pvmmap_page_size()
PROT_NONE = c_PROT_NONE
PROT_READ = c_PROT_READ
PROT_WRITE = c_PROT_WRITE
PROT_EXEC = c_PROT_EXEC
MAP_SHARED = c_MAP_SHARED
MAP_PRIVATE = c_MAP_PRIVATE
MAP_ANONYMOUS = c_MAP_ANONYMOUS
MAP_FIXED = c_MAP_FIXED
MAP_NORESERVE = c_MAP_NORESERVE
MAP_FIXED_NOREPLACE = c_MAP_FIXED_NOREPLACE

include "_calls.pxi"
include "_lazy.pxi"
include "_mapping.pxi"
include "_dump.pxi"
