"""A small real server speaking the daemon's side of the wire protocol
(wire.py), to see exactly what the PAM module sends and how it takes each
answer; and the service files and logins that test the module against it.
"""

from __future__ import annotations

import select
import socket
import threading
import time
from pathlib import Path

from helpers import OPEN_TIMEOUT
from pamclient import PamFailure, PamLogin, write_service
from wire import (
    MSG_ERR,
    MSG_OK_DONE,
    MSG_OK_WAIT,
    MSG_REQ_ENV,
    BadHandshake,
    Facts,
    decode_handshake,
    encode_env,
)

FAKE_ENV = {"XDG_RUNTIME_DIR": "/x", "FOO": "bar"}


class FakeConn:
    """One client connection as the test server saw it."""

    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock
        self.raw = b""  # every byte received
        self.facts: Facts | None = None
        self.error: str | None = None
        self.got_req_env = threading.Event()
        self.handshake_done = threading.Event()
        self.eof = threading.Event()

    def wait_handshake(self, timeout: float = 5.0) -> Facts:
        assert self.handshake_done.wait(timeout), "no complete handshake from the module"
        assert self.facts is not None, f"bad handshake from the module: {self.error}"
        return self.facts


class FakeServer:
    """A thread on a real Unix socket answering like the daemon would.

    mode "answer": decode the handshake, send `replies` (`delay` apart); after
    OK_DONE expect REQ_ENV and send `env_bytes` (default: ENV with `env`),
    or with `env_ahead` send them right behind OK_DONE, as turnstiled does;
    then hold the connection until the client closes it (recorded as eof).
    A reply of ERR ends the connection. mode "silent": accept and never
    answer. mode "done-hangup": send OK_DONE and close at once. mode "wait":
    send OK_WAIT every `delay` seconds, forever. With `close_after_err`
    false the server keeps the connection open after ERR (the client must
    give up on ERR alone).

    A handshake that stalls for HANDSHAKE_TIMEOUT is recorded as bad and the
    connection closed, so a module sending too few bytes fails fast.
    """

    HANDSHAKE_TIMEOUT = 3.0

    def __init__(self, path: str, mode: str = "answer",
                 replies: tuple[int, ...] = (MSG_OK_WAIT, MSG_OK_DONE),
                 env: dict[str, str] | None = None, env_bytes: bytes | None = None,
                 delay: float = 0.05, close_after_err: bool = True,
                 env_ahead: bool = False) -> None:
        self.path, self.mode, self.replies, self.delay = path, mode, replies, delay
        self.env_ahead = env_ahead
        self.close_after_err = close_after_err
        self.env_bytes = env_bytes if env_bytes is not None else \
            encode_env(FAKE_ENV if env is None else env)
        self.conns: list[FakeConn] = []
        self._new_conn = threading.Condition()
        self._stop = threading.Event()
        self._threads: list[threading.Thread] = []
        self.listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.listener.bind(path)
        self.listener.listen(16)
        self._spawn(self._accept_loop)

    def _spawn(self, target, *args) -> None:
        t = threading.Thread(target=target, args=args, daemon=True)
        t.start()
        self._threads.append(t)

    def server_fds(self) -> set[int]:
        """The fds of this server's own sockets (listener and accepted ones)."""
        fds = {self.listener.fileno()}
        fds.update(c.sock.fileno() for c in self.conns)
        return fds - {-1}

    def _accept_loop(self) -> None:
        while not self._stop.is_set():
            r, _, _ = select.select([self.listener], [], [], 0.05)
            if not r:
                continue
            try:
                sock, _ = self.listener.accept()
            except OSError:
                return
            conn = FakeConn(sock)
            with self._new_conn:
                self.conns.append(conn)
                self._new_conn.notify_all()
            self._spawn(self._serve, conn)

    def _recv(self, conn: FakeConn, n: int, timeout: float | None = None) -> bytes | None:
        """Up to n bytes; b"" on EOF; None when the server stops or timeout passes."""
        deadline = None if timeout is None else time.monotonic() + timeout
        while not self._stop.is_set():
            if deadline is not None and time.monotonic() >= deadline:
                return None
            r, _, _ = select.select([conn.sock], [], [], 0.05)
            if r:
                try:
                    data = conn.sock.recv(n)
                except OSError:
                    data = b""
                conn.raw += data
                if not data:
                    conn.eof.set()
                return data
        return None

    def _read_exact(self, conn: FakeConn, n: int, timeout: float) -> bytes:
        out = b""
        deadline = time.monotonic() + timeout
        while len(out) < n:
            data = self._recv(conn, n - len(out), max(deadline - time.monotonic(), 0))
            if data is None:
                raise BadHandshake(f"stalled for {timeout:g} s after {len(conn.raw)} bytes "
                                   f"{conn.raw!r}")
            if not data:
                return out
            out += data
        return out

    def _serve(self, conn: FakeConn) -> None:
        sock = conn.sock
        try:
            if self.mode == "silent":
                while (data := self._recv(conn, 4096)) is not None and data:
                    pass
                return
            try:
                conn.facts = decode_handshake(
                    lambda n: self._read_exact(conn, n, self.HANDSHAKE_TIMEOUT))
            except BadHandshake as err:
                conn.error = str(err)
                conn.handshake_done.set()
                sock.shutdown(socket.SHUT_RDWR)
                return
            conn.handshake_done.set()
            if self.mode == "done-hangup":
                sock.sendall(bytes([MSG_OK_DONE]))
                sock.shutdown(socket.SHUT_RDWR)
                return
            if self.mode == "wait":
                while not self._stop.is_set():
                    sock.sendall(bytes([MSG_OK_WAIT]))
                    if self._recv(conn, 4096, timeout=self.delay) == b"":
                        return
                return
            for i, reply in enumerate(self.replies):
                if i:
                    time.sleep(self.delay)
                sock.sendall(bytes([reply]))
                if reply == MSG_ERR:
                    if self.close_after_err:
                        sock.shutdown(socket.SHUT_RDWR)
                        return
                    break
                if reply == MSG_OK_DONE:
                    if self.env_ahead:
                        sock.sendall(self.env_bytes)
                    msg = self._recv(conn, 1)
                    if msg is None:
                        return
                    if msg != bytes([MSG_REQ_ENV]):
                        conn.error = f"expected REQ_ENV after OK_DONE, got {msg!r}"
                        return
                    conn.got_req_env.set()
                    if not self.env_ahead:
                        sock.sendall(self.env_bytes)
            while (data := self._recv(conn, 4096)) is not None and data:
                pass
        except OSError as err:
            conn.error = f"socket error: {err}"

    def errors(self) -> list[str]:
        return [f"connection {i}: {c.error}" for i, c in enumerate(self.conns) if c.error]

    def wait_conn(self, timeout: float = 5.0, index: int = 0) -> FakeConn:
        with self._new_conn:
            ok = self._new_conn.wait_for(lambda: len(self.conns) > index, timeout)
        assert ok, f"the module did not connect to {self.path} within {timeout:g} s"
        return self.conns[index]

    def drop_connections(self) -> None:
        """Hangs up on every client (unblocks a module stuck reading)."""
        for conn in self.conns:
            try:
                conn.sock.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass

    def close(self) -> None:
        self._stop.set()
        for t in self._threads:
            t.join(5)
        self.listener.close()
        for conn in self.conns:
            conn.sock.close()
        alive = [t for t in self._threads if t.is_alive()]
        assert not alive, f"{len(alive)} test server threads did not stop"


def module_service(confdir: Path, pam_module: Path, socket_path: str, args: str = "",
                   name: str = "tstest") -> str:
    write_service(confdir, name, pam_module, f"socket={socket_path} {args}".strip())
    return name


def open_and_capture(server: FakeServer, confdir: Path, pam_module: Path, user: str,
                     items=None, env=None, args: str = "", name: str = "tstest"):
    """Opens a session through the module against server; returns (facts, env)."""
    service = module_service(confdir, pam_module, server.path, args, name)
    with PamLogin(service, user, confdir) as login:
        try:
            got = login.open(items=items, env=env, timeout=OPEN_TIMEOUT,
                             unblock=server.drop_connections)
        except PamFailure as err:
            raise AssertionError(f"{err}; the test server saw: {server.errors()}") from err
        conn = server.wait_conn()
        facts = conn.wait_handshake()
        assert conn.got_req_env.is_set(), "the module did not ask for the environment"
    assert conn.eof.wait(5), "closing the session did not close the connection"
    return facts, got
