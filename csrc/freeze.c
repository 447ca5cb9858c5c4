/*
 * freeze.c - stop every thread of a process for the length of a copy, so
 * the copy is one instant (what the native call gets from holding the
 * source's mmap lock).  PTRACE_SEIZE + PTRACE_INTERRUPT: unlike SIGSTOP it
 * leaves no visible group-stop and needs no signal games on resume.
 */
#define _GNU_SOURCE
#include <dirent.h>
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ptrace.h>
#include <sys/wait.h>

#include "compat.h"
#include "pvmmap.h"

static int held(const struct pvmmap_freeze *fz, pid_t tid)
{
    for (int i = 0; i < fz->n; i++)
        if (fz->tids[i] == tid)
            return 1;
    return 0;
}

/* Seize one thread and wait for its stop.  Returns 1 if held, 0 if it is
 * gone (exited meanwhile), -1 with errno. */
static int seize_one(struct pvmmap_freeze *fz, pid_t tid)
{
    int status, sig = 0;

    if (ptrace(PTRACE_SEIZE, tid, NULL, NULL) < 0)
        return errno == ESRCH ? 0 : -1;
    if (ptrace(PTRACE_INTERRUPT, tid, NULL, NULL) < 0) {
        if (errno == ESRCH)
            return 0;
        int err = errno;
        ptrace(PTRACE_DETACH, tid, NULL, NULL);
        errno = err;
        return -1;
    }
    for (;;) {
        pid_t w = waitpid(tid, &status, __WALL);
        if (w < 0) {
            if (errno == EINTR)
                continue;
            return errno == ECHILD ? 0 : -1;
        }
        if (WIFEXITED(status) || WIFSIGNALED(status))
            return 0;
        if (!WIFSTOPPED(status))
            continue;
        if ((status >> 16) == PTRACE_EVENT_STOP)
            break;
        /* A signal arrived first: hold it back, deliver it on thaw. */
        sig = WSTOPSIG(status);
        if (ptrace(PTRACE_CONT, tid, NULL, NULL) < 0)
            return errno == ESRCH ? 0 : -1;
    }
    if (fz->n == fz->cap) {
        int cap = fz->cap ? fz->cap * 2 : 16;
        pid_t *t = realloc(fz->tids, (size_t)cap * sizeof(pid_t));
        if (t)
            fz->tids = t;
        int *s = realloc(fz->pending_sig, (size_t)cap * sizeof(int));
        if (s)
            fz->pending_sig = s;
        if (!t || !s) {
            ptrace(PTRACE_DETACH, tid, NULL, (void *)(long)sig);
            errno = ENOMEM;
            return -1;
        }
        fz->cap = cap;
    }
    fz->tids[fz->n] = tid;
    fz->pending_sig[fz->n] = sig;
    fz->n++;
    return 1;
}

/* Returns 0 with every thread of pid stopped, or -1 with errno and none. */
int pvmmap_freeze(pid_t pid, struct pvmmap_freeze *fz)
{
    char path[64];
    int added;

    memset(fz, 0, sizeof(*fz));
    fz->pid = pid;
    snprintf(path, sizeof(path), "/proc/%d/task", (int)pid);
    /* Threads may be created while we stop the others: list again until a
     * pass finds no thread we do not hold. */
    do {
        DIR *d = opendir(path);
        struct dirent *e;
        if (!d) {
            int err = errno == ENOENT ? ESRCH : errno;
            pvmmap_thaw(fz);
            errno = err;
            return -1;
        }
        added = 0;
        while ((e = readdir(d))) {
            pid_t tid = (pid_t)atoi(e->d_name);
            if (tid <= 0 || held(fz, tid))
                continue;
            int r = seize_one(fz, tid);
            if (r < 0) {
                int err = errno;
                closedir(d);
                pvmmap_thaw(fz);
                errno = err;
                return -1;
            }
            added += r;
        }
        closedir(d);
    } while (added);
    if (fz->n == 0) {
        pvmmap_thaw(fz);
        errno = ESRCH;
        return -1;
    }
    return 0;
}

/* Returns 0, or -1 with errno of the first thread that could not be let go. */
int pvmmap_thaw(struct pvmmap_freeze *fz)
{
    int err = 0;
    for (int i = 0; i < fz->n; i++) {
        long sig = fz->pending_sig[i];
        if (ptrace(PTRACE_DETACH, fz->tids[i], NULL, (void *)sig) < 0
            && errno != ESRCH && !err)
            err = errno;
    }
    free(fz->tids);
    free(fz->pending_sig);
    fz->tids = NULL;
    fz->pending_sig = NULL;
    fz->n = fz->cap = 0;
    if (err) {
        errno = err;
        return -1;
    }
    return 0;
}
