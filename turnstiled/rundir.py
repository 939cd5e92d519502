"""XDG_RUNTIME_DIR: made 0700 for its user, removed when the Login ends.

Every step goes through directory fds with O_NOFOLLOW, so a symlink planted
anywhere on the path is refused rather than followed, and a parent directory
that a non-root user owns or may write to is refused (they could swap entries).
"""

from __future__ import annotations

import errno
import itertools
import logging
import os
import stat

from . import libc

log = logging.getLogger("turnstiled")

_DIR_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC


class RundirError(Exception):
    pass


def _open_parent(path: str) -> tuple[int, str]:
    """Opens (creating root-owned 0755 as needed) every parent of path."""
    parts = [p for p in path.split("/") if p]
    if not path.startswith("/") or not parts or ".." in parts:
        raise RundirError(f"{path}: not an absolute path without '..'")
    fd = os.open("/", _DIR_FLAGS)
    try:
        for part in parts[:-1]:
            try:
                os.mkdir(part, 0o755, dir_fd=fd)
            except FileExistsError:
                pass
            nxt = os.open(part, _DIR_FLAGS, dir_fd=fd)
            os.close(fd)
            fd = nxt
            st = os.fstat(fd)
            # A sticky directory (/tmp) is fine: no one else can replace
            # what root made in it, and the owner check above each step
            # catches what another user made first.
            if st.st_uid != 0 or (st.st_mode & 0o022 and not st.st_mode & stat.S_ISVTX):
                raise RundirError(f"{path}: parent {part!r} must be owned by root "
                                  "and writable by no one else")
    except OSError as err:
        os.close(fd)
        if err.errno == errno.ELOOP or err.errno == errno.ENOTDIR:
            raise RundirError(f"{path}: a parent is a symlink or not a directory") from None
        raise RundirError(f"{path}: {err.strerror}") from None
    except RundirError:
        os.close(fd)
        raise
    return fd, parts[-1]


def make(path: str, uid: int, gid: int, size: str = "0") -> str | None:
    """Creates path as a fresh 0700 directory owned by uid:gid, a tmpfs of
    its own of `size` (as logind does) unless size is "0", so a user who
    fills it fills only their own and never /run.

    Whatever is already at path was not made by us for this Login (ours is
    removed when the Login ends): another user may have planted it, with a
    socket named `bus` inside, in a parent anyone may write to. It is never
    adopted: it is renamed aside, and its new name returned for remove()."""
    parent, name = _open_parent(path)
    stale = None
    try:
        try:
            os.mkdir(name, 0o700, dir_fd=parent)
        except FileExistsError:
            _unmount(path)  # a tmpfs a crashed daemon left behind
            stale = f".{name}.stale.{os.getpid()}.{next(_retired)}"
            os.rename(name, stale, src_dir_fd=parent, dst_dir_fd=parent)
            os.mkdir(name, 0o700, dir_fd=parent)
        if size != "0":
            _mount_tmpfs(path, uid, gid, size)
        fd = os.open(name, _DIR_FLAGS, dir_fd=parent)
        try:
            os.fchown(fd, uid, gid)
            os.fchmod(fd, 0o700)
        finally:
            os.close(fd)
    except OSError as err:
        raise RundirError(f"{path}: {err.strerror}") from None
    finally:
        os.close(parent)
    return None if stale is None else os.path.join(os.path.dirname(path), stale)


def retire(path: str) -> str | None:
    """Takes path out of the way at once, so a new Login of the same user
    may make it afresh: a tmpfs is unmounted (the kernel frees its files)
    and its mount point removed; a plain directory is renamed to a hidden
    sibling, whose name is returned for remove(). None: nothing left."""
    if _unmount(path):
        os.rmdir(path)
        return None
    parent, name = os.path.split(path)
    dead = os.path.join(parent, f".{name}.removing.{os.getpid()}.{next(_retired)}")
    try:
        os.rename(path, dead)
    except FileNotFoundError:
        return None
    return dead


_retired = itertools.count()


def remove(path: str) -> None:
    """Removes path and everything in it, never following a symlink.

    Its size is the user's to choose: call it off the event loop."""
    try:
        st = os.lstat(path)
    except FileNotFoundError:
        return
    if not stat.S_ISDIR(st.st_mode):
        os.unlink(path)
        return
    # fwalk walks by directory fd and never into a symlink, so nothing
    # planted in the tree can redirect a removal elsewhere.
    for _, dirs, files, dirfd in os.fwalk(path, topdown=False):
        for name in files:
            _quietly(os.unlink, name, dir_fd=dirfd)
        for name in dirs:
            _quietly(os.rmdir, name, dir_fd=dirfd)
            _quietly(os.unlink, name, dir_fd=dirfd)  # a symlink to a directory
    _quietly(os.rmdir, path)


def _quietly(op, *args, **kwargs) -> None:
    try:
        op(*args, **kwargs)
    except OSError:
        pass


# -- per-user tmpfs

_mount_warned = False


def _mount_tmpfs(path: str, uid: int, gid: int, size: str) -> None:
    global _mount_warned
    options = f"mode=0700,uid={uid},gid={gid},size={size}"
    try:
        libc.mount("tmpfs", path, "tmpfs", libc.MS_NOSUID | libc.MS_NODEV, options)
    except OSError as err:
        if err.errno not in (errno.EPERM, errno.EACCES):
            raise
        if not _mount_warned:
            # A container without CAP_SYS_ADMIN: a plain directory still works.
            _mount_warned = True
            log.warning("cannot mount a tmpfs for runtime dirs (%s): they are plain "
                        "directories, unbounded", err.strerror)


def _unmount(path: str) -> bool:
    """Detaches a tmpfs mounted at path; False when none is."""
    try:
        here, above = os.lstat(path), os.lstat(os.path.dirname(path))
    except FileNotFoundError:
        return False
    if here.st_dev == above.st_dev:
        return False
    libc.umount2(path, libc.MNT_DETACH)
    return True
