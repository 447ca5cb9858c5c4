/*
 * audit_thp.c - transparent huge pages and process_vm_mmap()
 * (kernel/AUDIT.md, "THP split and collapse").  Runs in the test VM as
 * root (kernel/audit-vm).  The source is an agent, the tester's sibling.
 *
 *   - a PMD-mapped source (MADV_HUGEPAGE; AnonHugePages in smaps, the
 *     kpageflags THP bit) cloned to a 2 MiB aligned destination: the PMD is
 *     copied (destination AnonHugePages 2048 kB, the same PFN, mapcount 2),
 *     the source stays PMD-mapped; a write in the destination splits only
 *     the destination's PMD and CoWs one 4K page; MADV_COLLAPSE on the
 *     destination gives it its own huge page; bytes right on both sides;
 *   - cloned to an unaligned destination: the source PMD is split, the
 *     destination gets PTEs of the same subpages (no AnonHugePages), bytes
 *     right; then a collapse of the source (MADV_COLLAPSE, 6.1 has it; else
 *     khugepaged sped up) and the bytes still right on both sides;
 *   - the huge zero page (a read-only touch of a THP range) cloned aligned
 *     (the huge zero PMD is shared) and unaligned (split to 4K zero pages),
 *     reads give zeroes, a write in the clone breaks away, the source keeps
 *     the huge zero page.
 * TAP output; exit status 0 only if every check passed.
 */
#include "audit.h"

#define THP "/sys/kernel/mm/transparent_hugepage/"

static char *src_thp(unsigned seed)
{
	char *s = (char *)agent_do(&src, AG_MMAP, HPAGE, HPAGE, 0);

	agent_do(&src, AG_MADVISE, (unsigned long)s, HPAGE, MADV_HUGEPAGE);
	if (seed)
		agent_do(&src, AG_FILL, (unsigned long)s, HPAGE, seed);
	else
		agent_do(&src, AG_TOUCH, (unsigned long)s, HPAGE, 0);
	return s;
}

static int pmd_mapped(pid_t pid, const void *addr)
{
	return smaps_anon_huge_kb(pid, addr) >= 2048;
}

/* MADV_COLLAPSE in the agent (or here), retried; else khugepaged */
static int collapse(pid_t pid, char *addr)
{
	double t0 = now();
	long r = -EINVAL;

	for (int i = 0; i < 5; i++) {
		r = pid == src.pid ? agent_do(&src, AG_MADVISE, (unsigned long)addr, HPAGE, MADV_COLLAPSE)
				   : (madvise(addr, HPAGE, MADV_COLLAPSE) ? -errno : 0);
		if (r == 0 && pmd_mapped(pid, addr))
			return 0;
		if (r == -EINVAL)
			break;
		usleep(100000);
	}
	note("MADV_COLLAPSE: %ld, waiting for khugepaged", r);
	write_file(THP "khugepaged/scan_sleep_millisecs", "100");
	write_file(THP "khugepaged/alloc_sleep_millisecs", "100");
	write_file(THP "khugepaged/pages_to_scan", "4096");
	write_file(THP "khugepaged/max_ptes_shared", "511");
	while (now() - t0 < 180) {
		if (pmd_mapped(pid, addr))
			return 0;
		usleep(200000);
	}
	return -1;
}

