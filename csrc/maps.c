/*
 * maps.c - look up the VMAs of another process around one address, at a
 * cost that does not grow with its other mappings: the PROCMAP_QUERY ioctl
 * on an open /proc/PID/maps (Linux 6.11 and later).  Older kernels answer
 * ENOTTY, and the caller reads the maps text instead.
 *
 * VmFlags and protection keys are printed by /proc/PID/smaps only, from the
 * first VMA on: pvmmap_vmas_text reads it in large chunks and keeps only
 * the entries of the range, so that what grows with the other mappings is
 * the kernel's printing and nothing of ours.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>
#include <unistd.h>

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

/* The chunk each read(2) of smaps asks for: the kernel fills it with as
 * many whole entries as fit, under one mmap_lock. */
#define SMAPS_CHUNK (1u << 20)

/* An entry's header starts with its start address in lower-case hex;
 * every smaps field line starts with an upper-case name ("Rss:", "VmFlags:"). */
static int is_header(const char *line)
{
    return (line[0] >= '0' && line[0] <= '9') || (line[0] >= 'a' && line[0] <= 'f');
}

static int append(char **out, size_t *len, size_t *cap, const char *s, size_t n)
{
    if (*len + n + 1 > *cap) {
        size_t want = *cap ? *cap : 4096;
        char *p;
        while (want < *len + n + 1)
            want *= 2;
        p = realloc(*out, want);
        if (!p)
            return -1;
        *out = p;
        *cap = want;
    }
    memcpy(*out + *len, s, n);
    *len += n;
    (*out)[*len] = '\0';
    return 0;
}

long pvmmap_vmas_text(int proc_fd, uintptr_t start, uintptr_t end, char **out)
{
    char *buf = malloc(SMAPS_CHUNK + 1);
    size_t have = 0, len = 0, cap = 0;
    int keep = 0, done = 0, err = 0;

    *out = NULL;
    if (!buf)
        return -1;
    while (!done) {
        ssize_t n = read(proc_fd, buf + have, SMAPS_CHUNK - have);
        char *line, *nl;

        if (n < 0) {
            if (errno == EINTR)
                continue;
            err = errno;
            break;
        }
        if (n == 0)
            break;
        have += (size_t)n;
        buf[have] = '\0';
        line = buf;
        while (!done && (nl = memchr(line, '\n', have - (size_t)(line - buf)))) {
            size_t ll = (size_t)(nl - line) + 1;

            if (is_header(line)) {
                char *dash;
                unsigned long long lo = strtoull(line, &dash, 16), hi;

                hi = *dash == '-' ? strtoull(dash + 1, NULL, 16) : 0;
                if (lo >= end)
                    done = 1;
                keep = !done && hi > start;
            }
            if (keep && append(out, &len, &cap, line, ll) < 0) {
                err = errno;
                done = 1;
            }
            line = nl + 1;
        }
        /* A line cut by the chunk's end: keep it for the next read. */
        have -= (size_t)(line - buf);
        memmove(buf, line, have);
        if (have == SMAPS_CHUNK) {       /* a 1 MiB line: not smaps */
            err = EINVAL;
            break;
        }
    }
    free(buf);
    if (err) {
        free(*out);
        *out = NULL;
        errno = err;
        return -1;
    }
    if (!*out && append(out, &len, &cap, "", 0) < 0)
        return -1;
    return (long)len;
}
