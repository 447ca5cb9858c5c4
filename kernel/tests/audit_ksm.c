/*
 * audit_ksm.c - KSM and process_vm_mmap() (kernel/AUDIT.md, "KSM").
 * Runs in the test VM as root (kernel/audit-vm).  The source is an agent,
 * the tester's sibling.  ksmd runs with sleep_millisecs=20,
 * pages_to_scan=500; every wait is bounded (KSM_TIMEOUT seconds).
 *
 *   - a clone of a MADV_MERGEABLE range is itself mergeable; a page of the
 *     clone rewritten with the same bytes (a CoW break) merges with the
 *     source's page: one KSM page in two mms (kpageflags KSM bit, the same
 *     PFN on both sides, pages_shared / pages_sharing grow);
 *   - a write on either side breaks the merge: the writer gets its own page,
 *     the other side keeps the KSM page and its bytes;
 *   - a clone of KSM pages to another address gets its own copies (the port's
 *     choice: KSM's rmap only finds a stable page at its merged address):
 *     not KSM, right bytes, the source still merged, its mapcount unchanged;
 *   - a clone at the source's own address shares the KSM page as fork()
 *     would, and a write on it CoWs correctly;
 *   - KSM zero pages (use_zero_pages, 6.10+): a clone's are counted in the
 *     caller's mm (/proc/PID/ksm_stat) and uncounted by a write and munmap.
 * TAP output; exit status 0 only if every check passed.
 */
#include "audit.h"

#include <limits.h>

#define NP 16
#define KSM_TIMEOUT 180.0

static int kpage_is_ksm(pid_t pid, const void *addr)
{
	uint64_t pfn = pfn_of(pid, addr);

	return pfn && kpf(pfn, KPF_KSM);
}

static int vma_mergeable(pid_t pid, const void *addr)
{
	char path[64], line[512];
	unsigned long a = (unsigned long)addr, s, e;
	int in = 0, r = 0;
	FILE *f;

	snprintf(path, sizeof(path), "/proc/%d/smaps", pid ? pid : getpid());
	f = fopen(path, "r");
	if (!f)
		return 0;
	while (fgets(line, sizeof(line), f)) {
		if (sscanf(line, "%lx-%lx ", &s, &e) == 2 && strchr(line, '-') < strchr(line, ' ')) {
			in = (a >= s && a < e);
			continue;
		}
		if (in && !strncmp(line, "VmFlags:", 8)) {
			r = strstr(line, " mg") != NULL;
			break;
		}
	}
	fclose(f);
	return r;
}

static char *ksm_src;	/* the agent's mergeable, identical pages (t_clone_*) */
static uint64_t ksm_pfn;

