/*
 * copy.c - the eager copy engine: copy the ranges scan.c found with batched
 * process_vm_readv on up to two threads, falling back to /proc/PID/mem page
 * by page where process_vm_readv cannot read (PROT_NONE, write-only).
 *
 * With PVMMAP_COPY_UFFD the destination is registered with a userfaultfd
 * for the length of the copy, and each worker reads into its own small
 * staging buffer and installs it with UFFDIO_COPY: the kernel allocates the
 * destination page and copies into it, without zero-filling it first and
 * without a page fault per page (perf-anchors 5b: 1.3-1.5x faster on this
 * VM, where first-touch faults dominate).  The staging buffer stays hot in
 * cache.  Holes are never registered-and-filled: after UFFDIO_UNREGISTER
 * they are ordinary missing pages again.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <pthread.h>
#include <stdio.h>
#include <stdatomic.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/mman.h>
#include <sys/uio.h>
#include <unistd.h>

#include "compat.h"
#include "pvmmap.h"

#define IOV_BATCH 1024                /* IOV_MAX */
#define COPY_UNIT ((size_t)8 << 20)   /* bytes a worker takes at a time */
#define THREAD_MIN ((size_t)32 << 20) /* bytes per extra thread, at least */
/* Staging per worker on the UFFDIO_COPY path.  1 GiB, 2 threads, medians
 * of 5 (UFFD.md): 64K 460/812 ms, 256K 412/900, 1M 458/954 in two runs; 256K
 * was best in the clean one, and 2 x 256K stays within the L2 caches. */
#define UFFD_STAGE ((size_t)256 << 10)

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
    int uffd;                   /* >= 0: fill through UFFDIO_COPY */
    atomic_size_t next_unit;
    atomic_int error;           /* first errno, 0 while all is well */
    atomic_int install_failed;  /* UFFDIO_COPY refused the destination */
    atomic_uint_fast64_t bytes_readv, bytes_mem, calls, skipped;
};

/* Read [src, src+len) through /proc/PID/mem into dst.  Returns 0 or -1
 * with errno. */
