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
 * The syscall number of the project's own process_vm_mmap ports to Linux 6.1
 * and 6.12 (kernel/).  One number for both, and outside what mainline hands
 * out: 451, the first free slot of 6.1, is cachestat from 6.5 on, and 6.12's
 * table ends at 462.  x86_64's common syscalls are numbered from 0 up (470 in
 * 6.18), x32's take 512-547; 600 is clear of both for years.  The number is
 * only ever used when /proc/kallsyms also lists sys_process_vm_mmap (see
 * syscall.c), never blindly.  kernel/ reads this line to build its syscall
 * table entry: this is the one place the number is stated.
 */
#define PVMMAP_DEFAULT_SYSCALL_NR 600

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
    int uffd;               /* 1 if the destination was filled through
                               UFFDIO_COPY (PVMMAP_COPY_UFFD), 0 if directly */
};

/* Copy flags. */
#define PVMMAP_COPY_MEM_ONLY 0x1   /* source pages unreadable: use mem_fd */
#define PVMMAP_COPY_SKIP     0x2   /* leave pages neither path can read (a file
                                      mapping past EOF) zero, count them */
#define PVMMAP_COPY_UFFD     0x4   /* the destination is fresh private anonymous
                                      memory: fill it by UFFDIO_COPY from hot
                                      staging buffers (no zero-fill, no fault
                                      per page); falls back to the direct path
                                      when no uffd can be opened/registered.
                                      Pages left unfilled stay missing. */

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

/* ---- maps.c: the VMAs around an address ---- */

struct pvmmap_vma {
    uintptr_t start, end;   /* [start, end) */
    uint64_t offset;        /* file offset of start */
    uint64_t inode;
    unsigned dev_major, dev_minor;
    int prot;               /* PROT_READ | PROT_WRITE | PROT_EXEC bits */
    int shared;             /* MAP_SHARED */
    char *name;             /* in: a buffer for the path or [name] (or NULL) */
    size_t name_size;       /* in: its size */
};

/* The VMA of the process whose /proc/PID/maps is open as maps_fd that holds
 * addr, or the next one above it (PROCMAP_QUERY, Linux 6.11).  Returns 1
 * with *v filled, 0 if there is none, 2 if the kernel has no PROCMAP_QUERY,
 * -1 with errno.  Cost: one ioctl, whatever the number of VMAs. */
int pvmmap_vma_query(int maps_fd, uintptr_t addr, struct pvmmap_vma *v);

/* The text of the entries of /proc/PID/maps or /proc/PID/smaps (open as
 * proc_fd, at offset 0) that overlap [start, end): each entry's header line
 * and, for smaps, its fields.  Reading stops at the first entry at or above
 * end; the entries below start are read (the kernel prints them: there is no
 * way to start at an address) but not kept, so what grows with the VMAs
 * below the range is the kernel's printing alone.  Returns the length with
 * *out malloc'd (the caller frees it), or -1 with errno. */
long pvmmap_vmas_text(int proc_fd, uintptr_t start, uintptr_t end, char **out);

/* ---- uffd.c: userfaultfd and the lazy fault server ---- */

/* How a userfaultfd was obtained. */
#define PVMMAP_UFFD_VIA_DEV       1   /* /dev/userfaultfd, USERFAULTFD_IOC_NEW */
#define PVMMAP_UFFD_VIA_SYSCALL   2   /* userfaultfd() */
#define PVMMAP_UFFD_VIA_USER_ONLY 3   /* userfaultfd(UFFD_USER_MODE_ONLY) */

struct pvmmap_uffd_info {
    int mode;               /* 2: full; 1: user-mode-only (a kernel access to
                               a missing page fails with EFAULT) */
    int via;                /* PVMMAP_UFFD_VIA_* */
    int dev_errno;          /* why /dev/userfaultfd was not used (0: it was) */
    int syscall_errno;      /* why plain userfaultfd() was not (0: not tried) */
    uint64_t offered;       /* UFFD_FEATURE_* bits this kernel has */
    uint64_t granted;       /* the ones enabled on the returned fd */
};

/* Open a userfaultfd (O_CLOEXEC|O_NONBLOCK) and do UFFDIO_API, trying
 * /dev/userfaultfd, then userfaultfd(), then UFFD_USER_MODE_ONLY; enables
 * the features of `want` the kernel offers.  Returns the fd with *info
 * filled (info may be NULL), or -1 with errno of the last route tried. */
int pvmmap_uffd_open_ex(uint64_t want, struct pvmmap_uffd_info *info);

/* pvmmap_uffd_open_ex with no optional feature; *mode = 2 or 1.
 * Returns the fd, or -1 with errno. */
int pvmmap_uffd_open(int *mode);

/* How this process can get a userfaultfd: 2 fully (syscall or
 * /dev/userfaultfd), 1 only with UFFD_USER_MODE_ONLY, 0 not at all.
 * (Opens one and closes it; errno is left as it was.) */
int pvmmap_uffd_probe(void);

/* Lazy mapping flags (the fallbacks can be forced, for tests). */
#define PVMMAP_LAZY_NO_POISON         0x1  /* poison by memfd mapping even
                                              where UFFDIO_POISON exists */
#define PVMMAP_LAZY_NO_PAGEMAP_SCAN   0x2  /* read pagemap entries instead */
#define PVMMAP_LAZY_NO_PROCMAP_QUERY  0x4  /* parse /proc/PID/maps instead */
#define PVMMAP_LAZY_FIXED_READAHEAD   0x8  /* no growing window for streams */
#define PVMMAP_LAZY_FILE              0x10 /* the source is a file, not a
                                              process: mem_fd is a regular file
                                              (a CRIU pages-N.img), src an
                                              offset in it, every page data;
                                              pid, pagemap_fd and maps_fd are
                                              unused (0, -1, -1) */
