/*
 * audit.h - what the audit tests of the process_vm_mmap() port share
 * (issue 8, kernel/AUDIT.md): the TAP harness (tap.h), the page
 * inspection helpers (/proc/PID/pagemap, /proc/kpagecount, /proc/kpageflags,
 * smaps, meminfo, cgroup files) and the "agent", a process that owns memory
 * and does what it is told over a pipe, so that a test can clone from a
 * process that is neither its parent nor its child.
 *
 * Header-only on purpose: each audit_*.c is one static binary.
 */
#ifndef PVMMAP_AUDIT_H
#define PVMMAP_AUDIT_H

#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <signal.h>
#include <stdarg.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sched.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include "tap.h"

/* not every test uses every helper */
#pragma GCC diagnostic ignored "-Wunused-function"

#ifndef MADV_PAGEOUT
#define MADV_PAGEOUT 21
#endif
#ifndef MADV_COLLAPSE
#define MADV_COLLAPSE 25
#endif
#ifndef MADV_POPULATE_READ
#define MADV_POPULATE_READ 22
#define MADV_POPULATE_WRITE 23
#endif

/* /proc/kpageflags bits (include/uapi/linux/kernel-page-flags.h) */
#define KPF_ANON	12
#define KPF_SWAPCACHE	14
#define KPF_COMPOUND_HEAD 15
#define KPF_HUGE	17
#define KPF_KSM		21
#define KPF_THP		22
#define KPF_ZERO_PAGE	24

/* /proc/PID/pagemap bits (Documentation/admin-guide/mm/pagemap.rst) */
#define PM_PRESENT	(1ULL << 63)
#define PM_SWAP		(1ULL << 62)
#define PM_EXCLUSIVE	(1ULL << 56)
#define PM_PFN(e)	((e) & ((1ULL << 55) - 1))

#define MiB (1024UL * 1024)
#define HPAGE (2 * MiB)


/* ---- files ----------------------------------------------------------------- */

static int write_file(const char *path, const char *val)
{
	int fd = open(path, O_WRONLY);
	ssize_t n;

	if (fd < 0)
		return -1;
	n = write(fd, val, strlen(val));
	close(fd);
	return n == (ssize_t)strlen(val) ? 0 : -1;
}

static int read_file(const char *path, char *buf, size_t len)
{
	int fd = open(path, O_RDONLY);
	ssize_t n;

	if (fd < 0)
		return -1;
	n = read(fd, buf, len - 1);
	close(fd);
	if (n < 0)
		return -1;
	buf[n] = 0;
	return 0;
}

static long read_long(const char *path)
{
	char buf[64];

	if (read_file(path, buf, sizeof(buf)))
		return -1;
	return strtol(buf, NULL, 10);
}

/* "key value" files (memory.stat, memory.events): value of key, -1 if none */
static long long keyed_value(const char *path, const char *key)
{
	char line[256];
	size_t kl = strlen(key);
	long long v = -1;
	FILE *f = fopen(path, "r");

	if (!f)
		return -1;
	while (fgets(line, sizeof(line), f))
		if (!strncmp(line, key, kl) && line[kl] == ' ') {
			v = strtoll(line + kl + 1, NULL, 10);
			break;
		}
	fclose(f);
	return v;
}

/* /proc/meminfo field in kB, -1 if missing */
static long meminfo_kb(const char *field)
{
	char line[256];
	size_t fl = strlen(field);
	long v = -1;
	FILE *f = fopen("/proc/meminfo", "r");

	if (!f)
		return -1;
	while (fgets(line, sizeof(line), f))
		if (!strncmp(line, field, fl) && line[fl] == ':') {
			v = strtol(line + fl + 1, NULL, 10);
			break;
		}
	fclose(f);
	return v;
}

/* ---- page inspection ---------------------------------------------------------- */

static uint64_t pagemap(pid_t pid, unsigned long addr)
{
	char path[64];
	uint64_t e = 0;
	int fd;

	snprintf(path, sizeof(path), "/proc/%d/pagemap", pid ? pid : getpid());
	fd = open(path, O_RDONLY);
	if (fd < 0)
		return 0;
	if (pread(fd, &e, sizeof(e), (addr / pg) * sizeof(e)) != sizeof(e))
		e = 0;
	close(fd);
	return e;
}

