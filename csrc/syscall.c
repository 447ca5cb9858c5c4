/*
 * syscall.c - the raw process_vm_mmap call and the checks that decide
 * whether this kernel has it.
 *
 * The 2019 series used x86_64 number 434, which mainline gave to pidfd_open,
 * so a number is never called blindly: /proc/kallsyms must list the symbol
 * first, and then the call must refuse arguments only process_vm_mmap
 * refuses with EINVAL.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/syscall.h>
#include <unistd.h>

#include "compat.h"
#include "pvmmap.h"

/* Returns sysconf(_SC_PAGESIZE), read once. */
size_t pvmmap_page_size(void)
{
    static size_t ps;
    if (!ps)
        ps = (size_t)sysconf(_SC_PAGESIZE);
    return ps;
}

/* Returns the destination address, or -1 with errno. */
long pvmmap_sys_process_vm_mmap(long nr, pid_t pid, uintptr_t src, size_t len,
                                uintptr_t dst, unsigned long flags)
{
    long ret = syscall(nr, (long)pid, src, len, dst, flags);
    if (ret == -1 && errno == PVMMAP_KERNEL_ENOTSUPP)
        errno = EOPNOTSUPP;
    return ret;
}

/* Returns the index of the first name listed, or -1 (errno 0: none). */
int pvmmap_kallsyms_find(const char *const *names, int n)
{
    char line[512];
    FILE *f = fopen("/proc/kallsyms", "re");
    int found = -1;

    if (!f)
        return -1;
    while (found < 0 && fgets(line, sizeof(line), f)) {
        /* "ffffffff81234560 T __x64_sys_process_vm_mmap\n" (address is
         * zeros without CAP_SYSLOG, the names are listed all the same) */
        char *name = strchr(line, ' ');
        if (!name || !(name = strchr(name + 1, ' ')))
            continue;
        name++;
        name[strcspn(name, " \t\n")] = '\0';
        for (int i = 0; i < n; i++) {
            if (strcmp(name, names[i]) == 0) {
                found = i;
                break;
            }
        }
    }
    int err = ferror(f) ? EIO : 0;
    fclose(f);
    errno = err;
    return found;
}

/*
 * Returns 0 if syscall `nr` refuses what process_vm_mmap must refuse.
 * EINVAL alone proves little: pidfd_open (434, the 2019 series' number)
 * also says EINVAL to these arguments, because our `src` lands in its flags.
 * The last step needs ESRCH for a pid that cannot exist, with arguments
 * that are otherwise valid; pidfd_open still says EINVAL there.
 */
int pvmmap_probe_native(long nr)
{
    long page = sysconf(_SC_PAGESIZE);
    static const char probe[1] = {1};
    uintptr_t src = (uintptr_t)probe & ~(uintptr_t)(page - 1);
    const long no_such_pid = 0x3fffffff;   /* above PID_MAX_LIMIT */

    errno = 0;
    if (syscall(nr, (long)getpid(), src, (size_t)page, 0UL, 0x80UL) != -1
        || errno != EINVAL)
        goto no;
    errno = 0;
    if (syscall(nr, (long)getpid(), src, 0UL, 0UL, 0UL) != -1 || errno != EINVAL)
        goto no;
    errno = 0;
    if (syscall(nr, no_such_pid, src, (size_t)page, 0UL, 0UL) != -1 || errno != ESRCH)
        goto no;
    return 0;
no:
    errno = ENOSYS;
    return -1;
}
