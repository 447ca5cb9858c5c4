/*
 * conformance.c - checks pvmmap's process_vm_mmap() kernel port against
 * docs/design.md, section 1.  Runs inside the test VM (kernel/run-vm), as root.
 *
 *   cc -O2 -static -I csrc -o conformance kernel/tests/conformance.c
 *   kernel/run-vm -- kernel/tests/conformance        (see kernel/tests/Makefile)
 *
 * Prints TAP ("ok N - name" / "not ok N - name"), exits 0 only if every test
 * passed.  The syscall number comes from csrc/pvmmap.h
 * (PVMMAP_DEFAULT_SYSCALL_NR) unless PVMMAP_SYSCALL_NR is set.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <linux/userfaultfd.h>
#include <setjmp.h>
#include <signal.h>
#include <stdarg.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/mman.h>
#include <sys/shm.h>
#include <sys/syscall.h>
#include <sys/wait.h>
#include <unistd.h>

#include "tap.h"

#ifndef ENOTSUPP
#define ENOTSUPP 524
#endif

/* ---- helpers ------------------------------------------------------------ */

static int write_file(const char *path, const char *val);

static void *map(size_t len, int prot, int flags)
{
	void *p = mmap(NULL, len, prot, flags | MAP_ANONYMOUS, -1, 0);

	if (p == MAP_FAILED) {
		perror("mmap");
		exit(2);
	}
	return p;
}

static void fill(void *p, size_t len, unsigned seed)
{
	unsigned char *c = p;
	for (size_t i = 0; i < len; i++)
		c[i] = (unsigned char)(seed * 131 + i * 7 + (i >> 12));
}

