"""The daemon's side of the fd store (holder/turnstiled-fdstore.c holds the
contract): a small root process that keeps, for the next daemon, the
descriptors that must outlive this one, each under a name with a record.

The store listens on a socket the daemon makes (root only). On connecting,
a daemon first receives every entry the store keeps, then sends `keep` and
`drop` messages that get no reply: a login costs one sendmsg here. If no
daemon is connected for the store's adopt timeout, it closes everything
and exits, and the holders stop their managers.
"""

from __future__ import annotations

import array
import logging
import os
import socket
import struct
from dataclasses import dataclass

from .children import Children

log = logging.getLogger("turnstiled")

MAX_PACKET = 65536
# How long a send to the store may block: it does nothing slow, so a full
# buffer means it is stuck, and a stuck store must not stall logins. The
# kernel bounds it (SO_SNDTIMEO on a blocking socket): a Python timeout
# would cost every send, each login's among them, a poll() first.
SEND_TIMEOUT = 2.0
_SNDTIMEO = struct.pack("@ll", int(SEND_TIMEOUT), int(SEND_TIMEOUT % 1 * 1_000_000))


class StoreError(Exception):
    """The store cannot be reached or spoke out of turn."""


@dataclass
class Entry:
    name: str
    data: bytes
    fd: int | None


class FdStore:
    def __init__(self, path: str, program: str, adopt_timeout: float,
                 children: Children) -> None:
        self.path, self.program = path, program
        self.adopt_timeout, self.children = adopt_timeout, children
        self._sock: socket.socket | None = None
        self.pid: int | None = None  # when we started it
        self._quitting = False

    def open(self) -> list[Entry]:
        """Connects to the store a previous daemon left and takes back what
        it keeps; with none there, starts a fresh one (and gets nothing)."""
        sock = self._connect()
        if sock is None:
            self._start()
            sock = self._connect()
            if sock is None:
                raise StoreError(f"the fd store started but {self.path} does not answer")
        self._sock = sock
        return self._take_entries()

    def keep(self, name: str, data: bytes, fd: int | None = None) -> None:
        self._send(b"keep\0" + name.encode() + b"\0" + data, fd)

    def drop(self, name: str) -> None:
        self._send(b"drop\0" + name.encode())

    def quit(self) -> None:
        """Tells the store to close everything it keeps and exit."""
        self._send(b"quit")
        self._quitting = True

    def close(self) -> None:
        """Leaves the store to the next daemon (its adopt timeout starts)."""
        if self._sock is not None:
            self._sock.close()
            self._sock = None

    @property
    def connected(self) -> bool:
        return self._sock is not None

    # -- plumbing

    def _connect(self) -> socket.socket | None:
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET | socket.SOCK_CLOEXEC)
        try:
            sock.connect(self.path)
        except (FileNotFoundError, ConnectionRefusedError):
            sock.close()
            return None
        except OSError:
            sock.close()
            raise
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDTIMEO, _SNDTIMEO)
        return sock

    def _start(self) -> None:
        try:
            os.unlink(self.path)  # a dead store's socket
        except FileNotFoundError:
            pass
        listener = socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        try:
            old = os.umask(0o077)
            try:
                listener.bind(self.path)  # root's alone: mode 0600
            finally:
                os.umask(old)
            listener.listen(4)
            ms = str(int(self.adopt_timeout * 1000))
            self.pid = self.children.spawn(self.program, listener.fileno(), self._exited,
                                           args=[ms])
        finally:
            listener.close()
        log.info("fd store started (pid %d)", self.pid)

    def _exited(self, status: int) -> None:
        if self._quitting:
            return
        log.error("the fd store (pid %s) exited with status %d: a restart now would "
                  "stop every manager", self.pid, status)
        self.pid = None
        self.close()

    def _take_entries(self) -> list[Entry]:
        assert self._sock is not None
        entries: list[Entry] = []
        self._sock.settimeout(10.0)
        try:
            while True:
                data, fds, flags, _ = socket.recv_fds(self._sock, MAX_PACKET, 1,
                                                      socket.MSG_CMSG_CLOEXEC)
                if flags & (socket.MSG_TRUNC | socket.MSG_CTRUNC):
                    _close_all(fds)
                    raise StoreError("the store sent a packet over the limit")
                verb, *fields = data.split(b"\0")
                if verb == b"end":
                    break
                if verb != b"entry" or len(fields) != 2:
                    _close_all(fds)
                    raise StoreError(f"the store sent {data[:40]!r}")
                entries.append(Entry(fields[0].decode(errors="replace"), fields[1],
                                     fds[0] if fds else None))
        except (OSError, StoreError):
            for entry in entries:
                if entry.fd is not None:
                    os.close(entry.fd)
            self.close()
            raise
        finally:
            if self._sock is not None:
                self._sock.settimeout(None)  # sends: bounded by SO_SNDTIMEO
        return entries

    def _send(self, packet: bytes, fd: int | None = None) -> None:
        if self._sock is None:
            return
        try:
            if fd is None:
                self._sock.send(packet)
            else:
                self._sock.sendmsg([packet], [(socket.SOL_SOCKET, socket.SCM_RIGHTS,
                                               array.array("i", [fd]))])
        except OSError as err:
            # SO_SNDTIMEO ran out: EAGAIN.
            reason = "timed out" if isinstance(err, BlockingIOError) else err.strerror or err
            log.error("cannot reach the fd store (%s): a restart now would stop every "
                      "manager", reason)
            self.close()


def _close_all(fds: list[int]) -> None:
    for fd in fds:
        os.close(fd)