/* the PFN mapped at addr, 0 if not present */
static uint64_t pfn_of(pid_t pid, const void *addr)
{
	uint64_t e = pagemap(pid, (unsigned long)addr);

	return (e & PM_PRESENT) ? PM_PFN(e) : 0;
}

static int swapped(pid_t pid, const void *addr)
{
	return (pagemap(pid, (unsigned long)addr) & PM_SWAP) != 0;
}

static uint64_t kpage_read(const char *file, uint64_t pfn)
{
	uint64_t v = (uint64_t)-1;
	int fd = open(file, O_RDONLY);

	if (fd < 0)
		return v;
	if (pread(fd, &v, sizeof(v), pfn * sizeof(v)) != sizeof(v))
		v = (uint64_t)-1;
	close(fd);
	return v;
}

static long kpagecount(uint64_t pfn)
{
	return (long)kpage_read("/proc/kpagecount", pfn);
}

static uint64_t kpageflags(uint64_t pfn)
{
	return kpage_read("/proc/kpageflags", pfn);
}

static int kpf(uint64_t pfn, int bit)
{
	uint64_t f = kpageflags(pfn);

	return f != (uint64_t)-1 && (f >> bit) & 1;
}

/* AnonHugePages (kB) of the smaps entry of PID's VMA containing addr, -1 if none */
static long smaps_anon_huge_kb(pid_t pid, const void *addr)
{
	char path[64], line[512];
	unsigned long a = (unsigned long)addr, s, e;
	int in = 0;
	long v = -1;
	FILE *f;

	snprintf(path, sizeof(path), "/proc/%d/smaps", pid ? pid : getpid());
	f = fopen(path, "r");
	if (!f)
		return -1;
	while (fgets(line, sizeof(line), f)) {
		if (sscanf(line, "%lx-%lx ", &s, &e) == 2 && strchr(line, '-') < strchr(line, ' ')) {
			in = (a >= s && a < e);
			continue;
		}
		if (in && !strncmp(line, "AnonHugePages:", 14)) {
			v = strtol(line + 14, NULL, 10);
			break;
		}
	}
	fclose(f);
	return v;
}

static int maps_count(pid_t pid)
{
	char path[64], line[512];
	int n = 0;
	FILE *f;

	snprintf(path, sizeof(path), "/proc/%d/maps", pid ? pid : getpid());
	f = fopen(path, "r");
	if (!f)
		return -1;
	while (fgets(line, sizeof(line), f))
		n++;
	fclose(f);
	return n;
}

/*
 * The tests read KPF_KSM.  6.12.94's stable_page_flags() sets it for every
 * anonymous page (kernel/patches/6.12/0002 fixes that in the test kernel):
 * on such a kernel the answers would be wrong, so stop before any test.
 */
