/*
 * uffd_bench.c - userfaultfd costs of pvmmap's C core on this machine:
 * the lazy server (readahead, placement, fault latency, fill/prefetch)
 * against a raw userfaultfd loop, and the eager UFFDIO_COPY path against
 * the process_vm_readv one.  Every configuration runs once per round,
 * round-robin, and the medians over the rounds are printed.
 *
 *   make -C csrc bench && benchmarks/build/uffd_bench [rounds] [MiB]
 *
 * Needs root (a full userfaultfd and /proc/PID/mem of a child are enough).
 */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <poll.h>
#include <pthread.h>
#include <signal.h>
#include <stdatomic.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/mman.h>
#include <sys/syscall.h>
#include <sys/uio.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include "compat.h"
#include "pvmmap.h"

static size_t ps, size;
static pid_t src_pid;
static char *src_base;
static int mem_fd, pagemap_fd, maps_fd;

static double now(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec * 1e-9;
}

static int cmp_double(const void *a, const void *b)
{
    double x = *(const double *)a, y = *(const double *)b;
    return x < y ? -1 : x > y;
}

static double pct(double *v, size_t n, double p)
{
    qsort(v, n, sizeof(double), cmp_double);
    size_t i = (size_t)(p * (double)(n - 1));
    return v[i];
}

static void die(const char *what)
{
    fprintf(stderr, "uffd_bench: %s: %s\n", what, strerror(errno));
    exit(1);
}

static char *fresh(size_t len)
{
    char *p = mmap(NULL, len, PROT_READ | PROT_WRITE,
                   MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0);
    if (p == MAP_FAILED)
        die("mmap");
    return p;
}

/* A child holding `size` bytes of filled private anonymous memory. */
static void source_start(void)
{
    int p[2];
    src_base = fresh(size);
    if (pipe(p) < 0)
        die("pipe");
    src_pid = fork();
    if (src_pid == 0) {
        for (size_t i = 0; i < size; i += 8)
            *(uint64_t *)(src_base + i) = i * 0x9e3779b97f4a7c15ULL;
        char c = 'r';
        if (write(p[1], &c, 1) != 1)
            _exit(1);
        pause();
        _exit(0);
    }
    char c;
    if (read(p[0], &c, 1) != 1)
        die("source");
    munmap(src_base, size);
    char path[64];
    snprintf(path, sizeof(path), "/proc/%d/mem", (int)src_pid);
    mem_fd = open(path, O_RDONLY);
    snprintf(path, sizeof(path), "/proc/%d/pagemap", (int)src_pid);
    pagemap_fd = open(path, O_RDONLY);
    snprintf(path, sizeof(path), "/proc/%d/maps", (int)src_pid);
    maps_fd = open(path, O_RDONLY);
    if (mem_fd < 0 || pagemap_fd < 0 || maps_fd < 0)
        die("open /proc");
}

static int check(const char *dst, size_t len)
{
    for (size_t i = 0; i < len; i += 4096 + 8)
        if (*(const uint64_t *)(dst + (i & ~7UL)) != (i & ~7UL) * 0x9e3779b97f4a7c15ULL)
            return -1;
    return 0;
}

/* ---- lazy: sequential touch, and latency of touches ---- */

/* Touch every page of [dst, dst+len) in order, one read each. */
static double touch_seq(const char *dst, size_t len)
{
    double t = now();
    uint64_t sum = 0;
    for (size_t i = 0; i < len; i += ps)
        sum += *(volatile const uint64_t *)(dst + i);
    (void)sum;
    return now() - t;
}

static double lazy_seq(size_t ra, long spin, int flags)
{
    char *dst = fresh(size);
    pvmmap_lazy_set_spin(spin);
    double t0 = now();
    struct pvmmap_lazy *lz = pvmmap_lazy_start(src_pid, mem_fd, pagemap_fd, maps_fd,
                                               (uintptr_t)src_base, dst, size, ra, flags);
    if (!lz)
        die("lazy_start");
    touch_seq(dst, size);
    double t = now() - t0;
    if (check(dst, size))
        die("lazy bytes");
    pvmmap_lazy_close(lz);
    munmap(dst, size);
    return t;
}