static void t_merge_across(void)
{
	size_t len = NP * pg;
	char *s = (char *)agent_do(&src, AG_MMAP, len, 0, 0), *d;
	long sh0 = ksm_read("pages_shared"), sg0 = ksm_read("pages_sharing");
	char buf[65536];
	double t0;
	int merged = 0;
	long r;

	for (int i = 0; i < NP; i++)	/* NP different pages */
		agent_do(&src, AG_FILL, (unsigned long)(s + i * pg), pg, 10 + i);
	r = agent_do(&src, AG_MADVISE, (unsigned long)s, len, MADV_MERGEABLE);
	REQUIRE(r == 0, "MADV_MERGEABLE in the source: %ld", r);
	d = (char *)pvm(src.pid, s, len, NULL, 0);
	REQUIRE((long)d > 0, "clone: %s", strerror(errno));
	CHECK(vma_mergeable(0, d), "the clone's VMA lost VM_MERGEABLE");
	CHECK(madvise(d, len, MADV_MERGEABLE) == 0, "MADV_MERGEABLE on the clone: %s", strerror(errno));
	/* CoW-break every page of the clone with the bytes it already has */
	for (int i = 0; i < NP; i++) {
		uint64_t before = pfn_of(0, d + i * pg);

		memcpy(buf, d + i * pg, pg);
		memcpy(d + i * pg, buf, pg);
		CHECK(pfn_of(0, d + i * pg) != before, "page %d: rewrite did not CoW", i);
	}
	t0 = now();
	while (now() - t0 < KSM_TIMEOUT) {
		merged = 0;
		for (int i = 0; i < NP; i++)
			if (kpage_is_ksm(0, d + i * pg) &&
			    pfn_of(0, d + i * pg) == pfn_of(src.pid, s + i * pg))
				merged++;
		if (merged == NP)
			break;
		usleep(100000);
	}
	note("%d/%d pages of the clone merged with the source's after %.1f s; pages_shared %ld -> %ld, pages_sharing %ld -> %ld",
	     merged, NP, now() - t0, sh0, ksm_read("pages_shared"), sg0, ksm_read("pages_sharing"));
	REQUIRE(merged == NP, "only %d/%d pages merged across source and clone", merged, NP);
	CHECK(ksm_read("pages_shared") >= sh0 + NP, "pages_shared did not grow by %d", NP);
	CHECK(ksm_read("pages_sharing") >= sg0 + NP, "pages_sharing did not grow by %d", NP);
	for (int i = 0; i < NP; i++)
		CHECK(kpagecount(pfn_of(0, d + i * pg)) == 2, "KSM page %d mapcount %ld (want 2)", i,
		      kpagecount(pfn_of(0, d + i * pg)));

	/* a write on the clone breaks the merge of page 0 */
	{
		uint64_t k0 = pfn_of(0, d);

		d[100] = 'w';
		CHECK(pfn_of(0, d) != k0 && !kpage_is_ksm(0, d), "clone's write kept the KSM page");
		CHECK(pfn_of(src.pid, s) == k0 && kpage_is_ksm(src.pid, s), "source lost its KSM page 0");
		CHECK(agent_do(&src, AG_CHECK, (unsigned long)s, pg, 10) == 1, "source page 0 bytes after the clone's write");
		CHECK(d[100] == 'w' && (unsigned char)d[99] == pattern(10, 99) && (unsigned char)d[101] == pattern(10, 101),
		      "clone page 0 bytes after its CoW");
	}
	/* a write on the source breaks the merge of page 1 */
	{
		uint64_t k1 = pfn_of(0, d + pg);

		agent_do(&src, AG_WRITE1, (unsigned long)(s + pg + 7), 0, 'v');
		CHECK(pfn_of(src.pid, s + pg) != k1 && !kpage_is_ksm(src.pid, s + pg), "source's write kept the KSM page");
		CHECK(pfn_of(0, d + pg) == k1 && kpage_is_ksm(0, d + pg), "clone lost its KSM page 1");
		CHECK(check_fill(d + pg, pg, 11), "clone page 1 sees the source's write");
	}
	for (int i = 2; i < NP; i++)
		CHECK(check_fill(d + i * pg, pg, 10 + i), "clone page %d bytes", i);
	munmap(d, len);
	agent_do(&src, AG_MUNMAP, (unsigned long)s, len, 0);
}

/* identical pages in the source, merged into one KSM page */
static int make_ksm_source(void)
{
	size_t len = NP * pg;
	double t0 = now();
	int merged;

	/*
	 * Inside the tester's guard, so that a clone can be placed at the
	 * source's own address (test 3): the siblings' free areas coincide,
	 * and on 6.12 a small mmap of the agent lands where the tester has
	 * mappings of its own.
	 */
	ksm_src = (char *)agent_do(&src, AG_MMAP_AT, (unsigned long)(guard + GUARD_LEN / 2), len, 0);
	if ((long)ksm_src < 0)
		ksm_src = (char *)agent_do(&src, AG_MMAP, len, 0, 0);
	agent_do(&src, AG_MEMSET, (unsigned long)ksm_src, len, 0x77);
	if (agent_do(&src, AG_MADVISE, (unsigned long)ksm_src, len, MADV_MERGEABLE))
		return -1;
	do {
		merged = 0;
		ksm_pfn = pfn_of(src.pid, ksm_src);
		for (int i = 0; i < NP; i++)
			merged += kpage_is_ksm(src.pid, ksm_src + i * pg) &&
				  pfn_of(src.pid, ksm_src + i * pg) == ksm_pfn;
		if (merged == NP)
			return 0;
		usleep(100000);
	} while (now() - t0 < KSM_TIMEOUT);
	return -1;
}

