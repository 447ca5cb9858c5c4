/*
 * bench.c - process_vm_mmap() against fork(), the page-table-copy yardstick
 * (docs/design.md, section 1, "Cost").  Runs inside the test VM:
 *
 *   make -C kernel/tests bench && kernel/run-vm -- kernel/tests/bench [MiB] [reps]
 *
 * For a region of MiB (default 256) of touched private anonymous memory, with
 * 4 KiB pages (MADV_NOHUGEPAGE) and with THP (MADV_HUGEPAGE, 2 MiB aligned):
 *   fork       the fork() call in a process that owns the region
 *   clone      process_vm_mmap() of the whole region from a child that owns it
 *   munmap     munmap of that clone
 *   memcpy     copying the bytes (what the call avoids)
 * Prints the median of reps (default 7) in ms.  Under qemu TCG absolute times
 * are not hardware times; compare the rows with each other.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/syscall.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include "pvmmap.h"

static long nr = PVMMAP_DEFAULT_SYSCALL_NR;

static double now_ms(void)
{
	struct timespec ts;

	clock_gettime(CLOCK_MONOTONIC, &ts);
	return ts.tv_sec * 1e3 + ts.tv_nsec / 1e6;
}

static int cmp(const void *a, const void *b)
{
	double x = *(const double *)a, y = *(const double *)b;
	return x < y ? -1 : x > y;
}

static double median(double *v, int n)
{
	qsort(v, n, sizeof(*v), cmp);
	return v[n / 2];
}

static char *region(size_t len, int thp)
{
	size_t huge = 2UL << 20;
	char *raw = mmap(NULL, len + huge, PROT_READ | PROT_WRITE,
			 MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
	char *p;

	if (raw == MAP_FAILED) {
		perror("mmap");
		exit(2);
	}
	p = (char *)(((unsigned long)raw + huge - 1) & ~(huge - 1));
	madvise(p, len, thp ? MADV_HUGEPAGE : MADV_NOHUGEPAGE);
	for (size_t i = 0; i < len; i += 4096)
		p[i] = (char)i;
	return p;
}

static long anon_huge_kb(void)
{
	char line[256];
	long kb = 0, v;
	FILE *f = fopen("/proc/self/smaps_rollup", "r");

	while (f && fgets(line, sizeof(line), f))
		if (sscanf(line, "AnonHugePages: %ld", &v) == 1)
			kb = v;
	if (f)
		fclose(f);
	return kb;
}

static void run(size_t len, int thp, int reps)
{
	double t_fork[64], t_clone[64], t_unmap[64], t_copy[64];
	char *p = region(len, thp);
	long huge_kb = anon_huge_kb();
	double t_self[64];
	int pipefd[2];
	pid_t owner;
	char *q;
	long owner_kb;

	for (int r = 0; r < reps; r++) {
		double t0 = now_ms();
		pid_t k = fork();
		if (k == 0)
			_exit(0);
		t_fork[r] = now_ms() - t0;
		waitpid(k, NULL, 0);
	}

	/* the owner of the region is a forked child that keeps it */
	if (pipe(pipefd))
		exit(2);
	owner = fork();
	if (owner == 0) {
		/*
		 * The owner maps its own region: the inherited one would be
		 * split into 4K pages by its first copy-on-write fault.
		 */
		char *q = region(len, thp);
		long kb = anon_huge_kb();
		if (write(pipefd[1], &q, sizeof(q)) != sizeof(q) ||
		    write(pipefd[1], &kb, sizeof(kb)) != sizeof(kb))
			_exit(3);
		pause();
		_exit(0);
	}
	if (read(pipefd[0], &q, sizeof(q)) != sizeof(q) ||
	    read(pipefd[0], &owner_kb, sizeof(owner_kb)) != sizeof(owner_kb))
		exit(2);

	for (int r = 0; r < reps; r++) {
		double t0 = now_ms();
		long d = syscall(nr, (long)owner, (unsigned long)q, len, 0UL, 0UL);
		double t1 = now_ms();
		if (d == -1) {
			fprintf(stderr, "process_vm_mmap: %s\n", strerror(errno));
			exit(1);
		}
		munmap((void *)d, len);
		t_clone[r] = t1 - t0;
		t_unmap[r] = now_ms() - t1;
	}
	kill(owner, SIGKILL);
	waitpid(owner, NULL, 0);

	for (int r = 0; r < reps; r++) {
		double t0 = now_ms();
		long d = syscall(nr, (long)getpid(), (unsigned long)p, len, 0UL, 0UL);
		t_self[r] = now_ms() - t0;
		if (d == -1) {
			fprintf(stderr, "process_vm_mmap(self): %s\n", strerror(errno));
			exit(1);
		}
		munmap((void *)d, len);
	}

	{
		char *dst = region(len, thp);
		for (int r = 0; r < reps; r++) {
			double t0 = now_ms();
			memcpy(dst, p, len);
			t_copy[r] = now_ms() - t0;
		}
		munmap(dst, len);
	}

	printf("%-4s %4zu MiB (AnonHugePages %6ld/%6ld kB): fork %8.2f  clone %8.2f"
	       "  clone(self) %8.2f  munmap(clone) %8.2f  memcpy %8.2f ms"
	       "  clone/fork %.2f\n",
	       thp ? "THP" : "4K", len >> 20, huge_kb, owner_kb,
	       median(t_fork, reps), median(t_clone, reps), median(t_self, reps),
	       median(t_unmap, reps), median(t_copy, reps),
	       median(t_clone, reps) / median(t_fork, reps));
	munmap(p, len);
}

int main(int argc, char **argv)
{
	size_t mib = argc > 1 ? strtoul(argv[1], NULL, 0) : 256;
	int reps = argc > 2 ? atoi(argv[2]) : 7;
	const char *env = getenv("PVMMAP_SYSCALL_NR");

	if (env && *env)
		nr = atol(env);
	if (reps < 1 || reps > 64)
		reps = 7;
	setvbuf(stdout, NULL, _IOLBF, 0);
	printf("# process_vm_mmap (syscall %ld) vs fork, median of %d\n", nr, reps);
	run(mib << 20, 0, reps);
	run(mib << 20, 1, reps);
	return 0;
}
