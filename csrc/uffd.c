/*
 * uffd.c - userfaultfd: opening one (with the feature handshake), and the
 * lazy fault server that fills clones of another process's memory on demand.
 *
 * One server thread per process serves every lazy mapping (each has its own
 * uffd, all in one epoll set).  A page is installed by whoever *claims* it
 * first in the mapping's atomic bitmap: the server on a fault, the server's
 * background prefetch, or a caller's fill().  The claimant always installs
 * something (the data, the zero page for a hole, a poison marker for a page
 * that is gone), and every one of those ioctls wakes the threads waiting on
 * the page, so nobody else has to.
 *
 * The source is read through /proc/PID/mem and /proc/PID/pagemap fds the
 * caller opened at clone time.  They pin the source's mm: after an exec or
 * exit, reads through them return 0 bytes instead of another image's memory,
 * which is how "source gone" is detected.  process_vm_readv was not used for
 * the lazy path: it goes by pid, so it would read a new image after exec.
 *
 * A lazy mapping can also be served from a file (PVMMAP_LAZY_FILE: a CRIU
 * image's pages-N.img, read with pread at src + offset): every page is
 * data, there is no pagemap to classify by and no process to outlive.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <pthread.h>
#include <signal.h>
#include <stdatomic.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/eventfd.h>
#include <sys/ioctl.h>
#include <sys/mman.h>
#include <sys/syscall.h>
#include <time.h>
#include <unistd.h>

#include "compat.h"
#include "pvmmap.h"

/* ---- opening a userfaultfd ---- */

static _Atomic uint64_t offered_cache;   /* 0: not asked yet */

/* UFFDIO_API on a fresh fd.  Returns 0 with *offered, or -1 with errno. */
static int uffd_api(int fd, uint64_t want, uint64_t *offered)
{
    struct uffdio_api api = {.api = UFFD_API, .features = want};
    if (ioctl(fd, UFFDIO_API, &api) < 0)
        return -1;
    /* The kernel writes back everything it supports, not just `want`. */
    *offered = api.features;
    return 0;
}

/* A raw userfaultfd by one route.  Returns the fd, or -1 with errno. */
static int uffd_raw(int via)
{
    int flags = O_CLOEXEC | O_NONBLOCK;
    if (via == PVMMAP_UFFD_VIA_DEV) {
        int dev = open("/dev/userfaultfd", O_RDWR | O_CLOEXEC);
        if (dev < 0)
            return -1;
        int fd = ioctl(dev, USERFAULTFD_IOC_NEW, flags);
        int err = errno;
        close(dev);
        errno = err;
        return fd;
    }
    if (via == PVMMAP_UFFD_VIA_USER_ONLY)
        flags |= UFFD_USER_MODE_ONLY;
    return (int)syscall(SYS_userfaultfd, flags);
}

/* Returns the uffd (API done, want & offered enabled), or -1 with errno. */
int pvmmap_uffd_open_ex(uint64_t want, struct pvmmap_uffd_info *info)
{
    struct pvmmap_uffd_info local;
    static const int routes[] = {PVMMAP_UFFD_VIA_DEV, PVMMAP_UFFD_VIA_SYSCALL,
                                 PVMMAP_UFFD_VIA_USER_ONLY};
    int fd = -1, err = 0;

    if (!info)
        info = &local;
    memset(info, 0, sizeof(*info));
    for (int i = 0; i < 3 && fd < 0; i++) {
        fd = uffd_raw(routes[i]);
        if (fd >= 0) {
            info->via = routes[i];
            break;
        }
        err = errno;
        if (routes[i] == PVMMAP_UFFD_VIA_DEV)
            info->dev_errno = err;
        else if (routes[i] == PVMMAP_UFFD_VIA_SYSCALL)
            info->syscall_errno = err;
    }
    if (fd < 0) {
        errno = err;
        return -1;
    }
    info->mode = info->via == PVMMAP_UFFD_VIA_USER_ONLY ? 1 : 2;

    /* A feature the kernel lacks makes UFFDIO_API fail with EINVAL, and an
     * fd takes only one UFFDIO_API: learn what is offered on a first fd. */
    uint64_t offered = atomic_load(&offered_cache);
    if (!offered && want) {
        int probe = uffd_raw(info->via);
        if (probe < 0 || uffd_api(probe, 0, &offered) < 0) {
            err = errno;
            if (probe >= 0)
                close(probe);
            close(fd);
            errno = err;
            return -1;
        }
        close(probe);
        atomic_store(&offered_cache, offered);
    }
    uint64_t ask = offered ? want & offered : 0;
    if (uffd_api(fd, ask, &offered) < 0) {
        err = errno;
        close(fd);
        errno = err;
        return -1;
    }
    atomic_store(&offered_cache, offered);
    info->offered = offered;
    info->granted = ask;
    return fd;
}

/* Returns the uffd with no optional feature and *mode 2 or 1, or -1/errno. */
int pvmmap_uffd_open(int *mode)
{
    struct pvmmap_uffd_info info;
    int fd = pvmmap_uffd_open_ex(0, &info);
    if (fd >= 0 && mode)
        *mode = info.mode;
    return fd;
}

/* Returns 2 (full userfaultfd), 1 (user-mode-only faults) or 0 (none). */
int pvmmap_uffd_probe(void)
{
    int saved = errno, mode = 0;
    int fd = pvmmap_uffd_open(&mode);
    if (fd >= 0)
        close(fd);
    errno = saved;
    return fd >= 0 ? mode : 0;
}

/* ---- the lazy mapping ---- */

#define WORD_BITS 64
#define SCAN_MAX_PAGES 512      /* pages per PAGEMAP_SCAN: see classify_scan */
/* Step sizes (bytes; overridable at build time for the bench's A/B runs). */
#ifndef PREFETCH_CHUNK
#define PREFETCH_CHUNK ((size_t)256 << 10)  /* a background prefetch step */
#endif
#define FILL_CHUNK ((size_t)1 << 20)        /* a fill() step */
#ifndef SERVE_PIECE
#define SERVE_PIECE ((size_t)64 << 10)      /* the first run of a span */
#endif
#define MSG_BATCH 16

#define PM_PRESENT (1ULL << 63)
#define PM_SWAPPED (1ULL << 62)

enum seg_kind { SEG_DATA, SEG_HOLE, SEG_UNMAPPED, SEG_UNKNOWN };

struct seg {
    uintptr_t start, end;       /* source addresses */
    int kind;
};