static void t_clone_ksm_elsewhere(void)
{
	size_t len = NP * pg;
	long cnt, sharing;
	char *d;

	REQUIRE(make_ksm_source() == 0, "the source's %d identical pages did not merge within %.0f s", NP, KSM_TIMEOUT);
	cnt = kpagecount(ksm_pfn);
	sharing = ksm_read("pages_sharing");
	CHECK(cnt == NP, "KSM page mapcount %ld (want %d)", cnt, NP);
	/*
	 * ksmd paused while we look: the clone is VM_MERGEABLE, and ksmd
	 * would soon (rightly) merge its identical copies into the KSM page,
	 * at the clone's own address this time.
	 */
	write_file(KSM "run", "0");
	d = clone_elsewhere(src.pid, ksm_src, len);
	REQUIRE((long)d > 0, "clone: %s", strerror(errno));
	REQUIRE(d != ksm_src, "the clone landed at the source address");
	for (int i = 0; i < NP; i++) {
		uint64_t p = pfn_of(0, d + i * pg);

		CHECK(p && p != ksm_pfn, "clone page %d maps the KSM page at another address", i);
		CHECK(!kpf(p, KPF_KSM), "clone page %d is a KSM page", i);
		CHECK(kpagecount(p) == 1, "clone page %d: its own copy has mapcount %ld", i, kpagecount(p));
		CHECK(pfn_of(src.pid, ksm_src + i * pg) == ksm_pfn, "source page %d lost the KSM page", i);
	}
	CHECK(all_bytes(d, len, 0x77), "clone bytes of KSM pages");
	CHECK(kpagecount(ksm_pfn) == cnt, "KSM page mapcount %ld after the clone (was %ld)", kpagecount(ksm_pfn), cnt);
	CHECK(kpf(ksm_pfn, KPF_KSM), "source page no longer KSM");
	CHECK(ksm_read("pages_sharing") == sharing, "pages_sharing %ld -> %ld across the clone", sharing,
	      ksm_read("pages_sharing"));
	d[3] = 1;
	CHECK(agent_do(&src, AG_ALLBYTES, (unsigned long)ksm_src, len, 0x77) == 1, "source bytes after the clone's write");
	/* ksmd on again: the clone's copies (but page 0) merge at their own address */
	write_file(KSM "run", "1");
	{
		double t0 = now();
		int m = 0;

		while (now() - t0 < KSM_TIMEOUT) {
			m = 0;
			for (int i = 1; i < NP; i++)
				m += pfn_of(0, d + i * pg) == ksm_pfn;
			if (m == NP - 1)
				break;
			usleep(100000);
		}
		CHECK(m == NP - 1, "only %d/%d of the clone's copies merged into the KSM page", m, NP - 1);
		CHECK(kpagecount(ksm_pfn) == cnt + NP - 1, "KSM page mapcount %ld after the clone's copies merged (want %ld)",
		      kpagecount(ksm_pfn), cnt + NP - 1);
		CHECK(all_bytes(d + pg, len - pg, 0x77) && d[3] == 1, "clone bytes after the merge");
	}
	munmap(d, len);
	CHECK(kpagecount(ksm_pfn) == cnt, "KSM page mapcount %ld after munmap of the clone", kpagecount(ksm_pfn));
}

static void t_clone_ksm_same_address(void)
{
	size_t len = NP * pg;
	long cnt, r;
	char *d;

	if (!ksm_src || !kpf(ksm_pfn, KPF_KSM)) {
		skip("no merged source (previous test failed)");
		return;
	}
	if (!in_guard(ksm_src, len)) {
		skip("the source address is not free in the tester");
		return;
	}
	cnt = kpagecount(ksm_pfn);
	r = pvm(src.pid, ksm_src, len, ksm_src, PVMMAP_FIXED);
	REQUIRE(r == (long)ksm_src, "FIXED clone at the source address: %ld (%s)", r, strerror(errno));
	d = ksm_src;
	for (int i = 0; i < NP; i++)
		CHECK(pfn_of(0, d + i * pg) == ksm_pfn, "page %d: the same-address clone does not share the KSM page", i);
	CHECK(kpagecount(ksm_pfn) == cnt + NP, "KSM page mapcount %ld (want %ld)", kpagecount(ksm_pfn), cnt + NP);
	CHECK(all_bytes(d, len, 0x77), "bytes");
	d[pg + 1] = 2;
	CHECK(pfn_of(0, d + pg) != ksm_pfn && !kpf(pfn_of(0, d + pg), KPF_KSM), "write on the clone kept the KSM page");
	CHECK(d[pg + 1] == 2 && d[pg] == 0x77 && d[pg + 2] == 0x77, "clone bytes after CoW of a KSM page");
	CHECK(kpagecount(ksm_pfn) == cnt + NP - 1, "KSM page mapcount %ld after the CoW", kpagecount(ksm_pfn));
	CHECK(agent_do(&src, AG_ALLBYTES, (unsigned long)ksm_src, len, 0x77) == 1, "source bytes");
	/* give the range back to the guard */
	mmap(d, len, PROT_NONE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_FIXED | MAP_NORESERVE, -1, 0);
	CHECK(kpagecount(ksm_pfn) == cnt, "KSM page mapcount %ld after unmapping the clone (want %ld)",
	      kpagecount(ksm_pfn), cnt);
	CHECK(ksm_wait_scans(2, KSM_TIMEOUT) == 0, "ksmd stopped scanning");
	CHECK(kpf(ksm_pfn, KPF_KSM) && pfn_of(src.pid, ksm_src) == ksm_pfn, "source not merged after two more scans");
}

