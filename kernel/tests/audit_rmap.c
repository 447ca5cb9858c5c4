/*
 * audit_rmap.c - the reverse map over pages that process_vm_mmap() shares
 * between unrelated mms and twice within one mm (kernel/AUDIT.md, "rmap").
 * Runs in the test VM as root with swap on (kernel/audit-vm sets up zram).
 *
 * The source is an agent (audit.h), the tester's sibling.  Checks, on
 * /proc/PID/pagemap (PFN, swap and exclusive bits), /proc/kpagecount
 * (mapcount) and /proc/kpageflags, and on the bytes:
 *   - mapcounts after a clone, after a CoW break on either side, after munmap
 *     of either side, for a clone from the sibling and from the caller itself;
 *   - a swapped-out source page: the clone gets the swap entry, both read it
 *     back, and then share the one swap-cache page;
 *   - reclaim of a page mapped three times (twice in the source, once in the
 *     tester) unmaps it from every mapping (memory.reclaim of the source's
 *     cgroup), and every mapping reads the right bytes afterwards;
 *   - MADV_PAGEOUT skips a page another mm maps, after a clone exactly as
 *     after fork() (6.1 madvise_cold_or_pageout_pte_range()).
 * TAP output; exit status 0 only if every check passed.
 */
#include "audit.h"

#define NPAGES 8

/*
 * MADV_PAGEOUT in the agent until every page of the range is a swap entry:
 * a page just faulted in may still sit in another CPU's LRU-add batch, and
 * madvise_cold_or_pageout_pte_range() skips pages not on the LRU yet.
 * Returns the number of calls, or -1.
 */
static int agent_pageout(char *s, size_t len)
{
	for (int n = 1; n <= 20; n++) {
		int all = 1;

		agent_do(&src, AG_MADVISE, (unsigned long)s, len, MADV_PAGEOUT);
		for (size_t i = 0; i < len; i += pg)
			if (!swapped(src.pid, s + i))
				all = 0;
		if (all)
			return n;
		usleep(50000);
	}
	return -1;
}

static void t_sibling_mapcount(void)
{
	size_t len = NPAGES * pg;
	char *s = (char *)agent_do(&src, AG_MMAP, len, 0, 0);
	uint64_t spfn[NPAGES];
	char *d, *d2;
	long r;

	agent_do(&src, AG_FILL, (unsigned long)s, len, 1);
	for (int i = 0; i < NPAGES; i++) {
		spfn[i] = pfn_of(src.pid, s + i * pg);
		REQUIRE(spfn[i], "source page %d not present", i);
		CHECK(kpagecount(spfn[i]) == 1, "source page %d mapcount %ld before the clone", i, kpagecount(spfn[i]));
		CHECK(kpf(spfn[i], KPF_ANON), "source page %d not anon", i);
		CHECK(pagemap(src.pid, (unsigned long)(s + i * pg)) & PM_EXCLUSIVE, "source page %d not exclusive", i);
	}
	d = clone_elsewhere(src.pid, s, len);
	REQUIRE((long)d > 0, "clone: %s", strerror(errno));
	CHECK(d != s, "the clone landed at the source address");
	for (int i = 0; i < NPAGES; i++) {
		CHECK(pfn_of(0, d + i * pg) == spfn[i], "clone page %d: pfn %#llx, source %#llx", i,
		      (unsigned long long)pfn_of(0, d + i * pg), (unsigned long long)spfn[i]);
		CHECK(kpagecount(spfn[i]) == 2, "page %d mapcount %ld after the clone (want 2)", i, kpagecount(spfn[i]));
		CHECK(!(pagemap(0, (unsigned long)(d + i * pg)) & PM_EXCLUSIVE), "clone page %d exclusive", i);
		CHECK(!(pagemap(src.pid, (unsigned long)(s + i * pg)) & PM_EXCLUSIVE), "source page %d still exclusive", i);
	}
	CHECK(check_fill(d, len, 1), "clone bytes wrong");

	/* CoW break on the clone's side: page 0 */
	d[5] = 'x';
	CHECK(pfn_of(0, d) && pfn_of(0, d) != spfn[0], "clone page 0 kept the source's page after a write");
	CHECK(kpagecount(pfn_of(0, d)) == 1, "clone's new page 0 mapcount %ld", kpagecount(pfn_of(0, d)));
	CHECK(kpagecount(spfn[0]) == 1, "source page 0 mapcount %ld after the clone's CoW", kpagecount(spfn[0]));
	CHECK(agent_do(&src, AG_CHECK, (unsigned long)s, pg, 1) == 1, "source page 0 changed by the clone's write");
	CHECK(d[5] == 'x' && (unsigned char)d[4] == pattern(1, 4) && (unsigned char)d[6] == pattern(1, 6),
	      "clone page 0 bytes after CoW");

	/* CoW break on the source's side: page 1 */
	agent_do(&src, AG_WRITE1, (unsigned long)(s + pg + 9), 0, 'y');
	CHECK(pfn_of(src.pid, s + pg) != spfn[1], "source page 1 kept its page after its own write");
	CHECK(pfn_of(0, d + pg) == spfn[1], "clone page 1 lost the original page");
	CHECK(kpagecount(spfn[1]) == 1, "original page 1 mapcount %ld after the source's CoW", kpagecount(spfn[1]));
	{
		int ok = 1;
		for (long i = 0; i < pg; i++)
			if ((unsigned char)d[pg + i] != pattern(1, pg + i))
				ok = 0;
		CHECK(ok, "clone page 1 sees the source's write");
	}

	/* munmap of the clone: the source is the only mapper again */
	munmap(d, len);
	for (int i = 2; i < NPAGES; i++)
		CHECK(kpagecount(spfn[i]) == 1, "page %d mapcount %ld after munmap of the clone", i, kpagecount(spfn[i]));

	/* munmap of the source: the clone is the only mapper */
	d2 = (char *)pvm(src.pid, s, len, NULL, 0);
	REQUIRE((long)d2 > 0, "second clone: %s", strerror(errno));
	CHECK(kpagecount(spfn[3]) == 2, "page 3 mapcount %ld after the second clone", kpagecount(spfn[3]));
	r = agent_do(&src, AG_MUNMAP, (unsigned long)s, len, 0);
	CHECK(r == 0, "munmap in the source: %ld", r);
	for (int i = 2; i < NPAGES; i++) {
		CHECK(kpagecount(spfn[i]) == 1, "page %d mapcount %ld after munmap of the source", i, kpagecount(spfn[i]));
		CHECK(pagemap(0, (unsigned long)(d2 + i * pg)) & PM_EXCLUSIVE, "clone page %d not exclusive after the source left", i);
	}
	{
		int ok = 1;
		for (size_t i = 2 * pg; i < len; i++)
			if ((unsigned char)d2[i] != pattern(1, i))
				ok = 0;
		CHECK(ok, "second clone bytes wrong after the source unmapped");
	}
	d2[3 * pg] = 'z';	/* sole mapper: the write reuses the page */
	CHECK(pfn_of(0, d2 + 3 * pg) == spfn[3], "sole mapper's write copied the page (reuse expected, as after fork)");
	munmap(d2, len);
}