/* Buffers a thread needs to serve spans of up to `pages` pages. */
struct stage {
    char *buf;                  /* staging for source bytes */
    size_t pages;
    uint64_t *mine;             /* pages of the span this thread claimed */
    struct seg *seg;            /* classification of one run */
    size_t nseg;
    struct page_region *vec;    /* PAGEMAP_SCAN output */
    uint64_t *pm;               /* pagemap entries */
    char *maps;                 /* /proc/PID/maps text */
    size_t maps_cap;
};

struct pvmmap_lazy {
    pid_t pid;
    pid_t owner;                /* the process that started it */
    int uffd, mem_fd, pagemap_fd, maps_fd;
    int flags;
    atomic_int how;             /* PVMMAP_LAZY_HOW_* in use */
    uintptr_t src;
    char *dst;
    size_t len, pages, ps, readahead;
    _Atomic uint64_t *claimed;  /* someone has taken the page */
    _Atomic uint64_t *done;     /* it has been installed (data, zero, poison) */
    atomic_int gone;            /* the source's mm is dead */
    atomic_uint_fast64_t faults, bytes_fetched, pages_zero, pages_lost,
                         pages_done;
    /* fill(): the caller's thread */
    struct stage fill_stage;
    size_t fill_cursor;
    /* the server's thread only: readahead state, prefetch */
    size_t ra_win, ra_next;     /* current window; where a stream goes on */
    size_t prefetch_cursor;
    struct pvmmap_lazy *prefetch_next;
};

/* ---- the server ---- */

struct ctl_req {
    int op;                     /* CTL_REMOVE, CTL_PREFETCH */
    struct pvmmap_lazy *lz;
    int done;
    struct ctl_req *next;
};
enum { CTL_REMOVE = 1, CTL_PREFETCH = 2 };

static struct server {
    pthread_mutex_t lock;       /* guards the fields below and the queue */
    pthread_cond_t cond;
    pid_t owner;                /* the process the thread runs in */
    int epfd, evfd, memfd;
    pthread_t thread;
    struct ctl_req *queue;
    struct stage stage;         /* the server thread's own */
    struct pvmmap_lazy *prefetch; /* server thread only */
} srv = {.lock = PTHREAD_MUTEX_INITIALIZER, .cond = PTHREAD_COND_INITIALIZER,
         .epfd = -1, .evfd = -1, .memfd = -1};

static atomic_long spin_ns = PVMMAP_LAZY_SPIN_DEFAULT_US * 1000L;

/* Returns the previous setting (µs; -1: spin forever, 0: always block). */
long pvmmap_lazy_set_spin(long usec)
{
    long old = atomic_exchange(&spin_ns, usec < 0 ? -1 : usec * 1000L);
    return old < 0 ? -1 : old / 1000;
}

static uint64_t now_ns(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint64_t)ts.tv_sec * 1000000000ULL + (uint64_t)ts.tv_nsec;
}

/* Release a stage's buffers (safe on a zeroed one). */
static void stage_free(struct stage *st)
{
    if (st->buf)
        munmap(st->buf, st->pages * pvmmap_page_size());
    free(st->mine);
    free(st->seg);
    free(st->vec);
    free(st->pm);
    free(st->maps);
    memset(st, 0, sizeof(*st));
}

/* Size `st` for spans of `pages`.  Returns 0 or -1 with errno. */
static int stage_init(struct stage *st, size_t pages)
{
    if (st->pages >= pages)
        return 0;
    stage_free(st);
    size_t ps = pvmmap_page_size();
    /* Prefaulted: the staging buffer is meant to stay hot. */
    st->buf = mmap(NULL, pages * ps, PROT_READ | PROT_WRITE,
                   MAP_PRIVATE | MAP_ANONYMOUS | MAP_POPULATE, -1, 0);
    if (st->buf == MAP_FAILED) {
        st->buf = NULL;
        return -1;
    }
    st->pages = pages;
    st->mine = calloc(pages / WORD_BITS + 2, sizeof(uint64_t));
    st->seg = malloc((pages + 2) * sizeof(struct seg));
    st->vec = malloc(SCAN_MAX_PAGES * sizeof(struct page_region));
    st->pm = malloc(SCAN_MAX_PAGES * sizeof(uint64_t));
    if (!st->mine || !st->seg || !st->vec || !st->pm) {
        stage_free(st);
        errno = ENOMEM;
        return -1;
    }
    return 0;
}

/* Returns bit i of map (acquire: what was installed before it is seen). */
static int bit_test(_Atomic uint64_t *map, size_t i)
{
    return (atomic_load_explicit(&map[i / WORD_BITS], memory_order_acquire)
            >> (i % WORD_BITS)) & 1;
}

/* Set bits [first, first+n) of map, a word at a time. */
static void bits_set(_Atomic uint64_t *map, size_t first, size_t n)
{
    for (size_t i = first; i < first + n;) {
        size_t w = i / WORD_BITS, b = i % WORD_BITS;
        size_t k = WORD_BITS - b < first + n - i ? WORD_BITS - b : first + n - i;
        uint64_t mask = (k == WORD_BITS ? ~0ULL : ((1ULL << k) - 1)) << b;
        atomic_fetch_or_explicit(&map[w], mask, memory_order_release);
        i += k;
    }
}

/* Claim every unclaimed page of [first, first+n) into st->mine (bit j for
 * page first+j).  Returns the number claimed. */
static size_t claim(struct pvmmap_lazy *lz, struct stage *st, size_t first,
                    size_t n)
{
    size_t got = 0;
    memset(st->mine, 0, (n / WORD_BITS + 2) * sizeof(uint64_t));
    for (size_t i = first; i < first + n;) {
        size_t w = i / WORD_BITS, b = i % WORD_BITS;
        size_t k = WORD_BITS - b < first + n - i ? WORD_BITS - b : first + n - i;
        uint64_t mask = (k == WORD_BITS ? ~0ULL : ((1ULL << k) - 1)) << b;
        uint64_t old = atomic_fetch_or(&lz->claimed[w], mask);
        uint64_t mine = (mask & ~old) >> b;
        for (size_t j = 0; mine; j++, mine >>= 1) {
            if (mine & 1) {
                size_t r = i - first + j;
                st->mine[r / WORD_BITS] |= 1ULL << (r % WORD_BITS);
                got++;
            }
        }
        i += k;
    }
    return got;
}

/* ---- poisoning: pages that can never be fetched ---- */

