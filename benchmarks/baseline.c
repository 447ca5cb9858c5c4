/*
 * baseline.c - the raw C baselines of the benchmark, written the way a careful
 * user would write them without pvmmap: process_vm_readv into fresh memory,
 * and a bare userfaultfd loop that fills a fresh mapping on first touch.
 * Standalone (no pvmmap header): benchmarks/harness.py builds it with
 * `cc -O2 -shared -fPIC -pthread` into benchmarks/build/ and calls it through
 * ctypes.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <linux/userfaultfd.h>
#include <poll.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stddef.h>
#include <stdint.h>
#include <sys/ioctl.h>
#include <sys/mman.h>
#include <sys/syscall.h>
#include <sys/types.h>
#include <sys/uio.h>
#include <time.h>
#include <unistd.h>

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

/* ---- a raw userfaultfd loop (the lazy clone's baseline) ----
 *
 * The same loop as raw_seq() in benchmarks/uffd_bench.c ("raw uffd loop, 64K,
 * process_vm_readv"), but against a given source process: one server thread
 * blocks in poll(), reads a fault message, process_vm_readv()s the aligned
 * `chunk` around it into a prefaulted staging buffer and UFFDIO_COPYs it into
 * place.  No bitmap, no holes (the source range must be readable), no read-ahead
 * growth, no spinning. */

struct raw_uffd {
    int uffd;
    pid_t pid;
    uintptr_t src;
    char *dst;
    size_t len, chunk;
    atomic_int stop;
    atomic_ulong faults;
    atomic_int err;
};

static void *raw_uffd_server(void *arg)
{
    struct raw_uffd *r = arg;
    char *stage = mmap(NULL, r->chunk, PROT_READ | PROT_WRITE,
                       MAP_PRIVATE | MAP_ANONYMOUS | MAP_POPULATE, -1, 0);
    struct pollfd pfd = {.fd = r->uffd, .events = POLLIN};
    if (stage == MAP_FAILED) {
        atomic_store(&r->err, errno);
        return NULL;
    }
    while (!atomic_load(&r->stop)) {
        if (poll(&pfd, 1, 100) <= 0)
            continue;
        struct uffd_msg msg;
        if (read(r->uffd, &msg, sizeof(msg)) != sizeof(msg))
            continue;
        if (msg.event != UFFD_EVENT_PAGEFAULT)
            continue;
        uintptr_t off = (msg.arg.pagefault.address - (uintptr_t)r->dst) & ~(r->chunk - 1);
        size_t n = r->len - off < r->chunk ? r->len - off : r->chunk;
        struct iovec l = {stage, n}, s = {(void *)(r->src + off), n};
        if (process_vm_readv(r->pid, &l, 1, &s, 1, 0) != (ssize_t)n)
            atomic_store(&r->err, errno ? errno : EFAULT);
        struct uffdio_copy c = {.dst = (uintptr_t)r->dst + off,
                                .src = (uintptr_t)stage, .len = n};
        if (ioctl(r->uffd, UFFDIO_COPY, &c) < 0 && errno != EEXIST)
            atomic_store(&r->err, errno);
        atomic_fetch_add(&r->faults, 1);
    }
    munmap(stage, r->chunk);
    return NULL;
}

static uint64_t now_ns(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint64_t)ts.tv_sec * 1000000000u + (uint64_t)ts.tv_nsec;
}

static int open_uffd(void)
{
    int fd = (int)syscall(SYS_userfaultfd, O_CLOEXEC | O_NONBLOCK);
    if (fd < 0)     /* unprivileged: user-mode faults are all this loop needs */
        fd = (int)syscall(SYS_userfaultfd, O_CLOEXEC | O_NONBLOCK | UFFD_USER_MODE_ONLY);
    if (fd < 0)
        return -1;
    struct uffdio_api api = {.api = UFFD_API};
    if (ioctl(fd, UFFDIO_API, &api) < 0) {
        int err = errno;
        close(fd);
        errno = err;
        return -1;
    }
    return fd;
}

/* Maps a fresh private destination of len bytes, registers it (MISSING) with
 * a new userfaultfd served by one thread as above, then touches every page
 * in order (one 8-byte read each) on the calling thread.  *ns gets the time
 * from the mmap to the last touch (the server's stop and join, up to its
 * 100 ms poll timeout, are not counted); *faults the messages served.
 * Returns the filled destination, unregistered (the caller checks it and
 * frees it with bench_unmap), or NULL with errno. */
void *bench_uffd_touch(pid_t pid, uintptr_t addr, size_t len, size_t chunk,
                       uint64_t *ns, uint64_t *faults)
{
    size_t ps = (size_t)sysconf(_SC_PAGESIZE);
    struct raw_uffd r = {.pid = pid, .src = addr, .len = len, .chunk = chunk};
    pthread_t th;
    int err = 0;
    if (chunk < ps || chunk & (chunk - 1)) {
        errno = EINVAL;
        return NULL;
    }
    uint64_t t0 = now_ns();
    r.dst = mmap(NULL, len, PROT_READ | PROT_WRITE,
                 MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0);
    if (r.dst == MAP_FAILED)
        return NULL;
    r.uffd = open_uffd();
    struct uffdio_register reg = {.range = {(uintptr_t)r.dst, len},
                                  .mode = UFFDIO_REGISTER_MODE_MISSING};
    if (r.uffd < 0 || ioctl(r.uffd, UFFDIO_REGISTER, &reg) < 0) {
        err = errno;
        goto fail;
    }
    if ((err = pthread_create(&th, NULL, raw_uffd_server, &r)) != 0)
        goto fail;
    uint64_t sum = 0;
    for (size_t i = 0; i < len; i += ps)
        sum += *(volatile const uint64_t *)(r.dst + i);
    (void)sum;
    *ns = now_ns() - t0;
    atomic_store(&r.stop, 1);
    pthread_join(th, NULL);
    *faults = atomic_load(&r.faults);
    ioctl(r.uffd, UFFDIO_UNREGISTER, &reg.range);
    close(r.uffd);
    if ((err = atomic_load(&r.err)) != 0) {
        munmap(r.dst, len);
        errno = err;
        return NULL;
    }
    return r.dst;
fail:
    if (r.uffd >= 0)
        close(r.uffd);
    munmap(r.dst, len);
    errno = err;
    return NULL;
}

int bench_unmap(void *addr, size_t len)
{
    return munmap(addr, len);
}
