/*
 * audit_memcg.c - memory accounting and memcg with process_vm_mmap()
 * (kernel/AUDIT.md, "accounting and memcg").  Runs in the test VM as root
 * with cgroup2 at /sys/fs/cgroup and swap on (kernel/audit-vm).
 *
 * Every scenario is run twice in the same test, once with fork() and once
 * with a clone between two sibling agents, in cgroups of their own, and the
 * numbers are compared:
 *   - memory.current and memory.stat anon after the allocation, after the
 *     fork / clone, after the CoW break of every page, after the second
 *     process exits, after both exit (back to the baseline);
 *   - a CoW break that hits memory.max with no swap allowed (memory.swap.max
 *     0): an OOM kill in the group, as after fork; with swap allowed: reclaim
 *     to swap, no OOM kill, bytes right, as after fork;
 *   - a clone that copies pages (KSM pages cloned to another address) charges
 *     the copies to the caller's memcg, not the source's.
 * Tolerances: STEP_TOL between the fork and clone deltas of one step and for
 * "back to baseline" (the per-CPU charge stock holds up to 64 pages per CPU,
 * rstat flushes lag up to 2 s: the test sleeps 2.2 s before reading).
 * TAP output; exit status 0 only if every check passed.
 */
#include "audit.h"

#define SZ (16LL << 20)	/* 16 MiB */
#define STEP_TOL (1LL << 20)	/* 1 MiB */

struct sample {
	long long cur, anon;
};

static void sample(const char *cg, struct sample *s)
{
	usleep(2200000);	/* memcg stats flush every 2 s */
	s->cur = cg_read(cg, "memory.current");
	s->anon = cg_key(cg, "memory.stat", "anon");
}

static long long llabs_(long long v)
{
	return v < 0 ? -v : v;
}

/*
 * One run: P allocates SZ and fills it; Q gets it (fork: P forks Q;
 * clone: Q, P's sibling, clones it); Q CoW-breaks every page; Q exits;
 * P exits.  s[0..5] are the samples.
 */
static int scenario(const char *cg, int use_fork, struct sample s[6], const char **why)
{
	struct agent p, q;
	char *a, *b;
	long r;

	*why = "";
	if (cg_create(cg))
		return -1;
	cg_write(cg, "memory.max", "max");
	cg_write(cg, "memory.swap.max", "0");	/* nothing leaves through swap */
	agent_spawn(&p);
	cg_move(cg, p.pid);
	if (!use_fork) {
		agent_spawn(&q);
		cg_move(cg, q.pid);
	}
	agent_do(&p, AG_GETPID, 0, 0, 0);	/* settled in the group */
	sample(cg, &s[0]);
	a = (char *)agent_do(&p, AG_MMAP, SZ, 0, 0);
	agent_do(&p, AG_FILL, (unsigned long)a, SZ, 30);
	sample(cg, &s[1]);
	if (use_fork) {
		r = agent_do(&p, AG_FORK, 0, 0, 0);
		b = a;
	} else {
		b = (char *)agent_do(&q, AG_CLONE_FROM, (unsigned long)a, SZ, p.pid);
		r = (long)b;
	}
	if (r <= 0) {
		*why = use_fork ? "fork failed" : "clone failed";
		return -1;
	}
	sample(cg, &s[2]);
	if (use_fork)
		r = agent_do(&p, AG_TO_CHILD | AG_FILL, (unsigned long)b, SZ, 31);
	else
		r = agent_do(&q, AG_FILL, (unsigned long)b, SZ, 31);
	r = agent_do(&p, AG_CHECK, (unsigned long)a, SZ, 30);
	if (r != 1)
		*why = "P's bytes changed by Q's writes";
	sample(cg, &s[3]);
	if (use_fork)
		agent_do(&p, AG_TO_CHILD | AG_EXIT, 0, 0, 0);
	else
		agent_stop(&q);
	sample(cg, &s[4]);
	agent_stop(&p);
	sample(cg, &s[5]);
	cg_remove(cg);
	return 0;
}

