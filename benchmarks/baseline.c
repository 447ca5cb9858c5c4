/*
 * baseline.c - the raw C baseline of the benchmark, written the way a careful
 * user would write it without pvmmap: process_vm_readv into fresh memory.
 * Standalone (no pvmmap header): benchmarks/harness.py builds it with
 * `cc -O2 -shared -fPIC` into benchmarks/build/ and calls it through ctypes.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <stddef.h>
#include <stdint.h>
#include <sys/mman.h>
#include <sys/types.h>
#include <sys/uio.h>

/* Copies [addr, addr+len) of pid into a fresh private mapping, `chunk` bytes
 * per call (0: one call), then unmaps it.  Returns 0, or -1 with errno
 * (EFAULT if the source range is short). */
int bench_readv_fresh(pid_t pid, uintptr_t addr, size_t len, size_t chunk)
{
    char *dst = mmap(NULL, len, PROT_READ | PROT_WRITE,
                     MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    if (dst == MAP_FAILED)
        return -1;
    if (!chunk)
        chunk = len;
    for (size_t off = 0; off < len;) {
        size_t n = len - off < chunk ? len - off : chunk;
        struct iovec l = {dst + off, n}, r = {(void *)(addr + off), n};
        ssize_t got = process_vm_readv(pid, &l, 1, &r, 1, 0);
        if (got <= 0) {
            int err = got < 0 ? errno : EFAULT;
            munmap(dst, len);
            errno = err;
            return -1;
        }
        off += (size_t)got;
    }
    munmap(dst, len);
    return 0;
}
