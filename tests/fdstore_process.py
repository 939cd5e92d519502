"""The fd store (holder/turnstiled-fdstore) started as the daemon starts
it, and the test's side of its protocol (the contract is at the top of
holder/turnstiled-fdstore.c).

Most entries here keep the write end of a pipe whose read end the test
holds, with no other copy of the write end left: writing through an fd the
store gives back and reading it at our end shows it is the same object, and
end-of-file at our end shows the store has closed its copy.

The protocol has no replies, so a test learns what the store did from a
new connection: before it turns to a newer connection the store carries
out everything the older one sent.
"""

from __future__ import annotations

import os
import select
import signal
import socket
import time
from pathlib import Path

from c_parts import build_fdstore
from helpers import fds_of, wait_for

# The store's limits, as the contract gives them.
LOG_BURST = 20
RESERVED_FDS = 8
REPLAY_TIMEOUT = 10.0
LONG = 60000  # ms: an adoption timeout no test waits for


class Store:
    """One store started as the daemon starts it: a listening socket of the
    test's own on fd 3, stdin /dev/null, output to a log file."""

    def __init__(self, sandbox: Path, args: list[str], wrapper: list[str] = (),
                 extra: dict[int, int] | None = None) -> None:
        tag = time.monotonic_ns()
        self.path = str(sandbox / f"store-{tag}.sock")
        self.log_path = sandbox / f"store-{tag}.log"
        listener = socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        listener.bind(self.path)
        os.chmod(self.path, 0o777)  # only the store's SO_PEERCRED check keeps others out
        listener.listen(16)
        fd = listener.fileno()
        if fd == 3:
            fd = os.dup(fd)
        log = os.open(self.log_path, os.O_WRONLY | os.O_CREAT, 0o644)
        actions = [(os.POSIX_SPAWN_OPEN, 0, "/dev/null", os.O_RDONLY, 0),
                   (os.POSIX_SPAWN_DUP2, log, 1), (os.POSIX_SPAWN_DUP2, log, 2),
                   (os.POSIX_SPAWN_DUP2, fd, 3)]
        actions += [(os.POSIX_SPAWN_DUP2, src, dst) for dst, src in (extra or {}).items()]
        argv = [*wrapper, str(build_fdstore()), *args]
        self.pid = os.posix_spawn(argv[0], argv, {"PATH": "/usr/bin:/bin"},
                                  file_actions=actions)
        os.close(log)
        if fd != listener.fileno():
            os.close(fd)
        listener.close()
        self.status: int | None = None

    def poll(self) -> int | None:
        if self.status is None:
            pid, status = os.waitpid(self.pid, os.WNOHANG)
            if pid:
                self.status = os.waitstatus_to_exitcode(status)
        return self.status

    def wait(self, timeout: float = 5) -> int:
        wait_for(lambda: self.poll() is not None, timeout,
                 what=f"the store to exit; log:\n{self.log()}")
        return self.status

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def fds(self) -> list[int]:
        return sorted(fds_of(self.pid))

    def wait_fds(self, count: int, what: str) -> None:
        """Waits until the store has count fds open."""
        wait_for(lambda: len(self.fds()) == count, 5, what=what, detail=self.fds)

    def held_pipe(self, sock: Connection, name: bytes) -> int:
        """sock.keep_pipe(name), returned once the store holds the pipe's
        write end (it has one more fd open)."""
        before = len(self.fds())
        r = sock.keep_pipe(name)
        self.wait_fds(before + 1, f"the store to hold {name!r}")
        return r

    def connect(self) -> Connection:
        sock = Connection(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        sock.connect(self.path)
        return sock

    def connect_first(self, timeout: float = 5) -> Connection:
        """The connection of a daemon that finds no entries (it checks there
        are none and takes the end)."""
        sock = self.connect()
        assert sock.adopt(timeout) == []
        return sock

    def kill(self) -> None:
        if self.poll() is None:
            os.kill(self.pid, signal.SIGKILL)
            self.wait()


class Connection(socket.socket):
    """A connection to the store, the daemon's side: the protocol's packets
    as methods."""

    def send_packet(self, packet: bytes, fds: list[int] = ()) -> None:
        if fds:
            socket.send_fds(self, [packet], list(fds))
        else:
            self.send(packet)

    def keep(self, name: bytes, data: bytes = b"", fd: int | None = None) -> None:
        self.send_packet(b"keep\0" + name + b"\0" + data, [] if fd is None else [fd])

    def keep_pipe(self, name: bytes, data: bytes = b"") -> int:
        """Has the store keep the write end of a new pipe as NAME, closing
        ours; returns the read end (pipe_for_store's)."""
        r, w = pipe_for_store()
        self.keep(name, data, w)
        os.close(w)
        return r

    def adopt(self, timeout: float = 5) -> list[tuple[bytes, bytes, int | None]]:
        """Every entry packet up to end, checked: (NAME, DATA, fd or None)."""
        entries = []
        deadline = time.monotonic() + timeout
        while True:
            ready, _, _ = select.select([self], [], [], max(0, deadline - time.monotonic()))
            assert ready, f"no end within {timeout} s after {len(entries)} entries"
            msg, fds, flags, _ = socket.recv_fds(self, 70000, 8, socket.MSG_CMSG_CLOEXEC)
            assert not flags & (socket.MSG_TRUNC | socket.MSG_CTRUNC)
            assert msg, f"the store hung up after {len(entries)} entries"
            verb, *fields = msg.split(b"\0")
            if verb == b"end":
                assert fields == [str(len(entries)).encode()]
                assert not fds
                return entries
            assert verb == b"entry" and len(fields) == 2, msg[:100]
            assert len(fds) <= 1
            entries.append((fields[0], fields[1], fds[0] if fds else None))


def close_all(entries) -> None:
    for _, _, fd in entries:
        if fd is not None:
            os.close(fd)


def pipe_for_store() -> tuple[int, int]:
    r, w = os.pipe()
    os.set_blocking(r, False)
    return r, w


def at_eof(r: int, timeout: float = 5) -> bool:
    """Whether every write end of the pipe whose read end is r gets closed
    within timeout (what was written meanwhile is read and dropped)."""
    deadline = time.monotonic() + timeout
    while True:
        ready, _, _ = select.select([r], [], [], max(0, deadline - time.monotonic()))
        if not ready:
            return False
        try:
            if os.read(r, 4096) == b"":
                return True
        except BlockingIOError:
            pass


def same_pipe(fd: int, r: int) -> bool:
    """Whether fd is a write end of the pipe whose read end is r."""
    os.write(fd, b"ping")
    ready, _, _ = select.select([r], [], [], 5)
    return bool(ready) and os.read(r, 16) == b"ping"
