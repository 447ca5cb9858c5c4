/*
 * audit_stress.c [SECONDS [PROCS [THREADS]]] - locking and lifetime stress
 * of process_vm_mmap() (kernel/AUDIT.md, "lock ordering, trylock paths,
 * fork, mremap, munmap, exit, userfaultfd, mlock").  Runs in the test VM as
 * root (kernel/audit-vm); the kernel's own checkers (lockdep, KASAN,
 * DEBUG_VM, PAGE_TABLE_CHECK, the hung-task detector) are the main oracle:
 * run-vm fails on any report in dmesg.
 *
 * PROCS worker processes (default 4), each with THREADS threads (default 3),
 * run for SECONDS (default 60).  A worker lives 1-4 s after its setup, then exits and is
 * replaced, so clones race with the source's exit.  Each worker owns a
 * 32 MiB arena (2 MiB aligned, part THP, part MADV_MERGEABLE); its threads
 * pick random page ranges in it and in the other workers' arenas and run:
 * process_vm_mmap from itself and from another worker (FIXED into the arena,
 * or anywhere and unmapped again), munmap, mmap FIXED, mprotect, mremap,
 * fork (the child clones from its parent, touches, exits), userfaultfd
 * register (closed a moment later), mlock/munlock, madvise (DONTNEED,
 * PAGEOUT, COLD, FREE, HUGEPAGE, MERGEABLE, COLLAPSE), MADV_POPULATE_WRITE
 * as the only way memory is touched (no SIGSEGV on a range another thread
 * made PROT_NONE).  Every result is allowed (EFAULT, EINVAL, ENOMEM, ESRCH,
 * ENOTSUPP...); what is checked:
 *   - each worker, after its threads ended and its arena is unmapped, has
 *     as many /proc/self/maps lines as before the arena (no leaked VMA);
 *   - at the end, with every worker gone: AnonPages, swap in use, Mlocked and
 *     PageTables back to the baseline within TOL_KB (8 MiB; 2 MiB for Mlocked
 *     and PageTables), MemFree within MemTotal/16 (KASAN's quarantine alone
 *     may hold MemTotal/32 of freed objects).
 * TAP output; exit status 0 only if every check passed.
 */
#include "audit.h"

#include <linux/userfaultfd.h>
#include <pthread.h>
#include <sys/ioctl.h>
#include <stdatomic.h>

#ifndef UFFD_USER_MODE_ONLY
#define UFFD_USER_MODE_ONLY 1
#endif

#define MAXPROCS 16
#define ARENA (32 * MiB)
#define TOL_KB (8 * 1024)

enum { OP_CLONE_SELF, OP_CLONE_OTHER, OP_CLONE_ANY, OP_MUNMAP, OP_MMAP, OP_MPROTECT, OP_MREMAP, OP_FORK,
       OP_UFFD, OP_MLOCK, OP_MADV, OP_TOUCH, NOPS };
static const char *opname[NOPS] = { "clone-self", "clone-other", "clone-anywhere", "munmap", "mmap", "mprotect",
				    "mremap", "fork", "uffd-register", "mlock", "madvise", "populate" };

struct shared {
	atomic_int pid[MAXPROCS];
	atomic_ulong arena[MAXPROCS];
	atomic_int stop;
	atomic_long ok[NOPS], err[NOPS];
	atomic_long workers, vma_leaks;
};

static struct shared *sh;
static int nprocs = 4, nthreads = 3;

static uint64_t xs(uint64_t *s)
{
	uint64_t x = *s;

	x ^= x << 13;
	x ^= x >> 7;
	x ^= x << 17;
	return *s = x;
}

/* a random page range [*a, *a + *len) inside the arena at base */
static void pick(uint64_t *r, unsigned long base, unsigned long *a, unsigned long *len)
{
	unsigned long npg = ARENA / pg, n, off;

	if (xs(r) % 8 == 0) {		/* a whole 2 MiB piece: the PMD paths */
		off = (xs(r) % (ARENA / HPAGE)) * HPAGE;
		n = HPAGE / pg;
	} else {
		n = 1 + xs(r) % 64;
		off = (xs(r) % (npg - n)) * pg;
	}
	*a = base + off;
	*len = n * pg;
}

