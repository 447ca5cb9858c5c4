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

/* ---- userfaultfd uapi newer than 6.1 (include/uapi/linux/userfaultfd.h) ---- */
#include <linux/userfaultfd.h>

#ifndef UFFD_FEATURE_WP_UNPOPULATED
#define UFFD_FEATURE_WP_UNPOPULATED (1 << 13)   /* 6.4 */
#endif
#ifndef UFFD_FEATURE_POISON
#define UFFD_FEATURE_POISON         (1 << 14)   /* 6.6 */
#endif
#ifndef UFFD_FEATURE_WP_ASYNC
#define UFFD_FEATURE_WP_ASYNC       (1 << 15)   /* 6.7 */
#endif
#ifndef UFFD_FEATURE_MOVE
#define UFFD_FEATURE_MOVE           (1 << 16)   /* 6.8 */
#endif

/* UFFDIO_POISON (6.6): install a marker that SIGBUSes on touch. */
#ifndef UFFDIO_POISON
#define _UFFDIO_POISON 0x08
struct uffdio_poison {
    struct uffdio_range range;
#define UFFDIO_POISON_MODE_DONTWAKE ((__u64)1 << 0)
    __u64 mode;
    __s64 updated;              /* bytes poisoned, or -errno */
};
#define UFFDIO_POISON _IOWR(UFFDIO, _UFFDIO_POISON, struct uffdio_poison)
#endif

/* UFFDIO_MOVE (6.8): remap pages instead of copying them. */
#ifndef UFFDIO_MOVE
#define _UFFDIO_MOVE 0x05
struct uffdio_move {
    __u64 dst;
    __u64 src;
    __u64 len;
#define UFFDIO_MOVE_MODE_DONTWAKE        ((__u64)1 << 0)
#define UFFDIO_MOVE_MODE_ALLOW_SRC_HOLES ((__u64)1 << 1)
    __u64 mode;
    __s64 move;                 /* bytes moved, or -errno */
};
#define UFFDIO_MOVE _IOWR(UFFDIO, _UFFDIO_MOVE, struct uffdio_move)
#endif

/* /dev/userfaultfd's ioctl (6.1; older headers lack it). */
#ifndef USERFAULTFD_IOC_NEW
#define USERFAULTFD_IOC 0xAA
#define USERFAULTFD_IOC_NEW _IO(USERFAULTFD_IOC, 0x00)
#endif

/* PROCMAP_QUERY: ioctl on /proc/PID/maps, Linux 6.11 and later (fs.h). */
#ifndef PROCMAP_QUERY
#define PROCFS_IOCTL_MAGIC 'f'
#define PROCMAP_QUERY_VMA_READABLE      0x01
#define PROCMAP_QUERY_VMA_WRITABLE      0x02
#define PROCMAP_QUERY_VMA_EXECUTABLE    0x04
#define PROCMAP_QUERY_VMA_SHARED        0x08
#define PROCMAP_QUERY_COVERING_OR_NEXT_VMA 0x10
#define PROCMAP_QUERY_FILE_BACKED_VMA   0x20

struct procmap_query {
    __u64 size;
    __u64 query_flags;
    __u64 query_addr;
    __u64 vma_start;            /* out */
    __u64 vma_end;
    __u64 vma_flags;
    __u64 vma_page_size;
    __u64 vma_offset;
    __u64 inode;
    __u32 dev_major;
    __u32 dev_minor;
    __u32 vma_name_size;        /* in/out */
    __u32 build_id_size;        /* in/out */
    __u64 vma_name_addr;
    __u64 build_id_addr;
};
#define PROCMAP_QUERY _IOWR(PROCFS_IOCTL_MAGIC, 17, struct procmap_query)
#endif

#endif /* PVMMAP_COMPAT_H */