/* Latencies (µs) of the touches that fault, every page touched once, in
 * order or in a random order. */
static void lazy_latency(size_t len, size_t ra, long spin, int random,
                         int flags, double *p50, double *p99)
{
    size_t n = len / ps;
    size_t *order = malloc(n * sizeof(size_t));
    double *lat = malloc(n * sizeof(double));
    for (size_t i = 0; i < n; i++)
        order[i] = i;
    if (random) {
        unsigned r = 12345;
        for (size_t i = n - 1; i > 0; i--) {
            r = r * 1103515245u + 12345u;
            size_t j = (r >> 4) % (i + 1);
            size_t tmp = order[i];
            order[i] = order[j];
            order[j] = tmp;
        }
    }
    char *dst = fresh(len);
    pvmmap_lazy_set_spin(spin);
    struct pvmmap_lazy *lz = pvmmap_lazy_start(src_pid, mem_fd, pagemap_fd, maps_fd,
                                               (uintptr_t)src_base, dst, len, ra, flags);
    if (!lz)
        die("lazy_start");
    /* Only touches that faulted count (the server's fault counter moved:
     * it is bumped before the page is installed, so before the wake). */
    size_t m = 0;
    struct pvmmap_lazy_stats st;
    pvmmap_lazy_stats(lz, &st);
    uint64_t faults = st.faults;
    for (size_t k = 0; k < n; k++) {
        const char *p = dst + order[k] * ps;
        double t = now();
        (void)*(volatile const uint64_t *)p;
        double dt = (now() - t) * 1e6;
        pvmmap_lazy_stats(lz, &st);
        if (st.faults != faults)
            lat[m++] = dt;
        faults = st.faults;
    }
    if (!m)
        lat[m++] = 0;
    *p50 = pct(lat, m, 0.5);
    *p99 = pct(lat, m, 0.99);
    pvmmap_lazy_close(lz);
    munmap(dst, len);
    free(order);
    free(lat);
}

/* ---- a raw userfaultfd loop: no bitmap, no holes, one blocking thread ---- */

struct raw {
    int uffd;
    char *dst;
    size_t len, chunk;
    int use_readv;
    atomic_int stop;
};

static void *raw_server(void *arg)
{
    struct raw *r = arg;
    char *stage = mmap(NULL, r->chunk, PROT_READ | PROT_WRITE,
                       MAP_PRIVATE | MAP_ANONYMOUS | MAP_POPULATE, -1, 0);
    struct pollfd pfd = {.fd = r->uffd, .events = POLLIN};
    while (!atomic_load(&r->stop)) {
        if (poll(&pfd, 1, 100) <= 0)
            continue;
        struct uffd_msg msg;
        if (read(r->uffd, &msg, sizeof(msg)) != sizeof(msg))
            continue;
        uintptr_t off = (msg.arg.pagefault.address - (uintptr_t)r->dst) & ~(r->chunk - 1);
        size_t n = r->len - off < r->chunk ? r->len - off : r->chunk;
        if (r->use_readv) {
            struct iovec l = {stage, n}, s = {src_base + off, n};
            process_vm_readv(src_pid, &l, 1, &s, 1, 0);
        } else {
            pread(mem_fd, stage, n, (off_t)((uintptr_t)src_base + off));
        }
        struct uffdio_copy c = {.dst = (uintptr_t)r->dst + off,
                                .src = (uintptr_t)stage, .len = n};
        ioctl(r->uffd, UFFDIO_COPY, &c);
    }
    munmap(stage, r->chunk);
    return NULL;
}