/* Make pages [first, first+n) SIGBUS on touch and wake their waiters.
 * UFFDIO_POISON (6.6+) where the kernel has it; else an empty memfd mapped
 * MAP_SHARED|MAP_FIXED over them (access beyond EOF is SIGBUS), then an
 * explicit UFFDIO_WAKE: replacing a VMA does not wake the threads blocked
 * in it.  Last resort if mmap fails (vm.max_map_count): PROT_NONE (SIGSEGV,
 * still never silent zeros).  Always counts the pages as lost. */
static void poison(struct pvmmap_lazy *lz, size_t first, size_t n)
{
    int saved = errno;
    uintptr_t a = (uintptr_t)lz->dst + first * lz->ps;
    size_t len = n * lz->ps;

    while (len && (atomic_load(&lz->how) & PVMMAP_LAZY_HOW_POISON)) {
        struct uffdio_poison p = {.range = {a, len}};
        if (ioctl(lz->uffd, UFFDIO_POISON, &p) == 0) {
            len = 0;
            break;
        }
        size_t did = p.updated > 0 ? (size_t)p.updated : 0;
        if (errno == EEXIST)
            did += lz->ps;      /* filled meanwhile (DONTNEED, then refill) */
        else if (errno != EAGAIN && errno != EINTR)
            break;              /* the rest goes the old-kernel way */
        a += did;
        len -= did;
    }
    if (len) {
        void *p = srv.memfd >= 0
            ? mmap((void *)a, len, PROT_READ | PROT_WRITE,
                   MAP_SHARED | MAP_FIXED, srv.memfd, 0)
            : MAP_FAILED;
        if (p != MAP_FAILED)
            madvise(p, len, MADV_DONTFORK);
        else
            mprotect((void *)a, len, PROT_NONE);
        struct uffdio_range r = {a, len};
        ioctl(lz->uffd, UFFDIO_WAKE, &r);
    }
    bits_set(lz->done, first, n);
    atomic_fetch_add(&lz->pages_lost, n);
    errno = saved;
}

/* The source is gone: claim and poison every page nobody has claimed. */
static void poison_all(struct pvmmap_lazy *lz)
{
    atomic_store(&lz->gone, 1);
    for (size_t w = 0; w * WORD_BITS < lz->pages; w++) {
        size_t base = w * WORD_BITS;
        size_t k = lz->pages - base < WORD_BITS ? lz->pages - base : WORD_BITS;
        uint64_t mask = k == WORD_BITS ? ~0ULL : (1ULL << k) - 1;
        uint64_t mine = mask & ~atomic_fetch_or(&lz->claimed[w], mask);
        while (mine) {
            int s = __builtin_ctzll(mine);
            int e = s;
            while (e < WORD_BITS && ((mine >> e) & 1))
                e++;
            poison(lz, base + (size_t)s, (size_t)(e - s));
            mine = e == WORD_BITS ? 0 : mine & ~((1ULL << e) - 1);
        }
    }
}

/* 1 if the source's mm is still alive (a pagemap read gives 0 bytes once
 * it is not: the fd pins the mm, not its users), 0 if not. */
static int source_alive(struct pvmmap_lazy *lz)
{
    uint64_t e;
    if (lz->flags & PVMMAP_LAZY_FILE)
        return 1;               /* a file does not die; short reads poison */
    return pread(lz->pagemap_fd, &e, sizeof(e),
                 (off_t)(lz->src / lz->ps * sizeof(e))) == (ssize_t)sizeof(e);
}

/* ---- classifying a run of source pages: data, hole, or unmapped ----
 *
 * A hole inside a VMA must read as zero; a page the source unmapped must be
 * poisoned.  Pagemap alone cannot tell them apart (both read as 0), so:
 *  1. PAGEMAP_SCAN (6.7+) without a category filter answers both questions
 *     in one ioctl (gaps in its output have no VMA): 1.7 us per 16 pages.
 *  2. Else pagemap entries (2.9 us per 16); a hole whose entry carries the
 *     soft-dirty bit is inside a VMA, so only all-zero entries need a VMA
 *     lookup, and only chunks that have them pay it:
 *  3. PROCMAP_QUERY on the maps fd (6.11+): 1.6 us per VMA; else
 *  4. the /proc/PID/maps text, read whole: 55 us for 25 VMAs (and linear
 *     in the VMA count), the cheapest VMA lookup older kernels have that
 *     does not touch the source (a read of the hole would map the zero
 *     page into it).  (uffd_bench, "lookup" rows.)
 */

/* Append [s, e) of `kind` to st->seg, merging with a like neighbour. */
static void seg_add(struct stage *st, uintptr_t s, uintptr_t e, int kind)
{
    if (st->nseg && st->seg[st->nseg - 1].end == s
        && st->seg[st->nseg - 1].kind == kind) {
        st->seg[st->nseg - 1].end = e;
        return;
    }
    st->seg[st->nseg].start = s;
    st->seg[st->nseg].end = e;
    st->seg[st->nseg].kind = kind;
    st->nseg++;
}

/*
 * PAGEMAP_SCAN (6.7+) with no category filter reports every page inside a
 * VMA, holes included (categories 0), and skips addresses with no VMA: the
 * gaps in its output are exactly the unmapped parts, so one ioctl answers
 * both questions.  At most SCAN_MAX_PAGES pages per call, so the output can
 * never exceed the kernel's 512-entry buffer (the stale walk_end pitfall,
 * scan.c).  Returns 0, 1 if the kernel has no PAGEMAP_SCAN, -1 with errno.
 */
static int classify_scan(struct pvmmap_lazy *lz, struct stage *st,
                         uintptr_t s, uintptr_t e)
{
    struct pm_scan_arg arg;
    memset(&arg, 0, sizeof(arg));
    arg.size = sizeof(arg);
    arg.start = s;
    arg.end = e;
    arg.vec = (uintptr_t)st->vec;
    arg.vec_len = SCAN_MAX_PAGES;
    arg.return_mask = PAGE_IS_PRESENT | PAGE_IS_SWAPPED | PAGE_IS_PFNZERO;
    int got = ioctl(lz->pagemap_fd, PAGEMAP_SCAN, &arg);
    if (got < 0)
        return errno == ENOTTY || errno == EINVAL ? 1 : -1;
    uintptr_t at = s;
    for (int i = 0; i < got; i++) {
        uint64_t c = st->vec[i].categories;
        if (st->vec[i].start > at)
            seg_add(st, at, st->vec[i].start, SEG_UNMAPPED);
        int data = (c & PAGE_IS_SWAPPED) ||
                   ((c & PAGE_IS_PRESENT) && !(c & PAGE_IS_PFNZERO));
        seg_add(st, st->vec[i].start, st->vec[i].end, data ? SEG_DATA : SEG_HOLE);
        at = st->vec[i].end;
    }
    if (at < e)
        seg_add(st, at, e, SEG_UNMAPPED);
    return 0;
}