/* a destination for len bytes inside the arena (2 MiB aligned when len is) */
static unsigned long pick_dst(uint64_t *r, unsigned long base, unsigned long len)
{
	if (len == HPAGE && xs(r) % 2)
		return base + (xs(r) % (ARENA / HPAGE)) * HPAGE;
	return base + (xs(r) % ((ARENA - len) / pg + 1)) * pg;
}

static void count(int op, long r)
{
	if (r < 0)
		atomic_fetch_add(&sh->err[op], 1);
	else
		atomic_fetch_add(&sh->ok[op], 1);
}

static int other_slot(uint64_t *r, int self)
{
	for (int i = 0; i < 4; i++) {
		int s = xs(r) % nprocs;

		if (s != self && atomic_load(&sh->pid[s]) > 0)
			return s;
	}
	return -1;
}

struct wctx {
	int slot;
	unsigned long arena;
	double deadline;
	uint64_t seed;
};

static void one_op(struct wctx *w, uint64_t *r)
{
	unsigned long a, len, b, blen;
	int op = xs(r) % NOPS, s;
	long ret = 0;

	pick(r, w->arena, &a, &len);
	switch (op) {
	case OP_CLONE_SELF:
		b = pick_dst(r, w->arena, len);
		ret = pvm(getpid(), (void *)a, len, (void *)b, PVMMAP_FIXED);
		break;
	case OP_CLONE_OTHER:
	case OP_CLONE_ANY:
		s = other_slot(r, w->slot);
		if (s < 0)
			return;
		{
			unsigned long oa = atomic_load(&sh->arena[s]), sa;
			pid_t opid = atomic_load(&sh->pid[s]);

			if (!oa || opid <= 0)
				return;
			pick(r, oa, &sa, &blen);
			if (op == OP_CLONE_OTHER) {
				ret = pvm(opid, (void *)sa, blen < len ? blen : len, (void *)a, PVMMAP_FIXED);
			} else {
				ret = pvm(opid, (void *)sa, blen, NULL, 0);
				if (ret > 0) {
					madvise((void *)ret, blen, MADV_POPULATE_WRITE);
					munmap((void *)ret, blen);
				}
			}
		}
		break;
	case OP_MUNMAP:
		ret = munmap((void *)a, len);
		break;
	case OP_MMAP:
		ret = (long)mmap((void *)a, len, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_FIXED, -1, 0);
		if (ret == (long)MAP_FAILED)
			ret = -1;
		break;
	case OP_MPROTECT: {
		static const int prots[] = { PROT_NONE, PROT_READ, PROT_READ | PROT_WRITE, PROT_READ | PROT_WRITE };
		ret = mprotect((void *)a, len, prots[xs(r) % 4]);
		break;
	}
	case OP_MREMAP:
		b = pick_dst(r, w->arena, len);
		ret = (long)mremap((void *)a, len, len, MREMAP_MAYMOVE | MREMAP_FIXED, (void *)b);
		if (ret == (long)MAP_FAILED)
			ret = -1;
		break;
	case OP_FORK: {
		pid_t ppid = getpid(), c;
		int st;

		c = fork();
		if (c == 0) {
			/* only raw system calls here: we are a fork of a threaded process */
			unsigned long x, xl;
			for (int i = 0; i < 4; i++) {
				pick(r, w->arena, &x, &xl);
				pvm(ppid, (void *)x, xl, (void *)pick_dst(r, w->arena, xl), PVMMAP_FIXED);
				madvise((void *)a, len, MADV_POPULATE_WRITE);
				munmap((void *)x, xl);
			}
			_exit(0);
		}
		if (c > 0)
			waitpid(c, &st, 0);
		ret = c > 0 ? 0 : -1;
		break;
	}
	case OP_UFFD: {
		struct uffdio_api api = { .api = UFFD_API };
		struct uffdio_register reg = { .range = { a, len }, .mode = UFFDIO_REGISTER_MODE_MISSING };
		int fd = syscall(SYS_userfaultfd, O_CLOEXEC | O_NONBLOCK | UFFD_USER_MODE_ONLY);

		if (fd < 0) {
			ret = -1;
			break;
		}
		ret = -1;
		if (!ioctl(fd, UFFDIO_API, &api) && !ioctl(fd, UFFDIO_REGISTER, &reg)) {
			ret = 0;
			/*
			 * While registered a clone from it fails (ENOTSUPP);
			 * another thread may have unmapped the registration
			 * meanwhile, then the clone works: unmap it again.
			 */
			long c = pvm(getpid(), (void *)a, len, NULL, 0);

			if (c > 0)
				munmap((void *)c, len);
			usleep(xs(r) % 2000);
			if (xs(r) % 2)
				ioctl(fd, UFFDIO_UNREGISTER, &reg.range);
		}
		close(fd);	/* wakes whoever faulted on the range */
		break;
	}
	case OP_MLOCK:
		ret = (xs(r) % 2) ? mlock((void *)a, len) : munlock((void *)a, len);
		break;
	case OP_MADV: {
		static const int advs[] = { MADV_DONTNEED, MADV_PAGEOUT, MADV_COLD, MADV_FREE, MADV_HUGEPAGE,
					    MADV_NOHUGEPAGE, MADV_MERGEABLE, MADV_UNMERGEABLE, MADV_COLLAPSE,
					    MADV_POPULATE_READ };
		ret = madvise((void *)a, len, advs[xs(r) % (sizeof(advs) / sizeof(advs[0]))]);
		break;
	}
	case OP_TOUCH:
		ret = madvise((void *)a, len, MADV_POPULATE_WRITE);
		break;
	}
	count(op, ret);
}