static double raw_seq(size_t chunk, int use_readv)
{
    struct raw r = {.len = size, .chunk = chunk, .use_readv = use_readv};
    r.dst = fresh(size);
    double t0 = now();
    r.uffd = pvmmap_uffd_open(NULL);
    struct uffdio_register reg = {.range = {(uintptr_t)r.dst, size},
                                  .mode = UFFDIO_REGISTER_MODE_MISSING};
    if (r.uffd < 0 || ioctl(r.uffd, UFFDIO_REGISTER, &reg) < 0)
        die("raw register");
    pthread_t th;
    pthread_create(&th, NULL, raw_server, &r);
    touch_seq(r.dst, size);
    double t = now() - t0;
    atomic_store(&r.stop, 1);
    pthread_join(th, NULL);
    if (check(r.dst, size))
        die("raw bytes");
    close(r.uffd);
    munmap(r.dst, size);
    return t;
}

/* ---- completing a clone: fill(), prefetch, eager copies ---- */

static double lazy_fill(void)
{
    char *dst = fresh(size);
    double t0 = now();
    struct pvmmap_lazy *lz = pvmmap_lazy_start(src_pid, mem_fd, pagemap_fd, maps_fd,
                                               (uintptr_t)src_base, dst, size, 0, 0);
    size_t rem = 1;
    while (rem)
        if (pvmmap_lazy_fill(lz, (size_t)64 << 20, &rem) < 0)
            die("fill");
    double t = now() - t0;
    if (check(dst, size))
        die("fill bytes");
    pvmmap_lazy_close(lz);
    munmap(dst, size);
    return t;
}

static double lazy_prefetch(void)
{
    char *dst = fresh(size);
    pvmmap_lazy_set_spin(PVMMAP_LAZY_SPIN_DEFAULT_US);
    double t0 = now();
    struct pvmmap_lazy *lz = pvmmap_lazy_start(src_pid, mem_fd, pagemap_fd, maps_fd,
                                               (uintptr_t)src_base, dst, size, 0, 0);
    pvmmap_lazy_prefetch(lz);
    struct pvmmap_lazy_stats st = {0};
    while (st.pages_done < size / ps) {
        usleep(500);
        pvmmap_lazy_stats(lz, &st);
    }
    double t = now() - t0;
    if (check(dst, size))
        die("prefetch bytes");
    pvmmap_lazy_close(lz);
    munmap(dst, size);
    return t;
}

static double eager(int threads, int flags)
{
    struct pvmmap_range r = {(uintptr_t)src_base, (uintptr_t)src_base + size};
    struct pvmmap_copy_stats st = {0};
    char *dst = fresh(size);
    double t0 = now();
    if (pvmmap_copy(src_pid, mem_fd, &r, 1, (uintptr_t)src_base, dst, threads,
                    flags, &st) < 0)
        die("pvmmap_copy");
    double t = now() - t0;
    if (check(dst, size) || ((flags & PVMMAP_COPY_UFFD) && !st.uffd))
        die("eager bytes/path");
    munmap(dst, size);
    return t;
}

/* The eager UFFDIO_COPY loop by hand, to choose the staging size. */
struct raw_eager {
    int uffd;
    char *dst;
    size_t stage;
};

struct raw_eager_job {
    struct raw_eager *e;
    size_t from, to;
};

static void *raw_eager_run(void *arg)
{
    struct raw_eager_job *j = arg;
    struct raw_eager *e = j->e;
    char *stage = mmap(NULL, e->stage, PROT_READ | PROT_WRITE,
                       MAP_PRIVATE | MAP_ANONYMOUS | MAP_POPULATE, -1, 0);
    for (size_t off = j->from; off < j->to; off += e->stage) {
        struct iovec l = {stage, e->stage}, s = {src_base + off, e->stage};
        process_vm_readv(src_pid, &l, 1, &s, 1, 0);
        struct uffdio_copy c = {.dst = (uintptr_t)e->dst + off, .src = (uintptr_t)stage,
                                .len = e->stage, .mode = UFFDIO_COPY_MODE_DONTWAKE};
        ioctl(e->uffd, UFFDIO_COPY, &c);
    }
    munmap(stage, e->stage);
    return NULL;
}

