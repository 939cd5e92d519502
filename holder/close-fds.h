/*
 * close_fds_from(LOWEST): closes every descriptor from LOWEST up, with
 * close_range(2) where the kernel has it, else one by one from
 * /proc/self/fd. Shared by the holder (before it runs the backend as the
 * user) and the fd store (at start): neither may pass on a descriptor it
 * did not mean to.
 *
 * It allocates nothing and calls only plain system calls: the holder runs
 * it in a child that shares the holder's memory (see spawn there), where
 * malloc, as opendir does, would work on the parent's heap.
 */
#ifndef TURNSTILED_CLOSE_FDS_H
#define TURNSTILED_CLOSE_FDS_H

#include <fcntl.h>
#include <stdint.h>
#include <sys/syscall.h>
#include <unistd.h>

/* One record of getdents64(2), as the kernel lays it out. */
struct close_fds_dirent {
    uint64_t ino;
    int64_t off;
    unsigned short reclen;
    unsigned char type;
    char name[];
};

static inline void close_fds_from(int lowest)
{
    if (syscall(SYS_close_range, (unsigned)lowest, ~0U, 0) == 0)
        return;
    int dfd = open("/proc/self/fd", O_RDONLY | O_DIRECTORY | O_CLOEXEC);
    if (dfd < 0)
        return;
    /* /proc/self/fd reads on by descriptor number, so closing one that was
     * listed does not make the listing skip another. */
    _Alignas(8) char buf[1024];
    long n;
    while ((n = syscall(SYS_getdents64, dfd, buf, sizeof buf)) > 0)
        for (long at = 0; at < n;) {
            struct close_fds_dirent *e = (struct close_fds_dirent *)(buf + at);
            at += e->reclen;
            int fd = 0;
            const char *p = e->name;
            if (*p < '0' || *p > '9')
                continue;  /* . and .. */
            for (; *p >= '0' && *p <= '9' && fd < 1 << 24; p++)
                fd = fd * 10 + (*p - '0');
            if (fd >= lowest && fd != dfd)
                close(fd);
        }
    close(dfd);
}

#endif