/* Covering-or-next VMA of `a` by PROCMAP_QUERY (6.11+).  Returns 1 with
 * [*vs, *ve), 0 if there is none, 2 if the kernel lacks the ioctl, -1. */
static int vma_query(struct pvmmap_lazy *lz, uintptr_t a, uintptr_t *vs,
                     uintptr_t *ve)
{
    struct pvmmap_vma v = {0};
    int r = pvmmap_vma_query(lz->maps_fd, a, &v);
    if (r == 1) {
        *vs = v.start;
        *ve = v.end;
    }
    return r;
}

/* Read the whole maps file into st->maps.  Returns its length or -1. */
static ssize_t maps_read(struct pvmmap_lazy *lz, struct stage *st)
{
    size_t n = 0;
    for (;;) {
        if (st->maps_cap - n < 4096) {
            size_t cap = st->maps_cap ? st->maps_cap * 2 : 65536;
            char *m = realloc(st->maps, cap);
            if (!m)
                return -1;
            st->maps = m;
            st->maps_cap = cap;
        }
        ssize_t got = pread(lz->maps_fd, st->maps + n, st->maps_cap - n - 1,
                            (off_t)n);
        if (got < 0)
            return -1;
        if (got == 0)
            break;
        n += (size_t)got;
    }
    st->maps[n] = '\0';
    return (ssize_t)n;
}

/* The same answer from the /proc/PID/maps text (kernels before 6.11). */
static int vma_parse(struct stage *st, uintptr_t a, uintptr_t *vs, uintptr_t *ve)
{
    for (char *line = st->maps; line && *line;) {
        char *end;
        uintptr_t s = strtoul(line, &end, 16);
        uintptr_t e = *end == '-' ? strtoul(end + 1, NULL, 16) : 0;
        if (e > a) {
            *vs = s;
            *ve = e;
            return 1;
        }
        line = strchr(line, '\n');
        if (line)
            line++;
    }
    return 0;
}

/* Split SEG_UNKNOWN segments into SEG_HOLE / SEG_UNMAPPED by VMA lookup.
 * Returns 0 or -1 with errno. */
static int resolve_unknown(struct pvmmap_lazy *lz, struct stage *st)
{
    size_t n = st->nseg;
    int parsed = 0, ret = 0;
    /* Rebuilt from a copy: an unknown segment may split in several. */
    struct seg *copy = malloc(n * sizeof(struct seg));
    if (!copy)
        return -1;
    memcpy(copy, st->seg, n * sizeof(struct seg));
    st->nseg = 0;
    for (size_t i = 0; i < n; i++) {
        if (copy[i].kind != SEG_UNKNOWN) {
            seg_add(st, copy[i].start, copy[i].end, copy[i].kind);
            continue;
        }
        for (uintptr_t a = copy[i].start, b = copy[i].end; a < b;) {
            uintptr_t vs = 0, ve = 0;
            int r = 2;
            if (atomic_load(&lz->how) & PVMMAP_LAZY_HOW_PROCMAP_QUERY)
                r = vma_query(lz, a, &vs, &ve);
            if (r == 2) {
                atomic_fetch_and(&lz->how, ~PVMMAP_LAZY_HOW_PROCMAP_QUERY);
                if (!parsed && maps_read(lz, st) < 0) {
                    ret = -1;
                    goto out;
                }
                parsed = 1;
                r = vma_parse(st, a, &vs, &ve);
            }
            if (r < 0) {
                ret = -1;
                goto out;
            }
            if (r == 0 || vs >= b) {
                seg_add(st, a, b, SEG_UNMAPPED);
                break;
            }
            if (vs > a)
                seg_add(st, a, vs, SEG_UNMAPPED);
            uintptr_t stop = ve < b ? ve : b;
            if (vs < a)
                vs = a;
            seg_add(st, vs, stop, SEG_HOLE);
            a = stop;
        }
    }
out:
    if (ret < 0) {
        int err = errno;
        free(copy);
        errno = err;
    } else {
        free(copy);
    }
    return ret;
}

/*
 * Without PAGEMAP_SCAN: read the pagemap entries.  Present or swapped is
 * data.  A hole inside a VMA reads as 0 *or* as just the soft-dirty bit (a
 * VMA is soft-dirty from its mmap until someone writes clear_refs), so that
 * bit proves a VMA; a 0 entry is ambiguous and costs a VMA lookup, done
 * only for runs that have one.  Returns 0, or -1 with errno (ESRCH: gone).
 */
static int classify_read(struct pvmmap_lazy *lz, struct stage *st,
                         uintptr_t s, uintptr_t e)
{
    size_t n = (e - s) / lz->ps;
    ssize_t got = pread(lz->pagemap_fd, st->pm, n * sizeof(uint64_t),
                        (off_t)(s / lz->ps * sizeof(uint64_t)));
    if (got != (ssize_t)(n * sizeof(uint64_t))) {
        if (got >= 0)
            errno = ESRCH;      /* 0 bytes: the mm has no users left */
        return -1;
    }
    int unknown = 0;
    for (size_t i = 0; i < n; i++) {
        uint64_t v = st->pm[i];
        /* no VMA reads as exactly 0; inside one, usually the soft-dirty
         * bit alone (any bit proves the VMA) */
        int kind = (v & (PM_PRESENT | PM_SWAPPED)) ? SEG_DATA
                 : v ? SEG_HOLE : SEG_UNKNOWN;
        unknown |= kind == SEG_UNKNOWN;
        seg_add(st, s + i * lz->ps, s + (i + 1) * lz->ps, kind);
    }
    return unknown ? resolve_unknown(lz, st) : 0;
}

/* Classify source [s, e) into st->seg.  Returns 0 or -1 with errno. */
static int classify(struct pvmmap_lazy *lz, struct stage *st, uintptr_t s,
                    uintptr_t e)
{
    st->nseg = 0;
    if (lz->flags & PVMMAP_LAZY_FILE) {
        seg_add(st, s, e, SEG_DATA);    /* an image's run: pages, no holes */
        return 0;
    }
    for (uintptr_t a = s; a < e;) {
        uintptr_t b = e - a > SCAN_MAX_PAGES * lz->ps ? a + SCAN_MAX_PAGES * lz->ps : e;
        int r = 1;
        if (atomic_load(&lz->how) & PVMMAP_LAZY_HOW_PAGEMAP_SCAN) {
            r = classify_scan(lz, st, a, b);
            if (r == 1)
                atomic_fetch_and(&lz->how, ~PVMMAP_LAZY_HOW_PAGEMAP_SCAN);
        }
        if (r == 1)
            r = classify_read(lz, st, a, b);
        if (r < 0)
            return -1;
        a = b;
    }
    return 0;
}