static void t_aligned(void)
{
	char *s = src_thp(20), *d;
	uint64_t spfn = pfn_of(src.pid, s);
	long r;

	if (!pmd_mapped(src.pid, s) || !kpf(spfn, KPF_THP)) {
		skip("the source got no THP (AnonHugePages 0)");
		return;
	}
	d = free_area(HPAGE, HPAGE);
	r = pvm(src.pid, s, HPAGE, d, PVMMAP_FIXED_NOREPLACE);
	REQUIRE(r == (long)d, "aligned clone: %ld (%s)", r, strerror(errno));
	CHECK(smaps_anon_huge_kb(0, d) == 2048, "destination AnonHugePages %ld kB (want 2048: PMD copied)",
	      smaps_anon_huge_kb(0, d));
	CHECK(pfn_of(0, d) == spfn && kpf(spfn, KPF_THP), "destination does not map the source's THP");
	CHECK(pfn_of(0, d + 300 * pg) == spfn + 300, "subpage 300 pfn");
	CHECK(kpagecount(spfn) == 2, "THP mapcount %ld (want 2)", kpagecount(spfn));
	CHECK(pmd_mapped(src.pid, s), "the source's PMD was split by an aligned clone");
	CHECK(check_fill(d, HPAGE, 20), "destination bytes");

	d[5 * pg + 3] = 'Q';	/* CoW: the destination's PMD splits, one page is copied */
	CHECK(!pmd_mapped(0, d), "destination still PMD-mapped after a CoW write");
	CHECK(pmd_mapped(src.pid, s), "the source's PMD split by the destination's CoW");
	CHECK(pfn_of(0, d + 5 * pg) != spfn + 5 && pfn_of(0, d + 6 * pg) == spfn + 6, "CoW pfns");
	CHECK(agent_do(&src, AG_CHECK, (unsigned long)s, HPAGE, 20) == 1, "source bytes after the destination's write");
	CHECK(d[5 * pg + 3] == 'Q' && (unsigned char)d[5 * pg + 4] == pattern(20, 5 * pg + 4), "destination bytes after CoW");

	CHECK(collapse(0, d) == 0, "destination did not collapse back into a THP");
	CHECK(pfn_of(0, d) != spfn, "collapsed destination maps the source's THP");
	CHECK(d[5 * pg + 3] == 'Q', "destination lost its write in the collapse");
	d[5 * pg + 3] = (char)pattern(20, 5 * pg + 3);
	CHECK(check_fill(d, HPAGE, 20), "destination bytes after collapse");
	CHECK(agent_do(&src, AG_CHECK, (unsigned long)s, HPAGE, 20) == 1, "source bytes after the destination's collapse");
	munmap(d, HPAGE);
	CHECK(kpagecount(spfn) == 1, "THP mapcount %ld after munmap of the clone", kpagecount(spfn));
	agent_do(&src, AG_MUNMAP, (unsigned long)s, HPAGE, 0);
}

static void t_unaligned(void)
{
	char *s = src_thp(21), *area, *d;
	uint64_t spfn = pfn_of(src.pid, s);
	long r;

	if (!pmd_mapped(src.pid, s)) {
		skip("the source got no THP");
		return;
	}
	area = free_area(2 * HPAGE, HPAGE);
	d = area + pg;
	r = pvm(src.pid, s, HPAGE, d, PVMMAP_FIXED_NOREPLACE);
	REQUIRE(r == (long)d, "unaligned clone: %ld (%s)", r, strerror(errno));
	CHECK(smaps_anon_huge_kb(0, d) == 0, "unaligned destination has AnonHugePages %ld kB", smaps_anon_huge_kb(0, d));
	CHECK(!pmd_mapped(src.pid, s), "the source PMD was not split");
	CHECK(check_fill(d, HPAGE, 21), "destination bytes");
	CHECK(agent_do(&src, AG_CHECK, (unsigned long)s, HPAGE, 21) == 1, "source bytes after the split");
	for (int i = 0; i < 512; i += 73) {
		CHECK(pfn_of(0, d + i * pg) == spfn + i, "subpage %d not shared", i);
		CHECK(kpagecount(spfn + i) == 2, "subpage %d mapcount %ld (want 2)", i, kpagecount(spfn + i));
	}
	d[0] = 'u';
	CHECK(agent_do(&src, AG_CHECK, (unsigned long)s, HPAGE, 21) == 1, "source bytes after the destination's write");

	/*
	 * khugepaged (and MADV_COLLAPSE) want at least one writable PTE
	 * (6.1 hpage_collapse_scan_pmd(): SCAN_PAGE_RO); after the clone, as
	 * after fork(), every source PTE is write-protected.
	 */
	r = agent_do(&src, AG_MADVISE, (unsigned long)s, HPAGE, MADV_COLLAPSE);
	note("MADV_COLLAPSE of the all-write-protected source: %ld (fork gives -EINVAL: SCAN_PAGE_RO)", r);
	agent_do(&src, AG_WRITE1, (unsigned long)(s + 7 * pg), 0, pattern(21, 7 * pg));
	CHECK(collapse(src.pid, s) == 0, "the source did not collapse back into a THP");
	CHECK(pfn_of(src.pid, s) != spfn, "collapse kept the old page");
	CHECK(agent_do(&src, AG_CHECK, (unsigned long)s, HPAGE, 21) == 1, "source bytes after its collapse");
	{
		int ok = d[0] == 'u';
		for (size_t i = 1; i < HPAGE; i++)
			if ((unsigned char)d[i] != pattern(21, i))
				ok = 0;
		CHECK(ok, "destination bytes after the source's collapse");
	}
	CHECK(pfn_of(0, d + pg) == spfn + 1, "destination lost the old subpages");
	munmap(d, HPAGE);
	agent_do(&src, AG_MUNMAP, (unsigned long)s, HPAGE, 0);
}

