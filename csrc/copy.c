/*
 * copy.c - the eager copy engine: copy the ranges scan.c found with batched
 * process_vm_readv on up to two threads, falling back to /proc/PID/mem page
 * by page where process_vm_readv cannot read (PROT_NONE, write-only).
 */
#define _GNU_SOURCE
#include <errno.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdlib.h>
#include <string.h>
#include <sys/uio.h>
#include <unistd.h>

#include "pvmmap.h"

#define IOV_BATCH 1024                /* IOV_MAX */
#define COPY_UNIT ((size_t)8 << 20)   /* bytes a worker takes at a time */
#define THREAD_MIN ((size_t)32 << 20) /* bytes per extra thread, at least */

/* ---- copying ---- */

struct copy_job {
    pid_t pid;
    int mem_fd;
    int flags;
    const struct pvmmap_range *r;
    size_t n;
    const uint64_t *prefix;     /* prefix[i]: bytes in ranges before i */
    uint64_t total;
    uintptr_t src_base;
    char *dst_base;
    atomic_size_t next_unit;
    atomic_int error;           /* first errno, 0 while all is well */
    atomic_uint_fast64_t bytes_readv, bytes_mem, calls, skipped;
};

/* Read [src, src+len) through /proc/PID/mem.  Returns 0 or -1 with errno. */
static int copy_mem(struct copy_job *job, uintptr_t src, size_t len)
{
    char *dst = job->dst_base + (src - job->src_base);
    while (len) {
        if (job->mem_fd < 0) {
            errno = EFAULT;
            return -1;
        }
        ssize_t got = pread(job->mem_fd, dst, len, (off_t)src);
        atomic_fetch_add(&job->calls, 1);
        if (got <= 0) {
            /* mem gives EIO for a page it cannot reach: the contract's EFAULT */
            errno = (got == 0 || errno == EIO) ? EFAULT : errno;
            return -1;
        }
        atomic_fetch_add(&job->bytes_mem, (uint64_t)got);
        src += (size_t)got;
        dst += got;
        len -= (size_t)got;
    }
    return 0;
}

/* Index of the range holding byte `off` of the concatenated data. */
static size_t range_at(const struct copy_job *job, uint64_t off)
{
    size_t lo = 0, hi = job->n;
    while (hi - lo > 1) {
        size_t mid = (lo + hi) / 2;
        if (job->prefix[mid] <= off)
            lo = mid;
        else
            hi = mid;
    }
    return lo;
}

/* Copy bytes [off, end) of the concatenated data.  Returns 0 or -1/errno. */
static int copy_span(struct copy_job *job, uint64_t off, uint64_t end)
{
    struct iovec local[IOV_BATCH], remote[IOV_BATCH];
    size_t ps = pvmmap_page_size();

    while (off < end) {
        size_t i = range_at(job, off);
        uintptr_t first = job->r[i].start + (off - job->prefix[i]);

        if (job->flags & PVMMAP_COPY_MEM_ONLY) {
            uint64_t take = job->r[i].end - first;
            if (take > end - off)
                take = end - off;
            if (copy_mem(job, first, take) < 0)
                return -1;
            off += take;
            continue;
        }

        /* One batch: up to IOV_BATCH pieces, each within one range. */
        int cnt = 0;
        uint64_t want = 0, o = off;
        while (cnt < IOV_BATCH && o < end && i < job->n) {
            uintptr_t s = job->r[i].start + (o - job->prefix[i]);
            uint64_t len = job->r[i].end - s;
            if (len > end - o)
                len = end - o;
            remote[cnt].iov_base = (void *)s;
            remote[cnt].iov_len = len;
            local[cnt].iov_base = job->dst_base + (s - job->src_base);
            local[cnt].iov_len = len;
            cnt++;
            want += len;
            o += len;
            i++;
        }
        ssize_t got = process_vm_readv(job->pid, local, (unsigned long)cnt,
                                       remote, (unsigned long)cnt, 0);
        atomic_fetch_add(&job->calls, 1);
        if (got < 0) {
            if (errno != EFAULT)
                return -1;
            got = 0;
        }
        atomic_fetch_add(&job->bytes_readv, (uint64_t)got);
        off += (uint64_t)got;
        if ((uint64_t)got < want) {
            /* Stopped short: this page needs /proc/PID/mem (it may override
             * protections), then readv goes on after it. */
            size_t k = range_at(job, off);
            uintptr_t s = job->r[k].start + (off - job->prefix[k]);
            uintptr_t stop = (s | (ps - 1)) + 1;
            if (stop > job->r[k].end)
                stop = job->r[k].end;
            if (copy_mem(job, s, stop - s) < 0) {
                if (!(job->flags & PVMMAP_COPY_SKIP) || errno != EFAULT)
                    return -1;
                atomic_fetch_add(&job->skipped, 1);
            }
            off += stop - s;
        }
        if (atomic_load(&job->error))
            return 0;           /* another worker failed: stop early */
    }
    return 0;
}

static void *copy_worker(void *arg)
{
    struct copy_job *job = arg;
    for (;;) {
        size_t u = atomic_fetch_add(&job->next_unit, 1);
        uint64_t off = (uint64_t)u * COPY_UNIT;
        if (off >= job->total || atomic_load(&job->error))
            break;
        uint64_t end = off + COPY_UNIT < job->total ? off + COPY_UNIT : job->total;
        if (copy_span(job, off, end) < 0) {
            int expected = 0;
            atomic_compare_exchange_strong(&job->error, &expected, errno ? errno : EIO);
            break;
        }
    }
    return NULL;
}

/* Returns 0, or -1 with errno. */
int pvmmap_copy(pid_t pid, int mem_fd, const struct pvmmap_range *r, size_t n,
                uintptr_t src_base, void *dst_base, int max_threads, int flags,
                struct pvmmap_copy_stats *stats)
{
    struct copy_job job;
    pthread_t tid[15];
    int started = 0;

    memset(&job, 0, sizeof(job));
    uint64_t *prefix = malloc((n + 1) * sizeof(uint64_t));
    if (!prefix)
        return -1;
    prefix[0] = 0;
    for (size_t i = 0; i < n; i++)
        prefix[i + 1] = prefix[i] + (r[i].end - r[i].start);

    job.pid = pid;
    job.mem_fd = mem_fd;
    job.flags = flags;
    job.r = r;
    job.n = n;
    job.prefix = prefix;
    job.total = prefix[n];
    job.src_base = src_base;
    job.dst_base = dst_base;

    /* Extra threads only when each gets enough to repay its start-up (and,
     * in a VM, the ~60 us it takes to wake another vCPU). */
    int extra = max_threads - 1;
    if ((uint64_t)extra > job.total / THREAD_MIN)
        extra = (int)(job.total / THREAD_MIN);
    if (extra > (int)(sizeof(tid) / sizeof(tid[0])))
        extra = (int)(sizeof(tid) / sizeof(tid[0]));
    for (; started < extra; started++)
        if (pthread_create(&tid[started], NULL, copy_worker, &job) != 0)
            break;              /* fewer threads is fine: we still work */
    copy_worker(&job);
    for (int i = 0; i < started; i++)
        pthread_join(tid[i], NULL);
    free(prefix);

    if (stats) {
        stats->bytes_readv += job.bytes_readv;
        stats->bytes_mem += job.bytes_mem;
        stats->calls += job.calls;
        stats->skipped += job.skipped;
        if (stats->threads < started + 1)
            stats->threads = started + 1;
    }
    if (job.error) {
        errno = job.error;
        return -1;
    }
    return 0;
}