/*
 * The gap in the port's KSM choice.  The port never maps an existing KSM
 * page at another address, but ksmd can turn a page into a KSM page in
 * place (try_to_merge_one_page() with kpage == NULL) after it was cloned
 * to another address.  If the clone's VMA is VM_MERGEABLE, ksmd's scan of
 * the clone then adds an rmap_item for the clone's address and all is well;
 * if it is not (the source became mergeable after the clone), the clone maps
 * a KSM page at an address no rmap_item records: rmap_walk_ksm() cannot
 * find that mapping (after fork() the child's mapping sits at the same
 * address and the "search_new_forks" pass finds it).
 *
 * Q at s, P at s + pg, identical; only P is cloned (to d); then the source
 * range becomes mergeable; ksmd scans Q first and P second, so without the
 * port's ksm.c hunk P becomes the KSM page in place, mapped at d too.  With
 * it, P is left alone while the clone maps it, and merges once it is gone.
 */
static void t_ksm_in_place_after_clone(void)
{
	size_t len = 2 * pg;
	char *s, *d;
	uint64_t p;

	write_file(KSM "run", "1");
	s = (char *)agent_do(&src, AG_MMAP, len, 0, 0);
	agent_do(&src, AG_MEMSET, (unsigned long)s, len, 0x3c);
	d = clone_elsewhere(src.pid, s + pg, pg);
	REQUIRE((long)d > 0, "clone: %s", strerror(errno));
	REQUIRE(!vma_mergeable(0, d), "clone mergeable");
	p = pfn_of(0, d);
	REQUIRE(p == pfn_of(src.pid, s + pg), "the clone does not share P");
	agent_do(&src, AG_MADVISE, (unsigned long)s, len, MADV_MERGEABLE);
	/* a page needs two scans to enter the unstable tree; allow four */
	CHECK(ksm_wait_scans(4, KSM_TIMEOUT) == 0, "ksmd stopped scanning");
	note("after 4 scans: source pfns %#llx %#llx (KSM %d %d); P was %#llx; the clone maps %#llx (KSM %d)",
	     (unsigned long long)pfn_of(src.pid, s), (unsigned long long)pfn_of(src.pid, s + pg),
	     kpf(pfn_of(src.pid, s), KPF_KSM), kpf(pfn_of(src.pid, s + pg), KPF_KSM), (unsigned long long)p,
	     (unsigned long long)pfn_of(0, d), kpf(pfn_of(0, d), KPF_KSM));
	CHECK(!kpf(pfn_of(0, d), KPF_KSM) || vma_mergeable(0, d),
	      "the clone maps a KSM page at %p (the source's rmap_item is at %p) in a VMA ksmd does not scan",
	      (void *)d, (void *)(s + pg));
	CHECK(all_bytes(d, pg, 0x3c), "clone bytes");
	CHECK(agent_do(&src, AG_ALLBYTES, (unsigned long)s, len, 0x3c) == 1, "source bytes");
	d[0] = 1;
	CHECK(agent_do(&src, AG_ALLBYTES, (unsigned long)s, len, 0x3c) == 1, "source bytes after the clone's write");
	munmap(d, pg);
	/* P mapped once again: it may become a KSM page in place now */
	CHECK(ksm_wait_scans(4, KSM_TIMEOUT) == 0, "ksmd stopped scanning");
	CHECK(kpf(pfn_of(src.pid, s), KPF_KSM) && pfn_of(src.pid, s) == pfn_of(src.pid, s + pg),
	      "the source's two identical pages did not merge once the clone was gone");
	agent_do(&src, AG_MUNMAP, (unsigned long)s, len, 0);
}

/* "ksm_zero_pages N" of /proc/PID/ksm_stat; LONG_MIN if the kernel has none */
static long ksm_stat_zero_pages(pid_t pid)
{
	char path[64], line[128];
	long v = LONG_MIN;
	FILE *f;

	snprintf(path, sizeof(path), "/proc/%d/ksm_stat", pid ? pid : getpid());
	f = fopen(path, "r");
	if (!f)
		return LONG_MIN;
	while (fgets(line, sizeof(line), f))
		if (!strncmp(line, "ksm_zero_pages ", 15))
			v = strtol(line + 15, NULL, 10);
	fclose(f);
	return v;
}