static double raw_eager(size_t stage, int threads)
{
    struct raw_eager e = {.stage = stage};
    e.dst = fresh(size);
    double t0 = now();
    e.uffd = pvmmap_uffd_open(NULL);
    struct uffdio_register reg = {.range = {(uintptr_t)e.dst, size},
                                  .mode = UFFDIO_REGISTER_MODE_MISSING};
    if (e.uffd < 0 || ioctl(e.uffd, UFFDIO_REGISTER, &reg) < 0)
        die("raw eager register");
    struct raw_eager_job jobs[2] = {{&e, 0, size / 2}, {&e, size / 2, size}};
    if (threads == 1)
        jobs[0].to = size;
    pthread_t th;
    if (threads == 2)
        pthread_create(&th, NULL, raw_eager_run, &jobs[1]);
    raw_eager_run(&jobs[0]);
    if (threads == 2)
        pthread_join(th, NULL);
    ioctl(e.uffd, UFFDIO_UNREGISTER, &reg.range);
    double t = now() - t0;
    if (check(e.dst, size))
        die("raw eager bytes");
    close(e.uffd);
    munmap(e.dst, size);
    return t;
}

/* ---- what a chunk's classification costs (µs per call) ---- */

static void lookup_costs(void)
{
    enum { N = 20000 };
    struct page_region vec[64];
    uint64_t e[16];
    static char buf[1 << 16];
    double t;
    uintptr_t a = (uintptr_t)src_base + (size / 2);

    t = now();
    for (int i = 0; i < N; i++) {
        struct pm_scan_arg arg = {.size = sizeof(arg), .start = a, .end = a + 16 * ps,
                                  .vec = (uintptr_t)vec, .vec_len = 64,
                                  .return_mask = PAGE_IS_PRESENT | PAGE_IS_SWAPPED};
        if (ioctl(pagemap_fd, PAGEMAP_SCAN, &arg) < 0)
            break;
    }
    printf("| PAGEMAP_SCAN, 16 pages, no filter        | %6.2f us |\n", (now() - t) / N * 1e6);
    t = now();
    for (int i = 0; i < N; i++)
        if (pread(pagemap_fd, e, sizeof(e), (off_t)(a / ps * 8)) < 0)
            break;
    printf("| pread pagemap, 16 entries                | %6.2f us |\n", (now() - t) / N * 1e6);
    t = now();
    for (int i = 0; i < N; i++) {
        struct procmap_query q = {.size = sizeof(q), .query_addr = a,
                                  .query_flags = PROCMAP_QUERY_COVERING_OR_NEXT_VMA};
        if (ioctl(maps_fd, PROCMAP_QUERY, &q) < 0)
            break;
    }
    printf("| PROCMAP_QUERY, one VMA                   | %6.2f us |\n", (now() - t) / N * 1e6);
    int lines = 0;
    t = now();
    for (int i = 0; i < N / 10; i++) {
        ssize_t got, off = 0;
        while ((got = pread(maps_fd, buf + off, sizeof(buf) - 1 - (size_t)off, off)) > 0)
            off += got;
        if (i == 0)
            for (ssize_t k = 0; k < off; k++)
                lines += buf[k] == '\n';
    }
    printf("| /proc/PID/maps text, whole (%d VMAs)     | %6.2f us |\n", lines,
           (now() - t) / (N / 10) * 1e6);
}

/* ---- the table ---- */

enum { MAXR = 32 };

struct row {
    const char *name;
    double (*fn)(const struct row *);
    size_t a;
    long b;
    double v[MAXR];             /* seconds, or p50 */
    double w[MAXR];             /* p99 */
    int lat;
    int flags;                  /* lazy flags */
};