static void t_fork_vs_clone(void)
{
	static const char *step[] = { "baseline", "P allocated", "fork/clone", "Q's CoW", "Q exited", "P exited" };
	struct sample f[6], c[6];
	const char *why;

	if (scenario("audit-mc-fork", 1, f, &why) || scenario("audit-mc-clone", 0, c, &why)) {
		if (*why)
			FAIL("%s", why);
		else
			skip("no cgroup2 memory controller");
		return;
	}
	CHECK(!*why, "%s", why);
	for (int i = 0; i < 6; i++)
		note("%-12s fork: current %8lld kB anon %8lld kB | clone: current %8lld kB anon %8lld kB", step[i],
		     f[i].cur >> 10, f[i].anon >> 10, c[i].cur >> 10, c[i].anon >> 10);
	for (int i = 1; i < 6; i++) {
		long long df = f[i].cur - f[i - 1].cur, dc = c[i].cur - c[i - 1].cur;
		long long af = f[i].anon - f[i - 1].anon, ac = c[i].anon - c[i - 1].anon;

		CHECK(llabs_(df - dc) <= STEP_TOL, "%s: memory.current delta fork %lld kB, clone %lld kB", step[i],
		      df >> 10, dc >> 10);
		CHECK(llabs_(af - ac) <= STEP_TOL, "%s: anon delta fork %lld kB, clone %lld kB", step[i], af >> 10,
		      ac >> 10);
	}
	/* the absolute expectations, for both */
	CHECK(llabs_(c[1].anon - c[0].anon - (long long)SZ) <= STEP_TOL, "allocation not charged as anon");
	CHECK(llabs_(c[2].anon - c[1].anon) <= STEP_TOL, "the clone charged anon memory (%lld kB)",
	      (c[2].anon - c[1].anon) >> 10);
	CHECK(llabs_(c[3].anon - c[2].anon - (long long)SZ) <= STEP_TOL, "CoW copies not charged (%lld kB)",
	      (c[3].anon - c[2].anon) >> 10);
	CHECK(llabs_(c[4].anon - c[1].anon) <= STEP_TOL, "Q's exit left %lld kB anon", (c[4].anon - c[1].anon) >> 10);
	CHECK(llabs_(c[5].cur - c[0].cur) <= STEP_TOL, "clone: %lld kB still charged after exit",
	      (c[5].cur - c[0].cur) >> 10);
	CHECK(llabs_(f[5].cur - f[0].cur) <= STEP_TOL, "fork: %lld kB still charged after exit",
	      (f[5].cur - f[0].cur) >> 10);
}

/*
 * Q CoW-breaks SZ with memory.max at 1.5 SZ: what happens to the group,
 * fork and clone.  Returns the memory.events oom_kill delta, sets *done if
 * Q finished its writes, *bytes_ok if both sides read right afterwards,
 * *swap the group's memory.swap.current at the end.
 */
static int overrun(const char *cg, int use_fork, int allow_swap, int *done, int *bytes_ok, long long *swap,
		   long long *left)
{
	struct agent p, q;
	char *a, *b;
	long long k0, base;
	long r;

	*done = *bytes_ok = 0;
	*swap = 0;
	if (cg_create(cg))
		return -1;
	cg_write(cg, "memory.max", "max");
	cg_write(cg, "memory.swap.max", allow_swap ? "max" : "0");
	agent_spawn(&p);
	cg_move(cg, p.pid);
	if (!use_fork) {
		agent_spawn(&q);
		cg_move(cg, q.pid);
	}
	agent_do(&p, AG_GETPID, 0, 0, 0);
	usleep(200000);
	base = cg_read(cg, "memory.current");
	k0 = cg_key(cg, "memory.events", "oom_kill");
	a = (char *)agent_do(&p, AG_MMAP, SZ, 0, 0);
	agent_do(&p, AG_FILL, (unsigned long)a, SZ, 40);
	if (use_fork) {
		agent_do(&p, AG_FORK, 0, 0, 0);
		b = a;
	} else {
		b = (char *)agent_do(&q, AG_CLONE_FROM, (unsigned long)a, SZ, p.pid);
	}
	{
		char v[32];
		snprintf(v, sizeof(v), "%lld", base + SZ + SZ / 2);
		cg_write(cg, "memory.max", v);
	}
	if (use_fork)
		r = agent_do(&p, AG_TO_CHILD | AG_FILL, (unsigned long)b, SZ, 41);
	else
		r = agent_do(&q, AG_FILL, (unsigned long)b, SZ, 41);
	*done = (r == 0);
	if (*done) {
		long rq = use_fork ? agent_do(&p, AG_TO_CHILD | AG_CHECK, (unsigned long)b, SZ, 41)
				   : agent_do(&q, AG_CHECK, (unsigned long)b, SZ, 41);
		long rp = agent_do(&p, AG_CHECK, (unsigned long)a, SZ, 40);

		*bytes_ok = rq == 1 && rp == 1;
	}
	*swap = cg_read(cg, "memory.swap.current");
	r = cg_key(cg, "memory.events", "oom_kill") - k0;
	if (use_fork)
		agent_do(&p, AG_TO_CHILD | AG_EXIT, 0, 0, 0);
	else
		agent_stop(&q);
	agent_stop(&p);
	usleep(2200000);
	*left = cg_read(cg, "memory.current") - base;
	cg_remove(cg);
	return (int)r;
}