#define PVMMAP_LAZY_FLAGS_MASK        0x1f

/* What a lazy mapping uses (pvmmap_lazy_stats.how). */
#define PVMMAP_LAZY_HOW_POISON        0x1  /* UFFDIO_POISON (else memfd) */
#define PVMMAP_LAZY_HOW_PAGEMAP_SCAN  0x2  /* PAGEMAP_SCAN (else pagemap read) */
#define PVMMAP_LAZY_HOW_PROCMAP_QUERY 0x4  /* PROCMAP_QUERY (else maps text) */
#define PVMMAP_LAZY_HOW_USER_ONLY     0x8  /* user-mode-only uffd */

/* Readahead per fault when 0 is passed, and the largest window (bytes): a
 * sequential stream of faults doubles its window up to the max (unless
 * PVMMAP_LAZY_FIXED_READAHEAD).  See benchmarks/UFFD.md for the numbers. */
#define PVMMAP_LAZY_READAHEAD_DEFAULT ((size_t)16 << 10)
#define PVMMAP_LAZY_READAHEAD_MAX     ((size_t)1 << 20)

/* How long the server spins after serving a fault before it blocks (µs).
 * See server_main in uffd.c and benchmarks/UFFD.md. */
#define PVMMAP_LAZY_SPIN_DEFAULT_US 50

struct pvmmap_lazy;         /* one lazy mapping */

struct pvmmap_lazy_stats {
    uint64_t faults;        /* fault messages served */
    uint64_t bytes_fetched; /* bytes read from the source and installed */
    uint64_t pages_zero;    /* holes answered with the zero page */
    uint64_t pages_lost;    /* pages poisoned: the source died or unmapped
                               them; touching one raises SIGBUS */
    uint64_t pages_done;    /* pages installed so far (data or zero) */
    uint64_t pages_total;
    int how;                /* PVMMAP_LAZY_HOW_* */
};

/*
 * Make the destination [dst, dst+len) (private anonymous memory the caller
 * mmapped, not yet touched) a lazy clone of the source's [src, src+len),
 * which must be private anonymous memory (a hole there reads as zero).
 * mem_fd, pagemap_fd and maps_fd are /proc/PID/{mem,pagemap,maps}, opened
 * by the caller at clone time (they pin the source's mm; they are dup'ed,
 * the caller keeps its own).  Registers the destination with a new uffd,
 * applies MADV_DONTFORK, and hands it to the server thread (started on
 * first use).  Constant time: nothing is read yet.  readahead: bytes
 * fetched per fault, the aligned window around it (0: the default; rounded
 * to pages, clipped to the max); sequential faults grow it (see above).
 * The source is read as it is at fault time (no snapshot).  With
 * PVMMAP_LAZY_FILE the source is [src, src+len) of the file mem_fd: a page
 * the file is too short for is poisoned (SIGBUS on touch), never zero.
 * The destination
 * must stay where it is until close (no mremap or partial munmap: no uffd
 * events are asked for).
 * Returns the mapping, or NULL with errno.
 */
struct pvmmap_lazy *pvmmap_lazy_start(pid_t pid, int mem_fd, int pagemap_fd,
                                      int maps_fd, uintptr_t src, void *dst,
                                      size_t len, size_t readahead, int flags);

/* Fetch up to max_bytes of not yet fetched pages on the calling thread,
 * alongside the server.  *remaining (may be NULL) gets the bytes not yet
 * installed.  Returns 0, or -1 with errno once pages were lost (they are
 * poisoned first): ESRCH if the source exited or exec'd, EFAULT if part of
 * the range was unmapped; EBADF in a forked child (the mapping is the
 * parent's).  Not concurrently with close() of the same lz. */
int pvmmap_lazy_fill(struct pvmmap_lazy *lz, size_t max_bytes, size_t *remaining);

/* Ask the server to complete the mapping in the background, whenever no
 * fault is waiting (faults are always served first).  Returns 0, or -1
 * with EBADF in a forked child. */
int pvmmap_lazy_prefetch(struct pvmmap_lazy *lz);

/* Stop serving lz: on return the server no longer touches it (other lazy
 * mappings are served throughout).  Unregisters, closes its fds, frees it.
 * The caller munmaps the destination afterwards; a page touched between
 * close and munmap reads as zero.  In a forked child it only frees the
 * child's copy (fds, memory) and leaves the parent's mapping served.
 * Returns 0, or -1 with errno if the unregistering failed (lz is freed
 * anyway). */
int pvmmap_lazy_close(struct pvmmap_lazy *lz);

/* Fill *st with lz's counters (lock-free; consistent enough to report). */
void pvmmap_lazy_stats(const struct pvmmap_lazy *lz, struct pvmmap_lazy_stats *st);

/* How long the server spins after a fault before it blocks: usec > 0, 0
 * to block at once, -1 to busy-poll always.  Process-wide.  Returns the
 * previous setting. */
long pvmmap_lazy_set_spin(long usec);
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
 * `mem_fd` (/proc/PID/mem, or -1) where it stops short; pid 0: mem_fd
 * only (it pins the source's mm; a pid can be recycled).  Adds to *st.
 * Returns 0, or -1 with errno (EFAULT: a page neither path could read;
 * the write's errno for the output).  What was written stays written. */
int pvmmap_dump_pages(pid_t pid, int mem_fd, const struct pvmmap_range *r,
                      size_t n, int out_fd, void *buf, size_t buf_size,
                      const struct pvmmap_ps_header *ps,
                      struct pvmmap_dump_stats *st);

#endif /* PVMMAP_H */