static int copy_mem(struct copy_job *job, uintptr_t src, size_t len, char *dst)
{
    while (len) {
        if (job->mem_fd < 0) {
            errno = EFAULT;
            return -1;
        }
        ssize_t got = pread(job->mem_fd, dst, len, (off_t)src);
        atomic_fetch_add(&job->calls, 1);
        if (got <= 0) {
            /* mem gives EIO for a page it cannot reach (the contract's
             * EFAULT) and 0 bytes once the mm it was opened on is gone
             * (exit or exec: mem_rw's mmget_not_zero fails) */
            errno = got == 0 ? ESRCH : errno == EIO ? EFAULT : errno;
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
            if (copy_mem(job, first, take, job->dst_base + (first - job->src_base)) < 0)
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
            if (copy_mem(job, s, stop - s, job->dst_base + (s - job->src_base)) < 0) {
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

/* UFFDIO_COPY [from, from+len) to destination `to`.  A page that is
 * there already (EEXIST: the destination was not all fresh) is present, so
 * it is written directly without a missing fault.  Returns 0 or -1/errno. */
static int uffd_install(struct copy_job *job, char *to, const char *from,
                        size_t len)
{
    size_t ps = pvmmap_page_size();
    while (len) {
        struct uffdio_copy c = {.dst = (uintptr_t)to, .src = (uintptr_t)from,
                                .len = len, .mode = UFFDIO_COPY_MODE_DONTWAKE};
        atomic_fetch_add(&job->calls, 1);
        if (ioctl(job->uffd, UFFDIO_COPY, &c) == 0)
            return 0;
        size_t did = c.copy > 0 ? (size_t)c.copy : 0;
        if (errno == EEXIST) {
            memcpy(to + did, from + did, ps);
            did += ps;
        } else if (errno != EAGAIN && errno != EINTR) {
            atomic_store(&job->install_failed, 1);
            return -1;
        }
        to += did;
        from += did;
        len -= did;
    }
    return 0;
}

/* copy_span through a staging buffer of UFFD_STAGE bytes and UFFDIO_COPY.
 * Returns 0 or -1 with errno. */
static int copy_span_uffd(struct copy_job *job, char *stage, uint64_t off,
                          uint64_t end)
{
    struct iovec local, remote[IOV_BATCH];
    size_t ps = pvmmap_page_size();

    while (off < end) {
        /* One batch: pieces of the ranges, packed into the stage. */
        size_t i = range_at(job, off);
        int cnt = 0;
        uint64_t want = 0, o = off;
        while (cnt < IOV_BATCH && o < end && i < job->n && want < UFFD_STAGE) {
            uintptr_t s = job->r[i].start + (o - job->prefix[i]);
            uint64_t len = job->r[i].end - s;
            if (len > end - o)
                len = end - o;
            if (len > UFFD_STAGE - want)
                len = UFFD_STAGE - want;
            remote[cnt].iov_base = (void *)s;
            remote[cnt].iov_len = len;
            cnt++;
            want += len;
            o += len;
            if (s + len == job->r[i].end)
                i++;
        }
        ssize_t got = 0;
        if (!(job->flags & PVMMAP_COPY_MEM_ONLY)) {
            local.iov_base = stage;
            local.iov_len = want;
            got = process_vm_readv(job->pid, &local, 1, remote,
                                   (unsigned long)cnt, 0);
            atomic_fetch_add(&job->calls, 1);
            if (got < 0) {
                if (errno != EFAULT)
                    return -1;
                got = 0;
            }
            atomic_fetch_add(&job->bytes_readv, (uint64_t)got);
        }
        /* Install what came, piece by piece (each piece is contiguous in
         * the destination too). */
        uint64_t at = 0;
        for (int k = 0; k < cnt && at < (uint64_t)got; k++) {
            uint64_t take = remote[k].iov_len;
            if (take > (uint64_t)got - at)
                take = (uint64_t)got - at;
            char *to = job->dst_base + ((uintptr_t)remote[k].iov_base - job->src_base);
            if (uffd_install(job, to, stage + at, take) < 0)
                return -1;
            at += take;
        }
        off += (uint64_t)got;
        if ((uint64_t)got < want) {
            /* Stopped short (or MEM_ONLY): this page, or the whole piece
             * under MEM_ONLY, through /proc/PID/mem into the stage. */
            size_t k = range_at(job, off);
            uintptr_t s = job->r[k].start + (off - job->prefix[k]);
            uintptr_t stop = (s | (ps - 1)) + 1;
            if (job->flags & PVMMAP_COPY_MEM_ONLY)
                stop = s + (want - (uint64_t)got < job->r[k].end - s
                            ? want - (uint64_t)got : job->r[k].end - s);
            if (stop > job->r[k].end)
                stop = job->r[k].end;
            if (copy_mem(job, s, stop - s, stage) == 0) {
                if (uffd_install(job, job->dst_base + (s - job->src_base), stage,
                                 stop - s) < 0)
                    return -1;
            } else {
                /* left missing: reads as zero once unregistered */
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

/* A worker: takes COPY_UNIT spans until none is left or one failed (the
 * first errno is kept in job->error). */
static void *copy_worker(void *arg)
{
    struct copy_job *job = arg;
    char *stage = NULL;
    if (job->uffd >= 0) {
        /* prefaulted: the stage is meant to stay hot */
        stage = mmap(NULL, UFFD_STAGE, PROT_READ | PROT_WRITE,
                     MAP_PRIVATE | MAP_ANONYMOUS | MAP_POPULATE, -1, 0);
        if (stage == MAP_FAILED) {
            int expected = 0;
            atomic_compare_exchange_strong(&job->error, &expected, errno);
            return NULL;
        }
    }
    for (;;) {
        size_t u = atomic_fetch_add(&job->next_unit, 1);
        uint64_t off = (uint64_t)u * COPY_UNIT;
        if (off >= job->total || atomic_load(&job->error))
            break;
        uint64_t end = off + COPY_UNIT < job->total ? off + COPY_UNIT : job->total;
        int r = stage ? copy_span_uffd(job, stage, off, end)
                      : copy_span(job, off, end);
        if (r < 0) {
            int expected = 0;
            atomic_compare_exchange_strong(&job->error, &expected, errno ? errno : EIO);
            break;
        }
    }
    if (stage)
        munmap(stage, UFFD_STAGE);
    return NULL;
}

/* Whether [start, start+len) of this process lies in one private
 * anonymous VMA (no inode, not shared).  The kernel registers shmem too,
 * but 6.1 then fails UFFDIO_COPY into it with EFAULT (tmpfs, or an
 * overlay over it): only private anonymous memory takes this path.
 * PROCMAP_QUERY where the kernel has it, else the /proc/self/maps text. */
static int private_anon(uintptr_t start, size_t len)
{
    int fd = open("/proc/self/maps", O_RDONLY | O_CLOEXEC);
    if (fd < 0)
        return 0;
    struct pvmmap_vma v = {0};
    int ok = 0, r = pvmmap_vma_query(fd, start, &v);
    if (r == 1) {
        ok = v.start <= start && v.end >= start + len && !v.shared && v.inode == 0;
    } else if (r == 2) {
        FILE *f = fdopen(fd, "re");
        char line[512];
        if (f) {
            fd = -1;            /* the FILE owns it now */
            while (fgets(line, sizeof(line), f)) {
                uintptr_t lo, hi;
                char perms[8];
                unsigned long long inode;
                if (sscanf(line, "%" SCNxPTR "-%" SCNxPTR " %7s %*s %*s %llu",
                           &lo, &hi, perms, &inode) != 4)
                    continue;
                if (lo <= start && start < hi) {
                    ok = hi >= start + len && perms[3] == 'p' && inode == 0;
                    break;
                }
            }
            fclose(f);
        }
    }
    if (fd >= 0)
        close(fd);
    return ok;
}

/* Register the destination span of the ranges with a new uffd.  Returns
 * the uffd, or -1 (errno) when the direct path must be used instead. */
static int uffd_attach(const struct pvmmap_range *r, size_t n,
                       uintptr_t src_base, char *dst_base,
                       struct uffdio_range *span)
{
    if (!n)
        return -1;
    uintptr_t first = (uintptr_t)dst_base + (r[0].start - src_base);
    if (!private_anon(first, r[n - 1].end - r[0].start)) {
        errno = EINVAL;
        return -1;
    }
    int fd = pvmmap_uffd_open(NULL);
    if (fd < 0)
        return -1;
    span->start = (uintptr_t)dst_base + (r[0].start - src_base);
    span->len = r[n - 1].end - r[0].start;
    struct uffdio_register reg = {.range = *span,
                                  .mode = UFFDIO_REGISTER_MODE_MISSING};
    /* EINVAL if the span is not all anonymous (or hugetlb/shmem) memory */
    if (ioctl(fd, UFFDIO_REGISTER, &reg) < 0) {
        int err = errno;
        close(fd);
        errno = err;
        return -1;
    }
    return fd;
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
    job.uffd = -1;

    struct uffdio_range span = {0, 0};
    if (flags & PVMMAP_COPY_UFFD)
        job.uffd = uffd_attach(r, n, src_base, dst_base, &span);

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
    if (job.uffd >= 0) {
        /* Unregistering wakes nobody (nothing faulted: the destination is
         * not handed out yet) and leaves what was not filled missing. */
        if (ioctl(job.uffd, UFFDIO_UNREGISTER, &span) < 0 && !job.error)
            job.error = errno;
        close(job.uffd);
        if (job.install_failed) {
            /* Registered, but UFFDIO_COPY refused the destination (a shmem
             * one on 6.1 answers EFAULT): nothing is registered any more,
             * so the direct path can redo it. */
            return pvmmap_copy(pid, mem_fd, r, n, src_base, dst_base, max_threads,
                               flags & ~PVMMAP_COPY_UFFD, stats);
        }
    }

    if (stats) {
        stats->bytes_readv += job.bytes_readv;
        stats->bytes_mem += job.bytes_mem;
        stats->calls += job.calls;
        stats->skipped += job.skipped;
        if (stats->threads < started + 1)
            stats->threads = started + 1;
        stats->uffd = job.uffd >= 0;
    }
    if (job.error) {
        errno = job.error;
        return -1;
    }
    return 0;
}
