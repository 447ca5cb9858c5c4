/*
 * scan.c - find the pages a source process really has: PAGEMAP_SCAN (Linux
 * 6.7+), else a read of /proc/PID/pagemap.
 *
 * Scanning first matters twice: holes are not copied (cheap for sparse
 * memory), and holes are not *read*, which would map the zero page into the
 * source and grow its page tables (measured: 2 MiB of VmPTE per GiB read).
 */
#define _GNU_SOURCE
#include <errno.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "compat.h"
#include "pvmmap.h"

/* Valgrind (3.19 at least) does not know PAGEMAP_SCAN: it cannot tell that
 * the kernel wrote the vector, and would flag every use of it.  The
 * valgrind build (make -C csrc valgrind) says so; elsewhere this is empty. */
#ifdef PVMMAP_VALGRIND
#include <valgrind/memcheck.h>
#define KERNEL_WROTE(p, n) VALGRIND_MAKE_MEM_DEFINED(p, n)
#else
#define KERNEL_WROTE(p, n) ((void)0)
#endif

#define SCAN_VEC 512                  /* <= the kernel's own buffer: see below */
#define PAGEMAP_CHUNK 65536           /* pagemap entries read per read() */

#define PM_PRESENT (1ULL << 63)
#define PM_SWAPPED (1ULL << 62)
#define PM_FILE    (1ULL << 61)

/* A growable range list; appending merges with the last range. */
struct rangebuf {
    struct pvmmap_range *v;
    size_t n, cap;
};

static int rb_add(struct rangebuf *rb, uintptr_t start, uintptr_t end)
{
    if (rb->n && rb->v[rb->n - 1].end == start) {
        rb->v[rb->n - 1].end = end;
        return 0;
    }
    if (rb->n == rb->cap) {
        size_t cap = rb->cap ? rb->cap * 2 : 64;
        void *v = realloc(rb->v, cap * sizeof(*rb->v));
        if (!v)
            return -1;
        rb->v = v;
        rb->cap = cap;
    }
    rb->v[rb->n].start = start;
    rb->v[rb->n].end = end;
    rb->n++;
    return 0;
}

/* Returns 0, 1 if the kernel has no PAGEMAP_SCAN, or -1 with errno. */
static int scan_ioctl(int fd, uintptr_t start, uintptr_t end, int mode,
                      struct rangebuf *rb)
{
    struct page_region vec[SCAN_VEC];
    struct pm_scan_arg arg;

    memset(&arg, 0, sizeof(arg));
    arg.size = sizeof(arg);
    arg.vec = (uintptr_t)vec;
    arg.vec_len = SCAN_VEC;
    /* The shared zero page is a hole with a PTE: skip it. */
    arg.category_inverted = PAGE_IS_PFNZERO;
    arg.category_mask = PAGE_IS_PFNZERO;
    if (mode == PVMMAP_SCAN_ANON) {
        arg.category_inverted |= PAGE_IS_FILE;
        arg.category_mask |= PAGE_IS_FILE;
    }
    arg.category_anyof_mask = PAGE_IS_PRESENT | PAGE_IS_SWAPPED;
    arg.return_mask = PAGE_IS_PRESENT | PAGE_IS_SWAPPED;

    while (start < end) {
        arg.start = start;
        arg.end = end;
        arg.walk_end = 0;
        int got = ioctl(fd, PAGEMAP_SCAN, &arg);
        if (got < 0) {
            if (errno == ENOTTY || errno == EINVAL)
                return 1;       /* older kernel: read pagemap instead */
            return -1;
        }
        KERNEL_WROTE(vec, (size_t)got * sizeof(*vec));
        KERNEL_WROTE(&arg.walk_end, sizeof(arg.walk_end));
        for (int i = 0; i < got; i++)
            if (rb_add(rb, vec[i].start, vec[i].end) < 0)
                return -1;
        /*
         * Only a full vector means "more to come".  When a call both flushes
         * the kernel's 512-entry buffer and finishes the walk, walk_end comes
         * back stale (the last ENOSPC point, not `end`; 6.7..6.18), and a
         * loop on walk_end alone would report the tail twice.
         */
        if (got < SCAN_VEC || arg.walk_end <= start)
            break;
        start = arg.walk_end;
    }
    return 0;
}

static int scan_read(int fd, uintptr_t start, uintptr_t end, int mode,
                     struct rangebuf *rb)
{
    size_t ps = pvmmap_page_size();
    uint64_t *buf = malloc(PAGEMAP_CHUNK * sizeof(uint64_t));
    if (!buf)
        return -1;
    for (uintptr_t addr = start; addr < end;) {
        size_t want = (end - addr) / ps;
        if (want > PAGEMAP_CHUNK)
            want = PAGEMAP_CHUNK;
        ssize_t got = pread(fd, buf, want * sizeof(uint64_t),
                            (off_t)((addr / ps) * sizeof(uint64_t)));
        if (got <= 0) {
            /* 0 bytes inside user space: the mm the fd was opened on is
             * gone (pagemap_read's mmget_not_zero failed: exit, exec) */
            int err = got < 0 ? errno : ESRCH;
            free(buf);
            errno = err;
            return -1;
        }
        size_t n = (size_t)got / sizeof(uint64_t);
        for (size_t i = 0; i < n; i++) {
            uint64_t e = buf[i];
            int data = (e & PM_SWAPPED) ||
                       ((e & PM_PRESENT) &&
                        !(mode == PVMMAP_SCAN_ANON && (e & PM_FILE)));
            if (data && rb_add(rb, addr + i * ps, addr + (i + 1) * ps) < 0) {
                free(buf);
                return -1;
            }
        }
        addr += n * ps;
    }
    free(buf);
    return 0;
}

/* Returns 0 with *out malloc'd, or -1 with errno. */
int pvmmap_scan(int pagemap_fd, uintptr_t start, uintptr_t end, int mode,
                struct pvmmap_range **out, size_t *n_out, int *how)
{
    struct rangebuf rb = {0};
    int r = scan_ioctl(pagemap_fd, start, end, mode, &rb);

    *how = 1;
    if (r == 1) {
        *how = 0;
        rb.n = 0;
        r = scan_read(pagemap_fd, start, end, mode, &rb);
    }
    if (r < 0) {
        int err = errno;
        free(rb.v);
        errno = err;
        return -1;
    }
    *out = rb.v;
    *n_out = rb.n;
    return 0;
}