/* ---- installing ---- */

/* UFFDIO_COPY `len` bytes from `from` to destination `a`; a page someone
 * else filled meanwhile (EEXIST) is skipped.  Returns 0 or -1 with errno. */
static int install_copy(struct pvmmap_lazy *lz, uintptr_t a, const char *from,
                        size_t len)
{
    while (len) {
        struct uffdio_copy c = {.dst = a, .src = (uintptr_t)from, .len = len};
        if (ioctl(lz->uffd, UFFDIO_COPY, &c) == 0)
            return 0;
        size_t did = c.copy > 0 ? (size_t)c.copy : 0;
        if (errno == EEXIST)
            did += lz->ps;
        else if (errno != EAGAIN && errno != EINTR)
            return -1;
        a += did;
        from += did;
        len -= did;
    }
    return 0;
}

/* UFFDIO_ZEROPAGE over [a, a+len), skipping filled pages. */
static int install_zero(struct pvmmap_lazy *lz, uintptr_t a, size_t len)
{
    while (len) {
        struct uffdio_zeropage z = {.range = {a, len}};
        if (ioctl(lz->uffd, UFFDIO_ZEROPAGE, &z) == 0)
            return 0;
        size_t did = z.zeropage > 0 ? (size_t)z.zeropage : 0;
        if (errno == EEXIST)
            did += lz->ps;
        else if (errno != EAGAIN && errno != EINTR)
            return -1;
        a += did;
        len -= did;
    }
    return 0;
}

/* Fetch and install one run of pages this thread claimed.  Every page of
 * the run ends up installed or poisoned.  Returns 0, or -1 with errno if
 * pages were lost (ESRCH: the source is gone; EFAULT: unmapped/unreadable). */
static int serve_run(struct pvmmap_lazy *lz, struct stage *st, size_t first,
                     size_t n)
{
    uintptr_t s = lz->src + first * lz->ps, e = s + n * lz->ps;
    int lost_errno = 0;

    if (atomic_load(&lz->gone) || classify(lz, st, s, e) < 0) {
        int err = errno;
        poison(lz, first, n);
        if (atomic_load(&lz->gone) || err == ESRCH || !source_alive(lz)) {
            poison_all(lz);
            err = ESRCH;
        }
        errno = err;
        return -1;
    }
    for (size_t i = 0; i < st->nseg; i++) {
        struct seg *g = &st->seg[i];
        size_t p0 = (g->start - lz->src) / lz->ps;
        size_t np = (g->end - g->start) / lz->ps;
        uintptr_t d = (uintptr_t)lz->dst + (g->start - lz->src);
        int r = 0;

        if (g->kind == SEG_HOLE) {
            r = install_zero(lz, d, g->end - g->start);
            if (r == 0) {
                bits_set(lz->done, p0, np);
                atomic_fetch_add(&lz->pages_zero, np);
                atomic_fetch_add(&lz->pages_done, np);
            }
        } else if (g->kind == SEG_DATA) {
            size_t len = g->end - g->start, have = 0;
            while (have < len) {
                ssize_t got = pread(lz->mem_fd, st->buf + have, len - have,
                                    (off_t)(g->start + have));
                if (got <= 0)
                    break;
                have += (size_t)got;
            }
            have &= ~(lz->ps - 1);
            if (have) {
                r = install_copy(lz, d, st->buf, have);
                if (r == 0) {
                    bits_set(lz->done, p0, have / lz->ps);
                    atomic_fetch_add(&lz->bytes_fetched, have);
                    atomic_fetch_add(&lz->pages_done, have / lz->ps);
                }
            }
            if (r == 0 && have < len) {
                /* mem read 0 bytes (mm dead) or EIO (unmapped meanwhile) */
                size_t rest = (len - have) / lz->ps;
                poison(lz, p0 + have / lz->ps, rest);
                if (!source_alive(lz)) {
                    poison_all(lz);
                    lost_errno = ESRCH;
                } else if (!lost_errno) {
                    lost_errno = EFAULT;
                }
            }
        } else {
            poison(lz, p0, np);
            if (!lost_errno)
                lost_errno = source_alive(lz) ? EFAULT : ESRCH;
            if (lost_errno == ESRCH)
                poison_all(lz);
        }
        if (r < 0) {
            /* The destination refused (unregistered under us?): nothing
             * else will fill these pages, so make them fail loudly. */
            int err = errno;
            poison(lz, p0, np);
            errno = err;
            return -1;
        }
    }
    if (lost_errno) {
        errno = lost_errno;
        return -1;
    }
    return 0;
}

/* Claim and serve pages [first, first+n) (n <= st->pages).  Returns the
 * number of pages this thread claimed, or -1 with errno if pages were lost
 * (they are then poisoned). */
static ssize_t serve_span(struct pvmmap_lazy *lz, struct stage *st,
                          size_t first, size_t n)
{
    size_t got = claim(lz, st, first, n);
    int err = 0;
    for (size_t j = 0; j < n;) {
        if (!((st->mine[j / WORD_BITS] >> (j % WORD_BITS)) & 1)) {
            j++;
            continue;
        }
        /* The first run is cut at SERVE_PIECE: it wakes the faulter (whose
         * page starts the span when a stream is followed) while the rest
         * is fetched in one go.  Measured on 1 GiB sequential (UFFD.md):
         * 64K pieces throughout cut the fault p50 from 0.9 ms to 70 us but
         * cost 25% throughput (a toucher that catches up faults once per
         * piece); one first piece keeps the throughput. */
        size_t k = j, cap = j == 0 ? SERVE_PIECE / lz->ps : n;
        while (k < n && k - j < cap
               && ((st->mine[k / WORD_BITS] >> (k % WORD_BITS)) & 1))
            k++;
        if (serve_run(lz, st, first + j, k - j) < 0 && !err)
            err = errno;
        j = k;
    }
    if (err) {
        errno = err;
        return -1;
    }
    return (ssize_t)got;
}