static void t_overrun(void)
{
	for (int allow_swap = 0; allow_swap < 2; allow_swap++) {
		int kf, kc, df, dc, bf, bc;
		long long sf, sc, lf, lc;

		kf = overrun("audit-mc-ofork", 1, allow_swap, &df, &bf, &sf, &lf);
		kc = overrun("audit-mc-oclone", 0, allow_swap, &dc, &bc, &sc, &lc);
		if (kf < 0 || kc < 0) {
			skip("no cgroup2 memory controller");
			return;
		}
		note("memory.max hit during CoW, swap %s: fork: oom_kill +%d, writes %s, bytes %s, swap %lld kB, left %lld kB; "
		     "clone: oom_kill +%d, writes %s, bytes %s, swap %lld kB, left %lld kB",
		     allow_swap ? "allowed" : "off", kf, df ? "done" : "killed", bf ? "ok" : "-", sf >> 10, lf >> 10,
		     kc, dc ? "done" : "killed", bc ? "ok" : "-", sc >> 10, lc >> 10);
		CHECK((kf > 0) == (kc > 0), "swap %d: OOM kill after fork %d, after the clone %d", allow_swap, kf, kc);
		CHECK(df == dc, "swap %d: the writer finished after fork: %d, after the clone: %d", allow_swap, df, dc);
		CHECK(bf == bc, "swap %d: bytes right after fork %d, after the clone %d", allow_swap, bf, bc);
		CHECK(llabs_(lc) <= STEP_TOL && llabs_(lf) <= STEP_TOL, "charged after exit: fork %lld kB, clone %lld kB",
		      lf >> 10, lc >> 10);
		if (!allow_swap)
			CHECK(kc > 0, "no OOM kill with swap off (the group cannot hold 2 x %lu MiB)", SZ / MiB);
		else
			CHECK(dc && bc && sc > 0, "swap allowed: the clone's writer did not complete through reclaim to swap");
	}
}

/*
 * A clone that must copy (KSM pages to another address: the port gives
 * the destination its own copies) charges the copies to the caller's
 * memcg.  The source is in audit-mc-A, the caller in audit-mc-B.
 */
static void t_copy_charged_to_caller(void)
{
	const size_t len = 4 * MiB;
	struct agent s, d;
	long long a0, b0, a1, b1;
	char *sa, *da;
	double t0;
	int merged = 0;

	if (cg_create("audit-mc-A") || cg_create("audit-mc-B")) {
		skip("no cgroup2 memory controller");
		return;
	}
	if (ksm_start()) {
		skip("no KSM");
		return;
	}
	agent_spawn(&s);
	agent_spawn(&d);
	cg_move("audit-mc-A", s.pid);
	cg_move("audit-mc-B", d.pid);
	sa = (char *)agent_do(&s, AG_MMAP, len, 0, 0);
	agent_do(&s, AG_MEMSET, (unsigned long)sa, len, 0x5a);
	agent_do(&s, AG_MADVISE, (unsigned long)sa, len, MADV_MERGEABLE);
	agent_do(&d, AG_MMAP, 64 * MiB, 0, 0);	/* so that d's clone lands elsewhere */
	for (t0 = now(); now() - t0 < 180; usleep(200000)) {
		merged = 0;
		for (size_t i = 0; i < len; i += pg)
			merged += kpf(pfn_of(s.pid, sa + i), KPF_KSM);
		if (merged == (int)(len / pg))
			break;
	}
	REQUIRE(merged == (int)(len / pg), "only %d/%lu source pages merged", merged, len / pg);
	write_file(KSM "run", "0");	/* else ksmd merges the clone's copies again */
	sleep(3);
	a0 = cg_read("audit-mc-A", "memory.current");
	b0 = cg_read("audit-mc-B", "memory.current");
	da = (char *)agent_do(&d, AG_CLONE_FROM, (unsigned long)sa, len, s.pid);
	REQUIRE((long)da > 0, "clone: %ld", (long)da);
	REQUIRE(da != sa, "the clone landed at the source address");
	CHECK(agent_do(&d, AG_ALLBYTES, (unsigned long)da, len, 0x5a) == 1, "clone bytes");
	CHECK(!kpf(pfn_of(d.pid, da), KPF_KSM), "the clone maps the KSM page");
	sleep(3);
	a1 = cg_read("audit-mc-A", "memory.current");
	b1 = cg_read("audit-mc-B", "memory.current");
	note("copies of %lu KSM pages: source's memcg %+lld kB, caller's memcg %+lld kB", len / pg, (a1 - a0) >> 10,
	     (b1 - b0) >> 10);
	CHECK(b1 - b0 >= (long long)len - (long long)STEP_TOL, "the caller's memcg was charged %lld kB for %lu kB of copies",
	      (b1 - b0) >> 10, len >> 10);
	CHECK(a1 - a0 <= (long long)STEP_TOL, "the source's memcg was charged %lld kB for the caller's copies",
	      (a1 - a0) >> 10);
	agent_stop(&d);
	agent_stop(&s);
	usleep(500000);
	cg_remove("audit-mc-A");
	cg_remove("audit-mc-B");
	write_file(KSM "run", "2");
}

int main(void)
{
	audit_init();
	printf("TAP version 13\n");
	run("memcg: memory.current / anon after clone, CoW, exit match fork()", t_fork_vs_clone);
	run("memcg: memory.max hit during CoW, swap off and on, as after fork()", t_overrun);
	run("memcg: pages a clone copies are charged to the caller's memcg", t_copy_charged_to_caller);
	return summary();
}