static void t_self_mapcount(void)
{
	size_t len = NPAGES * pg;
	char *s = map_anon(len), *d, *d2;
	uint64_t spfn[NPAGES];

	fill(s, len, 2);
	for (int i = 0; i < NPAGES; i++)
		spfn[i] = pfn_of(0, s + i * pg);
	d = (char *)pvm(getpid(), s, len, NULL, 0);
	REQUIRE((long)d > 0, "self clone: %s", strerror(errno));
	d2 = (char *)pvm(getpid(), s, len, NULL, 0);
	REQUIRE((long)d2 > 0, "second self clone: %s", strerror(errno));
	for (int i = 0; i < NPAGES; i++) {
		CHECK(pfn_of(0, d + i * pg) == spfn[i] && pfn_of(0, d2 + i * pg) == spfn[i], "page %d: pfns differ", i);
		CHECK(kpagecount(spfn[i]) == 3, "page %d mapcount %ld with two self clones (want 3)", i, kpagecount(spfn[i]));
	}
	CHECK(check_fill(d, len, 2) && check_fill(d2, len, 2), "self clone bytes");
	munmap(d2, len);
	CHECK(kpagecount(spfn[4]) == 2, "mapcount %ld after munmap of one self clone", kpagecount(spfn[4]));

	d[0] = 'a';		/* CoW in the clone */
	s[pg] = 'b';		/* CoW in the source */
	CHECK(pfn_of(0, d) != spfn[0] && pfn_of(0, s) == spfn[0], "clone's write: page 0 pfns");
	CHECK(pfn_of(0, s + pg) != spfn[1] && pfn_of(0, d + pg) == spfn[1], "source's write: page 1 pfns");
	CHECK(kpagecount(spfn[0]) == 1 && kpagecount(spfn[1]) == 1, "mapcounts after the CoW breaks: %ld %ld",
	      kpagecount(spfn[0]), kpagecount(spfn[1]));
	CHECK((unsigned char)s[0] == pattern(2, 0) && (unsigned char)d[pg] == pattern(2, pg),
	      "CoW leaked a write to the other side");
	munmap(d, len);
	for (int i = 2; i < NPAGES; i++)
		CHECK(kpagecount(spfn[i]) == 1, "page %d mapcount %ld after munmap", i, kpagecount(spfn[i]));
	munmap(s, len);
}