/* The server's answer to one fault at destination address `addr`. */
static void serve_fault(struct pvmmap_lazy *lz, uintptr_t addr)
{
    size_t ps = lz->ps;
    size_t page = (addr - (uintptr_t)lz->dst) / ps;
    if (addr < (uintptr_t)lz->dst || page >= lz->pages)
        return;
    atomic_fetch_add(&lz->faults, 1);
    if (bit_test(lz->claimed, page)) {
        /* Installed already and then discarded (MADV_DONTNEED): zero is
         * what private anonymous memory gives.  Claimed but not yet done:
         * the claimant's ioctl will wake the faulter. */
        if (bit_test(lz->done, page))
            install_zero(lz, addr & ~(ps - 1), ps);
        return;
    }
    /*
     * Readahead: a window of lz->readahead around the fault, aligned; but a
     * fault just past the previous window is a sequential stream, and its
     * window doubles (from that page on) up to PVMMAP_LAZY_READAHEAD_MAX.
     * Measured (UFFD.md): big windows give sequential touches 2x the
     * throughput of 64K ones, small ones keep a random fault at ~20-30 us
     * instead of 80 us (64K) or 260 us (256K).
     */
    size_t ra = lz->readahead / ps, first;
    if (!(lz->flags & PVMMAP_LAZY_FIXED_READAHEAD) && page == lz->ra_next
        && page) {
        lz->ra_win = lz->ra_win * 2 < PVMMAP_LAZY_READAHEAD_MAX / ps
                   ? lz->ra_win * 2 : PVMMAP_LAZY_READAHEAD_MAX / ps;
        first = page;
    } else {
        lz->ra_win = ra;
        first = page - page % ra;
    }
    size_t n = first + lz->ra_win > lz->pages ? lz->pages - first : lz->ra_win;
    lz->ra_next = first + n;
    serve_span(lz, &srv.stage, first, n);
}

/* One step of background prefetch.  Returns 1 while more remains. */
static int prefetch_step(struct pvmmap_lazy *lz)
{
    size_t chunk = PREFETCH_CHUNK / lz->ps;
    while (lz->prefetch_cursor < lz->pages) {
        size_t first = lz->prefetch_cursor;
        size_t n = lz->pages - first < chunk ? lz->pages - first : chunk;
        lz->prefetch_cursor += n;
        if (atomic_load(&lz->gone))
            return 0;
        /* skip spans that are fully claimed without touching the source */
        int any = 0;
        for (size_t i = first; i < first + n && !any; i++)
            any = !bit_test(lz->claimed, i);
        if (any) {
            serve_span(lz, &srv.stage, first, n);
            return lz->prefetch_cursor < lz->pages;
        }
    }
    return 0;
}

/* Server thread: take the queued requests (add to / drop from the
 * prefetch list) and acknowledge them all. */
static void handle_ctl(void)
{
    uint64_t v;
    if (read(srv.evfd, &v, sizeof(v)) < 0 && errno != EAGAIN)
        return;
    pthread_mutex_lock(&srv.lock);
    while (srv.queue) {
        struct ctl_req *q = srv.queue;
        srv.queue = q->next;
        struct pvmmap_lazy **pp = &srv.prefetch;
        while (*pp && *pp != q->lz)
            pp = &(*pp)->prefetch_next;
        if (q->op == CTL_REMOVE && *pp) {
            *pp = q->lz->prefetch_next;
        } else if (q->op == CTL_PREFETCH && !*pp) {
            q->lz->prefetch_next = srv.prefetch;
            srv.prefetch = q->lz;
        }
        q->done = 1;
    }
    pthread_cond_broadcast(&srv.cond);
    pthread_mutex_unlock(&srv.lock);
}

/*
 * The server loop: faults first, then control requests, then prefetch.
 * After serving a fault it polls (epoll_wait with timeout 0) for spin_ns,
 * then blocks.  Placement measured on this 2-vCPU VM (uffd_bench, medians
 * of 5, two runs; UFFD.md): a 4K fault took p50 20-22 us blocking, 17-22
 * busy-polling, 18-20 spinning 20-50 us; 1 GiB sequential at 64K windows
 * 1264/1637 ms blocking, 1164/1373 busy, 1090/1647 spin 20 us, 1232/1323
 * spin 200 us: no placement wins beyond the noise here, where a wake-up
 * no longer costs the 70 us of perf-anchors 5 (that host: 72 us blocking
 * vs 18 us busy).  Busy-polling costs a whole vCPU of two; a short spin
 * costs at most spin_ns per burst of faults and keeps a fault stream hot
 * where wake-ups are dear.  Default: 50 us (PVMMAP_LAZY_SPIN_DEFAULT_US).
 */
static void *server_main(void *unused)
{
    struct epoll_event ev[MSG_BATCH];
    struct uffd_msg msg[MSG_BATCH];
    uint64_t last = 0;
    (void)unused;

    for (;;) {
        long spin = atomic_load(&spin_ns);
        int timeout = -1;
        if (srv.prefetch || spin < 0 ||
            (spin > 0 && now_ns() - last < (uint64_t)spin))
            timeout = 0;
        int n = epoll_wait(srv.epfd, ev, MSG_BATCH, timeout);
        if (n < 0)
            continue;           /* EINTR */
        int ctl = 0, served = 0;
        for (int i = 0; i < n; i++) {
            if (ev[i].data.ptr == NULL) {
                ctl = 1;
                continue;
            }
            struct pvmmap_lazy *lz = ev[i].data.ptr;
            ssize_t got = read(lz->uffd, msg, sizeof(msg));
            for (ssize_t k = 0; k < got / (ssize_t)sizeof(msg[0]); k++)
                if (msg[k].event == UFFD_EVENT_PAGEFAULT) {
                    serve_fault(lz, (uintptr_t)msg[k].arg.pagefault.address);
                    served = 1;
                }
        }
        if (served)
            last = now_ns();
        /* Control only after the whole batch: once a removal is acked, no
         * pointer from an earlier epoll_wait is used again. */
        if (ctl)
            handle_ctl();
        if (n == 0 && srv.prefetch) {
            struct pvmmap_lazy *lz = srv.prefetch;
            if (!prefetch_step(lz))
                srv.prefetch = lz->prefetch_next;
        }
    }
    return NULL;
}

/* fork() while another thread holds srv.lock would leave it locked in
 * the child: hold it across the fork (pthread_atfork, once). */
static void srv_prefork(void)
{
    pthread_mutex_lock(&srv.lock);
}

/* Both sides of the fork: let go of srv.lock. */
static void srv_postfork(void)
{
    pthread_mutex_unlock(&srv.lock);
}

/* Register the fork handlers (once per process image). */
static void srv_atfork_once(void)
{
    pthread_atfork(srv_prefork, srv_postfork, srv_postfork);
}