static void *thread_main(void *arg)
{
	struct wctx *w = arg;
	uint64_t r = w->seed;

	while (now() < w->deadline && !atomic_load(&sh->stop))
		one_op(w, &r);
	return NULL;
}

static void *noop(void *arg)
{
	return arg;
}

static int worker(int slot, double stop_at, uint64_t seed)
{
	pthread_t th[16];
	pthread_attr_t attr;
	struct wctx w[16];
	double life = 1 + (seed % 3000) / 1000.0, deadline;
	int before, after;
	char *arena;

	pthread_attr_init(&attr);
	pthread_attr_setstacksize(&attr, 256 * 1024);
	/* warm glibc's stack cache so that thread stacks do not count as VMAs */
	for (int i = 0; i < nthreads; i++)
		pthread_create(&th[i], &attr, noop, NULL);
	for (int i = 0; i < nthreads; i++)
		pthread_join(th[i], NULL);
	before = maps_count(0);

	arena = map_aligned(ARENA, HPAGE);
	madvise(arena, ARENA / 2, MADV_HUGEPAGE);
	madvise(arena + ARENA / 2, ARENA / 4, MADV_MERGEABLE);
	/* every 8th page present (the THP half faults in whole huge pages) */
	for (unsigned long i = 0; i < ARENA; i += 8 * pg)
		arena[i] = (char)(i >> 12);
	/* the life starts now: on the debug kernel under TCG the setup is slow */
	deadline = now() + life;
	if (deadline > stop_at)
		deadline = stop_at;
	atomic_store(&sh->arena[slot], (unsigned long)arena);
	atomic_store(&sh->pid[slot], getpid());

	for (int i = 0; i < nthreads; i++) {
		w[i] = (struct wctx){ slot, (unsigned long)arena, deadline, seed * 7919 + i * 104729 + 1 };
		pthread_create(&th[i], &attr, thread_main, &w[i]);
	}
	for (int i = 0; i < nthreads; i++)
		pthread_join(th[i], NULL);
	atomic_store(&sh->pid[slot], 0);
	munmap(arena, ARENA);
	after = maps_count(0);
	if (after != before) {
		atomic_fetch_add(&sh->vma_leaks, 1);
		fprintf(stderr, "audit_stress: worker %d: %d maps lines before the arena, %d after unmapping it\n",
			getpid(), before, after);
		return 1;
	}
	return 0;
}

struct mem {
	long anon, free, swap, mlocked, ptables;
};

static void mem_now(struct mem *m)
{
	write_file("/proc/sys/vm/drop_caches", "3");
	m->anon = meminfo_kb("AnonPages");
	m->free = meminfo_kb("MemFree");
	m->swap = meminfo_kb("SwapTotal") - meminfo_kb("SwapFree");
	m->mlocked = meminfo_kb("Mlocked");
	m->ptables = meminfo_kb("PageTables");
}

static int seconds = 60;