/* wait for swap to be on (the runner does swapon) */
static int have_swap(void)
{
	return meminfo_kb("SwapTotal") > 0;
}

static void t_swapped_source(void)
{
	size_t len = NPAGES * pg;
	char *s, *d;
	long r;

	if (!have_swap()) {
		skip("no swap (kernel/audit-vm sets up zram)");
		return;
	}
	s = (char *)agent_do(&src, AG_MMAP, len, 0, 0);
	agent_do(&src, AG_FILL, (unsigned long)s, len, 3);
	r = agent_pageout(s, len);
	REQUIRE(r > 0, "MADV_PAGEOUT did not swap the unshared source range out");
	d = (char *)pvm(src.pid, s, len, NULL, 0);
	REQUIRE((long)d > 0, "clone: %s", strerror(errno));
	for (int i = 0; i < NPAGES; i++)
		CHECK(swapped(0, d + i * pg), "clone page %d: no swap entry (pagemap %#llx)", i,
		      (unsigned long long)pagemap(0, (unsigned long)(d + i * pg)));
	CHECK(check_fill(d, len, 3), "clone read back wrong bytes from swap");
	CHECK(agent_do(&src, AG_CHECK, (unsigned long)s, len, 3) == 1, "source read back wrong bytes from swap");
	for (int i = 0; i < NPAGES; i++) {
		uint64_t a = pfn_of(0, d + i * pg), b = pfn_of(src.pid, s + i * pg);

		CHECK(a && a == b, "page %d: after swap-in clone pfn %#llx, source %#llx (one swap-cache page expected)",
		      i, (unsigned long long)a, (unsigned long long)b);
		CHECK(kpagecount(a) == 2, "page %d: mapcount %ld after swap-in on both sides", i, kpagecount(a));
	}
	d[0] = 1;
	CHECK(agent_do(&src, AG_CHECK, (unsigned long)s, len, 3) == 1, "clone's write after swap-in reached the source");
	munmap(d, len);
	agent_do(&src, AG_MUNMAP, (unsigned long)s, len, 0);
}

/* MADV_PAGEOUT leaves pages another mm maps: compare the clone with fork(). */
static void t_pageout_shared(void)
{
	size_t len = NPAGES * pg;
	char *s, *d;
	int fork_present = 0, clone_present = 0;
	int p[2];
	pid_t c;

	if (!have_swap()) {
		skip("no swap");
		return;
	}
	/* fork: the parent pages out a range its child still maps */
	s = map_anon(len);
	fill(s, len, 4);
	if (pipe(p))
		exit(2);
	c = fork();
	if (c == 0) {
		char x;
		close(p[1]);
		if (read(p[0], &x, 1) < 0)
			_exit(3);
		_exit(check_fill(s, len, 4) ? 0 : 1);
	}
	close(p[0]);
	for (int n = 0; n < 5; n++) {
		madvise(s, len, MADV_PAGEOUT);
		usleep(50000);
	}
	for (int i = 0; i < NPAGES; i++)
		fork_present += !!pfn_of(0, s + i * pg);
	close(p[1]);
	{
		int st;
		waitpid(c, &st, 0);
		CHECK(WIFEXITED(st) && WEXITSTATUS(st) == 0, "fork child read wrong bytes");
	}
	munmap(s, len);

	/* clone: the sibling pages out a range the tester maps */
	s = (char *)agent_do(&src, AG_MMAP, len, 0, 0);
	agent_do(&src, AG_FILL, (unsigned long)s, len, 4);
	d = (char *)pvm(src.pid, s, len, NULL, 0);
	REQUIRE((long)d > 0, "clone: %s", strerror(errno));
	for (int n = 0; n < 5; n++) {
		agent_do(&src, AG_MADVISE, (unsigned long)s, len, MADV_PAGEOUT);
		usleep(50000);
	}
	for (int i = 0; i < NPAGES; i++)
		clone_present += !!pfn_of(src.pid, s + i * pg);
	note("MADV_PAGEOUT of a shared range: %d/%d pages left present after fork, %d/%d after the clone",
	     fork_present, NPAGES, clone_present, NPAGES);
	CHECK(fork_present == clone_present, "fork leaves %d pages present, the clone %d", fork_present, clone_present);
	CHECK(clone_present == NPAGES, "MADV_PAGEOUT swapped out %d pages the clone maps", NPAGES - clone_present);
	CHECK(check_fill(d, len, 4), "clone bytes");
	CHECK(agent_do(&src, AG_CHECK, (unsigned long)s, len, 4) == 1, "source bytes");
	/* control: once the clone is gone the same call swaps the range out */
	munmap(d, len);
	CHECK(agent_pageout(s, len) > 0, "MADV_PAGEOUT of the range, no longer shared, did not swap it out");
	CHECK(agent_do(&src, AG_CHECK, (unsigned long)s, len, 4) == 1, "source bytes after swap-in");
	agent_do(&src, AG_MUNMAP, (unsigned long)s, len, 0);
}