/* Start the server thread if this process has none.  Returns 0 or -1. */
static int server_start(size_t stage_pages)
{
    static pthread_once_t once = PTHREAD_ONCE_INIT;
    pthread_once(&once, srv_atfork_once);
    pthread_mutex_lock(&srv.lock);
    if (srv.owner == getpid()) {
        pthread_mutex_unlock(&srv.lock);
        return 0;
    }
    if (srv.owner) {
        /* A forked child has the state but not the thread, and shares the
         * parent's epoll instance: never touch it, make its own. */
        close(srv.epfd);
        close(srv.evfd);
        close(srv.memfd);
        stage_free(&srv.stage);
    }
    srv.queue = NULL;
    srv.prefetch = NULL;
    memset(&srv.stage, 0, sizeof(srv.stage));
    srv.epfd = epoll_create1(EPOLL_CLOEXEC);
    srv.evfd = eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK);
    srv.memfd = (int)syscall(SYS_memfd_create, "pvmmap-lost", MFD_CLOEXEC);
    int err = 0;
    if (srv.epfd < 0 || srv.evfd < 0 || srv.memfd < 0)
        err = errno;
    if (!err && stage_init(&srv.stage, stage_pages) < 0)
        err = errno;
    struct epoll_event ev = {.events = EPOLLIN, .data.ptr = NULL};
    if (!err && epoll_ctl(srv.epfd, EPOLL_CTL_ADD, srv.evfd, &ev) < 0)
        err = errno;
    if (!err) {
        /* The server takes no signal: Ctrl-C belongs to the caller. */
        sigset_t all, old;
        sigfillset(&all);
        pthread_sigmask(SIG_SETMASK, &all, &old);
        err = pthread_create(&srv.thread, NULL, server_main, NULL);
        pthread_sigmask(SIG_SETMASK, &old, NULL);
        if (!err)
            pthread_detach(srv.thread);
    }
    if (err) {
        if (srv.epfd >= 0)
            close(srv.epfd);
        if (srv.evfd >= 0)
            close(srv.evfd);
        if (srv.memfd >= 0)
            close(srv.memfd);
        stage_free(&srv.stage);
        srv.epfd = srv.evfd = srv.memfd = -1;
        pthread_mutex_unlock(&srv.lock);
        errno = err;
        return -1;
    }
    srv.owner = getpid();
    pthread_mutex_unlock(&srv.lock);
    return 0;
}

/* Queue a request and wait until the server has handled it. */
static void server_request(int op, struct pvmmap_lazy *lz)
{
    struct ctl_req q = {.op = op, .lz = lz};
    uint64_t one = 1;
    pthread_mutex_lock(&srv.lock);
    q.next = srv.queue;
    srv.queue = &q;
    if (write(srv.evfd, &one, sizeof(one)) < 0) {
        /* the counter is full: the server has a wake-up pending anyway */
    }
    while (!q.done)
        pthread_cond_wait(&srv.cond, &srv.lock);
    pthread_mutex_unlock(&srv.lock);
}

/* ---- the public API ---- */

/* Close lz's fds and free it (the destination is the caller's). */
static void lazy_free(struct pvmmap_lazy *lz)
{
    if (lz->uffd >= 0)
        close(lz->uffd);
    if (lz->mem_fd >= 0)
        close(lz->mem_fd);
    if (lz->pagemap_fd >= 0)
        close(lz->pagemap_fd);
    if (lz->maps_fd >= 0)
        close(lz->maps_fd);
    stage_free(&lz->fill_stage);
    free(lz->claimed);
    free(lz->done);
    free(lz);
}

/* Returns the new lazy mapping, or NULL with errno. */
struct pvmmap_lazy *pvmmap_lazy_start(pid_t pid, int mem_fd, int pagemap_fd,
                                      int maps_fd, uintptr_t src, void *dst,
                                      size_t len, size_t readahead, int flags)
{
    size_t ps = pvmmap_page_size();
    struct pvmmap_uffd_info info;
    int err;

    int file = flags & PVMMAP_LAZY_FILE;

    if (!len || (src | (uintptr_t)dst | len) & (ps - 1) || mem_fd < 0
        || (!file && (pagemap_fd < 0 || maps_fd < 0))
        || flags & ~PVMMAP_LAZY_FLAGS_MASK) {
        errno = EINVAL;
        return NULL;
    }
    if (!readahead)
        readahead = PVMMAP_LAZY_READAHEAD_DEFAULT;
    readahead = (readahead + ps - 1) & ~(ps - 1);
    if (readahead > PVMMAP_LAZY_READAHEAD_MAX)
        readahead = PVMMAP_LAZY_READAHEAD_MAX;

    struct pvmmap_lazy *lz = calloc(1, sizeof(*lz));
    if (!lz)
        return NULL;
    lz->uffd = lz->mem_fd = lz->pagemap_fd = lz->maps_fd = -1;
    lz->pid = pid;
    lz->owner = getpid();
    lz->flags = flags;
    lz->src = src;
    lz->dst = dst;
    lz->len = len;
    lz->ps = ps;
    lz->pages = len / ps;
    lz->readahead = readahead;
    size_t words = lz->pages / WORD_BITS + 1;
    /* calloc of a large bitmap is fresh mmap: untouched zero pages, so
     * starting costs the same whatever the length. */
    lz->claimed = calloc(words, sizeof(uint64_t));
    lz->done = calloc(words, sizeof(uint64_t));
    if (!lz->claimed || !lz->done)
        goto fail;
    lz->mem_fd = fcntl(mem_fd, F_DUPFD_CLOEXEC, 0);
    if (!file) {
        lz->pagemap_fd = fcntl(pagemap_fd, F_DUPFD_CLOEXEC, 0);
        lz->maps_fd = fcntl(maps_fd, F_DUPFD_CLOEXEC, 0);
    }
    if (lz->mem_fd < 0 || (!file && (lz->pagemap_fd < 0 || lz->maps_fd < 0)))
        goto fail;

    uint64_t want = flags & PVMMAP_LAZY_NO_POISON ? 0 : UFFD_FEATURE_POISON;
    lz->uffd = pvmmap_uffd_open_ex(want, &info);
    if (lz->uffd < 0)
        goto fail;
    /* Optimistic: a method the kernel refuses is dropped at first use. */
    int how = info.mode == 1 ? PVMMAP_LAZY_HOW_USER_ONLY : 0;
    if (!(flags & PVMMAP_LAZY_NO_PAGEMAP_SCAN) && !file)
        how |= PVMMAP_LAZY_HOW_PAGEMAP_SCAN;
    if (!(flags & PVMMAP_LAZY_NO_PROCMAP_QUERY) && !file)
        how |= PVMMAP_LAZY_HOW_PROCMAP_QUERY;

    struct uffdio_register reg = {
        .range = {(uintptr_t)dst, len}, .mode = UFFDIO_REGISTER_MODE_MISSING};
    if (ioctl(lz->uffd, UFFDIO_REGISTER, &reg) < 0)
        goto fail;
    if ((info.granted & UFFD_FEATURE_POISON)
        && (reg.ioctls & (1ULL << _UFFDIO_POISON)))
        how |= PVMMAP_LAZY_HOW_POISON;
    atomic_store(&lz->how, how);
    /* A forked child must never inherit lazy memory: nobody would serve
     * its faults (a uffd without EVENT_FORK leaves the child's copy as
     * plain missing pages: silent zeros). */
    if (madvise(dst, len, MADV_DONTFORK) < 0)
        goto fail_unreg;

    size_t stage_pages = PVMMAP_LAZY_READAHEAD_MAX / ps;
    if (server_start(stage_pages) < 0)
        goto fail_unreg;
    struct epoll_event ev = {.events = EPOLLIN, .data.ptr = lz};
    if (epoll_ctl(srv.epfd, EPOLL_CTL_ADD, lz->uffd, &ev) < 0)
        goto fail_unreg;
    return lz;

fail_unreg:
    err = errno;
    ioctl(lz->uffd, UFFDIO_UNREGISTER, &reg.range);
    madvise(dst, len, MADV_DOFORK);
    errno = err;
fail:
    err = errno;
    lazy_free(lz);
    errno = err;
    return NULL;
}

