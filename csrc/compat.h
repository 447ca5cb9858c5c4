/*
 * compat.h - kernel uapi newer than the installed headers (Debian 12 ships
 * 6.1's).  Each definition is guarded, so newer headers win.
 */
#ifndef PVMMAP_COMPAT_H
#define PVMMAP_COMPAT_H

#include <linux/fs.h>
#include <linux/types.h>
#include <sys/ioctl.h>
#include <sys/mman.h>

/* mmap's MAP_FIXED_NOREPLACE: Linux 4.17, glibc 2.28 headers. */
#ifndef MAP_FIXED_NOREPLACE
#define MAP_FIXED_NOREPLACE 0x100000
#endif

/* PAGEMAP_SCAN: ioctl on /proc/PID/pagemap, Linux 6.7 and later. */
#ifndef PAGEMAP_SCAN
#define PAGE_IS_WPALLOWED   (1 << 0)
#define PAGE_IS_WRITTEN     (1 << 1)
#define PAGE_IS_FILE        (1 << 2)
#define PAGE_IS_PRESENT     (1 << 3)
#define PAGE_IS_SWAPPED     (1 << 4)
#define PAGE_IS_PFNZERO     (1 << 5)
#define PAGE_IS_HUGE        (1 << 6)

struct page_region {
    __u64 start;
    __u64 end;
    __u64 categories;
};

struct pm_scan_arg {
    __u64 size;
    __u64 flags;
    __u64 start;
    __u64 end;
    __u64 walk_end;
    __u64 vec;
    __u64 vec_len;
    __u64 max_pages;
    __u64 category_inverted;
    __u64 category_mask;
    __u64 category_anyof_mask;
    __u64 return_mask;
};

#define PAGEMAP_SCAN _IOWR('f', 16, struct pm_scan_arg)
#endif

/* userfaultfd(UFFD_USER_MODE_ONLY): Linux 5.11 and later. */
#ifndef UFFD_USER_MODE_ONLY
#define UFFD_USER_MODE_ONLY 1
#endif

/* PTRACE_INTERRUPT's stop (glibc headers older than the kernel's). */
#ifndef PTRACE_EVENT_STOP
#define PTRACE_EVENT_STOP 128
#endif

#endif /* PVMMAP_COMPAT_H */
