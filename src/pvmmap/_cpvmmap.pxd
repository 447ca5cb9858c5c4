# The C API of pvmmap's core (csrc/pvmmap.h), declared once for Cython, and
# the few libc calls the binding makes itself.
from libc.stdint cimport uint32_t, uint64_t, uintptr_t
from posix.types cimport off_t, pid_t


cdef extern from "<sys/mman.h>" nogil:
    void *mmap(void *addr, size_t length, int prot, int flags, int fd, off_t offset)
    int munmap(void *addr, size_t length)
    int mprotect(void *addr, size_t length, int prot)
    void *MAP_FAILED
    # c_ names: the binding re-exports them to Python under the real ones.
    int c_PROT_NONE "PROT_NONE"
    int c_PROT_READ "PROT_READ"
    int c_PROT_WRITE "PROT_WRITE"
    int c_PROT_EXEC "PROT_EXEC"
    int c_MAP_SHARED "MAP_SHARED"
    int c_MAP_PRIVATE "MAP_PRIVATE"
    int c_MAP_ANONYMOUS "MAP_ANONYMOUS"
    int c_MAP_FIXED "MAP_FIXED"
    int c_MAP_NORESERVE "MAP_NORESERVE"


cdef extern from "compat.h" nogil:
    int c_MAP_FIXED_NOREPLACE "MAP_FIXED_NOREPLACE"


cdef extern from "pvmmap.h" nogil:
    int PVMMAP_DEFAULT_SYSCALL_NR
    int PVMMAP_FIXED
    int PVMMAP_FIXED_NOREPLACE
    int PVMMAP_COPY_MEM_ONLY
    int PVMMAP_COPY_SKIP
    int PVMMAP_COPY_UFFD
    int PVMMAP_SCAN_DATA
    int PVMMAP_SCAN_ANON

    size_t pvmmap_page_size()

    long pvmmap_sys_process_vm_mmap(long nr, pid_t pid, uintptr_t src, size_t len,
                                    uintptr_t dst, unsigned long flags)
    int pvmmap_kallsyms_find(const char *const *names, int n)
    int pvmmap_probe_native(long nr)
    int pvmmap_uffd_probe()

    struct pvmmap_range:
        uintptr_t start
        uintptr_t end
    int pvmmap_scan(int pagemap_fd, uintptr_t start, uintptr_t end, int mode,
                    pvmmap_range **out, size_t *n_out, int *how)

    struct pvmmap_copy_stats:
        uint64_t bytes_readv
        uint64_t bytes_mem
        uint64_t calls
        uint64_t skipped
        int threads
        int uffd
    int pvmmap_copy(pid_t pid, int mem_fd, const pvmmap_range *r, size_t n,
                    uintptr_t src_base, void *dst_base, int max_threads, int flags,
                    pvmmap_copy_stats *stats)

    # (struct and function share the name pvmmap_freeze in C)
    struct freeze_state "pvmmap_freeze":
        pid_t pid
        int n
    int pvmmap_freeze(pid_t pid, freeze_state *fz)
    int pvmmap_thaw(freeze_state *fz)

    struct pvmmap_vma:
        uintptr_t start
        uintptr_t end
        uint64_t offset
        uint64_t inode
        unsigned dev_major
        unsigned dev_minor
        int prot
        int shared
        char *name
        size_t name_size
    int pvmmap_vma_query(int maps_fd, uintptr_t addr, pvmmap_vma *v)
    long pvmmap_vmas_text(int proc_fd, uintptr_t start, uintptr_t end, char **out)

    int PVMMAP_UFFD_VIA_DEV
    int PVMMAP_UFFD_VIA_SYSCALL
    int PVMMAP_UFFD_VIA_USER_ONLY
    struct pvmmap_uffd_info:
        int mode
        int via
        int dev_errno
        int syscall_errno
        uint64_t offered
        uint64_t granted
    int pvmmap_uffd_open_ex(uint64_t want, pvmmap_uffd_info *info)

    int PVMMAP_LAZY_NO_POISON
    int PVMMAP_LAZY_FILE
    int PVMMAP_LAZY_HOW_POISON
    int PVMMAP_LAZY_HOW_PAGEMAP_SCAN
    int PVMMAP_LAZY_HOW_PROCMAP_QUERY
    int PVMMAP_LAZY_HOW_USER_ONLY
    size_t PVMMAP_LAZY_READAHEAD_DEFAULT
    size_t PVMMAP_LAZY_READAHEAD_MAX
    struct pvmmap_lazy:
        pass
    # (struct and function share the name pvmmap_lazy_stats in C)
    struct lazy_stats "pvmmap_lazy_stats":
        uint64_t faults
        uint64_t bytes_fetched
        uint64_t pages_zero
        uint64_t pages_lost
        uint64_t pages_done
        uint64_t pages_total
        int how
    pvmmap_lazy *pvmmap_lazy_start(pid_t pid, int mem_fd, int pagemap_fd,
                                   int maps_fd, uintptr_t src, void *dst,
                                   size_t len, size_t readahead, int flags)
    int pvmmap_lazy_fill(pvmmap_lazy *lz, size_t max_bytes, size_t *remaining)
    int pvmmap_lazy_prefetch(pvmmap_lazy *lz)
    int pvmmap_lazy_close(pvmmap_lazy *lz)
    void pvmmap_lazy_stats(const pvmmap_lazy *lz, lazy_stats *st)
    long pvmmap_lazy_set_spin(long usec)
    # dump.c: streaming pages to a file or socket (CRIU dumps)
    struct pvmmap_dump_stats:
        uint64_t bytes_readv
        uint64_t bytes_mem
        uint64_t calls
        uint64_t bytes_out
    struct pvmmap_ps_header:
        uint32_t cmd
        uint64_t dst_id
        uint64_t shift
    int pvmmap_dump_pages(pid_t pid, int mem_fd, const pvmmap_range *r, size_t n,
                          int out_fd, void *buf, size_t buf_size,
                          const pvmmap_ps_header *ps, pvmmap_dump_stats *st)