/* Returns 0 with *remaining set, or -1 with errno (pages lost: ESRCH if
 * the source is gone, EFAULT if part of the range was unmapped). */
int pvmmap_lazy_fill(struct pvmmap_lazy *lz, size_t max_bytes, size_t *remaining)
{
    size_t chunk = FILL_CHUNK / lz->ps, taken = 0;
    int err = 0;

    if (lz->owner != getpid()) {
        errno = EBADF;          /* a forked child's copy of the parent's */
        return -1;
    }
    if (stage_init(&lz->fill_stage, chunk) < 0)
        return -1;
    size_t words = (lz->pages + WORD_BITS - 1) / WORD_BITS;
    size_t scanned = 0;          /* words looked at, to stop after a lap */
    while (taken * lz->ps < max_bytes && scanned <= words &&
           !atomic_load(&lz->gone)) {
        size_t p = lz->fill_cursor;
        if (p >= lz->pages) {
            lz->fill_cursor = p = 0;
        }
        size_t w = p / WORD_BITS;
        uint64_t full = (w + 1) * WORD_BITS <= lz->pages ? ~0ULL
                      : (1ULL << (lz->pages % WORD_BITS)) - 1;
        if ((atomic_load(&lz->claimed[w]) & full) == full) {
            lz->fill_cursor = (w + 1) * WORD_BITS;
            scanned++;
            continue;
        }
        scanned = 0;
        size_t n = lz->pages - p < chunk ? lz->pages - p : chunk;
        ssize_t got = serve_span(lz, &lz->fill_stage, p, n);
        if (got < 0 && !err)
            err = errno;
        if (got > 0)
            taken += (size_t)got;
        lz->fill_cursor = p + n;
    }
    if (atomic_load(&lz->gone))
        poison_all(lz);         /* whatever nobody has claimed, this thread */
    size_t settled = atomic_load(&lz->pages_done) + atomic_load(&lz->pages_lost);
    if (scanned > words || atomic_load(&lz->gone)) {
        /* Everything is claimed: wait for the server's run in flight (one
         * readahead window, well under a millisecond), so that remaining 0
         * means installed and a lost page is already poisoned. */
        struct timespec pause = {0, 50000};
        for (int i = 0; i < 20000 && settled < lz->pages; i++) {
            nanosleep(&pause, NULL);
            settled = atomic_load(&lz->pages_done) + atomic_load(&lz->pages_lost);
        }
    }
    if (remaining)
        *remaining = (lz->pages - (settled < lz->pages ? settled : lz->pages)) * lz->ps;
    if (!err && atomic_load(&lz->pages_lost))
        err = atomic_load(&lz->gone) ? ESRCH : EFAULT;
    if (err) {
        errno = err;
        return -1;
    }
    return 0;
}

/* Returns 0 (the server will complete the mapping when idle), or -1. */
int pvmmap_lazy_prefetch(struct pvmmap_lazy *lz)
{
    if (lz->owner != getpid()) {
        errno = EBADF;
        return -1;
    }
    server_request(CTL_PREFETCH, lz);
    return 0;
}

/* Returns 0, or -1 with errno of the unregistering (state freed anyway). */
int pvmmap_lazy_close(struct pvmmap_lazy *lz)
{
    int err = 0;
    if (!lz)
        return 0;
    if (lz->owner != getpid()) {
        /*
         * A forked child closing its copy of the parent's mapping: the
         * epoll instance is shared with the parent, and the uffd acts on
         * the parent's mm (UFFDIO_UNREGISTER here would unregister the
         * parent's range).  Only drop this process's fds and memory.
         */
        lazy_free(lz);
        return 0;
    }
    epoll_ctl(srv.epfd, EPOLL_CTL_DEL, lz->uffd, NULL);
    /* After this the server holds no pointer to lz: see server_main. */
    server_request(CTL_REMOVE, lz);
    struct uffdio_range r = {(uintptr_t)lz->dst, lz->len};
    if (ioctl(lz->uffd, UFFDIO_UNREGISTER, &r) < 0 && errno != EINVAL
        && errno != ENOMEM)
        err = errno;            /* EINVAL/ENOMEM: parts replaced by poison */
    lazy_free(lz);
    if (err) {
        errno = err;
        return -1;
    }
    return 0;
}

/* Fills *st (counters are read without stopping anyone). */
void pvmmap_lazy_stats(const struct pvmmap_lazy *lz, struct pvmmap_lazy_stats *st)
{
    struct pvmmap_lazy *m = (struct pvmmap_lazy *)lz;
    st->faults = atomic_load(&m->faults);
    st->bytes_fetched = atomic_load(&m->bytes_fetched);
    st->pages_zero = atomic_load(&m->pages_zero);
    st->pages_lost = atomic_load(&m->pages_lost);
    st->pages_done = atomic_load(&m->pages_done);
    st->pages_total = m->pages;
    st->how = atomic_load(&m->how);
}