/*
 * KSM-placed zero pages (use_zero_pages=1) are counted per mm since 6.10:
 * /proc/PID/ksm_stat ksm_zero_pages and the sysfs total, decremented when
 * such a PTE is unmapped or written.  fork() inherits the count with the
 * mm; a clone must count the zero pages it maps in the caller's mm, or
 * unmapping them there makes it negative (the 6.12 port does, in
 * copy_present_ptes()).
 */
static void t_ksm_zero_pages(void)
{
	size_t len = NP * pg;
	long z0, g0, zc, gc, n = 0;
	char *s, *d;
	double t0;

	if (ksm_read("ksm_zero_pages") < 0 || ksm_stat_zero_pages(0) == LONG_MIN) {
		skip("no per-mm KSM zero-page counts (Linux 6.10+)");
		return;
	}
	REQUIRE(write_file(KSM "use_zero_pages", "1") == 0, "cannot set use_zero_pages");
	s = (char *)agent_do(&src, AG_MMAP, len, 0, 0);
	agent_do(&src, AG_MEMSET, (unsigned long)s, len, 0);	/* zero-filled, present */
	agent_do(&src, AG_MADVISE, (unsigned long)s, len, MADV_MERGEABLE);
	for (t0 = now(); now() - t0 < KSM_TIMEOUT; usleep(100000))
		if ((n = ksm_stat_zero_pages(src.pid)) >= NP)
			break;
	note("the source's ksm_zero_pages: %ld after %.1f s", n, now() - t0);
	REQUIRE(n >= NP, "only %ld of %d zero-filled source pages became KSM zero pages", n, NP);
	write_file(KSM "run", "0");	/* nothing else merges while we count */
	z0 = ksm_stat_zero_pages(0);
	g0 = ksm_read("ksm_zero_pages");
	d = clone_elsewhere(src.pid, s, len);
	REQUIRE((long)d > 0, "clone: %s", strerror(errno));
	CHECK(all_bytes(d, len, 0), "clone bytes");
	CHECK(pfn_of(0, d) && kpf(pfn_of(0, d), KPF_ZERO_PAGE), "the clone does not map the zero page");
	zc = ksm_stat_zero_pages(0);
	gc = ksm_read("ksm_zero_pages");
	note("caller's ksm_zero_pages %ld -> %ld, total %ld -> %ld after the clone", z0, zc, g0, gc);
	CHECK(zc == z0 + NP, "caller's ksm_zero_pages %ld after cloning %d KSM zero pages (was %ld)", zc, NP, z0);
	CHECK(gc == g0 + NP, "total ksm_zero_pages %ld after the clone (was %ld)", gc, g0);
	d[0] = 1;	/* a write replaces one zero page: counted down once */
	CHECK(ksm_stat_zero_pages(0) == z0 + NP - 1, "caller's ksm_zero_pages %ld after a write (want %ld)",
	      ksm_stat_zero_pages(0), z0 + NP - 1);
	munmap(d, len);
	CHECK(ksm_stat_zero_pages(0) == z0, "caller's ksm_zero_pages %ld after munmap (want %ld)",
	      ksm_stat_zero_pages(0), z0);
	CHECK(ksm_read("ksm_zero_pages") == g0, "total ksm_zero_pages %ld after munmap (want %ld)",
	      ksm_read("ksm_zero_pages"), g0);
	CHECK(ksm_stat_zero_pages(src.pid) == n, "the source's count changed: %ld, was %ld",
	      ksm_stat_zero_pages(src.pid), n);
	agent_do(&src, AG_MUNMAP, (unsigned long)s, len, 0);
	write_file(KSM "use_zero_pages", "0");
	write_file(KSM "run", "1");
}

static void body(void)
{
	run("ksm: source and clone pages merge; writes on either side break the merge", t_merge_across);
	run("ksm: clone of KSM pages to another address gets own copies, source stays merged", t_clone_ksm_elsewhere);
	run("ksm: clone of KSM pages at the same address shares them (as fork), CoW", t_clone_ksm_same_address);
	run("ksm: a page cloned elsewhere is not made a KSM page in place (KSM's rmap would miss the clone)",
	    t_ksm_in_place_after_clone);
	run("ksm: KSM zero pages a clone maps are counted in the caller's mm, and uncounted on unmap",
	    t_ksm_zero_pages);
}

int main(void)
{
	int rc;

	audit_init();
	printf("TAP version 13\n");
	if (ksm_start()) {
		printf("1..0 # SKIP no KSM\n");
		return 0;
	}
	rc = run_with_sibling_source(body);
	write_file(KSM "run", "2");	/* unmerge everything, stop */
	return rc;
}
