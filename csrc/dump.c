/*
 * dump.c - stream a process's pages to a file or a socket, for CRIU dumps.
 *
 * The ranges (scan.c's) are read in order with batched process_vm_readv into
 * a small buffer the caller owns and reuses (so it stays in cache), and the
 * buffer is written out whole; where process_vm_readv stops short (PROT_NONE
 * or write-only pages) the rest of that range comes through /proc/PID/mem.
 * For CRIU's page server, each range can be preceded by its 24-byte
 * page_server_iov header, so the socket sees the protocol's stream as is.
 *
 * Measured (benchmarks/RESULTS.md, "CRIU dump"): one copy into a hot buffer
 * plus write() costs less than reading straight into a mapping of the output
 * file, whose page faults cost more than the second copy.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <string.h>
#include <sys/uio.h>
#include <unistd.h>

#include "pvmmap.h"

#define IOV_BATCH 1024                       /* IOV_MAX */
#define PS_HEADER_SIZE 24                    /* struct page_server_iov */
#define PS_MAX_PAGES ((uint64_t)1 << 20)     /* pages per header: 4 GiB */

struct out {
    int fd;
    char *buf;
    size_t size, used;
    struct pvmmap_dump_stats *st;
};

/* Write all of buf[0, used).  Returns 0 or -1 with errno. */
static int flush(struct out *o)
{
    size_t done = 0;
    while (done < o->used) {
        ssize_t w = write(o->fd, o->buf + done, o->used - done);
        if (w < 0) {
            if (errno == EINTR)
                continue;
            return -1;
        }
        if (w == 0) {
            errno = EIO;
            return -1;
        }
        done += (size_t)w;
        o->st->bytes_out += (uint64_t)w;
    }
    o->used = 0;
    return 0;
}

/* Read [addr, addr+len) through /proc/PID/mem into dst.  Returns 0 or -1. */
static int read_mem(int mem_fd, uintptr_t addr, char *dst, size_t len,
                    struct pvmmap_dump_stats *st)
{
    while (len) {
        if (mem_fd < 0) {
            errno = EFAULT;
            return -1;
        }
        ssize_t got = pread(mem_fd, dst, len, (off_t)addr);
        st->calls++;
        if (got < 0 && errno == EINTR)
            continue;
        if (got <= 0) {
            /* mem says EIO for a page it cannot reach, 0 bytes once the
             * mm it was opened on is gone (exit, exec) */
            errno = got == 0 ? ESRCH : errno == EIO ? EFAULT : errno;
            return -1;
        }
        st->bytes_mem += (uint64_t)got;
        addr += (size_t)got;
        dst += got;
        len -= (size_t)got;
    }
    return 0;
}

/*
 * Read the n pieces (addr[i], len[i]) into dst, in order.  process_vm_readv
 * stops at the first byte it cannot read; that piece's rest comes from
 * mem_fd, then readv goes on with the next.  pid 0: mem_fd only, for a
 * source that could be reaped and its pid recycled meanwhile (mem_fd holds
 * its mm; a pid does not).  Returns 0 or -1 with errno.
 */
static int read_pieces(pid_t pid, int mem_fd, struct iovec *remote, size_t n,
                       char *dst, struct pvmmap_dump_stats *st)
{
    size_t i = 0;
    while (i < n) {
        size_t total = 0;
        for (size_t k = i; k < n; k++)
            total += remote[k].iov_len;
        struct iovec local = { dst, total };
        ssize_t got = 0;
        if (pid > 0) {
            got = process_vm_readv(pid, &local, 1, remote + i, n - i, 0);
            st->calls++;
        }
        if (got < 0) {
            if (errno == EINTR)
                continue;
            if (errno != EFAULT)
                return -1;          /* ESRCH, EPERM, ENOMEM: not a page's fault */
            got = 0;
        }
        st->bytes_readv += (uint64_t)got;
        dst += got;
        size_t left = (size_t)got;
        while (i < n && left >= remote[i].iov_len)
            left -= remote[i++].iov_len;
        if (i == n)
            break;
        /* stopped inside piece i, `left` bytes into it */
        uintptr_t a = (uintptr_t)remote[i].iov_base + left;
        size_t rest = remote[i].iov_len - left;
        if (read_mem(mem_fd, a, dst, rest, st) < 0)
            return -1;
        dst += rest;
        i++;
    }
    return 0;
}

