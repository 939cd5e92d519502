/*
 * close_fds_from(LOWEST): closes every descriptor from LOWEST up, with
 * close_range(2) where the kernel has it, else one by one from
 * /proc/self/fd. Shared by the holder (before it runs the backend as the
 * user) and the fd store (at start): neither may pass on a descriptor it
 * did not mean to.
 */
#ifndef TURNSTILED_CLOSE_FDS_H
#define TURNSTILED_CLOSE_FDS_H

#include <dirent.h>
#include <stdlib.h>
#include <sys/syscall.h>
#include <unistd.h>

static inline void close_fds_from(int lowest)
{
    if (syscall(SYS_close_range, (unsigned)lowest, ~0U, 0) == 0)
        return;
    DIR *d = opendir("/proc/self/fd");
    if (!d)
        return;
    int dfd = dirfd(d);
    for (struct dirent *e; (e = readdir(d));) {
        int fd = atoi(e->d_name);
        if (fd >= lowest && fd != dfd)
            close(fd);
    }
    closedir(d);
}

#endif