static void t_stress(void)
{
	pid_t pids[MAXPROCS] = { 0 };
	struct mem m0, m1;
	double t0, stop_at;
	long total = 0, failed_workers = 0;
	long memtotal = meminfo_kb("MemTotal");
	uint64_t seed = (uint64_t)time(NULL) | 1;
	int st;

	sh = mmap(NULL, sizeof(*sh), PROT_READ | PROT_WRITE, MAP_SHARED | MAP_ANONYMOUS, -1, 0);
	REQUIRE(sh != MAP_FAILED, "mmap shared");
	memset(sh, 0, sizeof(*sh));
	ksm_start();
	sleep(1);
	mem_now(&m0);
	note("seed %llu, %d processes x %d threads, %d s", (unsigned long long)seed, nprocs, nthreads, seconds);
	t0 = now();
	stop_at = t0 + seconds;
	while (now() < stop_at) {
		for (int i = 0; i < nprocs; i++) {
			if (pids[i] > 0) {
				pid_t r = waitpid(pids[i], &st, WNOHANG);

				if (r == 0)
					continue;
				if (r == pids[i] && !(WIFEXITED(st) && WEXITSTATUS(st) == 0)) {
					failed_workers++;
					note("worker %d: %s %d", pids[i], WIFSIGNALED(st) ? "signal" : "status",
					     WIFSIGNALED(st) ? WTERMSIG(st) : WEXITSTATUS(st));
				}
				pids[i] = 0;
			}
			xs(&seed);
			fflush(stdout);
			pids[i] = fork();
			if (pids[i] == 0)
				_exit(worker(i, stop_at, seed));
			total++;
		}
		usleep(50000);
	}
	atomic_store(&sh->stop, 1);
	for (int i = 0; i < nprocs; i++)
		if (pids[i] > 0) {
			waitpid(pids[i], &st, 0);
			if (!(WIFEXITED(st) && WEXITSTATUS(st) == 0)) {
				failed_workers++;
				note("worker %d: %s %d", pids[i], WIFSIGNALED(st) ? "signal" : "status",
				     WIFSIGNALED(st) ? WTERMSIG(st) : WEXITSTATUS(st));
			}
		}
	write_file(KSM "run", "2");
	sleep(3);
	mem_now(&m1);
	note("%ld workers in %.0f s", total, now() - t0);
	for (int i = 0; i < NOPS; i++)
		note("  %-15s %8ld ok %8ld failed (errors are allowed)", opname[i], atomic_load(&sh->ok[i]),
		     atomic_load(&sh->err[i]));
	note("meminfo kB before/after: AnonPages %ld/%ld, swap used %ld/%ld, Mlocked %ld/%ld, PageTables %ld/%ld, MemFree %ld/%ld",
	     m0.anon, m1.anon, m0.swap, m1.swap, m0.mlocked, m1.mlocked, m0.ptables, m1.ptables, m0.free, m1.free);
	CHECK(failed_workers == 0, "%ld workers failed (%ld leaked VMAs)", failed_workers, atomic_load(&sh->vma_leaks));
	CHECK(atomic_load(&sh->ok[OP_CLONE_SELF]) > 0 && atomic_load(&sh->ok[OP_CLONE_OTHER]) > 0,
	      "no clone ever succeeded: the stress did not stress");
	CHECK(m1.anon - m0.anon <= TOL_KB, "AnonPages grew by %ld kB", m1.anon - m0.anon);
	CHECK(m1.swap - m0.swap <= TOL_KB, "swap in use grew by %ld kB", m1.swap - m0.swap);
	CHECK(m1.mlocked - m0.mlocked <= 2048, "Mlocked grew by %ld kB", m1.mlocked - m0.mlocked);
	CHECK(m1.ptables - m0.ptables <= 2048, "PageTables grew by %ld kB", m1.ptables - m0.ptables);
	CHECK(m0.free - m1.free <= memtotal / 16, "MemFree fell by %ld kB", m0.free - m1.free);
}

int main(int argc, char **argv)
{
	audit_init();
	if (argc > 1)
		seconds = atoi(argv[1]);
	if (argc > 2)
		nprocs = atoi(argv[2]);
	if (argc > 3)
		nthreads = atoi(argv[3]);
	if (nprocs < 2 || nprocs > MAXPROCS || nthreads < 1 || nthreads > 16 || seconds < 1) {
		fprintf(stderr, "usage: audit_stress [SECONDS [PROCS 2-16 [THREADS 1-16]]]\n");
		return 2;
	}
	printf("TAP version 13\n");
	run("stress: clone/munmap/mprotect/mremap/fork/exit/uffd/mlock on overlapping ranges", t_stress);
	return summary();
}
