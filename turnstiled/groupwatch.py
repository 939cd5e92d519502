"""Hears when a cgroup becomes empty, without polling.

The kernel flags `cgroup.events` with POLLPRI whenever a line in it
changes (kernfs), and keeps flagging it until the file is read again
through the same descriptor. One private epoll set holds every watched
file; its own descriptor is a reader on the loop, so the loop sleeps
until some group's `populated` changes.
"""

from __future__ import annotations

import logging
import os
import select
from collections.abc import Callable

from .cgroups import parse_populated
from .loop import current

log = logging.getLogger("turnstiled")


class GroupWatch:
    """Calls back, once per watch, when a watched group is (or becomes)
    empty. A group may have several watches (a closing session's, and a
    kill waiting for it to be done)."""

    def __init__(self) -> None:
        self._epoll: select.epoll | None = None
        self._path_of: dict[int, str] = {}  # fd -> path
        self._fd_of: dict[str, int] = {}
        self._calls: dict[str, list[Callable[[], None]]] = {}

    def watch(self, path: str, on_empty: Callable[[], None]) -> None:
        """on_empty() is called (from the loop, once) when the group at path
        holds no process: soon if it is empty already or not there at all."""
        fd = self._fd_of.get(path)
        if fd is None:
            try:
                fd = os.open(os.path.join(path, "cgroup.events"), os.O_RDONLY | os.O_CLOEXEC)
            except FileNotFoundError:
                current().call_soon(on_empty)
                return
            # Registered before the first read: a change between the two
            # still flags the descriptor.
            self._set().register(fd, select.EPOLLPRI)
            self._path_of[fd] = path
            self._fd_of[path] = fd
        self._calls.setdefault(path, []).append(on_empty)
        self._check(fd)

    def unwatch(self, path: str, on_empty: Callable[[], None] | None = None) -> None:
        """Drops one watch of path (on_empty), or all of them."""
        calls = self._calls.get(path, [])
        if on_empty is not None and on_empty in calls:
            calls.remove(on_empty)
        elif on_empty is None:
            calls.clear()
        if calls:
            return
        self._calls.pop(path, None)
        fd = self._fd_of.pop(path, None)
        if fd is None:
            return
        del self._path_of[fd]
        assert self._epoll is not None
        self._epoll.unregister(fd)
        os.close(fd)
        if not self._fd_of:
            self._close_set()

    def close(self) -> None:
        for path in list(self._fd_of):
            self.unwatch(path)

    # -- the epoll set

    def _set(self) -> select.epoll:
        if self._epoll is None:
            self._epoll = select.epoll()
            current().add_reader(self._epoll.fileno(), self._on_events)
        return self._epoll

    def _close_set(self) -> None:
        if self._epoll is not None:
            current().remove_reader(self._epoll.fileno())
            self._epoll.close()
            self._epoll = None

    def _on_events(self) -> None:
        if self._epoll is None:
            return
        for fd, _ in self._epoll.poll(0):
            if fd in self._path_of:
                self._check(fd)

    def _check(self, fd: int) -> None:
        """Reads the file (which also clears its flag); an empty group's
        watches end and their callbacks run."""
        try:
            empty = not parse_populated(os.pread(fd, 4096, 0))
        except OSError:
            empty = True  # the group was removed: nothing is in it
        if not empty:
            return
        path = self._path_of[fd]
        calls = list(self._calls.get(path, []))
        self.unwatch(path)
        loop = current()
        for call in calls:
            loop.call_soon(call)
