"""The C library calls the standard library lacks, in one place."""

from __future__ import annotations

import ctypes
import os

_libc = ctypes.CDLL(None, use_errno=True)

PR_SET_CHILD_SUBREAPER = 36
MS_NOSUID, MS_NODEV = 2, 4
MNT_DETACH = 2


def _fail(what: str) -> OSError:
    err = ctypes.get_errno()
    return OSError(err, f"{what}: {os.strerror(err)}")


def set_child_subreaper() -> None:
    """Orphans below us are reparented to us, not to pid 1."""
    if _libc.prctl(PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0) != 0:
        raise _fail("prctl(PR_SET_CHILD_SUBREAPER)")


def mount(source: str, target: str, fstype: str, flags: int, data: str) -> None:
    if _libc.mount(source.encode(), target.encode(), fstype.encode(), flags,
                   data.encode()) != 0:
        raise _fail(f"mount {fstype}")


def umount2(target: str, flags: int) -> None:
    if _libc.umount2(target.encode(), flags) != 0:
        raise _fail(f"umount {target}")


def release_free_heap() -> None:
    """Hands the C heap's free pages back to the kernel. Python frees what
    loading modules took, but glibc keeps those pages (about 0.9 MB after
    the daemon's start) unless asked; other C libraries (musl) return free
    memory on their own and have no malloc_trim."""
    trim = getattr(_libc, "malloc_trim", None)
    if trim is not None:
        trim(0)