static void t_huge_zero(void)
{
	char *s = src_thp(0), *d, *area, *u;
	uint64_t z = pfn_of(src.pid, s);
	long r;

	if (!z || !kpf(z, KPF_ZERO_PAGE) || !kpf(z, KPF_THP)) {
		skip("a read of a THP range did not map the huge zero page");
		return;
	}
	d = free_area(HPAGE, HPAGE);
	r = pvm(src.pid, s, HPAGE, d, PVMMAP_FIXED_NOREPLACE);
	REQUIRE(r == (long)d, "aligned clone of the huge zero page: %ld (%s)", r, strerror(errno));
	CHECK(pfn_of(0, d) == z, "destination does not map the huge zero page");
	CHECK(all_bytes(d, HPAGE, 0), "destination reads non-zero");
	d[9 * pg] = 9;
	CHECK(pfn_of(0, d + 9 * pg) != z + 9 && !kpf(pfn_of(0, d + 9 * pg), KPF_ZERO_PAGE), "write kept a zero page");
	CHECK(d[9 * pg] == 9 && all_bytes(d, 9 * pg, 0) && all_bytes(d + 9 * pg + 1, HPAGE - 9 * pg - 1, 0),
	      "destination bytes after the write");
	CHECK(pfn_of(src.pid, s) == z, "source lost the huge zero page");
	CHECK(agent_do(&src, AG_ALLBYTES, (unsigned long)s, HPAGE, 0) == 1, "source not zero");
	munmap(d, HPAGE);

	area = free_area(2 * HPAGE, HPAGE);
	u = area + pg;
	r = pvm(src.pid, s, HPAGE, u, PVMMAP_FIXED_NOREPLACE);
	REQUIRE(r == (long)u, "unaligned clone of the huge zero page: %ld (%s)", r, strerror(errno));
	CHECK(all_bytes(u, HPAGE, 0), "unaligned destination reads non-zero");
	u[1] = 1;
	CHECK(u[1] == 1 && u[0] == 0 && all_bytes(u + 2, HPAGE - 2, 0), "unaligned destination bytes after a write");
	CHECK(agent_do(&src, AG_ALLBYTES, (unsigned long)s, HPAGE, 0) == 1, "source not zero");
	munmap(u, HPAGE);
	agent_do(&src, AG_MUNMAP, (unsigned long)s, HPAGE, 0);
}

static void body(void)
{
	run("thp: PMD-mapped source to an aligned destination (PMD copied), CoW, collapse", t_aligned);
	run("thp: to an unaligned destination (split), collapse of the source afterwards", t_unaligned);
	run("thp: the huge zero page, aligned and unaligned clones, write breaks", t_huge_zero);
}

int main(void)
{
	char buf[256];

	audit_init();
	printf("TAP version 13\n");
	if (read_file(THP "enabled", buf, sizeof(buf))) {
		printf("1..0 # SKIP no THP\n");
		return 0;
	}
	if (strstr(buf, "[never]"))
		write_file(THP "enabled", "madvise");
	write_file(THP "use_zero_page", "1");
	return run_with_sibling_source(body);
}