static int check_fill(const void *p, size_t len, unsigned seed)
{
	const unsigned char *c = p;
	for (size_t i = 0; i < len; i++)
		if (c[i] != (unsigned char)(seed * 131 + i * 7 + (i >> 12)))
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

/* The /proc/self/maps line of the VMA containing addr (0: none). */
static int maps_line(pid_t pid, const void *addr, char *out, size_t outlen,
		     unsigned long *start, unsigned long *end)
{
	char path[64], line[512];
	FILE *f;
	int found = 0;

	snprintf(path, sizeof(path), "/proc/%d/maps", pid);
	f = fopen(path, "r");
	if (!f)
		return 0;
	while (fgets(line, sizeof(line), f)) {
		unsigned long s, e;
		if (sscanf(line, "%lx-%lx", &s, &e) != 2)
			continue;
		if ((unsigned long)addr >= s && (unsigned long)addr < e) {
			if (out)
				snprintf(out, outlen, "%s", line);
			if (start)
				*start = s;
			if (end)
				*end = e;
			found = 1;
			break;
		}
	}
	fclose(f);
	return found;
}

/* An smaps field (kB) of the VMA containing addr, -1 if absent. */
static long smaps_field(const void *addr, const char *field)
{
	char line[512];
	FILE *f = fopen("/proc/self/smaps", "r");
	int in = 0;
	long val = -1;
	size_t fl = strlen(field);

	if (!f)
		return -1;
	while (fgets(line, sizeof(line), f)) {
		unsigned long s, e;
		if (sscanf(line, "%lx-%lx ", &s, &e) == 2 && strchr(line, '-') < strchr(line, ' ')) {
			in = (unsigned long)addr >= s && (unsigned long)addr < e;
			continue;
		}
		if (in && !strncmp(line, field, fl) && line[fl] == ':') {
			val = atol(line + fl + 1);
			break;
		}
	}
	fclose(f);
	return val;
}

/* Present bit of each page from /proc/self/pagemap. */
static int page_present(const void *addr)
{
	uint64_t ent;
	int fd = open("/proc/self/pagemap", O_RDONLY);
	off_t off = (off_t)((unsigned long)addr / pg) * 8;
	int ok;

	if (fd < 0)
		return -1;
	ok = pread(fd, &ent, 8, off) == 8;
	close(fd);
	if (!ok)
		return -1;
	return (int)((ent >> 63) & 1);
}

static int count_vmas(const void *start, const void *end)
{
	char line[512];
	FILE *f = fopen("/proc/self/maps", "r");
	int n = 0;

	while (f && fgets(line, sizeof(line), f)) {
		unsigned long s, e;
		if (sscanf(line, "%lx-%lx", &s, &e) == 2 &&
		    s < (unsigned long)end && e > (unsigned long)start)
			n++;
	}
	if (f)
		fclose(f);
	return n;
}

/* Does writing one byte at p fault?  Tried in a child. */
static int write_faults(volatile char *p)
{
	pid_t c = fork();
	int st;

	if (c == 0) {
		*p = 1;
		_exit(0);
	}
	waitpid(c, &st, 0);
	return WIFSIGNALED(st) && WTERMSIG(st) == SIGSEGV;
}

static int read_faults(volatile char *p)
{
	pid_t c = fork();
	int st;

	if (c == 0) {
		(void)*p;
		_exit(0);
	}
	waitpid(c, &st, 0);
	return WIFSIGNALED(st) && WTERMSIG(st) == SIGSEGV;
}

/*
 * A child that owns a region and obeys commands over a pipe: the parent
 * clones from it while it is alive.
 */
struct child {
	pid_t pid;
	int to, from;
	char *addr;
	size_t len;
};

struct cmd {
	char op;		/* 'W' fill, 'C' check fill, 'S' set bytes, 'B' check bytes, 'Q' quit */
	unsigned char val;
	unsigned long off, len;
	unsigned seed;
};

static void child_serve(int in, int out, char *addr)
{
	struct cmd c;
	char r;

	while (read(in, &c, sizeof(c)) == sizeof(c)) {
		r = 1;
		switch (c.op) {
		case 'W': fill(addr + c.off, c.len, c.seed); break;
		case 'C': r = check_fill(addr + c.off, c.len, c.seed); break;
		case 'S': memset(addr + c.off, c.val, c.len); break;
		case 'B': r = all_bytes(addr + c.off, c.len, c.val); break;
		case 'Q': _exit(0);
		}
		if (write(out, &r, 1) != 1)
			_exit(3);
	}
	_exit(0);
}

/* Start a child whose region is made by mk(len) and filled with seed. */
static struct child start_child(size_t len, char *(*mk)(size_t), unsigned seed)
{
	int a[2], b[2];
	struct child ch = { 0 };

	if (pipe(a) || pipe(b))
		exit(2);
	ch.pid = fork();
	if (ch.pid == 0) {
		char *p = mk(len);
		close(a[1]);
		close(b[0]);
		fill(p, len, seed);
		if (write(b[1], &p, sizeof(p)) != sizeof(p))
			_exit(3);
		child_serve(a[0], b[1], p);
	}
	close(a[0]);
	close(b[1]);
	ch.to = a[1];
	ch.from = b[0];
	ch.len = len;
	if (read(ch.from, &ch.addr, sizeof(ch.addr)) != sizeof(ch.addr))
		ch.addr = NULL;
	return ch;
}

static int child_cmd(struct child *ch, char op, unsigned long off, unsigned long len,
		     unsigned seed, unsigned char val)
{
	struct cmd c = { .op = op, .val = val, .off = off, .len = len, .seed = seed };
	char r = 0;

	if (write(ch->to, &c, sizeof(c)) != sizeof(c))
		return -1;
	if (op == 'Q')
		return 0;
	if (read(ch->from, &r, 1) != 1)
		return -1;
	return r;
}

static int stop_child(struct child *ch)
{
	int st = -1;

	child_cmd(ch, 'Q', 0, 0, 0, 0);
	close(ch->to);
	close(ch->from);
	waitpid(ch->pid, &st, 0);
	return WIFEXITED(st) && WEXITSTATUS(st) == 0;
}

static char *mk_private(size_t len) { return map(len, PROT_READ | PROT_WRITE, MAP_PRIVATE); }
static char *mk_shared(size_t len) { return map(len, PROT_READ | PROT_WRITE, MAP_SHARED); }

/* ---- tests ---------------------------------------------------------------- */

static void t_detect(void)
{
	char line[512];
	FILE *f = fopen("/proc/kallsyms", "r");
	int found = 0;

	while (f && fgets(line, sizeof(line), f))
		if (strstr(line, " T __x64_sys_process_vm_mmap\n"))
			found = 1;
	if (f)
		fclose(f);
	CHECK(found, "/proc/kallsyms has no 'T __x64_sys_process_vm_mmap'");
	errno = 0;
	CHECK(pvm(getpid(), (void *)0x10000, 0, NULL, 0) == -1 && errno == EINVAL,
	      "len 0 gave errno %d, want EINVAL (is %ld the right number?)", errno, nr);
}

static void t_self_bytes_cow(void)
{
	size_t len = 64 * pg;
	char *src = mk_private(len), *dst;

	fill(src, len, 1);
	dst = (char *)pvm(getpid(), src, len, NULL, 0);
	CHECK(dst != (char *)-1, "clone failed: %s", strerror(errno));
	if (dst == (char *)-1)
		return;
	CHECK(dst != src, "dst == src");
	CHECK(check_fill(dst, len, 1), "bytes differ after clone");
	/* source writes after the clone are invisible in the clone */
	fill(src, len / 2, 2);
	CHECK(check_fill(dst, len, 1), "source write leaked into the clone");
	/* and clone writes are invisible in the source */
	fill(dst + len / 2, len / 2, 3);
	CHECK(check_fill(src, len / 2, 2), "source changed (1)");
	{
		/* the second half of the source still has its old bytes */
		char *ref = mk_private(len);
		fill(ref, len, 1);
		CHECK(!memcmp(src + len / 2, ref + len / 2, len / 2),
		      "clone write leaked into the source");
		munmap(ref, len);
	}
	CHECK(munmap(dst, len) == 0, "munmap clone");
	CHECK(check_fill(src, len / 2, 2), "source damaged by munmap of the clone");
	munmap(src, len);
}

/*
 * dst is a clone of the child's [0, len), filled with `seed`: check the
 * bytes, then copy-on-write both ways.  The child writes seed+1, which
 * must not reach the clone.  The clone is then filled with seed+2, which
 * must not reach the child.
 */
static void check_cow_with_child(struct child *ch, char *dst, size_t len, unsigned seed)
{
	CHECK(check_fill(dst, len, seed), "bytes differ");
	CHECK(child_cmd(ch, 'W', 0, len, seed + 1, 0) == 1, "child write");
	CHECK(check_fill(dst, len, seed), "child's write visible in the clone");
	fill(dst, len, seed + 2);
	CHECK(child_cmd(ch, 'C', 0, len, seed + 1, 0) == 1,
	      "parent's write to the clone visible in the child");
}

static void t_child_cow(void)
{
	size_t len = 128 * pg;
	struct child ch = start_child(len, mk_private, 5);
	char *dst;

	CHECK(ch.addr, "child setup");
	dst = (char *)pvm(ch.pid, ch.addr, len, NULL, 0);
	CHECK(dst != (char *)-1, "clone from child failed: %s", strerror(errno));
	if (dst != (char *)-1) {
		check_cow_with_child(&ch, dst, len, 5);
	}
	CHECK(stop_child(&ch), "child exit");
	/* the clone outlives the source process */
	if (dst != (char *)-1) {
		CHECK(check_fill(dst, len, 7), "clone changed after the source exited");
		CHECK(munmap(dst, len) == 0, "munmap");
	}
}

static void t_child_subrange(void)
{
	size_t len = 64 * pg;
	struct child ch = start_child(len, mk_private, 9);
	char *dst;

	/* unaligned src is rounded down, len rounded up */
	dst = (char *)pvm(ch.pid, ch.addr + 8 * pg + 100, 4 * pg - 200, NULL, 0);
	CHECK(dst != (char *)-1, "clone failed: %s", strerror(errno));
	if (dst != (char *)-1) {
		char *ref = mk_private(len);
		unsigned long s, e;
		fill(ref, len, 9);
		CHECK(((unsigned long)dst & (pg - 1)) == 0, "dst not page aligned");
		CHECK(!memcmp(dst, ref + 8 * pg, 4 * pg), "bytes differ");
		CHECK(maps_line(getpid(), dst, NULL, 0, &s, &e) && s == (unsigned long)dst && e == (unsigned long)dst + 4 * pg,
		      "clone VMA is %lx-%lx, want %p + 4 pages", s, e, dst);
		munmap(ref, len);
		munmap(dst, 4 * pg);
	}
	/* the rounded range covers [src, src + len): here 5 pages */
	dst = (char *)pvm(ch.pid, ch.addr + 8 * pg + 100, 4 * pg, NULL, 0);
	CHECK(dst != (char *)-1, "clone failed: %s", strerror(errno));
	if (dst != (char *)-1) {
		unsigned long s, e;
		CHECK(maps_line(getpid(), dst, NULL, 0, &s, &e) && e - s == 5 * (unsigned long)pg,
		      "unaligned src + 4 pages gave %lu pages, want 5", (e - s) / pg);
		munmap(dst, 5 * pg);
	}
	stop_child(&ch);
}

static void t_shared_anon(void)
{
	size_t len = 32 * pg;
	struct child ch = start_child(len, mk_shared, 11);
	char *dst;

	dst = (char *)pvm(ch.pid, ch.addr, len, NULL, 0);
	CHECK(dst != (char *)-1, "clone failed: %s", strerror(errno));
	if (dst != (char *)-1) {
		char line[512];
		CHECK(check_fill(dst, len, 11), "bytes differ");
		CHECK(child_cmd(&ch, 'S', pg, pg, 0, 0xab) == 1, "child write");
		CHECK(all_bytes(dst + pg, pg, 0xab), "child's write not visible in the clone");
		memset(dst + 3 * pg, 0xcd, pg);
		CHECK(child_cmd(&ch, 'B', 3 * pg, pg, 0, 0xcd) == 1,
		      "clone's write not visible in the child");
		CHECK(maps_line(getpid(), dst, line, sizeof(line), NULL, NULL) &&
		      strstr(line, "rw-s"), "clone not shared: %s", line);
		munmap(dst, len);
	}
	stop_child(&ch);
	/* self, shared */
	{
		char *src = mk_shared(len);
		fill(src, len, 12);
		dst = (char *)pvm(getpid(), src, len, NULL, 0);
		CHECK(dst != (char *)-1 && check_fill(dst, len, 12), "self shared clone");
		if (dst != (char *)-1) {
			src[5] = 42;
			CHECK(dst[5] == 42, "self shared: not shared");
			munmap(dst, len);
		}
		munmap(src, len);
	}
}

static void t_memfd(void)
{
	size_t len = 16 * pg;
	int fd = memfd_create("pvmmap-test", 0);
	char *src, *dst, line[512];

	CHECK(fd >= 0, "memfd_create: %s", strerror(errno));
	if (fd < 0)
		return;
	CHECK(ftruncate(fd, len) == 0, "ftruncate");
	src = mmap(NULL, len, PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0);
	fill(src, len, 13);
	dst = (char *)pvm(getpid(), src + 4 * pg, 8 * pg, NULL, 0);
	CHECK(dst != (char *)-1, "clone failed: %s", strerror(errno));
	if (dst != (char *)-1) {
		CHECK(!memcmp(dst, src + 4 * pg, 8 * pg), "bytes differ");
		dst[0] = 0x5a;
		CHECK(src[4 * pg] == 0x5a, "memfd write not shared");
		CHECK(pread(fd, line, 1, 4 * pg) == 1 && line[0] == 0x5a, "not in the file");
		CHECK(maps_line(getpid(), dst, line, sizeof(line), NULL, NULL) &&
		      strstr(line, "memfd:pvmmap-test") && strstr(line, " 00004000 "),
		      "maps line wrong: %s", line);
		munmap(dst, 8 * pg);
	}
	munmap(src, len);
	close(fd);
}

static void t_file_private(void)
{
	size_t len = 16 * pg;
	char path[] = "/tmp/pvmmap-conf-XXXXXX", line[512];
	int fd = mkstemp(path);
	char *buf = malloc(len), *src, *dst;

	fill(buf, len, 14);
	CHECK(fd >= 0 && write(fd, buf, len) == (ssize_t)len, "temp file");
	/* private mapping at file offset 2 pages, one page privately modified */
	src = mmap(NULL, 12 * pg, PROT_READ | PROT_WRITE, MAP_PRIVATE, fd, 2 * pg);
	CHECK(src != MAP_FAILED, "mmap file");
	(void)*(volatile char *)(src + 1 * pg);	/* page-cache page mapped */
	memset(src + 3 * pg, 0x77, pg);		/* private anon copy */
	dst = (char *)pvm(getpid(), src + pg, 8 * pg, NULL, 0);
	CHECK(dst != (char *)-1, "clone failed: %s", strerror(errno));
	if (dst != (char *)-1) {
		CHECK(!memcmp(dst, buf + 3 * pg, pg), "file page differs");
		CHECK(all_bytes(dst + 2 * pg, pg, 0x77), "privately modified page not cloned");
		CHECK(!memcmp(dst + 3 * pg, buf + 6 * pg, 5 * pg), "unfaulted file pages differ");
		CHECK(maps_line(getpid(), dst, line, sizeof(line), NULL, NULL) &&
		      strstr(line, path) && strstr(line, " 00003000 ") && strstr(line, "rw-p"),
		      "maps line wrong (want %s at offset 0x3000): %s", path, line);
		/* writes to the clone are private */
		memset(dst, 0x11, pg);
		CHECK(!memcmp(src + pg, buf + 3 * pg, pg), "clone write reached the source");
		CHECK(pread(fd, line, 1, 3 * pg) == 1 && line[0] == buf[3 * pg],
		      "clone write reached the file");
		memset(src + 3 * pg, 0x78, pg);
		CHECK(all_bytes(dst + 2 * pg, pg, 0x77), "source write reached the clone");
		munmap(dst, 8 * pg);
	}
	munmap(src, 12 * pg);
	close(fd);
	unlink(path);
	free(buf);
}

static void t_protections(void)
{
	size_t len = 8 * pg;
	char *ro = mk_private(len), *none, *dst, line[512];

	fill(ro, len, 15);
	mprotect(ro, len, PROT_READ);
	dst = (char *)pvm(getpid(), ro, len, NULL, 0);
	CHECK(dst != (char *)-1, "clone of read-only failed: %s", strerror(errno));
	if (dst != (char *)-1) {
		CHECK(check_fill(dst, len, 15), "read-only bytes differ");
		CHECK(maps_line(getpid(), dst, line, sizeof(line), NULL, NULL) &&
		      strstr(line, " r--p "), "maps: %s", line);
		CHECK(write_faults(dst), "write to read-only clone did not fault");
		/* after mprotect the clone is an ordinary CoW copy */
		CHECK(mprotect(dst, len, PROT_READ | PROT_WRITE) == 0, "mprotect");
		dst[0] ^= 1;
		CHECK(check_fill(ro, len, 15), "write after mprotect reached the source");
		munmap(dst, len);
	}
	none = mk_private(len);
	fill(none, len, 16);
	mprotect(none, len, PROT_NONE);
	dst = (char *)pvm(getpid(), none, len, NULL, 0);
	CHECK(dst != (char *)-1, "clone of PROT_NONE failed: %s", strerror(errno));
	if (dst != (char *)-1) {
		CHECK(maps_line(getpid(), dst, line, sizeof(line), NULL, NULL) &&
		      strstr(line, " ---p "), "maps: %s", line);
		CHECK(read_faults(dst), "read of PROT_NONE clone did not fault");
		mprotect(dst, len, PROT_READ);
		CHECK(check_fill(dst, len, 16), "PROT_NONE bytes differ");
		munmap(dst, len);
	}
	munmap(ro, len);
	munmap(none, len);
}

static void t_holes(void)
{
	size_t n = 32, len = n * pg;
	char *src = mk_private(len), *dst;
	unsigned char vec[32];
	int bad = -1;

	src[0] = 1;
	src[5 * pg] = 2;
	src[31 * pg] = 3;
	dst = (char *)pvm(getpid(), src, len, NULL, 0);
	CHECK(dst != (char *)-1, "clone failed: %s", strerror(errno));
	if (dst == (char *)-1)
		return;
	for (size_t i = 0; i < n; i++) {
		int want = i == 0 || i == 5 || i == 31;
		if (page_present(dst + i * pg) != want) {
			bad = (int)i;
			break;
		}
	}
	CHECK(bad < 0, "pagemap: page %d of the clone present=%d", bad,
	      bad < 0 ? 0 : page_present(dst + bad * pg));
	CHECK(mincore(dst, len, vec) == 0, "mincore");
	for (size_t i = 0; i < n; i++)
		if ((vec[i] & 1) != (i == 0 || i == 5 || i == 31)) {
			FAIL("mincore: page %zu resident=%d", i, vec[i] & 1);
			break;
		}
	CHECK(dst[0] == 1 && dst[5 * pg] == 2 && dst[31 * pg] == 3 && dst[7 * pg] == 0,
	      "contents");
	munmap(dst, len);
	munmap(src, len);
}

static void t_fixed(void)
{
	size_t len = 8 * pg;
	char *src = mk_private(len), *target = mk_private(3 * len), *r;

	fill(src, len, 17);
	memset(target, 0x33, 3 * len);
	/* FIXED replaces, dst rounded down */
	r = (char *)pvm(getpid(), src, len, target + len + 123, PVMMAP_FIXED);
	CHECK(r == target + len, "FIXED returned %p, want %p (%s)", r, target + len,
	      r == (char *)-1 ? strerror(errno) : "");
	if (r == target + len) {
		CHECK(check_fill(r, len, 17), "FIXED bytes differ");
		CHECK(all_bytes(target, len, 0x33) && all_bytes(target + 2 * len, len, 0x33),
		      "FIXED damaged the neighbours");
	}
	/* NOREPLACE onto a mapping: EEXIST, nothing changed */
	errno = 0;
	r = (char *)pvm(getpid(), src, len, target, PVMMAP_FIXED_NOREPLACE);
	CHECK(r == (char *)-1 && errno == EEXIST, "NOREPLACE on a mapping: %p errno %d", r, errno);
	CHECK(all_bytes(target, len, 0x33), "NOREPLACE changed the mapping");
	/* NOREPLACE onto a free range: placed there */
	munmap(target + 2 * len, len);
	r = (char *)pvm(getpid(), src, len, target + 2 * len, PVMMAP_FIXED_NOREPLACE);
	CHECK(r == target + 2 * len, "NOREPLACE on free range returned %p (%s)", r,
	      r == (char *)-1 ? strerror(errno) : "");
	if (r == target + 2 * len)
		CHECK(check_fill(r, len, 17), "NOREPLACE bytes differ");
	/* FIXED over the source range itself (same mm): refused */
	errno = 0;
	r = (char *)pvm(getpid(), src, len, src + pg, PVMMAP_FIXED);
	CHECK(r == (char *)-1 && errno == EINVAL, "FIXED over the source: %p errno %d", r, errno);
	CHECK(check_fill(src, len, 17), "source damaged");
	/* FIXED into the source VMA itself, next to the range: splits it */
	{
		char *v = mk_private(16 * pg), *r2;
		fill(v, 16 * pg, 34);
		r2 = (char *)pvm(getpid(), v, 4 * pg, v + 8 * pg, PVMMAP_FIXED);
		CHECK(r2 == v + 8 * pg, "FIXED inside the source VMA: %p (%s)", r2,
		      r2 == (char *)-1 ? strerror(errno) : "");
		if (r2 == v + 8 * pg) {
			CHECK(!memcmp(v + 8 * pg, v, 4 * pg), "bytes differ");
			v[0] ^= 1;
			CHECK(v[8 * pg] != v[0], "not private");
		}
		munmap(v, 16 * pg);
	}
	/* a free hint is honoured */
	munmap(target, len);
	r = (char *)pvm(getpid(), src, len, target, 0);
	CHECK(r == target, "free hint not honoured: %p want %p", r, target);
	munmap(target, 3 * len);
	munmap(src, len);
}

#ifndef __NR_mseal
#define __NR_mseal 462
#endif

/*
 * mseal() (Linux 6.10+, 64-bit): the seal protects the sealed mapping and
 * stays with it.  A clone of a sealed range is a new mapping of the caller,
 * not sealed (it can be unmapped); FIXED onto a sealed range fails with
 * EPERM and leaves it as it was.
 */
static void t_mseal(void)
{
	size_t len = 4 * pg;
	char *s = mk_private(len), *t = mk_private(len), *r;

	fill(s, len, 41);
	memset(t, 0x5a, len);
	if (syscall(__NR_mseal, s, len, 0) != 0) {
		CHECK(errno == ENOSYS, "mseal: %s", strerror(errno));
		skip("no mseal() (Linux 6.10+)");
		munmap(s, len);
		munmap(t, len);
		return;
	}
	CHECK(syscall(__NR_mseal, t, len, 0) == 0, "mseal of the target: %s", strerror(errno));
	r = (char *)pvm(getpid(), s, len, NULL, 0);
	CHECK(r != (char *)-1, "clone of a sealed range: %s", strerror(errno));
	if (r != (char *)-1) {
		CHECK(check_fill(r, len, 41), "clone bytes differ");
		r[0] ^= 1;
		CHECK(check_fill(s, len, 41), "the clone's write reached the sealed source");
		CHECK(mprotect(r, len, PROT_READ) == 0, "mprotect of the clone: %s (sealed?)", strerror(errno));
		CHECK(munmap(r, len) == 0, "munmap of the clone: %s (sealed?)", strerror(errno));
	}
	errno = 0;
	r = (char *)pvm(getpid(), s, len, t, PVMMAP_FIXED);
	CHECK(r == (char *)-1 && errno == EPERM, "FIXED onto a sealed range: %p errno %d (want EPERM)", r, errno);
	CHECK(all_bytes(t, len, 0x5a), "FIXED onto a sealed range changed it");
	errno = 0;
	r = (char *)pvm(getpid(), s, len, t, PVMMAP_FIXED_NOREPLACE);
	CHECK(r == (char *)-1 && errno == EEXIST, "NOREPLACE onto a sealed range: %p errno %d", r, errno);
	CHECK(munmap(s, len) == -1 && errno == EPERM, "the source lost its seal");
	/* s and t stay mapped: sealed until exit */
}

static void t_errors(void)
{
	size_t len = 4 * pg;
	char *a = mk_private(len);
	pid_t dead;
	int st;

#define EXPECT(call, err) do { errno = 0; long _r = (call); \
	CHECK(_r == -1 && errno == (err), "%s: returned %ld errno %d (%s), want %s", \
	      #call, _r, errno, strerror(errno), #err); } while (0)

	EXPECT(pvm(getpid(), a, len, NULL, 4), EINVAL);
	EXPECT(pvm(getpid(), a, len, NULL, 1UL << 40), EINVAL);
	EXPECT(pvm(getpid(), a, 0, NULL, 0), EINVAL);
	EXPECT(pvm(getpid(), NULL, len, NULL, 0), EINVAL);
	EXPECT(pvm(getpid(), (void *)100, len, NULL, 0), EINVAL);
	EXPECT(pvm(0, a, len, NULL, 0), EINVAL);
	EXPECT(pvm(-1, a, len, NULL, 0), EINVAL);
	EXPECT(pvm(getpid(), (void *)(1UL << 62), len, NULL, 0), EINVAL);
	EXPECT(pvm(getpid(), a, 1UL << 62, NULL, 0), EINVAL);
	EXPECT(pvm(getpid(), (void *)(-4096UL), pg, NULL, 0), EINVAL);
	EXPECT(pvm(getpid(), a, -1UL, NULL, 0), EINVAL);
	EXPECT(pvm(2, a, len, NULL, 0), EINVAL);	/* kthreadd */
	dead = fork();
	if (dead == 0)
		_exit(0);
	waitpid(dead, &st, 0);
	EXPECT(pvm(dead, a, len, NULL, 0), ESRCH);
	EXPECT(pvm(4194304 + 7, a, len, NULL, 0), ESRCH);
	/* unmapped source */
	munmap(a + 2 * pg, pg);
	EXPECT(pvm(getpid(), a + 2 * pg, pg, NULL, 0), EFAULT);
	/* range crossing into a hole / another VMA */
	EXPECT(pvm(getpid(), a, 3 * pg, NULL, 0), EFAULT);
	mprotect(a + 3 * pg, pg, PROT_READ);
	EXPECT(pvm(getpid(), a + 2 * pg, 2 * pg, NULL, 0), EFAULT);
	{
		char *b = mk_private(2 * pg);
		mprotect(b + pg, pg, PROT_READ);	/* two VMAs, adjacent */
		EXPECT(pvm(getpid(), b, 2 * pg, NULL, 0), EFAULT);
		munmap(b, 2 * pg);
	}
	munmap(a, len);
#undef EXPECT
}

static void t_special(void)
{
	char line[512];
	FILE *f = fopen("/proc/self/maps", "r");
	int n = 0;

	while (f && fgets(line, sizeof(line), f)) {
		unsigned long s, e;
		if (!strstr(line, "[vvar]") && !strstr(line, "[vdso]"))
			continue;
		sscanf(line, "%lx-%lx", &s, &e);
		errno = 0;
		long r = pvm(getpid(), (void *)s, pg, NULL, 0);
		CHECK(r == -1 && errno == EFAULT, "%.*s: returned %lx errno %d",
		      (int)strcspn(line, "\n"), line, r, errno);
		n++;
	}
	if (f)
		fclose(f);
	CHECK(n >= 2, "found %d of [vvar]/[vdso]", n);
}

/* An aio ring is VM_DONTEXPAND: refused like [vdso]. */
static void t_aio_ring(void)
{
	unsigned long ctx = 0;          /* aio_context_t: the ring's address */
	long r;

	if (syscall(SYS_io_setup, 1, &ctx) != 0) {
		skip("io_setup failed (CONFIG_AIO off?)");
		return;
	}
	errno = 0;
	r = pvm(getpid(), (void *)ctx, pg, NULL, 0);
	CHECK(r == -1 && errno == EFAULT, "aio ring: %lx errno %d, want EFAULT", r, errno);
	syscall(SYS_io_destroy, ctx);
}

/* A range tagged with a protection key other than 0 is refused when it
 * belongs to another process (keys are allocated per process), and clones
 * within the process that owns the key. */
static void t_pkey(void)
{
	size_t len = 2 * pg;
	char *a = mk_private(len);
	int go[2], done[2];
	char c = 0;
	long r;

	fill(a, len, 21);
	if (pipe(go) || pipe(done)) {
		FAIL("pipe: %s", strerror(errno));
		return;
	}
	pid_t child = fork();
	if (child == 0) {
		int key = syscall(SYS_pkey_alloc, 0, 0);
		c = key > 0 && syscall(SYS_pkey_mprotect, a, len,
				       PROT_READ | PROT_WRITE, key) == 0 ? 'k' : 'n';
		if (c == 'k') {         /* within the owner: allowed */
			long own = syscall(nr, getpid(), a, len, NULL, 0);
			c = own == -1 ? 'o' : 'k';
		}
		if (write(done[1], &c, 1) != 1 || read(go[0], &c, 1) < 0)
			_exit(1);
		_exit(0);
	}
	if (read(done[0], &c, 1) != 1)
		c = 0;
	if (c == 'n') {
		skip("no protection keys (pkey_alloc/pkey_mprotect failed: no PKU)");
	} else {
		CHECK(c == 'k', "clone of its own pkey range failed in the child (%c)", c);
		errno = 0;
		r = pvm(child, a, len, NULL, 0);
		CHECK(r == -1 && errno == EFAULT, "pkey range of another process: %lx errno %d,"
		      " want EFAULT", r, errno);
	}
	if (write(go[1], "x", 1) != 1)
		FAIL("pipe write");
	waitpid(child, NULL, 0);
	close(go[0]); close(go[1]); close(done[0]); close(done[1]);
	munmap(a, len);
}

static void t_hugetlb(void)
{
	size_t huge = 2UL << 20;
	char *h;
	long r;

	write_file("/proc/sys/vm/nr_hugepages", "2");
	h = mmap(NULL, huge, PROT_READ | PROT_WRITE,
		 MAP_PRIVATE | MAP_ANONYMOUS | MAP_HUGETLB, -1, 0);
	if (h == MAP_FAILED) {
		skip("no hugetlb pages (CONFIG_HUGETLBFS off or none reserved)");
		return;
	}
	h[0] = 1;
	errno = 0;
	r = pvm(getpid(), h, huge, NULL, 0);
	CHECK(r == -1 && errno == EFAULT, "hugetlb source: %lx errno %d, want EFAULT", r, errno);
	munmap(h, huge);
}

static void t_uffd(void)
{
	size_t len = 4 * pg;
	char *a = mk_private(len);
	int fd = syscall(SYS_userfaultfd, O_CLOEXEC | O_NONBLOCK);
	struct uffdio_api api = { .api = UFFD_API };
	struct uffdio_register reg = {
		.range = { .start = (unsigned long)a, .len = len },
		.mode = UFFDIO_REGISTER_MODE_MISSING,
	};

	if (fd < 0) {
		skip("no userfaultfd");
		return;
	}
	CHECK(ioctl(fd, UFFDIO_API, &api) == 0, "UFFDIO_API");
	CHECK(ioctl(fd, UFFDIO_REGISTER, &reg) == 0, "UFFDIO_REGISTER: %s", strerror(errno));
	errno = 0;
	long r = pvm(getpid(), a, len, NULL, 0);
	CHECK(r == -1 && errno == ENOTSUPP, "uffd source: %ld errno %d, want 524", r, errno);
	close(fd);
	/* once the uffd is gone the range clones again */
	r = pvm(getpid(), a, len, NULL, 0);
	CHECK(r != -1, "after closing the uffd: %s", strerror(errno));
	if (r != -1)
		munmap((void *)r, len);
	munmap(a, len);
}

static void t_perm(void)
{
	/* an unprivileged child may not clone from root (its parent) */
	int p[2];
	pid_t c;
	int st, res[2] = { 0, 0 };
	char *a = mk_private(4 * pg);

	fill(a, 4 * pg, 18);
	if (pipe(p))
		return;
	c = fork();
	if (c == 0) {
		int r[2];
		close(p[0]);
		if (setresgid(65534, 65534, 65534) || setresuid(65534, 65534, 65534))
			_exit(4);
		errno = 0;
		r[0] = pvm(getppid(), a, 4 * pg, NULL, 0) == -1 ? errno : 0;
		errno = 0;
		r[1] = pvm(1, a, 4 * pg, NULL, 0) == -1 ? errno : 0;
		if (write(p[1], r, sizeof(r)) != sizeof(r))
			_exit(3);
		_exit(0);
	}
	close(p[1]);
	CHECK(read(p[0], res, sizeof(res)) == sizeof(res), "no answer from child");
	close(p[0]);
	waitpid(c, &st, 0);
	CHECK(res[0] == EPERM || res[0] == EACCES, "nobody -> root parent: errno %d", res[0]);
	CHECK(res[1] == EPERM || res[1] == EACCES, "nobody -> init: errno %d", res[1]);
	munmap(a, 4 * pg);
}

static char *mk_thp(size_t len)
{
	size_t huge = 2UL << 20;
	char *raw = map(len + huge, PROT_READ | PROT_WRITE, MAP_PRIVATE);
	char *p = (char *)(((unsigned long)raw + huge - 1) & ~(huge - 1));

	if (p > raw)
		munmap(raw, p - raw);
	munmap(p + len, raw + huge - p);
	madvise(p, len, MADV_HUGEPAGE);
	return p;
}

static void t_thp(void)
{
	size_t huge = 2UL << 20, len = 4 * huge;
	char *src = mk_thp(len), *dst, *raw;
	long kb;

	fill(src, len, 19);
	kb = smaps_field(src, "AnonHugePages");
	if (kb <= 0) {
		skip("no THP in the source (AnonHugePages 0)");
		munmap(src, len);
		return;
	}
	/* whole, aligned: huge PMDs copied */
	dst = (char *)pvm(getpid(), src, len, NULL, 0);
	CHECK(dst != (char *)-1, "clone failed: %s", strerror(errno));
	if (dst != (char *)-1) {
		CHECK(((unsigned long)dst & (huge - 1)) == 0, "no-hint THP clone not 2MB aligned: %p", dst);
		CHECK(check_fill(dst, len, 19), "bytes differ");
		CHECK(smaps_field(dst, "AnonHugePages") > 0, "clone has no huge pages (%ld kB)",
		      smaps_field(dst, "AnonHugePages"));
		fill(src, huge, 20);
		CHECK(check_fill(dst, len, 19), "source write reached the clone");
		fill(dst + huge, huge, 21);
		{
			char *ref = mk_private(len);
			fill(ref, len, 19);
			CHECK(check_fill(src, huge, 20) &&
			      !memcmp(src + huge, ref + huge, 3 * huge),
			      "clone write reached the source");
			munmap(ref, len);
		}
		CHECK(munmap(dst, len) == 0, "munmap");
	}
	/* partial and misaligned: source PMDs split, PTEs copied */
	fill(src, len, 22);
	raw = map(len + 2 * huge, PROT_NONE, MAP_PRIVATE);
	raw = (char *)(((unsigned long)raw + huge - 1) & ~(huge - 1)) + 3 * pg;
	dst = (char *)pvm(getpid(), src + huge / 2, 2 * huge, raw, PVMMAP_FIXED);
	CHECK(dst == raw, "misaligned FIXED clone: %p want %p (%s)", dst, raw,
	      dst == (char *)-1 ? strerror(errno) : "");
	if (dst == raw) {
		char *ref = mk_private(len);
		fill(ref, len, 22);
		CHECK(!memcmp(dst, ref + huge / 2, 2 * huge), "misaligned bytes differ");
		CHECK(check_fill(src, len, 22), "source changed by the split");
		memset(dst, 0x44, 3 * pg);
		memset(src + huge / 2 + 3 * pg, 0x55, pg);
		CHECK(!memcmp(src + huge / 2, ref + huge / 2, 3 * pg), "clone write reached the source");
		CHECK(!memcmp(dst + 3 * pg, ref + huge / 2 + 3 * pg, pg), "source write reached the clone");
		munmap(ref, len);
		munmap(dst, 2 * huge);
	}
	munmap(src, len);
}

static void t_thp_child(void)
{
	size_t huge = 2UL << 20, len = 4 * huge;
	struct child ch = start_child(len, mk_thp, 23);
	char *dst;

	dst = (char *)pvm(ch.pid, ch.addr, len, NULL, 0);
	CHECK(dst != (char *)-1, "clone failed: %s", strerror(errno));
	if (dst != (char *)-1) {
		check_cow_with_child(&ch, dst, len, 23);
		munmap(dst, len);
	}
	stop_child(&ch);
}

static void t_merge(void)
{
	size_t len = 32 * pg;
	char *src = mk_private(len), *res, *r1, *r2, *r3;
	int n;

	fill(src, len, 26);
	res = map(len, PROT_NONE, MAP_PRIVATE);
	r1 = (char *)pvm(getpid(), src, len / 2, res, PVMMAP_FIXED);
	r2 = (char *)pvm(getpid(), src + len / 2, len / 2, res + len / 2, PVMMAP_FIXED);
	CHECK(r1 == res && r2 == res + len / 2, "clones placed at %p %p", r1, r2);
	n = count_vmas(res, res + len);
	CHECK(n == 1, "two adjacent clones of one source VMA give %d VMAs", n);
	CHECK(check_fill(res, len, 26), "bytes differ");
	munmap(res, len);

	/* from a child, three pieces, last one first */
	{
		struct child ch = start_child(len, mk_private, 27);
		res = map(len, PROT_NONE, MAP_PRIVATE);
		r3 = (char *)pvm(ch.pid, ch.addr + 20 * pg, 12 * pg, res + 20 * pg, PVMMAP_FIXED);
		r1 = (char *)pvm(ch.pid, ch.addr, 10 * pg, res, PVMMAP_FIXED);
		r2 = (char *)pvm(ch.pid, ch.addr + 10 * pg, 10 * pg, res + 10 * pg, PVMMAP_FIXED);
		CHECK(r1 == res && r2 == res + 10 * pg && r3 == res + 20 * pg, "placement");
		n = count_vmas(res, res + len);
		CHECK(n == 1, "three adjacent clones from a child give %d VMAs", n);
		CHECK(check_fill(res, len, 27), "bytes differ");
		stop_child(&ch);
		CHECK(check_fill(res, len, 27), "bytes differ after the child exited");
		munmap(res, len);
	}
	munmap(src, len);
}

static void t_sysv_shm(void)
{
	size_t len = 8 * pg;
	int id = shmget(IPC_PRIVATE, len, IPC_CREAT | 0600);
	struct shmid_ds ds;
	char *a, *dst;

	if (id < 0) {
		skip("no SysV shm");
		return;
	}
	a = shmat(id, NULL, 0);
	fill(a, len, 28);
	dst = (char *)pvm(getpid(), a, len, NULL, 0);
	CHECK(dst != (char *)-1, "clone failed: %s", strerror(errno));
	if (dst != (char *)-1) {
		CHECK(check_fill(dst, len, 28), "bytes differ");
		a[1] = 99;
		CHECK(dst[1] == 99, "not shared");
		CHECK(shmctl(id, IPC_STAT, &ds) == 0 && ds.shm_nattch == 2,
		      "shm_nattch %lu, want 2", (unsigned long)ds.shm_nattch);
		munmap(dst, len);
		CHECK(shmctl(id, IPC_STAT, &ds) == 0 && ds.shm_nattch == 1,
		      "shm_nattch after munmap %lu, want 1", (unsigned long)ds.shm_nattch);
	}
	shmdt(a);
	shmctl(id, IPC_RMID, NULL);
}

static void t_fork_after_clone(void)
{
	size_t len = 16 * pg;
	struct child ch = start_child(len, mk_private, 29);
	char *dst = (char *)pvm(ch.pid, ch.addr, len, NULL, 0);
	pid_t c;
	int st;

	CHECK(dst != (char *)-1, "clone failed: %s", strerror(errno));
	if (dst != (char *)-1) {
		c = fork();
		if (c == 0) {
			int ok = check_fill(dst, len, 29);
			fill(dst, len, 30);
			_exit(ok ? 0 : 1);
		}
		waitpid(c, &st, 0);
		CHECK(WIFEXITED(st) && WEXITSTATUS(st) == 0, "grandchild saw wrong bytes");
		CHECK(check_fill(dst, len, 29), "grandchild write visible");
		CHECK(child_cmd(&ch, 'C', 0, len, 29, 0) == 1, "source changed");
		/* and mremap of the clone */
		char *m = mremap(dst, len, 2 * len, MREMAP_MAYMOVE);
		CHECK(m != MAP_FAILED && check_fill(m, len, 29), "mremap of the clone");
		if (m != MAP_FAILED)
			munmap(m, 2 * len);
	}
	stop_child(&ch);
}

static void t_clone_of_clone(void)
{
	size_t len = 16 * pg;
	char *src = mk_private(len), *d1, *d2;

	fill(src, len, 31);
	d1 = (char *)pvm(getpid(), src, len, NULL, 0);
	d2 = d1 == (char *)-1 ? d1 : (char *)pvm(getpid(), d1 + pg, len - 2 * pg, NULL, 0);
	CHECK(d1 != (char *)-1 && d2 != (char *)-1, "clone of a clone: %s", strerror(errno));
	if (d2 != (char *)-1) {
		CHECK(!memcmp(d2, src + pg, len - 2 * pg), "bytes differ");
		munmap(src, len);
		fill(d1, len, 32);
		CHECK(memcmp(d2, d1 + pg, len - 2 * pg) != 0, "not private");
		munmap(d1, len);
		munmap(d2, len - 2 * pg);
	}
}

static void t_stress(void)
{
	size_t len = 64 * pg;
	struct child ch = start_child(len, mk_private, 33);
	int i;

	for (i = 0; i < 200; i++) {
		size_t off = (size_t)(i % 16) * pg;
		char *d = (char *)pvm(ch.pid, ch.addr + off, len - off, NULL, 0);
		if (d == (char *)-1) {
			FAIL("clone %d: %s", i, strerror(errno));
			break;
		}
		if (i % 10 == 0)
			d[(i * 37) % (len - off)] ^= 1;
		munmap(d, len - off);
		if (i % 50 == 0)
			child_cmd(&ch, 'W', 0, pg, 33, 0);
	}
	CHECK(child_cmd(&ch, 'C', 0, len, 33, 0) == 1, "source changed by clones");
	stop_child(&ch);
}

static int write_file(const char *path, const char *val)
{
	FILE *f = fopen(path, "w");
	int ok;

	if (!f)
		return 0;
	ok = fputs(val, f) >= 0;
	return fclose(f) == 0 && ok;
}

static long read_long(const char *path)
{
	FILE *f = fopen(path, "r");
	long v = -1;

	if (f) {
		if (fscanf(f, "%ld", &v) != 1)
			v = -1;
		fclose(f);
	}
	return v;
}

static void t_ksm(void)
{
	size_t n = 64, len = n * pg;
	char *src = mk_private(len), *dst;
	int i;

	if (!write_file("/sys/kernel/mm/ksm/sleep_millisecs", "0") ||
	    !write_file("/sys/kernel/mm/ksm/pages_to_scan", "10000") ||
	    !write_file("/sys/kernel/mm/ksm/run", "1")) {
		skip("cannot start ksmd (not root, or no KSM)");
		munmap(src, len);
		return;
	}
	for (size_t k = 0; k < n; k++)
		memset(src + k * pg, 0x60 + (int)(k % 4), pg);	/* 4 distinct pages */
	CHECK(madvise(src, len, MADV_MERGEABLE) == 0, "MADV_MERGEABLE: %s", strerror(errno));
	for (i = 0; i < 100 && read_long("/sys/kernel/mm/ksm/pages_sharing") < 32; i++)
		usleep(50000);
	if (read_long("/sys/kernel/mm/ksm/pages_sharing") < 32) {
		skip("ksmd did not merge in 5 s");
	} else {
		dst = (char *)pvm(getpid(), src, len, NULL, 0);
		CHECK(dst != (char *)-1, "clone of KSM pages: %s", strerror(errno));
		if (dst != (char *)-1) {
			for (size_t k = 0; k < n; k++)
				if (!all_bytes(dst + k * pg, pg, 0x60 + (int)(k % 4))) {
					FAIL("page %zu differs", k);
					break;
				}
			memset(dst, 1, pg);
			memset(src + pg, 2, pg);
			CHECK(all_bytes(src, pg, 0x60) && all_bytes(dst + pg, pg, 0x61),
			      "KSM clone not private");
			munmap(dst, len);
		}
	}
	write_file("/sys/kernel/mm/ksm/run", "2");	/* unmerge everything */
	munmap(src, len);
}

int main(int argc, char **argv)
{
	(void)argc;
	(void)argv;
	tap_init();
	printf("# process_vm_mmap conformance, syscall %ld, pid %d\n", nr, getpid());
	run("detect: kallsyms T symbol, EINVAL probe", t_detect);
	run("self: bytes equal, CoW both ways, munmap", t_self_bytes_cow);
	run("forked child: CoW both ways, clone outlives source", t_child_cow);
	run("child sub-range; unaligned range rounded out to whole pages", t_child_subrange);
	run("shared anonymous stays shared both ways", t_shared_anon);
	run("memfd shared, keeps offset", t_memfd);
	run("private file keeps file and offset, private pages copied", t_file_private);
	run("protections: read-only and PROT_NONE", t_protections);
	run("holes stay holes (pagemap, mincore)", t_holes);
	run("FIXED, FIXED_NOREPLACE (EEXIST), hint", t_fixed);
	run("mseal: a clone is not sealed, FIXED onto a seal is EPERM", t_mseal);
	run("errors: EINVAL, ESRCH, EFAULT", t_errors);
	run("[vvar] and [vdso]: EFAULT", t_special);
	run("hugetlb source: EFAULT", t_hugetlb);
	run("aio ring (VM_DONTEXPAND): EFAULT", t_aio_ring);
	run("protection key of another process: EFAULT", t_pkey);
	run("userfaultfd-registered source: ENOTSUPP (524)", t_uffd);
	run("permission: EPERM/EACCES without ptrace access", t_perm);
	run("THP source: whole PMDs, partial/misaligned split", t_thp);
	run("THP source in a forked child", t_thp_child);
	run("adjacent clones merge into one VMA", t_merge);
	run("SysV shm: shared, nattch via vm_ops->open", t_sysv_shm);
	run("fork and mremap of a clone", t_fork_after_clone);
	run("clone of a clone", t_clone_of_clone);
	run("KSM-merged source pages get their own copy", t_ksm);
	run("200 clones + munmaps from a live child", t_stress);
	return summary();
}