/* The stream being built: buf[0, used) is ready but for the `pieces`
 * remote pieces pending, whose bytes go to buf[fill, used). */
struct stream {
    pid_t pid;
    int mem_fd;
    struct out o;
    struct iovec remote[IOV_BATCH];
    size_t pieces;
    size_t fill;
};

static int read_pending(struct stream *s)
{
    if (s->pieces && read_pieces(s->pid, s->mem_fd, s->remote, s->pieces,
                                 s->o.buf + s->fill, s->o.st) < 0)
        return -1;
    s->pieces = 0;
    return 0;
}

/* Make room for `need` more bytes in the buffer. */
static int make_room(struct stream *s, size_t need)
{
    if (s->o.size - s->o.used >= need)
        return 0;
    if (read_pending(s) < 0 || flush(&s->o) < 0)
        return -1;
    return 0;
}

static int add_piece(struct stream *s, uintptr_t a, size_t len)
{
    if (s->pieces == IOV_BATCH && read_pending(s) < 0)
        return -1;
    if (!s->pieces)
        s->fill = s->o.used;
    s->remote[s->pieces].iov_base = (void *)a;
    s->remote[s->pieces].iov_len = len;
    s->pieces++;
    s->o.used += len;
    return 0;
}

/* Append one page_server_iov (little-endian: x86_64, arm64). */
static void put_header(struct stream *s, const struct pvmmap_ps_header *ps,
                       uint64_t vaddr, uint32_t nr)
{
    char *h = s->o.buf + s->o.used;
    uint64_t dst_id = ps->dst_id;
    memcpy(h, &ps->cmd, 4);
    memcpy(h + 4, &nr, 4);
    memcpy(h + 8, &vaddr, 8);
    memcpy(h + 16, &dst_id, 8);
    s->o.used += PS_HEADER_SIZE;
}

int pvmmap_dump_pages(pid_t pid, int mem_fd, const struct pvmmap_range *r,
                      size_t n, int out_fd, void *buf, size_t buf_size,
                      const struct pvmmap_ps_header *ps,
                      struct pvmmap_dump_stats *st)
{
    size_t page = pvmmap_page_size();
    struct stream s;

    if (buf_size < page + PS_HEADER_SIZE) {
        errno = EINVAL;
        return -1;
    }
    s.pid = pid;
    s.mem_fd = mem_fd;
    s.o.fd = out_fd;
    s.o.buf = buf;
    s.o.size = buf_size;
    s.o.used = 0;
    s.o.st = st;
    s.pieces = 0;
    s.fill = 0;

    for (size_t i = 0; i < n; i++) {
        uintptr_t a = r[i].start, end = r[i].end;
        if (a >= end || a % page || end % page) {
            errno = EINVAL;
            return -1;
        }
        while (a < end) {
            uintptr_t hend = end;
            if (ps) {
                uint64_t npages = (end - a) / page;
                if (npages > PS_MAX_PAGES)
                    npages = PS_MAX_PAGES;
                /* the header goes after every byte pending before it */
                if (read_pending(&s) < 0 || make_room(&s, PS_HEADER_SIZE + page) < 0)
                    return -1;
                put_header(&s, ps, a - ps->shift, (uint32_t)npages);
                hend = a + npages * page;
            }
            while (a < hend) {
                if (make_room(&s, page) < 0)
                    return -1;
                size_t room = (s.o.size - s.o.used) / page * page;
                size_t len = hend - a < room ? hend - a : room;
                if (add_piece(&s, a, len) < 0)
                    return -1;
                a += len;
            }
        }
    }
    if (read_pending(&s) < 0)
        return -1;
    return flush(&s.o);
}
