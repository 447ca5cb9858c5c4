/*
 * pvmmap.h - the C API of pvmmap's core (no Python in here).
 *
 * Every function returns -1 (or MAP_FAILED) and leaves errno set on failure,
 * unless its comment says otherwise.  Nothing here prints.
 */
#ifndef PVMMAP_H
#define PVMMAP_H

#include <stddef.h>
#include <stdint.h>
#include <sys/types.h>

/*
 * The syscall number of the project's own process_vm_mmap port to Linux 6.1
 * (kernel/).  6.1's x86_64 table ends at 450, so the port takes the first free
 * slot.  Upstream later gave 451 to cachestat: the number is only ever used
 * when /proc/kallsyms also lists sys_process_vm_mmap (see syscall.c), never
 * blindly.  kernel/ reads this line to build its syscall table entry: this is
 * the one place the number is stated.
 */
#define PVMMAP_DEFAULT_SYSCALL_NR 451

/* Flags of process_vm_mmap(), as in the 2019 v2 series. */
#define PVMMAP_FIXED            0x01
#define PVMMAP_FIXED_NOREPLACE  0x02
#define PVMMAP_FLAGS_MASK       (PVMMAP_FIXED | PVMMAP_FIXED_NOREPLACE)

/* The kernel-internal ENOTSUPP a uffd-registered source gives (not in libc). */
#define PVMMAP_KERNEL_ENOTSUPP  524

/* ---- syscall.c: the raw call and its detection ---- */

/* Issue process_vm_mmap as syscall `nr`.  Returns the destination address,
 * or -1 with errno (ENOTSUPP 524 is reported as EOPNOTSUPP). */
long pvmmap_sys_process_vm_mmap(long nr, pid_t pid, uintptr_t src, size_t len,
                                uintptr_t dst, unsigned long flags);

/* Look for any of `names` (n of them) as a symbol in /proc/kallsyms.
 * Returns the index of the first found, -1 with errno 0 if none is listed,
 * -1 with errno set if the file cannot be read. */
int pvmmap_kallsyms_find(const char *const *names, int n);

/* Check that syscall `nr` behaves like process_vm_mmap for arguments that
 * must fail: EINVAL for an unknown flag bit and for len == 0, then ESRCH
 * for a pid that cannot exist.  Returns 0 if it does, -1/ENOSYS if not. */
int pvmmap_probe_native(long nr);

/* How this process can get a userfaultfd: 2 fully (syscall or
 * /dev/userfaultfd), 1 only with UFFD_USER_MODE_ONLY, 0 not at all. */
int pvmmap_uffd_probe(void);

/* The page size (sysconf, read once). */
size_t pvmmap_page_size(void);

/* ---- scan.c: finding the pages a process has ---- */

struct pvmmap_range {
    uintptr_t start;
    uintptr_t end;          /* exclusive */
};

/* What pvmmap_scan reports. */
enum pvmmap_scan_mode {
    PVMMAP_SCAN_DATA = 0,   /* present (not the shared zero page) or swapped */
    PVMMAP_SCAN_ANON = 1,   /* as DATA, but only anonymous pages: the privately
                               modified pages of a private file mapping */
};

/* Scan [start, end) of the process whose /proc/PID/pagemap is open as
 * `pagemap_fd`.  On success returns 0 and a malloc'd array in *out (free()
 * it) of *n_out merged ranges; *how is 1 if PAGEMAP_SCAN was used, 0 if the
 * pagemap file was read. */
int pvmmap_scan(int pagemap_fd, uintptr_t start, uintptr_t end, int mode,
                struct pvmmap_range **out, size_t *n_out, int *how);

/* ---- copy.c: copying them ---- */

struct pvmmap_copy_stats {
    uint64_t bytes_readv;   /* bytes that came through process_vm_readv */
    uint64_t bytes_mem;     /* bytes that came through /proc/PID/mem */
    uint64_t calls;         /* syscalls issued */
    uint64_t skipped;       /* pages left zero under PVMMAP_COPY_SKIP */
    int threads;            /* threads that copied */
};

/* Copy flags. */
#define PVMMAP_COPY_MEM_ONLY 0x1   /* source pages unreadable: use mem_fd */
#define PVMMAP_COPY_SKIP     0x2   /* leave pages neither path can read (a file
                                      mapping past EOF) zero, count them */

/* Copy each source range [r.start, r.end) of `pid` to
 * dst_base + (r.start - src_base).  process_vm_readv with batched iovecs is
 * the fast path; where it stops short (a PROT_NONE page, say), the page is
 * read through `mem_fd` (an open /proc/PID/mem, or -1 for none).  Uses up
 * to `max_threads` threads (the caller's included) for large copies.
 * Returns 0, or -1 with errno (EFAULT if a page could be read by neither). */
int pvmmap_copy(pid_t pid, int mem_fd, const struct pvmmap_range *r, size_t n,
                uintptr_t src_base, void *dst_base, int max_threads, int flags,
                struct pvmmap_copy_stats *stats);

/* ---- freeze.c: stopping every thread of a process ---- */

struct pvmmap_freeze {
    pid_t pid;
    int n;                  /* threads held */
    int cap;
    pid_t *tids;
    int *pending_sig;       /* a signal that arrived while stopping, re-sent */
};

/* Seize and interrupt every thread of `pid` (ptrace), waiting until each is
 * stopped.  On failure nothing stays seized.  Must be thawed by the same
 * thread (ptrace ties the tracees to the calling thread). */
int pvmmap_freeze(pid_t pid, struct pvmmap_freeze *fz);

/* Detach every thread held by `fz` (they resume) and free its arrays.
 * Safe to call twice.  Returns 0, or -1 with errno of the first failure. */
int pvmmap_thaw(struct pvmmap_freeze *fz);

/* ---- dump.c: streaming pages to a file or socket (CRIU dumps) ---- */

struct pvmmap_dump_stats {
    uint64_t bytes_readv;   /* bytes that came through process_vm_readv */
    uint64_t bytes_mem;     /* bytes that came through /proc/PID/mem */
    uint64_t calls;         /* read syscalls issued */
    uint64_t bytes_out;     /* bytes written to out_fd, headers included */
};

/* CRIU's page-server header put before each range (struct page_server_iov:
 * cmd, nr_pages, vaddr = range start - shift, dst_id). */
struct pvmmap_ps_header {
    uint32_t cmd;
    uint64_t dst_id;
    uint64_t shift;
};

/* Read the page-aligned ranges r[0..n) of `pid` in order into `buf`
 * (buf_size bytes, at least a page and a header; reused, so it stays in
 * cache) and write them to out_fd, with `ps`'s header before each range (or
 * before each 4 GiB of one) unless ps is NULL.  process_vm_readv first,
 * `mem_fd` (/proc/PID/mem, or -1) where it stops short.  Adds to *st.
 * Returns 0, or -1 with errno (EFAULT: a page neither path could read;
 * the write's errno for the output).  What was written stays written. */
int pvmmap_dump_pages(pid_t pid, int mem_fd, const struct pvmmap_range *r,
                      size_t n, int out_fd, void *buf, size_t buf_size,
                      const struct pvmmap_ps_header *ps,
                      struct pvmmap_dump_stats *st);

#endif /* PVMMAP_H */
