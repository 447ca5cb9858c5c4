/*
 * maps.c - look up the VMAs of another process around one address, at a
 * cost that does not grow with its other mappings: the PROCMAP_QUERY ioctl
 * on an open /proc/PID/maps (Linux 6.11 and later).  Older kernels answer
 * ENOTTY, and the caller reads the maps text instead.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <string.h>
#include <sys/ioctl.h>

#include "compat.h"
#include "pvmmap.h"

/* Returns 1 with *v filled (the VMA holding addr, or the next one above),
 * 0 if there is none, 2 if this kernel has no PROCMAP_QUERY, -1 with errno. */
int pvmmap_vma_query(int maps_fd, uintptr_t addr, struct pvmmap_vma *v)
{
    struct procmap_query q;

    memset(&q, 0, sizeof(q));
    q.size = sizeof(q);
    q.query_flags = PROCMAP_QUERY_COVERING_OR_NEXT_VMA;
    q.query_addr = addr;
    if (v->name && v->name_size) {
        v->name[0] = '\0';
        q.vma_name_addr = (uintptr_t)v->name;
        q.vma_name_size = (uint32_t)v->name_size;
    }
    if (ioctl(maps_fd, PROCMAP_QUERY, &q) < 0) {
        if (errno == ENOENT)
            return 0;
        /* ENOTTY: no such ioctl (< 6.11); EINVAL: an older struct layout */
        return errno == ENOTTY || errno == EINVAL ? 2 : -1;
    }
    v->start = q.vma_start;
    v->end = q.vma_end;
    v->offset = q.vma_offset;
    v->inode = q.inode;
    v->dev_major = q.dev_major;
    v->dev_minor = q.dev_minor;
    v->prot = ((q.vma_flags & PROCMAP_QUERY_VMA_READABLE) ? 1 : 0)
            | ((q.vma_flags & PROCMAP_QUERY_VMA_WRITABLE) ? 2 : 0)
            | ((q.vma_flags & PROCMAP_QUERY_VMA_EXECUTABLE) ? 4 : 0);
    v->shared = (q.vma_flags & PROCMAP_QUERY_VMA_SHARED) != 0;
    return 1;
}