static double r_lazy(const struct row *r) { return lazy_seq(r->a, r->b, r->flags); }
static double r_raw(const struct row *r) { return raw_seq(r->a, (int)r->b); }
static double r_fill(const struct row *r) { (void)r; return lazy_fill(); }
static double r_prefetch(const struct row *r) { (void)r; return lazy_prefetch(); }
static double r_eager(const struct row *r) { return eager((int)r->a, (int)r->b); }
static double r_raw_eager(const struct row *r) { return raw_eager(r->a, (int)r->b); }

#define LAT_LEN ((size_t)64 << 20)
#define FX PVMMAP_LAZY_FIXED_READAHEAD

int main(int argc, char **argv)
{
    int rounds = argc > 1 ? atoi(argv[1]) : 5;
    size = (argc > 2 ? (size_t)atol(argv[2]) : 1024) << 20;
    if (rounds < 1 || rounds > MAXR)
        rounds = 5;
    ps = pvmmap_page_size();
    source_start();
    const long spin_def = PVMMAP_LAZY_SPIN_DEFAULT_US;

    struct row rows[] = {
        {"lazy seq, readahead 4K", r_lazy, 4 << 10, spin_def, {0}, {0}, 0, FX},
        {"lazy seq, readahead 16K", r_lazy, 16 << 10, spin_def, {0}, {0}, 0, FX},
        {"lazy seq, readahead 64K", r_lazy, 64 << 10, spin_def, {0}, {0}, 0, FX},
        {"lazy seq, readahead 256K", r_lazy, 256 << 10, spin_def, {0}, {0}, 0, FX},
        {"lazy seq, readahead 1M", r_lazy, 1 << 20, spin_def, {0}, {0}, 0, FX},
        {"lazy seq, default (16K, growing)", r_lazy, 0, spin_def, {0}, {0}, 0, 0},
        {"raw uffd loop, 64K, pread mem", r_raw, 64 << 10, 0, {0}, {0}, 0, 0},
        {"raw uffd loop, 64K, process_vm_readv", r_raw, 64 << 10, 1, {0}, {0}, 0, 0},
        {"lazy seq 64K, server blocks", r_lazy, 64 << 10, 0, {0}, {0}, 0, FX},
        {"lazy seq 64K, server busy-polls", r_lazy, 64 << 10, -1, {0}, {0}, 0, FX},
        {"lazy seq 64K, spin 20us then block", r_lazy, 64 << 10, 20, {0}, {0}, 0, FX},
        {"lazy seq 64K, spin 200us then block", r_lazy, 64 << 10, 200, {0}, {0}, 0, FX},
        {"lat: seq (ra 4K), block", NULL, 4 << 10, 0, {0}, {0}, 1, FX},
        {"lat: seq (ra 4K), busy-poll", NULL, 4 << 10, -1, {0}, {0}, 1, FX},
        {"lat: seq (ra 4K), spin 50us", NULL, 4 << 10, 50, {0}, {0}, 1, FX},
        {"lat: seq (ra 64K), block", NULL, 64 << 10, 0, {0}, {0}, 1, FX},
        {"lat: seq (ra 64K), busy-poll", NULL, 64 << 10, -1, {0}, {0}, 1, FX},
        {"lat: seq (ra 64K), spin 50us", NULL, 64 << 10, 50, {0}, {0}, 1, FX},
        {"lat: random 4K (ra 4K), block", NULL, 4 << 10, 0, {0}, {0}, 2, FX},
        {"lat: random 4K (ra 4K), busy-poll", NULL, 4 << 10, -1, {0}, {0}, 2, FX},
        {"lat: random 4K (ra 4K), spin 20us", NULL, 4 << 10, 20, {0}, {0}, 2, FX},
        {"lat: random 4K (ra 4K), spin 50us", NULL, 4 << 10, 50, {0}, {0}, 2, FX},
        {"lat: random 4K (ra 4K), spin 200us", NULL, 4 << 10, 200, {0}, {0}, 2, FX},
        {"lat: random 4K (ra 16K), spin 50us", NULL, 16 << 10, 50, {0}, {0}, 2, FX},
        {"lat: random 4K (ra 64K), spin 50us", NULL, 64 << 10, 50, {0}, {0}, 2, FX},
        {"lat: random 4K (ra 256K), spin 50us", NULL, 256 << 10, 50, {0}, {0}, 2, FX},
        {"lat: seq, default (16K, growing)", NULL, 0, spin_def, {0}, {0}, 1, 0},
        {"lat: random 4K, default (16K, growing)", NULL, 0, spin_def, {0}, {0}, 2, 0},
        {"fill() loop, 64 MiB per call", r_fill, 0, 0, {0}, {0}, 0, 0},
        {"prefetch (server, background)", r_prefetch, 0, 0, {0}, {0}, 0, 0},
        {"eager readv -> fresh, 1 thread", r_eager, 1, 0, {0}, {0}, 0, 0},
        {"eager readv -> fresh, 2 threads", r_eager, 2, 0, {0}, {0}, 0, 0},
        {"eager UFFD path, 1 thread", r_eager, 1, PVMMAP_COPY_UFFD, {0}, {0}, 0, 0},
        {"eager UFFD path, 2 threads", r_eager, 2, PVMMAP_COPY_UFFD, {0}, {0}, 0, 0},
        {"raw eager uffd, stage 64K, 2 thr", r_raw_eager, 64 << 10, 2, {0}, {0}, 0, 0},
        {"raw eager uffd, stage 256K, 2 thr", r_raw_eager, 256 << 10, 2, {0}, {0}, 0, 0},
        {"raw eager uffd, stage 1M, 2 thr", r_raw_eager, 1 << 20, 2, {0}, {0}, 0, 0},
        {"raw eager uffd, stage 256K, 1 thr", r_raw_eager, 256 << 10, 1, {0}, {0}, 0, 0},
    };
    size_t nrows = sizeof(rows) / sizeof(rows[0]);
    const char *only = getenv("UFFD_BENCH_ONLY");   /* substring filter */

    for (int k = 0; k < rounds; k++) {
        for (size_t i = 0; i < nrows; i++) {
            struct row *r = &rows[i];
            if (only && !strstr(r->name, only))
                continue;
            if (r->lat)
                lazy_latency(LAT_LEN, r->a, r->b, r->lat == 2, r->flags,
                             &r->v[k], &r->w[k]);
            else
                r->v[k] = r->fn(r);
        }
        fprintf(stderr, "round %d done\n", k + 1);
    }
    pvmmap_lazy_set_spin(spin_def);

    printf("# %d rounds, %zu MiB (latency rows: %zu MiB), medians (min-max)\n",
           rounds, size >> 20, LAT_LEN >> 20);
    for (size_t i = 0; i < nrows; i++) {
        struct row *r = &rows[i];
        if (only && !strstr(r->name, only))
            continue;
        double v[MAXR], w[MAXR];
        memcpy(v, r->v, sizeof(v));
        memcpy(w, r->w, sizeof(w));
        double lo, hi, med = pct(v, (size_t)rounds, 0.5);
        lo = v[0];
        hi = v[rounds - 1];
        if (r->lat) {
            double med99 = pct(w, (size_t)rounds, 0.5);
            printf("| %-40s | p50 %7.1f us (%.1f-%.1f) | p99 %7.1f us |\n",
                   r->name, med, lo, hi, med99);
        } else {
            printf("| %-40s | %7.0f ms (%.0f-%.0f) | %5.2f GB/s |\n", r->name,
                   med * 1e3, lo * 1e3, hi * 1e3, (double)size / med / 1e9);
        }
    }
    if (!only || strstr("lookup", only))
        lookup_costs();
    kill(src_pid, SIGKILL);
    waitpid(src_pid, NULL, 0);
    return 0;
}
