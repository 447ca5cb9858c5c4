/*
 * test_uffd.c - tests of uffd.c (the lazy fault server) and of copy.c's
 * PVMMAP_COPY_UFFD path, against a forked source child with a known layout.
 * Prints one line per failed check and a last line "N passed, N failed";
 * exits non-zero on any failure.  An alarm bounds every test.
 *
 * Run as root for the full set; the unprivileged test drops to uid 65534
 * in a child of its own.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <pthread.h>
#include <setjmp.h>
#include <signal.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <grp.h>
#include <sys/prctl.h>
#include <sys/vfs.h>
#include <sys/wait.h>
#include <unistd.h>

#include "../pvmmap.h"

static int passed, failed;
static const char *current = "?";

#define CHECK(cond, ...)                                                  \
    do {                                                                  \
        if (cond) {                                                       \
            passed++;                                                     \
        } else {                                                          \
            failed++;                                                     \
            printf("FAIL %s:%d [%s] %s: ", __FILE__, __LINE__, current, #cond); \
            printf(__VA_ARGS__);                                          \
            printf("\n");                                                 \
            fflush(stdout);                                               \
        }                                                                 \
    } while (0)

static void on_alarm(int sig)
{
    char buf[160];
    (void)sig;
    int n = snprintf(buf, sizeof(buf), "FAIL [%s] timed out\n%d passed, %d failed\n",
                     current, passed, failed + 1);
    if (write(1, buf, (size_t)n) < 0)
        _exit(2);
    _exit(1);
}

/* ---- the source: a child with a known layout ---- */

#define NP 2048                 /* pages in the source range */
#define HOLE_BLOCK_START 1024   /* [1024, 1100): all holes */
#define HOLE_BLOCK_END 1100
#define PROT_NONE_START 1500    /* [1500, 1532): data, PROT_NONE */
#define PROT_NONE_END 1532
#define UNMAP_START 1700        /* unmapped on command 'u' */
#define UNMAP_END 1800

static size_t ps;

/* What this kernel has, so that the tests expect the path it takes:
 * PAGEMAP_SCAN (6.7) and UFFDIO_POISON (6.6; UFFD_FEATURE_POISON, bit 14). */
static int have_pagemap_scan(void)
{
    int fd = open("/proc/self/pagemap", O_RDONLY);
    uintptr_t start = (uintptr_t)&have_pagemap_scan & ~(uintptr_t)4095;
    struct pvmmap_range *r = NULL;
    size_t n = 0;
    int how = 0;
    int ok = fd >= 0 && pvmmap_scan(fd, start, start + 4096, PVMMAP_SCAN_DATA,
                                    &r, &n, &how) == 0 && how == 1;
    free(r);
    if (fd >= 0)
        close(fd);
    return ok;
}

static int have_poison(void)
{
    struct pvmmap_uffd_info info;
    int fd = pvmmap_uffd_open_ex(0, &info);
    if (fd < 0)
        return 0;
    close(fd);
    return (info.offered >> 14) & 1;
}

static int is_data(size_t i)
{
    if (i >= HOLE_BLOCK_START && i < HOLE_BLOCK_END)
        return 0;
    return i % 4 != 3;
}

static uint64_t word(size_t page, size_t j, unsigned seed)
{
    return ((uint64_t)page << 32) ^ (j * 0x9e3779b1u) ^ seed;
}

struct source {
    pid_t pid;
    int cmd;                    /* write end: 'x' exit, 'u' unmap part */
    int ack;                    /* read end: one byte per command done */
    char *base;
    unsigned seed;
    int mem, pagemap, maps;
};

static void source_child(char *base, unsigned seed, int cmd, int ack)
{
    for (size_t i = 0; i < NP; i++) {
        if (!is_data(i))
            continue;
        uint64_t *w = (uint64_t *)(base + i * ps);
        for (size_t j = 0; j < ps / 8; j++)
            w[j] = word(i, j, seed);
    }
    mprotect(base + PROT_NONE_START * ps,
             (PROT_NONE_END - PROT_NONE_START) * ps, PROT_NONE);
    char c = 'r';
    if (write(ack, &c, 1) != 1)
        _exit(3);
    while (read(cmd, &c, 1) == 1) {
        if (c == 'x')
            _exit(0);
        if (c == 'u')
            munmap(base + UNMAP_START * ps, (UNMAP_END - UNMAP_START) * ps);
        if (c == 'e')
            execl("/bin/sleep", "sleep", "100", (char *)NULL);
        if (write(ack, &c, 1) != 1)
            _exit(3);
    }
    _exit(0);
}

static int open_proc(pid_t pid, const char *what)
{
    char path[64];
    snprintf(path, sizeof(path), "/proc/%d/%s", (int)pid, what);
    return open(path, O_RDONLY | O_CLOEXEC);
}

