/*
 * tap.h - the TAP harness the in-VM tests share (conformance.c, audit.h):
 * the syscall wrapper, CHECK/REQUIRE/skip, run() and the summary.
 *
 * Header-only: each test is one static binary.  The syscall number comes
 * from csrc/pvmmap.h (PVMMAP_DEFAULT_SYSCALL_NR) unless PVMMAP_SYSCALL_NR
 * is set (tap_init()).
 */
#ifndef PVMMAP_TAP_H
#define PVMMAP_TAP_H

#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <sys/syscall.h>
#include <unistd.h>

#include "pvmmap.h"

static long nr = PVMMAP_DEFAULT_SYSCALL_NR;
static long pg;
static int ntests, nfailed, nskipped;
static int cur_failed;
static char cur_msg[512];

static inline long pvm(pid_t pid, const void *src, size_t len, void *dst, unsigned long flags)
{
	return syscall(nr, (long)pid, (unsigned long)src, (unsigned long)len,
		       (unsigned long)dst, flags);
}

#define FAIL(...) do { fail_at(__LINE__, __VA_ARGS__); } while (0)
#define CHECK(c, ...) do { if (!(c)) FAIL(__VA_ARGS__); } while (0)
/* a failed precondition: stop this test here */
#define REQUIRE(c, ...) do { if (!(c)) { FAIL(__VA_ARGS__); return; } } while (0)

static inline void fail_at(int line, const char *fmt, ...)
{
	va_list ap;
	int n;

	if (cur_failed++)
		return;		/* keep the first reason */
	n = snprintf(cur_msg, sizeof(cur_msg), "line %d: ", line);
	va_start(ap, fmt);
	vsnprintf(cur_msg + n, sizeof(cur_msg) - n, fmt, ap);
	va_end(ap);
}

static int skip_reason_set;
static inline void skip(const char *why)
{
	skip_reason_set = 1;
	snprintf(cur_msg, sizeof(cur_msg), "%s", why);
}

static inline void note(const char *fmt, ...)
{
	va_list ap;

	printf("# ");
	va_start(ap, fmt);
	vprintf(fmt, ap);
	va_end(ap);
	printf("\n");
	fflush(stdout);
}

static inline void run(const char *name, void (*fn)(void))
{
	cur_failed = 0;
	skip_reason_set = 0;
	cur_msg[0] = 0;
	ntests++;
	fn();
	if (skip_reason_set && !cur_failed) {
		nskipped++;
		printf("ok %d - %s # SKIP %s\n", ntests, name, cur_msg);
	} else if (cur_failed) {
		nfailed++;
		printf("not ok %d - %s: %s\n", ntests, name, cur_msg);
	} else {
		printf("ok %d - %s\n", ntests, name);
	}
	fflush(stdout);
}

/* the plan and the tally; the exit status: 0 only if nothing failed */
static inline int summary(void)
{
	printf("1..%d\n# %d passed, %d failed, %d skipped\n", ntests,
	       ntests - nfailed - nskipped, nfailed, nskipped);
	fflush(stdout);
	return nfailed ? 1 : 0;
}

static inline void tap_init(void)
{
	const char *e = getenv("PVMMAP_SYSCALL_NR");

	if (e && *e)
		nr = strtol(e, NULL, 0);
	pg = sysconf(_SC_PAGESIZE);
	setvbuf(stdout, NULL, _IOLBF, 0);
}

#endif