static void check_kpageflags_ksm(void)
{
	char *p = mmap(NULL, pg, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
	uint64_t pfn;

	if (p == MAP_FAILED)
		return;
	p[0] = 1;
	pfn = pfn_of(0, p);
	if (pfn && kpf(pfn, KPF_ANON) && kpf(pfn, KPF_KSM)) {
		printf("Bail out! /proc/kpageflags reports KPF_KSM for a plain anonymous page "
		       "(the 6.12 stable_page_flags() bug; boot a kernel with kernel/patches/6.12/0002)\n");
		exit(1);
	}
	munmap(p, pg);
}

static void audit_init(void)
{
	tap_init();
	signal(SIGPIPE, SIG_IGN);	/* a dead agent: EPIPE, not death */
	check_kpageflags_ksm();
}

/* ---- bytes ------------------------------------------------------------------------ */

static unsigned char pattern(unsigned seed, size_t i)
{
	return (unsigned char)(seed * 131 + i * 7 + (i >> 12) + 1);
}

static void fill(void *p, size_t len, unsigned seed)
{
	unsigned char *c = p;

	for (size_t i = 0; i < len; i++)
		c[i] = pattern(seed, i);
}

static int check_fill(const void *p, size_t len, unsigned seed)
{
	const unsigned char *c = p;

	for (size_t i = 0; i < len; i++)
		if (c[i] != pattern(seed, i))
			return 0;
	return 1;
}

static int all_bytes(const void *p, size_t len, unsigned char v)
{
	const unsigned char *c = p;

	for (size_t i = 0; i < len; i++)
		if (c[i] != v)
			return 0;
	return 1;
}

static void *map_anon(size_t len)
{
	void *p = mmap(NULL, len, PROT_READ | PROT_WRITE,
		       MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);

	if (p == MAP_FAILED) {
		perror("mmap");
		exit(2);
	}
	return p;
}

/* len bytes of private anonymous memory at an address aligned to align */
static void *map_aligned(size_t len, size_t align)
{
	char *p = mmap(NULL, len + align, PROT_READ | PROT_WRITE,
		       MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
	unsigned long a;

	if (p == MAP_FAILED) {
		perror("mmap");
		exit(2);
	}
	a = ((unsigned long)p + align - 1) & ~(align - 1);
	if (a > (unsigned long)p)
		munmap(p, a - (unsigned long)p);
	munmap((char *)a + len, (unsigned long)p + len + align - (a + len));
	return (void *)a;
}

/* a free address range of len bytes aligned to align (reserved, then given back) */
static void *free_area(size_t len, size_t align)
{
	void *p = map_aligned(len, align);

	munmap(p, len);
	return p;
}

/*
 * Clone [s, s + len) of pid to some address of ours other than s.  The
 * agent and the tester are forks of one parent and lay their mmaps out
 * alike, so without a hint a clone may land at s itself (it does on 6.12),
 * where it behaves like a fork child's mapping; the tests that are about a
 * page mapped at two addresses keep s busy (PROT_NONE) during the call.
 */
static char *clone_elsewhere(pid_t pid, void *s, size_t len)
{
	void *guard = mmap(s, len, PROT_NONE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_FIXED_NOREPLACE, -1, 0);
	long r = pvm(pid, s, len, NULL, 0);
	int e = errno;

	if (guard != MAP_FAILED)
		munmap(guard, len);
	errno = e;
	return (char *)r;
}

static double now(void)
{
	struct timespec ts;

	clock_gettime(CLOCK_MONOTONIC, &ts);
	return ts.tv_sec + ts.tv_nsec / 1e9;
}

/* ---- KSM ------------------------------------------------------------------------------ */

#define KSM "/sys/kernel/mm/ksm/"

static long ksm_read(const char *f)
{
	char path[128];

	snprintf(path, sizeof(path), KSM "%s", f);
	return read_long(path);
}

/* ksmd on, scanning fast (TCG is slow): 0, or -1 without KSM */
static int ksm_start(void)
{
	if (access(KSM "run", W_OK))
		return -1;
	write_file(KSM "sleep_millisecs", "20");
	write_file(KSM "pages_to_scan", "500");
	return write_file(KSM "run", "1");
}

/* wait until ksmd has completed n more full scans (bounded) */
static int ksm_wait_scans(int n, double timeout)
{
	long start = ksm_read("full_scans");
	double t0 = now();

	while (ksm_read("full_scans") < start + n)
		if (now() - t0 > timeout)
			return -1;
		else
			usleep(20000);
	return 0;
}

/* ---- cgroup v2 --------------------------------------------------------------------- */

#define CGROOT "/sys/fs/cgroup"

/* creates CGROOT/name with the memory controller; 0 or -1 (no cgroup2/memcg) */
static int cg_create(const char *name)
{
	char path[256];

	if (access(CGROOT "/cgroup.controllers", R_OK))
		return -1;
	write_file(CGROOT "/cgroup.subtree_control", "+memory");
	snprintf(path, sizeof(path), CGROOT "/%s", name);
	if (mkdir(path, 0755) && errno != EEXIST)
		return -1;
	snprintf(path, sizeof(path), CGROOT "/%s/memory.current", name);
	return access(path, R_OK) ? -1 : 0;
}

static int cg_write(const char *name, const char *file, const char *val)
{
	char path[256];

	snprintf(path, sizeof(path), CGROOT "/%s/%s", name, file);
	return write_file(path, val);
}

static long long cg_read(const char *name, const char *file)
{
	char path[256], buf[64];

	snprintf(path, sizeof(path), CGROOT "/%s/%s", name, file);
	if (read_file(path, buf, sizeof(buf)))
		return -1;
	return strtoll(buf, NULL, 10);
}

static long long cg_key(const char *name, const char *file, const char *key)
{
	char path[256];

	snprintf(path, sizeof(path), CGROOT "/%s/%s", name, file);
	return keyed_value(path, key);
}

static int cg_move(const char *name, pid_t pid)
{
	char path[256], val[32];

	if (name)
		snprintf(path, sizeof(path), CGROOT "/%s/cgroup.procs", name);
	else
		snprintf(path, sizeof(path), CGROOT "/cgroup.procs");
	snprintf(val, sizeof(val), "%d", pid);
	return write_file(path, val);
}

static void cg_remove(const char *name)
{
	char path[256];

	snprintf(path, sizeof(path), CGROOT "/%s", name);
	rmdir(path);
}

/* ---- the agent: a process that owns memory and obeys commands ------------------ */

enum {
	AG_MMAP = 1,	/* a = len, b = alignment (0: none) -> address */
	AG_FILL,	/* a = addr, b = len, c = seed */
	AG_CHECK,	/* a = addr, b = len, c = seed -> 1 if the bytes match */
	AG_MEMSET,	/* a = addr, b = len, c = byte */
	AG_ALLBYTES,	/* a = addr, b = len, c = byte -> 1 if all equal */
	AG_MADVISE,	/* a = addr, b = len, c = advice -> 0 or -errno */
	AG_MUNMAP,	/* a = addr, b = len */
	AG_TOUCH,	/* a = addr, b = len: read one byte per page */
	AG_WRITE1,	/* a = addr, c = byte: one byte */
	AG_CLONE_SELF,	/* a = addr, b = len: process_vm_mmap from itself -> address or -errno */
	AG_CLONE_FROM,	/* a = addr, b = len, c = pid: process_vm_mmap from pid -> address or -errno */
	AG_FORK,	/* fork a child agent (one at a time) -> its pid */
	AG_GETPID,
	AG_EXIT,
	AG_MMAP_AT,	/* a = addr, b = len: private anonymous, MAP_FIXED_NOREPLACE -> address or -errno */
	AG_TO_CHILD = 0x100,	/* | op: forwarded to the forked child; AG_EXIT reaps it -> wait status */
};

struct ag_cmd {
	int op;
	unsigned long a, b, c;
};

struct agent {
	pid_t pid;
	int to, from;	/* command pipe, reply pipe */
};

static void agent_spawn(struct agent *ag);
static long agent_do(struct agent *ag, int op, unsigned long a, unsigned long b,
		     unsigned long c);
static int agent_stop(struct agent *ag);

/*
 * Agents and the tester run on CPU 0: a page just faulted in sits in its
 * CPU's LRU-add batch until that CPU drains it, and MADV_PAGEOUT (which only
 * drains the local batch) skips pages not on the LRU yet.
 */
static void pin_cpu0(void)
{
	cpu_set_t set;

	CPU_ZERO(&set);
	CPU_SET(0, &set);
	sched_setaffinity(0, sizeof(set), &set);
}

static void agent_loop(int in, int out)
{
	static struct agent child;
	struct ag_cmd c;
	long r;

	pin_cpu0();

	while (read(in, &c, sizeof(c)) == sizeof(c)) {
		unsigned char *p = (unsigned char *)c.a;

		r = 0;
		if (c.op & AG_TO_CHILD) {
			int op = c.op & ~AG_TO_CHILD;

			if (op == AG_EXIT)
				r = agent_stop(&child);
			else
				r = agent_do(&child, op, c.a, c.b, c.c);
			if (write(out, &r, sizeof(r)) != sizeof(r))
				_exit(3);
			continue;
		}
		switch (c.op) {
		case AG_FORK:
			agent_spawn(&child);
			r = child.pid;
			break;
		case AG_GETPID:
			r = getpid();
			break;
		case AG_CLONE_FROM:
			r = pvm((pid_t)c.c, p, c.b, NULL, 0);
			if (r < 0)
				r = -errno;
			break;
		case AG_MMAP:
			r = (long)(c.b ? map_aligned(c.a, c.b) : map_anon(c.a));
			break;
		case AG_MMAP_AT:
			r = (long)mmap(p, c.b, PROT_READ | PROT_WRITE,
				       MAP_PRIVATE | MAP_ANONYMOUS | MAP_FIXED_NOREPLACE, -1, 0);
			if (r == (long)MAP_FAILED)
				r = -errno;
			break;
		case AG_FILL:
			fill(p, c.b, c.c);
			break;
		case AG_CHECK:
			r = check_fill(p, c.b, c.c);
			break;
		case AG_MEMSET:
			memset(p, (int)c.c, c.b);
			break;
		case AG_ALLBYTES:
			r = all_bytes(p, c.b, (unsigned char)c.c);
			break;
		case AG_MADVISE:
			r = madvise(p, c.b, (int)c.c) ? -errno : 0;
			break;
		case AG_MUNMAP:
			r = munmap(p, c.b) ? -errno : 0;
			break;
		case AG_TOUCH:
			for (unsigned long i = 0; i < c.b; i += pg)
				r += *(volatile unsigned char *)(p + i);
			break;
		case AG_WRITE1:
			*p = (unsigned char)c.c;
			break;
		case AG_CLONE_SELF:
			r = pvm(getpid(), p, c.b, NULL, 0);
			if (r < 0)
				r = -errno;
			break;
		case AG_EXIT:
			_exit(0);
		}
		if (write(out, &r, sizeof(r)) != sizeof(r))
			_exit(3);
	}
	_exit(0);
}

static void agent_spawn(struct agent *ag)
{
	int a[2], b[2];

	if (pipe(a) || pipe(b)) {
		perror("pipe");
		exit(2);
	}
	fflush(stdout);
	ag->pid = fork();
	if (ag->pid < 0) {
		perror("fork");
		exit(2);
	}
	if (ag->pid == 0) {
		/*
		 * Keep only our own pipe ends: a write end of someone else's
		 * reply pipe held here would hide that agent's death (no EOF).
		 */
		for (int fd = 3; fd < 1024; fd++)
			if (fd != a[0] && fd != b[1])
				close(fd);
		agent_loop(a[0], b[1]);
	}
	close(a[0]);
	close(b[1]);
	ag->to = a[1];
	ag->from = b[0];
}

static long agent_do(struct agent *ag, int op, unsigned long a, unsigned long b,
		     unsigned long c)
{
	struct ag_cmd cmd = { op, a, b, c };
	long r = -1;

	if (write(ag->to, &cmd, sizeof(cmd)) != sizeof(cmd))
		return -1;
	if (op == AG_EXIT)
		return 0;
	if (read(ag->from, &r, sizeof(r)) != sizeof(r))
		return -1;
	return r;
}

static int agent_stop(struct agent *ag)
{
	int st = 0;

	agent_do(ag, AG_EXIT, 0, 0, 0);
	close(ag->to);
	close(ag->from);
	waitpid(ag->pid, &st, 0);
	return st;
}

/*
 * Run body in a child of the caller while an agent, another child of the
 * caller, is the source: the tester and the source are siblings, neither is
 * the other's fork relative.  Returns the exit status for main().
 */
static struct agent src;
#define GUARD_LEN (256 * MiB)
static char *guard;

/* addr lies in the tester's guard: FIXED there clobbers nothing of its own */
static int in_guard(const void *addr, size_t len)
{
	return guard && (const char *)addr >= guard &&
	       (const char *)addr + len <= guard + GUARD_LEN;
}

static int run_with_sibling_source(void (*body)(void))
{
	pid_t t;
	int st;

	agent_spawn(&src);
	fflush(stdout);
	t = fork();
	if (t < 0) {
		perror("fork");
		return 2;
	}
	if (t == 0) {
		/*
		 * Siblings start with the same layout: without this the
		 * tester's next free area is where the source's next mmap
		 * lands, and "another address" would be the same address.
		 */
		pin_cpu0();
		guard = mmap(NULL, GUARD_LEN, PROT_NONE,
			     MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0);
		if (guard == MAP_FAILED)
			exit(2);
		body();
		exit(summary());
	}
	if (waitpid(t, &st, 0) < 0) {
		perror("waitpid");
		return 2;
	}
	agent_stop(&src);
	if (WIFSIGNALED(st)) {
		printf("not ok - the tester died of signal %d\n", WTERMSIG(st));
		return 1;
	}
	return WEXITSTATUS(st);
}

#endif