/*
 * Reclaim of pages mapped by two mms, twice in one of them: the source's
 * cgroup is told to reclaim (memory.reclaim), shrink_folio_list() ->
 * try_to_unmap() walks the anon_vma and must unmap every mapping.
 */
static void t_reclaim_three_mappings(void)
{
	const char *cg = "audit-rmap";
	size_t len = NPAGES * pg;
	char *s, *s2, *d;
	int all = 0, tries;
	uint64_t pfn;

	if (!have_swap()) {
		skip("no swap");
		return;
	}
	if (cg_create(cg)) {
		skip("no cgroup2 memory controller");
		return;
	}
	REQUIRE(cg_move(cg, src.pid) == 0, "cannot move the source into %s", cg);
	s = (char *)agent_do(&src, AG_MMAP, len, 0, 0);
	agent_do(&src, AG_FILL, (unsigned long)s, len, 5);
	s2 = (char *)agent_do(&src, AG_CLONE_SELF, (unsigned long)s, len, 0);
	REQUIRE((long)s2 > 0, "self clone in the source: %ld", (long)s2);
	d = (char *)pvm(src.pid, s, len, NULL, 0);
	REQUIRE((long)d > 0, "clone: %s", strerror(errno));
	pfn = pfn_of(src.pid, s);
	CHECK(kpagecount(pfn) == 3, "mapcount %ld with three mappings", kpagecount(pfn));

	for (tries = 0; tries < 20 && !all; tries++) {
		cg_write(cg, "memory.reclaim", "64M");	/* -EAGAIN when short: fine */
		all = 1;
		for (int i = 0; i < NPAGES; i++)
			if (!swapped(src.pid, s + i * pg) || !swapped(src.pid, s2 + i * pg) ||
			    !swapped(0, d + i * pg))
				all = 0;
	}
	note("memory.reclaim passes until all three mappings were swap entries: %d", tries);
	CHECK(all, "after %d memory.reclaim passes some mapping still maps a page", tries);
	if (all) {
		for (int i = 0; i < NPAGES; i++)
			CHECK(!pfn_of(src.pid, s + i * pg) && !pfn_of(src.pid, s2 + i * pg) && !pfn_of(0, d + i * pg),
			      "page %d present though swapped", i);
	}
	CHECK(check_fill(d, len, 5), "tester's clone bytes after swap-in");
	CHECK(agent_do(&src, AG_CHECK, (unsigned long)s2, len, 5) == 1, "source's self clone bytes after swap-in");
	CHECK(agent_do(&src, AG_CHECK, (unsigned long)s, len, 5) == 1, "source bytes after swap-in");
	for (int i = 0; i < NPAGES; i++) {
		uint64_t a = pfn_of(0, d + i * pg);
		CHECK(a && a == pfn_of(src.pid, s + i * pg) && a == pfn_of(src.pid, s2 + i * pg),
		      "page %d: the three mappings do not share one page after swap-in", i);
		CHECK(kpagecount(a) == 3, "page %d mapcount %ld after swap-in (want 3)", i, kpagecount(a));
	}
	munmap(d, len);
	agent_do(&src, AG_MUNMAP, (unsigned long)s2, len, 0);
	agent_do(&src, AG_MUNMAP, (unsigned long)s, len, 0);
	cg_move(NULL, src.pid);
	cg_remove(cg);
}

static void body(void)
{
	run("rmap: sibling clone, mapcounts before/after CoW on either side/after munmap", t_sibling_mapcount);
	run("rmap: clone from self (a page twice and three times in one mm)", t_self_mapcount);
	run("rmap: swapped-out source page, swap entry duplicated, one swap-cache page after", t_swapped_source);
	run("rmap: MADV_PAGEOUT of a shared range, clone as fork", t_pageout_shared);
	run("rmap: reclaim unmaps a page from 2 mms (3 mappings), bytes right after", t_reclaim_three_mappings);
}

int main(void)
{
	audit_init();
	printf("TAP version 13\n");
	return run_with_sibling_source(body);
}