/* Fork a source.  Returns 0 with *s filled, -1 on failure. */
static int source_start(struct source *s, unsigned seed)
{
    int c[2], a[2];
    memset(s, 0, sizeof(*s));
    s->seed = seed;
    s->base = mmap(NULL, NP * ps, PROT_READ | PROT_WRITE,
                   MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    if (s->base == MAP_FAILED || pipe(c) < 0 || pipe(a) < 0)
        return -1;
    s->pid = fork();
    if (s->pid < 0)
        return -1;
    if (s->pid == 0) {
        close(c[1]);
        close(a[0]);
        source_child(s->base, seed, c[0], a[1]);
    }
    close(c[0]);
    close(a[1]);
    s->cmd = c[1];
    s->ack = a[0];
    char r;
    if (read(s->ack, &r, 1) != 1)
        return -1;
    /* Opened "at clone time": they pin this mm from now on. */
    s->mem = open_proc(s->pid, "mem");
    s->pagemap = open_proc(s->pid, "pagemap");
    s->maps = open_proc(s->pid, "maps");
    /* our copy of the range is not needed (the child has its own) */
    munmap(s->base, NP * ps);
    return s->mem >= 0 && s->pagemap >= 0 && s->maps >= 0 ? 0 : -1;
}

static int source_cmd(struct source *s, char c)
{
    char r;
    if (write(s->cmd, &c, 1) != 1)
        return -1;
    return c == 'x' || c == 'e' ? 0 : (read(s->ack, &r, 1) == 1 ? 0 : -1);
}

static void source_kill(struct source *s)
{
    if (s->pid > 0) {
        kill(s->pid, SIGKILL);
        waitpid(s->pid, NULL, 0);
        s->pid = 0;
    }
}

static void source_end(struct source *s)
{
    source_kill(s);
    close(s->cmd);
    close(s->ack);
    close(s->mem);
    close(s->pagemap);
    close(s->maps);
}

/* The source's pagemap present/swapped bits, one byte per page. */
static void present_map(struct source *s, unsigned char *out)
{
    uint64_t e[NP];
    ssize_t got = pread(s->pagemap, e, sizeof(e),
                        (off_t)((uintptr_t)s->base / ps * 8));
    for (size_t i = 0; i < NP; i++)
        out[i] = got == (ssize_t)sizeof(e) ? (unsigned char)(e[i] >> 62) : 0xff;
}

/* ---- touching with SIGBUS caught ---- */

static sigjmp_buf jb;
static volatile sig_atomic_t bus_sig;
static void *volatile bus_addr;

static void on_fault(int sig, siginfo_t *si, void *uc)
{
    (void)uc;
    bus_sig = sig;
    bus_addr = si->si_addr;
    siglongjmp(jb, 1);
}

/* Read the first word of `p`.  Returns 0 (value in *v) or the signal. */
static int touch(const char *p, uint64_t *v)
{
    struct sigaction sa, obus, osegv;
    memset(&sa, 0, sizeof(sa));
    sa.sa_sigaction = on_fault;
    sa.sa_flags = SA_SIGINFO;
    sigaction(SIGBUS, &sa, &obus);
    sigaction(SIGSEGV, &sa, &osegv);
    bus_sig = 0;
    if (sigsetjmp(jb, 1) == 0)
        *v = *(volatile const uint64_t *)p;
    sigaction(SIGBUS, &obus, NULL);
    sigaction(SIGSEGV, &osegv, NULL);
    return bus_sig;
}

/* Count pages of dst that differ from the source's expected content. */
static size_t bad_pages(const char *dst, size_t from, size_t to, unsigned seed)
{
    size_t bad = 0;
    for (size_t i = from; i < to; i++) {
        const uint64_t *w = (const uint64_t *)(dst + i * ps);
        int ok = 1;
        for (size_t j = 0; j < ps / 8 && ok; j++)
            ok = w[j] == (is_data(i) ? word(i, j, seed) : 0);
        bad += !ok;
    }
    return bad;
}

static char *fresh(size_t pages)
{
    char *p = mmap(NULL, pages * ps, PROT_READ | PROT_WRITE,
                   MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0);
    return p == MAP_FAILED ? NULL : p;
}

static struct pvmmap_lazy *lazy(struct source *s, char *dst, size_t ra, int flags)
{
    return pvmmap_lazy_start(s->pid, s->mem, s->pagemap, s->maps,
                             (uintptr_t)s->base, dst, NP * ps, ra, flags);
}

/* ---- tests ---- */

/* Bytes equal, holes zero, the source's page tables unchanged. */
static void t_bytes(int flags)
{
    struct source s;
    unsigned char before[NP], after[NP];
    CHECK(source_start(&s, 11) == 0, "source: %s", strerror(errno));
    present_map(&s, before);
    char *dst = fresh(NP);
    struct pvmmap_lazy *lz = lazy(&s, dst, 0, flags);
    CHECK(lz != NULL, "start: %s", strerror(errno));
    if (!lz)
        return;
    size_t bad = bad_pages(dst, 0, NP, s.seed);
    CHECK(bad == 0, "%zu pages differ", bad);
    struct pvmmap_lazy_stats st;
    /* the server counts a page after its ioctl woke the toucher */
    for (int i = 0; i < 1000; i++) {
        pvmmap_lazy_stats(lz, &st);
        if (st.pages_done == NP)
            break;
        usleep(1000);
    }
    size_t holes = 0;
    for (size_t i = 0; i < NP; i++)
        holes += !is_data(i);
    CHECK(st.pages_zero == holes, "pages_zero %llu, holes %zu",
          (unsigned long long)st.pages_zero, holes);
    CHECK(st.bytes_fetched == (NP - holes) * ps, "fetched %llu",
          (unsigned long long)st.bytes_fetched);
    CHECK(st.pages_done == NP && st.pages_lost == 0, "done %llu lost %llu",
          (unsigned long long)st.pages_done, (unsigned long long)st.pages_lost);
    CHECK(st.faults > 0 && st.faults < NP, "faults %llu", (unsigned long long)st.faults);
    int want_how = (flags & PVMMAP_LAZY_NO_PAGEMAP_SCAN) || !have_pagemap_scan()
                   ? 0 : PVMMAP_LAZY_HOW_PAGEMAP_SCAN;
    CHECK((st.how & PVMMAP_LAZY_HOW_PAGEMAP_SCAN) == want_how, "how %#x", st.how);
    present_map(&s, after);
    CHECK(memcmp(before, after, NP) == 0, "source pagemap changed");
    size_t nd = 0;
    for (size_t i = 0; i < NP; i++)
        nd += before[i] != 0;
    CHECK(nd == NP - holes, "source had %zu data pages, expected %zu", nd, NP - holes);

    /* A forked child does not inherit lazy memory (MADV_DONTFORK). */
    pid_t c = fork();
    if (c == 0) {
        uint64_t v;
        _exit(touch(dst, &v) == SIGSEGV ? 0 : 1);
    }
    int status;
    waitpid(c, &status, 0);
    CHECK(WIFEXITED(status) && WEXITSTATUS(status) == 0,
          "child saw lazy memory (status %#x)", status);

    /* Discarded pages read as zero again, served without a hang. */
    madvise(dst, 8 * ps, MADV_DONTNEED);
    uint64_t v = 1;
    CHECK(touch(dst, &v) == 0 && v == 0, "after DONTNEED: %llx", (unsigned long long)v);

    CHECK(pvmmap_lazy_close(lz) == 0, "close: %s", strerror(errno));
    munmap(dst, NP * ps);
    source_end(&s);
}

static void t_bytes_default(void) { t_bytes(0); }
static void t_bytes_fallbacks(void)
{
    t_bytes(PVMMAP_LAZY_NO_PAGEMAP_SCAN | PVMMAP_LAZY_NO_PROCMAP_QUERY |
            PVMMAP_LAZY_NO_POISON);
}

struct toucher {
    char *dst;
    unsigned seed;
    size_t from, to;
    unsigned rnd;
    size_t bad;
};

static void *touch_thread(void *arg)
{
    struct toucher *t = arg;
    size_t n = t->to - t->from;
    for (size_t k = 0; k < n; k++) {
        t->rnd = t->rnd * 1103515245u + 12345u;
        size_t i = t->from + (t->rnd >> 8) % n;
        const uint64_t *w = (const uint64_t *)(t->dst + i * ps);
        uint64_t want = is_data(i) ? word(i, 5, t->seed) : 0;
        t->bad += w[5] != want;
    }
    return NULL;
}

/* 4 threads on one mapping, then 2+2 threads on two mappings at once. */
static void t_threads(void)
{
    struct source s;
    CHECK(source_start(&s, 22) == 0, "source");
    char *d1 = fresh(NP), *d2 = fresh(NP);
    struct pvmmap_lazy *a = lazy(&s, d1, ps, 0);
    struct pvmmap_lazy *b = lazy(&s, d2, 16 * ps, 0);
    CHECK(a && b, "start: %s", strerror(errno));
    if (!a || !b)
        return;
    pthread_t th[4];
    struct toucher t[4];
    for (int i = 0; i < 4; i++) {
        t[i] = (struct toucher){.dst = d1, .seed = s.seed, .from = 0, .to = NP,
                                .rnd = (unsigned)i * 77u + 1u};
        pthread_create(&th[i], NULL, touch_thread, &t[i]);
    }
    for (int i = 0; i < 4; i++) {
        pthread_join(th[i], NULL);
        CHECK(t[i].bad == 0, "thread %d saw %zu bad words", i, t[i].bad);
    }
    CHECK(bad_pages(d1, 0, NP, s.seed) == 0, "mapping a differs");
    pvmmap_lazy_close(a);
    munmap(d1, NP * ps);

    d1 = fresh(NP);
    a = lazy(&s, d1, 4 * ps, 0);
    CHECK(a != NULL, "restart");
    for (int i = 0; i < 4; i++) {
        t[i] = (struct toucher){.dst = i < 2 ? d1 : d2, .seed = s.seed,
                                .from = 0, .to = NP, .rnd = (unsigned)i * 31u + 7u};
        pthread_create(&th[i], NULL, touch_thread, &t[i]);
    }
    for (int i = 0; i < 4; i++) {
        pthread_join(th[i], NULL);
        CHECK(t[i].bad == 0, "thread %d saw %zu bad words", i, t[i].bad);
    }
    CHECK(bad_pages(d1, 0, NP, s.seed) == 0, "mapping a differs");
    CHECK(bad_pages(d2, 0, NP, s.seed) == 0, "mapping b differs");
    pvmmap_lazy_close(a);
    pvmmap_lazy_close(b);
    munmap(d1, NP * ps);
    munmap(d2, NP * ps);
    source_end(&s);
}

/* close() of one mapping while threads keep faulting on another. */
static void t_close_while_faulting(void)
{
    struct source s;
    CHECK(source_start(&s, 33) == 0, "source");
    enum { ROUNDS = 10 };
    int overlapped = 0;
    for (int r = 0; r < ROUNDS; r++) {
        char *da = fresh(NP), *db = fresh(NP);
        struct pvmmap_lazy *a = lazy(&s, da, ps, PVMMAP_LAZY_FIXED_READAHEAD);
        struct pvmmap_lazy *b = lazy(&s, db, ps, PVMMAP_LAZY_FIXED_READAHEAD);
        CHECK(a && b, "start: %s", strerror(errno));
        if (!a || !b)
            break;
        /* 2 threads fault b page by page (some 2048 faults, tens of ms) */
        pthread_t th[2];
        struct toucher t[2];
        for (int i = 0; i < 2; i++) {
            t[i] = (struct toucher){.dst = db, .seed = s.seed, .from = 0,
                                    .to = NP, .rnd = (unsigned)(r * 2 + i) + 3u};
            pthread_create(&th[i], NULL, touch_thread, &t[i]);
        }
        /* meanwhile fault some of a, then close it */
        size_t bad = bad_pages(da, (size_t)r * 50, (size_t)r * 50 + 64, s.seed);
        CHECK(bad == 0, "a round %d: %zu bad", r, bad);
        struct pvmmap_lazy_stats before, after;
        pvmmap_lazy_stats(b, &before);
        CHECK(pvmmap_lazy_close(a) == 0, "close a: %s", strerror(errno));
        munmap(da, NP * ps);
        for (int i = 0; i < 2; i++) {
            pthread_join(th[i], NULL);
            CHECK(t[i].bad == 0, "b thread %d saw %zu bad words", i, t[i].bad);
        }
        pvmmap_lazy_stats(b, &after);
        overlapped += before.pages_done < NP && after.faults > before.faults;
        CHECK(bad_pages(db, 0, NP, s.seed) == 0, "b bytes, round %d", r);
        pvmmap_lazy_close(b);
        munmap(db, NP * ps);
    }
    /* the check is only meaningful if b was still faulting at a's close */
    CHECK(overlapped >= ROUNDS / 2, "only %d of %d rounds overlapped", overlapped,
          ROUNDS);
    source_end(&s);
}

/* The source dies (or execs) after start: unfetched pages SIGBUS, fetched
 * ones keep their bytes, fill() fails with ESRCH, lost pages counted. */
static void t_gone(int flags, char how)
{
    struct source s;
    CHECK(source_start(&s, 44) == 0, "source");
    char *dst = fresh(NP);
    struct pvmmap_lazy *lz = lazy(&s, dst, 0, flags);
    CHECK(lz != NULL, "start: %s", strerror(errno));
    if (!lz)
        return;
    CHECK(bad_pages(dst, 0, 100, s.seed) == 0, "prefix before death");
    if (how == 'k') {
        source_kill(&s);
    } else {
        source_cmd(&s, 'e');    /* exec: same pid, a new image */
        usleep(200000);
    }
    uint64_t v = 0;
    int sig = touch(dst + 1200 * ps, &v);
    CHECK(sig == SIGBUS, "touching an unfetched page gave signal %d (value %llx)",
          sig, (unsigned long long)v);
    CHECK(bus_addr == dst + 1200 * ps, "SIGBUS at %p", bus_addr);
    sig = touch(dst + 1027 * ps, &v);    /* an unfetched hole, too */
    CHECK(sig == SIGBUS, "unfetched hole gave signal %d", sig);
    CHECK(bad_pages(dst, 0, 100, s.seed) == 0, "fetched pages changed");
    size_t rem = 1;
    errno = 0;
    CHECK(pvmmap_lazy_fill(lz, (size_t)-1, &rem) == -1 && errno == ESRCH,
          "fill: errno %d", errno);
    CHECK(rem == 0, "remaining %zu", rem);
    struct pvmmap_lazy_stats st;
    pvmmap_lazy_stats(lz, &st);
    CHECK(st.pages_lost > 0 && st.pages_lost + st.pages_done == NP,
          "lost %llu done %llu", (unsigned long long)st.pages_lost,
          (unsigned long long)st.pages_done);
    int poisoned = !!(st.how & PVMMAP_LAZY_HOW_POISON);
    CHECK(poisoned == (!(flags & PVMMAP_LAZY_NO_POISON) && have_poison()),
          "how %#x", st.how);
    /* closing a dead source's mapping is clean */
    CHECK(pvmmap_lazy_close(lz) == 0, "close: %s", strerror(errno));
    munmap(dst, NP * ps);
    source_end(&s);
}

static void t_killed(void) { t_gone(0, 'k'); }
static void t_killed_no_poison(void)
{
    t_gone(PVMMAP_LAZY_NO_POISON | PVMMAP_LAZY_NO_PAGEMAP_SCAN |
           PVMMAP_LAZY_NO_PROCMAP_QUERY, 'k');
}
static void t_execed(void) { t_gone(0, 'e'); }

/* The source unmaps part of the range: those pages SIGBUS, the rest is
 * right, fill() fails with EFAULT, lost == the unmapped unfetched pages. */
static void t_unmapped(int flags)
{
    struct source s;
    CHECK(source_start(&s, 55) == 0, "source");
    char *dst = fresh(NP);
    struct pvmmap_lazy *lz = lazy(&s, dst, 0, flags);
    CHECK(lz != NULL, "start");
    if (!lz)
        return;
    CHECK(source_cmd(&s, 'u') == 0, "unmap command");
    uint64_t v;
    int sig = touch(dst + (UNMAP_START + 10) * ps, &v);
    CHECK(sig == SIGBUS, "unmapped data page gave signal %d", sig);
    sig = touch(dst + (UNMAP_START + 3) * ps, &v);      /* a hole there */
    CHECK(sig == SIGBUS, "unmapped hole gave signal %d", sig);
    size_t rem = 1;
    errno = 0;
    CHECK(pvmmap_lazy_fill(lz, (size_t)-1, &rem) == -1 && errno == EFAULT,
          "fill: errno %d", errno);
    CHECK(rem == 0, "remaining %zu", rem);
    CHECK(bad_pages(dst, 0, UNMAP_START, s.seed) == 0, "below the hole");
    CHECK(bad_pages(dst, UNMAP_END, NP, s.seed) == 0, "above the hole");
    struct pvmmap_lazy_stats st;
    pvmmap_lazy_stats(lz, &st);
    CHECK(st.pages_lost == UNMAP_END - UNMAP_START, "lost %llu",
          (unsigned long long)st.pages_lost);
    CHECK(pvmmap_lazy_close(lz) == 0, "close");
    munmap(dst, NP * ps);
    source_end(&s);
}

static void t_unmapped_default(void) { t_unmapped(0); }
static void t_unmapped_fallbacks(void)
{
    t_unmapped(PVMMAP_LAZY_NO_POISON | PVMMAP_LAZY_NO_PAGEMAP_SCAN);
    t_unmapped(PVMMAP_LAZY_NO_PAGEMAP_SCAN | PVMMAP_LAZY_NO_PROCMAP_QUERY);
}

/* A child forked while the server runs gets a server of its own (the
 * parent's keeps serving the parent). */
static void t_fork_server(void)
{
    struct source s;
    CHECK(source_start(&s, 111) == 0, "source");
    char *dst = fresh(NP);
    struct pvmmap_lazy *lz = lazy(&s, dst, 0, 0);
    CHECK(lz != NULL, "start");
    if (!lz)
        return;
    CHECK(bad_pages(dst, 0, NP / 2, s.seed) == 0, "parent, first half");
    fflush(stdout);
    pid_t c = fork();
    if (c == 0) {
        alarm(20);
        /* the parent's mapping: refused, then closed without touching it */
        size_t rem;
        if (pvmmap_lazy_fill(lz, ps, &rem) != -1 || errno != EBADF)
            _exit(2);
        if (pvmmap_lazy_close(lz) != 0)
            _exit(3);
        char *d = fresh(NP);
        struct pvmmap_lazy *l = lazy(&s, d, 0, 0);
        int ok = l && bad_pages(d, 0, NP, s.seed) == 0;
        if (l)
            pvmmap_lazy_close(l);
        _exit(ok ? 0 : 1);
    }
    int status;
    waitpid(c, &status, 0);
    CHECK(WIFEXITED(status) && WEXITSTATUS(status) == 0, "child status %#x", status);
    CHECK(bad_pages(dst, NP / 2, NP, s.seed) == 0, "parent, second half");
    pvmmap_lazy_close(lz);
    munmap(dst, NP * ps);
    source_end(&s);
}

/* Sequential faults grow the window; a fixed window stays put. */
static void t_readahead(void)
{
    struct source s;
    CHECK(source_start(&s, 99) == 0, "source");
    for (int fixed = 0; fixed <= 1; fixed++) {
        char *dst = fresh(NP);
        struct pvmmap_lazy *lz = lazy(&s, dst, 16 << 10,
                                      fixed ? PVMMAP_LAZY_FIXED_READAHEAD : 0);
        CHECK(lz != NULL, "start");
        if (!lz)
            return;
        CHECK(bad_pages(dst, 0, NP, s.seed) == 0, "bytes (fixed %d)", fixed);
        struct pvmmap_lazy_stats st;
        pvmmap_lazy_stats(lz, &st);
        if (fixed)
            CHECK(st.faults == NP / 4, "fixed 16K: %llu faults",
                  (unsigned long long)st.faults);
        else
            CHECK(st.faults < 24, "growing: %llu faults", (unsigned long long)st.faults);
        pvmmap_lazy_close(lz);
        munmap(dst, NP * ps);
    }
    source_end(&s);
}

/* fill() in steps alongside faulting threads; prefetch completes alone. */
static void t_fill_prefetch(void)
{
    struct source s;
    CHECK(source_start(&s, 66) == 0, "source");
    char *dst = fresh(NP);
    struct pvmmap_lazy *lz = lazy(&s, dst, 0, 0);
    CHECK(lz != NULL, "start");
    if (!lz)
        return;
    pthread_t th;
    struct toucher t = {.dst = dst, .seed = s.seed, .from = 0, .to = NP, .rnd = 9};
    pthread_create(&th, NULL, touch_thread, &t);
    size_t rem = 1, calls = 0;
    while (rem && calls < 10000) {
        CHECK(pvmmap_lazy_fill(lz, 37 * ps, &rem) == 0, "fill: %s", strerror(errno));
        calls++;
    }
    pthread_join(th, NULL);
    CHECK(rem == 0 && calls > 5, "rem %zu after %zu calls", rem, calls);
    CHECK(t.bad == 0, "toucher saw %zu bad", t.bad);
    CHECK(bad_pages(dst, 0, NP, s.seed) == 0, "bytes after fill");
    pvmmap_lazy_close(lz);
    munmap(dst, NP * ps);

    dst = fresh(NP);
    lz = lazy(&s, dst, 0, 0);
    CHECK(lz && pvmmap_lazy_prefetch(lz) == 0, "prefetch");
    struct pvmmap_lazy_stats st = {0};
    for (int i = 0; i < 2000 && st.pages_done < NP; i++) {
        usleep(1000);
        pvmmap_lazy_stats(lz, &st);
    }
    CHECK(st.pages_done == NP && st.faults == 0, "prefetch done %llu faults %llu",
          (unsigned long long)st.pages_done, (unsigned long long)st.faults);
    CHECK(bad_pages(dst, 0, NP, s.seed) == 0, "bytes after prefetch");
    pvmmap_lazy_stats(lz, &st);
    CHECK(st.faults == 0, "faults after prefetch %llu", (unsigned long long)st.faults);
    pvmmap_lazy_close(lz);
    munmap(dst, NP * ps);
    source_end(&s);
}

/* pvmmap_copy with PVMMAP_COPY_UFFD: same bytes as the direct path, holes
 * stay holes in the destination. */
static void t_eager(void)
{
    struct source s;
    CHECK(source_start(&s, 77) == 0, "source");
    struct pvmmap_range *r;
    size_t n;
    int how;
    CHECK(pvmmap_scan(s.pagemap, (uintptr_t)s.base, (uintptr_t)s.base + NP * ps,
                      PVMMAP_SCAN_DATA, &r, &n, &how) == 0, "scan");
    for (int threads = 1; threads <= 2; threads++) {
        char *d1 = fresh(NP), *d2 = fresh(NP);
        struct pvmmap_copy_stats a = {0}, b = {0};
        CHECK(pvmmap_copy(s.pid, s.mem, r, n, (uintptr_t)s.base, d1, threads,
                          PVMMAP_COPY_UFFD, &a) == 0, "uffd copy: %s", strerror(errno));
        CHECK(pvmmap_copy(s.pid, s.mem, r, n, (uintptr_t)s.base, d2, threads,
                          0, &b) == 0, "plain copy");
        CHECK(a.uffd == 1 && b.uffd == 0, "paths %d %d", a.uffd, b.uffd);
        size_t hidden = 0;
        for (size_t i = PROT_NONE_START; i < PROT_NONE_END; i++)
            hidden += is_data(i);
        CHECK(a.bytes_mem == hidden * ps && b.bytes_mem == hidden * ps,
              "bytes through mem %llu %llu", (unsigned long long)a.bytes_mem,
              (unsigned long long)b.bytes_mem);
        /* holes must still be missing in d1: check our own pagemap */
        int pm = open("/proc/self/pagemap", O_RDONLY | O_CLOEXEC);
        uint64_t e[NP];
        CHECK(pread(pm, e, sizeof(e), (off_t)((uintptr_t)d1 / ps * 8)) == sizeof(e), "pm");
        close(pm);
        size_t wrong = 0;
        for (size_t i = 0; i < NP; i++)
            wrong += !!(e[i] >> 63) != is_data(i);
        CHECK(wrong == 0, "%zu pages present/missing wrongly", wrong);
        CHECK(memcmp(d1, d2, NP * ps) == 0, "uffd and plain paths differ");
        CHECK(bad_pages(d1, 0, NP, s.seed) == 0, "uffd bytes");
        munmap(d1, NP * ps);
        munmap(d2, NP * ps);
    }
    /* A destination the kernel will not register (a file mapping): the
     * direct path.  Not on tmpfs: a tmpfs file is shmem, which registration
     * accepts (6.1 then fails UFFDIO_COPY into it with EFAULT):
     * PVMMAP_COPY_UFFD is for private anonymous memory.  The first of these
     * directories that is writable and not tmpfs; none: skipped. */
    static const char *dirs[] = {".", "/var/tmp", "/tmp"};
    int fd = -1;
    char *df = MAP_FAILED;
    for (size_t k = 0; k < sizeof(dirs) / sizeof(dirs[0]) && df == MAP_FAILED; k++) {
        char path[256];
        struct statfs sf;
        snprintf(path, sizeof(path), "%s/pvmmap-test-XXXXXX", dirs[k]);
        if (statfs(dirs[k], &sf) == 0 && sf.f_type == 0x01021994)   /* TMPFS_MAGIC */
            continue;
        if ((fd = mkstemp(path)) < 0)
            continue;
        unlink(path);
        /* (a 9p work tree in the test VM may refuse ftruncate or mmap) */
        if (ftruncate(fd, (off_t)(NP * ps)) == 0)
            df = mmap(NULL, NP * ps, PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0);
        if (df == MAP_FAILED) {
            close(fd);
            fd = -1;
        }
    }
    if (df == MAP_FAILED) {
        printf("#    (no non-tmpfs file to map: file-destination fallback not checked)\n");
    } else {
        struct pvmmap_copy_stats c = {0};
        CHECK(pvmmap_copy(s.pid, s.mem, r, n, (uintptr_t)s.base, df, 1,
                          PVMMAP_COPY_UFFD, &c) == 0 && c.uffd == 0,
              "fallback: %s, uffd %d", strerror(errno), c.uffd);
        CHECK(bad_pages(df, 0, NP, s.seed) == 0, "fallback bytes");
        munmap(df, NP * ps);
        close(fd);
    }
    free(r);
    source_end(&s);
}

/* Feature report and the probe. */
static void t_open(void)
{
    struct pvmmap_uffd_info info;
    int fd = pvmmap_uffd_open_ex(1ULL << 14 /* POISON */ | 1ULL << 62, &info);
    CHECK(fd >= 0, "open_ex: %s", strerror(errno));
    CHECK(info.mode == 2 || info.mode == 1, "mode %d", info.mode);
    CHECK(!(info.granted & (1ULL << 62)), "granted an unknown bit");
    CHECK((info.granted & (1ULL << 14)) == (info.offered & (1ULL << 14)),
          "POISON offered %llx granted %llx", (unsigned long long)info.offered,
          (unsigned long long)info.granted);
    if (fd >= 0)
        close(fd);
    int mode = 0;
    fd = pvmmap_uffd_open(&mode);
    CHECK(fd >= 0 && mode == pvmmap_uffd_probe(), "open %d probe %d", mode,
          pvmmap_uffd_probe());
    if (fd >= 0)
        close(fd);
}

/* As uid 65534: only a user-mode-only uffd; lazy and eager still work. */
static void t_unprivileged(void)
{
    if (getuid() != 0) {
        printf("skip [%s]: needs root to drop privileges\n", current);
        return;
    }
    FILE *f = fopen("/proc/sys/vm/unprivileged_userfaultfd", "r");
    int unpriv = f ? fgetc(f) - '0' : -1;
    if (f)
        fclose(f);
    fflush(stdout);
    pid_t c = fork();
    if (c == 0) {
        if (setgroups(0, NULL) < 0 || setgid(65534) < 0 || setuid(65534) < 0)
            _exit(10);
        prctl(PR_SET_DUMPABLE, 1);
        passed = failed = 0;
        struct pvmmap_uffd_info info;
        int fd = pvmmap_uffd_open_ex(0, &info);
        CHECK(fd >= 0, "open as 65534: %s", strerror(errno));
        if (unpriv == 0)
            CHECK(info.mode == 1 && info.via == PVMMAP_UFFD_VIA_USER_ONLY &&
                  info.dev_errno == EACCES && info.syscall_errno == EPERM,
                  "mode %d via %d dev %d sys %d", info.mode, info.via,
                  info.dev_errno, info.syscall_errno);
        if (fd >= 0)
            close(fd);
        struct source s;
        CHECK(source_start(&s, 88) == 0, "source as 65534: %s", strerror(errno));
        char *dst = fresh(NP);
        struct pvmmap_lazy *lz = lazy(&s, dst, 0, 0);
        CHECK(lz != NULL, "lazy as 65534: %s", strerror(errno));
        if (lz && unpriv == 0) {
            /* user-mode-only: a kernel access to a missing page fails */
            int p[2];
            CHECK(pipe(p) == 0, "pipe");
            errno = 0;
            CHECK(write(p[1], dst + 5 * ps, 64) == -1 && errno == EFAULT,
                  "write(2) from an unfetched page: errno %d", errno);
            close(p[0]);
            close(p[1]);
        }
        if (lz) {
            CHECK(bad_pages(dst, 0, NP, s.seed) == 0, "lazy bytes as 65534");
            struct pvmmap_lazy_stats st;
            pvmmap_lazy_stats(lz, &st);
            if (unpriv == 0)
                CHECK(st.how & PVMMAP_LAZY_HOW_USER_ONLY, "how %#x", st.how);
            pvmmap_lazy_close(lz);
        }
        struct pvmmap_range *r;
        size_t n;
        int how;
        char *d1 = fresh(NP);
        struct pvmmap_copy_stats a = {0};
        CHECK(pvmmap_scan(s.pagemap, (uintptr_t)s.base, (uintptr_t)s.base + NP * ps,
                          PVMMAP_SCAN_DATA, &r, &n, &how) == 0 &&
              pvmmap_copy(s.pid, s.mem, r, n, (uintptr_t)s.base, d1, 2,
                          PVMMAP_COPY_UFFD, &a) == 0, "eager as 65534: %s",
              strerror(errno));
        CHECK(a.uffd == 1, "eager path %d", a.uffd);
        CHECK(bad_pages(d1, 0, NP, s.seed) == 0, "eager bytes as 65534");
        source_end(&s);
        fflush(stdout);
        _exit(failed ? 20 + (failed > 100 ? 100 : failed) : 0);
    }
    int status;
    waitpid(c, &status, 0);
    CHECK(WIFEXITED(status) && WEXITSTATUS(status) == 0,
          "unprivileged child status %#x", status);
}

static const struct {
    const char *name;
    void (*fn)(void);
} tests[] = {
    {"open", t_open},
    {"bytes", t_bytes_default},
    {"bytes_fallbacks", t_bytes_fallbacks},
    {"threads", t_threads},
    {"close_while_faulting", t_close_while_faulting},
    {"killed", t_killed},
    {"killed_no_poison", t_killed_no_poison},
    {"execed", t_execed},
    {"unmapped", t_unmapped_default},
    {"unmapped_fallbacks", t_unmapped_fallbacks},
    {"readahead", t_readahead},
    {"fork_server", t_fork_server},
    {"fill_prefetch", t_fill_prefetch},
    {"eager", t_eager},
    {"unprivileged", t_unprivileged},
};

int main(int argc, char **argv)
{
    ps = pvmmap_page_size();
    signal(SIGALRM, on_alarm);
    signal(SIGPIPE, SIG_IGN);
    setvbuf(stdout, NULL, _IOLBF, 0);
    for (size_t i = 0; i < sizeof(tests) / sizeof(tests[0]); i++) {
        if (argc > 1 && strcmp(argv[1], tests[i].name) != 0)
            continue;
        current = tests[i].name;
        int f0 = failed;
        alarm(60);
        tests[i].fn();
        alarm(0);
        printf("%s %s\n", failed == f0 ? "ok  " : "FAIL", tests[i].name);
    }
    printf("%d passed, %d failed\n", passed, failed);
    return failed ? 1 : 0;
}
