"""pam_turnstile.so in the real libpam: against no daemon, a silent socket, a
small real server in this test (to see exactly what the module sends), and
the real turnstiled. No fakes of libpam or of the module.

The test server decodes the wire format itself, straight from PROTOCOL.md,
and shares no code with the daemon: a layout mistake made by both the
module and turnstiled.protocol would otherwise pass unseen.
"""

from __future__ import annotations

import json
import os
import pwd
import select
import socket
import stat
import struct
import subprocess
import sys
import textwrap
import threading
import time
from dataclasses import dataclass
from pathlib import Path

import pytest
from build import build_module
from helpers import (
    PAM_RHOST,
    PAM_RUSER,
    PAM_SESSION_ERR,
    PAM_TTY,
    PAM_XDISPLAY,
    TESTS_DIR,
    fd_flags,
    fds_of,
    read_kv,
    wait_for,
)
from pamclient import PamFailure, PamLogin, pamtester, write_service

SESSION_ERR_TEXT = "Cannot make/remove an entry for the specified session"
FAKE_ENV = {"XDG_RUNTIME_DIR": "/x", "FOO": "bar"}
# Bound on one pam_open_session in this process (a hung module fails the test).
OPEN_TIMEOUT = 10
XDG_VARS = ("XDG_SESSION_TYPE", "XDG_SESSION_CLASS", "XDG_SESSION_DESKTOP", "XDG_SEAT",
            "XDG_VTNR")


@pytest.fixture(autouse=True)
def _no_session_vars_in_process_env(monkeypatch):
    """The module reads XDG_SESSION_* from the process environment too; the
    test runner's own session must not leak into the facts."""
    for name in XDG_VARS:
        monkeypatch.delenv(name, raising=False)


# -- the wire format, from PROTOCOL.md

MSG_OK_WAIT, MSG_OK_DONE, MSG_REQ_ENV, MSG_ENV, MSG_START, MSG_ERR = 1, 2, 3, 4, 5, 6
UINT, ULONG, BOOL, SIZE = (struct.Struct(f) for f in ("@I", "@L", "@?", "@N"))
# (attribute, min, max) of the nine strings, in the order they are sent.
STRINGS = (("service", 1, 64), ("type", 1, 16), ("klass", 1, 16), ("desktop", 0, 64),
           ("seat", 0, 32), ("tty", 0, 16), ("display", 0, 16), ("remote_user", 0, 256),
           ("remote_host", 0, 256))


@dataclass(frozen=True)
class Facts:
    """One decoded handshake."""
    uid: int
    vtnr: int
    remote: bool
    service: str
    type: str
    klass: str
    desktop: str = ""
    seat: str = ""
    tty: str = ""
    display: str = ""
    remote_user: str = ""
    remote_host: str = ""


class BadHandshake(Exception):
    pass


def encode_handshake(f: Facts) -> bytes:
    out = bytes([MSG_START]) + UINT.pack(f.uid) + ULONG.pack(f.vtnr) + BOOL.pack(f.remote)
    for name, _, _ in STRINGS:
        data = getattr(f, name).encode()
        out += SIZE.pack(len(data)) + data
    return out


def decode_handshake(read) -> Facts:
    """Reads one handshake with read(n) -> exactly n bytes (b"" at EOF)."""

    def take(n: int, what: str) -> bytes:
        data = read(n)
        if len(data) != n:
            raise BadHandshake(f"EOF inside the handshake, reading {what}")
        return data

    first = take(1, "the first byte")[0]
    if first != MSG_START:
        raise BadHandshake(f"first byte {first}, not START ({MSG_START})")
    (uid,) = UINT.unpack(take(UINT.size, "uid"))
    (vtnr,) = ULONG.unpack(take(ULONG.size, "vtnr"))
    raw_remote = take(BOOL.size, "remote")
    if raw_remote not in (b"\0", b"\1"):
        raise BadHandshake(f"remote is {raw_remote!r}, not a bool")
    strings = {}
    for name, lo, hi in STRINGS:
        (n,) = SIZE.unpack(take(SIZE.size, f"the length of {name}"))
        if not lo <= n <= hi:
            raise BadHandshake(f"{name}: length {n} outside {lo}..{hi}")
        data = take(n, name)
        if b"\0" in data:
            raise BadHandshake(f"{name}: contains NUL: {data!r}")
        strings[name] = data.decode()
    return Facts(uid=uid, vtnr=vtnr, remote=raw_remote == b"\1", **strings)


def encode_env(env: dict[str, str]) -> bytes:
    payload = b"".join(f"{k}={v}".encode() + b"\0" for k, v in env.items())
    return env_block(payload)


def env_block(payload: bytes) -> bytes:
    return bytes([MSG_ENV]) + UINT.pack(len(payload)) + payload


# -- a small real server speaking the daemon's side of the protocol


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
    OK_DONE expect REQ_ENV and send `env_bytes` (default: ENV with `env`);
    then hold the connection until the client closes it (recorded as eof).
    A reply of ERR ends the connection. mode "silent": accept and never
    answer. mode "hangup": close right after the handshake. mode
    "done-hangup": send OK_DONE and close at once. mode "wait":
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
                 delay: float = 0.05, close_after_err: bool = True) -> None:
        self.path, self.mode, self.replies, self.delay = path, mode, replies, delay
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
            if self.mode in ("hangup", "done-hangup"):
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
                    msg = self._recv(conn, 1)
                    if msg is None:
                        return
                    if msg != bytes([MSG_REQ_ENV]):
                        conn.error = f"expected REQ_ENV after OK_DONE, got {msg!r}"
                        return
                    conn.got_req_env.set()
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


@pytest.fixture
def fake_server(sandbox):
    """fake_server(**kw) -> FakeServer on SANDBOX/fakeN.sock; stopped at test end."""
    servers: list[FakeServer] = []

    def make(**kw) -> FakeServer:
        server = FakeServer(str(sandbox / f"fake{len(servers)}.sock"), **kw)
        servers.append(server)
        return server

    yield make
    for server in servers:
        server.close()


@pytest.fixture
def confdir(sandbox) -> Path:
    d = sandbox / "pam.d"
    d.mkdir(exist_ok=True)
    return d


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


def fails_with_session_err(login: PamLogin, **kw) -> float:
    """Opens login, expecting PAM_SESSION_ERR from pam_open_session; returns
    the seconds it took."""
    start = time.monotonic()
    with pytest.raises(PamFailure) as exc:
        login.open(timeout=OPEN_TIMEOUT, **kw)
    elapsed = time.monotonic() - start
    assert exc.value.stage == "pam_open_session", exc.value
    assert exc.value.code == PAM_SESSION_ERR, exc.value
    assert login.open_code == PAM_SESSION_ERR
    return elapsed


# -- no daemon, a silent daemon, a daemon that hangs up


@pytest.mark.parametrize("kind", ["missing", "refused"])
def test_no_daemon_fails_fast_in_process(kind, sandbox, confdir, pam_module, test_user):
    path = str(sandbox / "nothing.sock")
    if kind == "refused":
        # A stale socket file nobody listens on: connect() gets ECONNREFUSED.
        s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        s.bind(path)
        s.close()
    service = module_service(confdir, pam_module, path)
    elapsed = fails_with_session_err(PamLogin(service, test_user.name, confdir))
    assert elapsed < 2, f"failing took {elapsed:.2f} s"


@pytest.mark.parametrize("debuglevel", [None, "2"])
def test_no_daemon_fails_fast_pamtester(debuglevel, sandbox, confdir, pam_module, test_user):
    """Out of process; the module's reason reaches stderr through pam_wrapper's
    syslog (LOG_ERR is shown at any PAM_WRAPPER_DEBUGLEVEL)."""
    path = str(sandbox / "nothing.sock")
    service = module_service(confdir, pam_module, path)
    extra = {"PAM_WRAPPER_DEBUGLEVEL": debuglevel} if debuglevel else None
    start = time.monotonic()
    res = pamtester(service, test_user.name, confdir, "open_session", extra_environ=extra,
                    timeout=10)
    elapsed = time.monotonic() - start
    assert res.returncode == 1, res.stdout + res.stderr
    assert SESSION_ERR_TEXT in res.stderr, res.stderr
    assert "successfully opened" not in res.stdout + res.stderr
    reason = [line for line in res.stderr.splitlines() if path in line]
    assert reason and "connect" in reason[0], res.stderr
    assert elapsed < 2, f"failing took {elapsed:.2f} s"


def test_silent_daemon_times_out(fake_server, confdir, pam_module, test_user):
    server = fake_server(mode="silent")
    service = module_service(confdir, pam_module, server.path, "timeout=1")
    login = PamLogin(service, test_user.name, confdir)
    elapsed = fails_with_session_err(login, unblock=server.drop_connections)
    assert server.conns, "the module never connected"
    assert 0.9 <= elapsed < 3, f"gave up after {elapsed:.2f} s, asked for timeout=1"
    # The module hung up when it gave up.
    assert server.conns[0].eof.wait(3)


def test_endless_wait_times_out(fake_server, confdir, pam_module, test_user):
    """OK_WAIT after OK_WAIT: one deadline for the whole wait, not one per
    message."""
    server = fake_server(mode="wait", delay=0.2)
    service = module_service(confdir, pam_module, server.path, "timeout=1")
    login = PamLogin(service, test_user.name, confdir)
    elapsed = fails_with_session_err(login, unblock=server.drop_connections)
    assert server.wait_conn().wait_handshake().uid == test_user.uid
    assert 0.9 <= elapsed < 3, f"gave up after {elapsed:.2f} s, asked for timeout=1"
    assert server.conns[0].eof.wait(3)
    assert not server.conns[0].got_req_env.is_set()


def test_daemon_hanging_up_fails_fast(fake_server, confdir, pam_module, test_user):
    """The daemon closes the connection mid-wait: fail now, not at the timeout."""
    server = fake_server(mode="hangup")
    service = module_service(confdir, pam_module, server.path)  # default timeout
    elapsed = fails_with_session_err(PamLogin(service, test_user.name, confdir),
                                     unblock=server.drop_connections)
    assert server.wait_conn().wait_handshake().uid == test_user.uid
    assert elapsed < 2, f"failing took {elapsed:.2f} s"


def test_daemon_gone_before_req_env_is_no_sigpipe(fake_server, confdir, pam_module,
                                                  test_user):
    """The daemon says OK_DONE and hangs up: the module's REQ_ENV then hits a
    closed socket. A login program (pamtester: SIGPIPE at its default) must
    get an error code, not die of SIGPIPE."""
    server = fake_server(mode="done-hangup")
    service = module_service(confdir, pam_module, server.path)
    res = pamtester(service, test_user.name, confdir, "open_session", timeout=10)
    assert res.returncode == 1, (res.returncode, res.stderr)
    assert SESSION_ERR_TEXT in res.stderr, res.stderr
    assert server.wait_conn().wait_handshake().uid == test_user.uid


@pytest.mark.parametrize("when", ["after-wait", "at-once"])
@pytest.mark.parametrize("close", [True, False], ids=["then-close", "then-linger"])
def test_err_reply_fails_the_session(when, close, fake_server, confdir, pam_module,
                                     test_user):
    """ERR alone fails the session at once: the module neither waits for the
    server to close nor asks for the environment, and it hangs up."""
    replies = (MSG_OK_WAIT, MSG_ERR) if when == "after-wait" else (MSG_ERR,)
    server = fake_server(replies=replies, close_after_err=close)
    service = module_service(confdir, pam_module, server.path)
    login = PamLogin(service, test_user.name, confdir)
    elapsed = fails_with_session_err(login, unblock=server.drop_connections)
    assert elapsed < 2, f"failing took {elapsed:.2f} s"
    conn = server.wait_conn()
    assert conn.wait_handshake().uid == test_user.uid
    assert not conn.got_req_env.is_set()
    if not close:
        assert conn.eof.wait(3), "the module kept the connection after ERR"
        assert conn.raw == encode_handshake(conn.facts), "the module sent more after ERR"


@pytest.mark.parametrize("payload", [
    pytest.param(b"XDG_RUNTIME_DIR=/x", id="no-final-nul"),
    pytest.param(b"XDG_RUNTIME_DIR=/x\0NOEQUALS\0", id="entry-without-equals"),
    pytest.param(b"=x\0", id="empty-name"),
])
def test_bad_env_block_fails_and_exports_nothing(payload, fake_server, confdir, pam_module,
                                                test_user):
    server = fake_server(env_bytes=env_block(payload))
    service = module_service(confdir, pam_module, server.path)
    login = PamLogin(service, test_user.name, confdir)
    fails_with_session_err(login, unblock=server.drop_connections)
    assert server.wait_conn().got_req_env.is_set()
    assert server.conns[0].eof.wait(3), "the module kept the connection of a failed session"


def test_unknown_env_reply_fails(fake_server, confdir, pam_module, test_user):
    """After REQ_ENV only ENV is allowed."""
    server = fake_server(env_bytes=bytes([MSG_OK_DONE]))
    service = module_service(confdir, pam_module, server.path)
    fails_with_session_err(PamLogin(service, test_user.name, confdir),
                           unblock=server.drop_connections)


def test_user_not_in_passwd_fails_without_connecting(fake_server, confdir, pam_module):
    name = "tsdtnosuchuser"
    try:
        pwd.getpwnam(name)
    except KeyError:
        pass
    else:
        pytest.skip(f"user {name} exists here")
    server = fake_server()
    service = module_service(confdir, pam_module, server.path)
    fails_with_session_err(PamLogin(service, name, confdir), unblock=server.drop_connections)
    time.sleep(0.1)
    assert server.conns == []


@pytest.mark.parametrize("length,ok", [(256, True), (257, False)])
def test_remote_host_length_bound(length, ok, fake_server, confdir, pam_module, test_user):
    """A value longer than the protocol allows fails the session instead of
    being sent (the daemon would drop the handshake) or cut."""
    host = ("a" * (length - len(".example.org"))) + ".example.org"
    assert len(host) == length
    server = fake_server()
    if ok:
        facts, _ = open_and_capture(server, confdir, pam_module, test_user.name,
                                    items={PAM_RHOST: host})
        assert facts.remote_host == host and facts.remote
    else:
        service = module_service(confdir, pam_module, server.path)
        fails_with_session_err(PamLogin(service, test_user.name, confdir),
                               items={PAM_RHOST: host}, unblock=server.drop_connections)
        time.sleep(0.1)
        assert all(c.facts is None for c in server.conns), "an oversized field was sent"


def test_daemon_own_session_registers_nothing(fake_server, confdir, pam_module, test_user):
    """Module arg `turnstiled`: the daemon's own PAM session for a user
    manager; the module must not contact any daemon, and succeeds."""
    server = fake_server()
    service = module_service(confdir, pam_module, server.path, "turnstiled")
    with PamLogin(service, test_user.name, confdir) as login:
        env = login.open(timeout=OPEN_TIMEOUT, unblock=server.drop_connections)
        assert login.open_code == 0
    assert "XDG_RUNTIME_DIR" not in env
    time.sleep(0.1)
    assert server.conns == [], "the module connected in the daemon's own session"


# -- what the module sends, seen by a real server


def test_plain_session_facts_and_env(fake_server, confdir, pam_module, test_user):
    server = fake_server()
    facts, env = open_and_capture(server, confdir, pam_module, test_user.name,
                                  name="plainsvc")
    assert env["XDG_RUNTIME_DIR"] == "/x"
    assert env["FOO"] == "bar"
    assert facts == Facts(uid=test_user.uid, vtnr=0, remote=False, service="plainsvc",
                          type="unspecified", klass="background")


def test_root_session_facts(fake_server, confdir, pam_module):
    server = fake_server()
    facts, env = open_and_capture(server, confdir, pam_module, "root",
                                  items={PAM_TTY: "tty1"})
    assert (facts.uid, facts.tty, facts.vtnr, facts.klass) == (0, "tty1", 1, "user")
    assert env["XDG_RUNTIME_DIR"] == "/x"


def test_handshake_bytes_are_native_layout(fake_server, confdir, pam_module, test_user):
    """Byte for byte: START, uid (unsigned int), vtnr (unsigned long), remote
    (bool), nine size_t-prefixed strings, and then only REQ_ENV."""
    server = fake_server()
    open_and_capture(server, confdir, pam_module, test_user.name,
                     items={PAM_TTY: "tty7", PAM_RHOST: "example.org"}, name="bytes")
    raw = server.conns[0].raw
    expected = (bytes([MSG_START]) + struct.pack("@I", test_user.uid) + struct.pack("@L", 7)
                + struct.pack("@?", True))
    for s in (b"bytes", b"tty", b"user", b"", b"seat0", b"tty7", b"", b"", b"example.org"):
        expected += struct.pack("@N", len(s)) + s
    assert raw == expected + bytes([MSG_REQ_ENV])


def test_ok_done_without_wait_and_empty_env(fake_server, confdir, pam_module, test_user):
    server = fake_server(replies=(MSG_OK_DONE,), env={})
    facts, env = open_and_capture(server, confdir, pam_module, test_user.name)
    assert facts.uid == test_user.uid
    assert "XDG_RUNTIME_DIR" not in env and "FOO" not in env


FACT_CASES = {
    "args": ({}, "class=greeter type=wayland desktop=GNOME",
             {"klass": "greeter", "type": "wayland", "desktop": "GNOME", "tty": "",
              "display": "", "vtnr": 0, "seat": ""}),
    "tty3": ({PAM_TTY: "tty3"}, "",
             {"tty": "tty3", "vtnr": 3, "seat": "seat0", "type": "tty", "klass": "user",
              "display": "", "remote": False}),
    "dev-tty5": ({PAM_TTY: "/dev/tty5"}, "",
                 {"tty": "tty5", "vtnr": 5, "seat": "seat0", "type": "tty"}),
    "pts": ({PAM_TTY: "/dev/pts/4"}, "",
            {"tty": "pts/4", "vtnr": 0, "seat": "", "type": "tty", "klass": "user"}),
    "rhost": ({PAM_RHOST: "example.org", PAM_RUSER: "alice"}, "",
              {"remote": True, "remote_host": "example.org", "remote_user": "alice"}),
    "localhost": ({PAM_RHOST: "localhost"}, "",
                  {"remote": False, "remote_host": "localhost"}),
    "localhost.localdomain": ({PAM_RHOST: "localhost.localdomain"}, "", {"remote": False}),
    "x.localhost": ({PAM_RHOST: "box.localhost"}, "", {"remote": False}),
    "not-localhost": ({PAM_RHOST: "localhost.example.org"}, "", {"remote": True}),
    "cron": ({PAM_TTY: "cron"}, "",
             {"klass": "background", "type": "unspecified", "tty": ""}),
    "ssh": ({PAM_TTY: "ssh", PAM_RHOST: "example.org"}, "",
            {"type": "tty", "klass": "user", "remote": True, "tty": ""}),
    "display-in-tty": ({PAM_TTY: ":0"}, "",
                       {"display": ":0", "tty": "", "type": "x11", "klass": "user"}),
    "xdisplay": ({PAM_XDISPLAY: ":1"}, "", {"display": ":1", "type": "x11"}),
    "args-override-defaults": ({PAM_TTY: "tty2"}, "type=wayland class=greeter",
                               {"type": "wayland", "klass": "greeter", "vtnr": 2}),
}


@pytest.mark.parametrize("case", list(FACT_CASES))
def test_session_facts(case, fake_server, confdir, pam_module, test_user):
    items, args, expected = FACT_CASES[case]
    server = fake_server()
    facts, env = open_and_capture(server, confdir, pam_module, test_user.name, items=items,
                                  args=args)
    got = {key: getattr(facts, key) for key in expected}
    assert got == expected, facts
    assert facts.uid == test_user.uid
    assert facts.service == "tstest"
    assert env["FOO"] == "bar"


ENV_CASES = {
    # XDG_* in the PAM environment (a greeter sets them before the session).
    "seat1-has-no-vt": ({"XDG_SEAT": "seat1"}, {PAM_TTY: "tty3"},
                        {"seat": "seat1", "vtnr": 0, "tty": "tty3"}),
    "vtnr-from-env": ({"XDG_VTNR": "7", "XDG_SEAT": "seat0"}, {PAM_XDISPLAY: ":0"},
                      {"vtnr": 7, "seat": "seat0", "display": ":0", "type": "x11"}),
    "type-from-env": ({"XDG_SESSION_TYPE": "wayland", "XDG_SESSION_DESKTOP": "sway"},
                      {PAM_TTY: "tty4"},
                      {"type": "wayland", "desktop": "sway", "klass": "user", "vtnr": 4}),
}


@pytest.mark.parametrize("case", list(ENV_CASES))
def test_session_facts_from_pam_env(case, fake_server, confdir, pam_module, test_user):
    pam_env, items, expected = ENV_CASES[case]
    server = fake_server()
    facts, env = open_and_capture(server, confdir, pam_module, test_user.name, items=items,
                                  env=pam_env)
    got = {key: getattr(facts, key) for key in expected}
    assert got == expected, facts


def test_pam_env_beats_process_env_beats_args(fake_server, confdir, pam_module, test_user):
    """XDG_SESSION_* come from the PAM environment, then the process
    environment, then module arguments (pamtester: -E is the PAM env)."""
    server = fake_server()
    service = module_service(confdir, pam_module, server.path,
                             "type=x11 class=greeter desktop=GNOME")
    res = pamtester(service, test_user.name, confdir, "open_session", "close_session",
                    env={"XDG_SESSION_TYPE": "wayland", "XDG_SESSION_CLASS": "lock-screen"},
                    items={"tty": "tty4"},
                    extra_environ={"XDG_SESSION_DESKTOP": "KDE",
                                   "XDG_SESSION_CLASS": "user"},
                    timeout=20)
    assert res.returncode == 0, res.stdout + res.stderr
    facts = server.wait_conn().wait_handshake()
    assert (facts.type, facts.klass, facts.desktop) == ("wayland", "lock-screen", "KDE")
    assert (facts.tty, facts.vtnr, facts.seat) == ("tty4", 4, "seat0")
    assert server.conns[0].eof.wait(5)


def test_env_reaches_a_login_program(fake_server, confdir, pam_module, test_user, sandbox):
    """pamtester under pam_wrapper: the environment the server sent is in the
    PAM environment of the modules after ours (pam_exec dumps it)."""
    server = fake_server()
    dump = sandbox / "env.txt"
    script = sandbox / "dump.sh"
    script.write_text(f'#!/bin/sh\n[ "$PAM_TYPE" = open_session ] || exit 0\nenv > {dump}\n')
    script.chmod(0o755)
    (confdir / "dumpenv").write_text(
        "auth required pam_permit.so\n"
        "account required pam_permit.so\n"
        f"session required {pam_module} socket={server.path}\n"
        f"session required pam_exec.so {script}\n"
        "session required pam_permit.so\n")
    res = pamtester("dumpenv", test_user.name, confdir, "open_session", "close_session",
                    timeout=20)
    assert res.returncode == 0, res.stdout + res.stderr
    assert "successfully opened a session" in res.stderr + res.stdout
    env = dict(line.split("=", 1) for line in dump.read_text().splitlines() if "=" in line)
    assert env["XDG_RUNTIME_DIR"] == "/x" and env["FOO"] == "bar"
    facts = server.wait_conn().wait_handshake()
    assert (facts.service, facts.uid) == ("dumpenv", test_user.uid)
    assert server.conns[0].eof.wait(5)


# -- the connection's lifetime


def test_close_session_closes_the_connection(fake_server, confdir, pam_module, test_user):
    server = fake_server()
    service = module_service(confdir, pam_module, server.path)
    login = PamLogin(service, test_user.name, confdir)
    try:
        login.open(timeout=OPEN_TIMEOUT, unblock=server.drop_connections)
        conn = server.wait_conn()
        conn.wait_handshake()
        # Held open for the whole session.
        assert not conn.eof.wait(0.3), "the module hung up while the session is open"
        assert login.close_session() == 0
        # Before pam_end: the session ends at pam_close_session.
        assert conn.eof.wait(3), "the server saw no EOF after pam_close_session"
        assert conn.raw.endswith(bytes([MSG_REQ_ENV])), "the module sent data after REQ_ENV"
        login.end()
    finally:
        login.close()


def test_pam_end_alone_closes_the_connection(fake_server, confdir, pam_module, test_user):
    """A login program that never calls pam_close_session still ends the
    session at pam_end."""
    server = fake_server()
    service = module_service(confdir, pam_module, server.path)
    login = PamLogin(service, test_user.name, confdir)
    try:
        login.open(timeout=OPEN_TIMEOUT, unblock=server.drop_connections)
        conn = server.wait_conn()
        conn.wait_handshake()
        assert not conn.eof.wait(0.3)
        login.end()
        assert conn.eof.wait(3), "the server saw no EOF after pam_end"
    finally:
        login.close()


def test_process_exit_closes_the_connection(fake_server, confdir, pam_module, test_user):
    """pamtester opens a session and exits without closing it: the process
    ending ends the session."""
    server = fake_server()
    service = module_service(confdir, pam_module, server.path)
    res = pamtester(service, test_user.name, confdir, "open_session", timeout=20)
    assert res.returncode == 0, res.stdout + res.stderr
    conn = server.wait_conn()
    assert conn.wait_handshake().uid == test_user.uid
    assert conn.eof.wait(3)


def _socket_fds() -> set[int]:
    return {fd for fd, target in fds_of().items() if target.startswith("socket:")}


def test_connection_is_close_on_exec(fake_server, confdir, pam_module, test_user):
    """The module's socket has O_CLOEXEC, and a child spawned while the
    session is open (the user's shell) does not hold the connection, or the
    server would never see the logout."""
    server = fake_server()
    service = module_service(confdir, pam_module, server.path)
    login = PamLogin(service, test_user.name, confdir)
    child = None
    before = _socket_fds()
    try:
        login.open(timeout=OPEN_TIMEOUT, unblock=server.drop_connections)
        conn = server.wait_conn()
        conn.wait_handshake()
        new = _socket_fds() - before - server.server_fds()
        assert len(new) == 1, f"expected one new client socket, found fds {sorted(new)}"
        (fd,) = new
        assert fd_flags(fd) & os.O_CLOEXEC, f"fd {fd} of the module lacks O_CLOEXEC"
        # close_fds=False: the child gets every fd not marked close-on-exec.
        child = subprocess.Popen(["sleep", "5"], close_fds=False)
        assert login.close_session() == 0
        assert conn.eof.wait(3), "no EOF after close_session: a child holds the socket"
        assert child.poll() is None, "the child ended early; the test proves nothing"
    finally:
        login.close()
        if child is not None:
            child.kill()
            child.wait(5)


def test_failed_session_leaks_no_fd(fake_server, confdir, pam_module, test_user):
    server = fake_server(replies=(MSG_ERR,))
    service = module_service(confdir, pam_module, server.path)
    before = _socket_fds()
    fails_with_session_err(PamLogin(service, test_user.name, confdir),
                           unblock=server.drop_connections)
    assert server.wait_conn().wait_handshake().uid == test_user.uid
    leaked = _socket_fds() - before - server.server_fds()
    assert not leaked, f"socket fds left open by a failed session: {sorted(leaked)}"


def test_sessions_in_parallel(fake_server, confdir, pam_module, test_users):
    """Several handles open at once, each with its own connection."""
    server = fake_server()
    service = module_service(confdir, pam_module, server.path)
    logins = [PamLogin(service, u.name, confdir) for u in test_users]
    try:
        for login in logins:
            assert login.open(timeout=OPEN_TIMEOUT,
                              unblock=server.drop_connections)["FOO"] == "bar"
        assert len(server.conns) == len(test_users)
        uids = sorted(c.wait_handshake().uid for c in server.conns)
        assert uids == sorted(u.uid for u in test_users)
        logins[1].close()
        wait_for(lambda: sum(c.eof.is_set() for c in server.conns) == 1, 3,
                 what="one connection to close")
        for i, conn in enumerate(server.conns):
            assert conn.eof.is_set() == (conn.facts.uid == test_users[1].uid), i
    finally:
        for login in logins:
            login.close()
    wait_for(lambda: all(c.eof.is_set() for c in server.conns), 3,
             what="every connection to close")


# -- the real daemon


def _stat_rundir(path: str):
    st = os.lstat(path)
    return stat.S_ISDIR(st.st_mode), stat.S_IMODE(st.st_mode), st.st_uid, st.st_gid


def _sessions_of(d, uid: int) -> list[str]:
    return [sid for sid in d.session_ids()
            if (d.session_state(sid) or {}).get("UID") == str(uid)]


def _logged_out(d, uid: int) -> bool:
    """No user file, no session file and no runtime dir left for uid."""
    return (d.user_state(uid) is None and not _sessions_of(d, uid)
            and not os.path.lexists(d.rundir(uid)))


def test_real_daemon_login(daemon, test_user):
    d = daemon()
    service = d.login_service()
    rundir = d.rundir(test_user.uid)
    with PamLogin(service, test_user.name, d.service_dir) as login:
        env = login.open(items={PAM_TTY: "tty3"}, timeout=OPEN_TIMEOUT, unblock=d.stop)
        assert env.get("XDG_RUNTIME_DIR") == rundir
        assert _stat_rundir(rundir) == (True, 0o700, test_user.uid, test_user.gid)
        user = d.user_state(test_user.uid)
        assert user is not None, d.log_tail()
        assert user["NAME"] == test_user.name
        assert user["STATE"] == "ready"
        assert user["RUNTIME"] == rundir
        sids = d.session_ids()
        assert len(sids) == 1
        assert user["SESSIONS"].split() == sids
        sess = d.session_state(sids[0])
        assert sess["UID"] == str(test_user.uid)
        assert sess["SERVICE"] == service
        assert (sess["TTY"], sess["VTNR"], sess["SEAT"], sess["TYPE"]) == \
            ("tty3", "3", "seat0", "tty")
        assert sess["LEADER"] == str(os.getpid())
    wait_for(lambda: _logged_out(d, test_user.uid), 5, what="the login to end")
    assert d.running()
    assert "WARNING" not in d.log() and "ERROR" not in d.log(), d.log_tail()
    assert d.stop() == 0, d.log_tail()


def test_real_daemon_two_sessions(daemon, test_user):
    d = daemon()
    service = d.login_service()
    uid, rundir = test_user.uid, d.rundir(test_user.uid)
    first = PamLogin(service, test_user.name, d.service_dir)
    second = PamLogin(service, test_user.name, d.service_dir)
    try:
        assert first.open(timeout=OPEN_TIMEOUT, unblock=d.stop)["XDG_RUNTIME_DIR"] == rundir
        assert second.open(timeout=OPEN_TIMEOUT, unblock=d.stop)["XDG_RUNTIME_DIR"] == rundir
        user = d.user_state(uid)
        sids = d.session_ids()
        assert len(sids) == 2, d.log_tail()
        assert sorted(user["SESSIONS"].split()) == sids
        assert d.user_ids() == [str(uid)]
        for sid in sids:
            assert d.session_state(sid)["UID"] == str(uid)

        first.close()
        wait_for(lambda: len(d.session_ids()) == 1, 5, what="one session file to go")
        user = wait_for(lambda: (u := d.user_state(uid)) and len(u["SESSIONS"].split()) == 1
                        and u, 5, what="the user file to list one session")
        assert user["SESSIONS"].split() == d.session_ids()
        assert user["STATE"] == "ready"
        assert _stat_rundir(rundir)[:3] == (True, 0o700, uid)

        second.close()
        wait_for(lambda: _logged_out(d, uid), 5, what="the login to end")
    finally:
        first.close()
        second.close()


def test_real_daemon_sessions_of_two_users(daemon, test_users):
    d = daemon()
    service = d.login_service()
    a, b = test_users[0], test_users[1]
    with PamLogin(service, a.name, d.service_dir) as la, \
            PamLogin(service, b.name, d.service_dir) as lb:
        assert la.open(timeout=OPEN_TIMEOUT, unblock=d.stop)["XDG_RUNTIME_DIR"] == d.rundir(a.uid)
        assert lb.open(timeout=OPEN_TIMEOUT, unblock=d.stop)["XDG_RUNTIME_DIR"] == d.rundir(b.uid)
        assert d.user_ids() == sorted([str(a.uid), str(b.uid)])
        assert _stat_rundir(d.rundir(b.uid))[2] == b.uid
        lb.close()
        wait_for(lambda: _logged_out(d, b.uid), 5, what="b's login to end")
        assert d.user_state(a.uid) is not None
    wait_for(lambda: _logged_out(d, a.uid), 5, what="a's login to end")


def test_real_daemon_pamtester_login(daemon, test_user, sandbox):
    """A real login program's view: pamtester under pam_wrapper. pam_exec
    after our module snapshots the session (it gets the PAM environment)."""
    d = daemon()
    snap = sandbox / "snap"
    script = sandbox / "snapshot.sh"
    script.write_text(textwrap.dedent(f"""\
        #!/bin/sh
        [ "$PAM_TYPE" = open_session ] || exit 0
        mkdir -p {snap}
        env > {snap}/env
        cp -r {d.state_dir}/users {d.state_dir}/sessions {snap}/
        stat -c '%F %a %u' "$XDG_RUNTIME_DIR" > {snap}/rundir
        """))
    script.chmod(0o755)
    (d.service_dir / "ptlogin").write_text(
        "auth required pam_permit.so\n"
        "account required pam_permit.so\n"
        f"session required {build_module()} socket={d.socket_path}\n"
        f"session required pam_exec.so {script}\n"
        "session required pam_permit.so\n")
    res = pamtester("ptlogin", test_user.name, d.service_dir, "open_session", "close_session",
                    items={"tty": "tty2"}, timeout=20)
    assert res.returncode == 0, res.stdout + res.stderr + d.log_tail()
    assert "successfully opened a session" in res.stdout + res.stderr
    env = dict(line.split("=", 1) for line in (snap / "env").read_text().splitlines()
               if "=" in line)
    rundir = d.rundir(test_user.uid)
    assert env["XDG_RUNTIME_DIR"] == rundir
    assert (snap / "rundir").read_text().split() == ["directory", "700", str(test_user.uid)]
    user = read_kv(snap / "users" / str(test_user.uid))
    assert user is not None and user["STATE"] == "ready"
    sids = sorted(os.listdir(snap / "sessions"))
    assert user["SESSIONS"].split() == sids and len(sids) == 1
    sess = read_kv(snap / "sessions" / sids[0])
    assert (sess["SERVICE"], sess["TTY"], sess["VTNR"]) == ("ptlogin", "tty2", "2")
    wait_for(lambda: _logged_out(d, test_user.uid), 5, what="the login to end")


def test_real_daemon_pamtester_open_only(daemon, test_user):
    """pamtester exits right after open_session: the process ending ends the
    session even without close_session."""
    d = daemon()
    service = d.login_service()
    res = pamtester(service, test_user.name, d.service_dir, "open_session", timeout=20)
    assert res.returncode == 0, res.stdout + res.stderr + d.log_tail()
    wait_for(lambda: _logged_out(d, test_user.uid), 5, what="the login to end")
    assert "session 1 opened" in d.log() and "session 1 closed" in d.log()


_CLIENT = """\
import json, sys, time
sys.path.insert(0, {tests!r})
from pamclient import PamLogin
login = PamLogin({service!r}, {user!r}, {confdir!r})
env = login.open()
print(json.dumps(env), flush=True)
time.sleep(60)
"""


def _read_line(proc: subprocess.Popen, timeout: float) -> str:
    r, _, _ = select.select([proc.stdout], [], [], timeout)
    assert r, f"the PAM client printed nothing within {timeout:g} s"
    return proc.stdout.readline()


def test_real_daemon_killed_client_ends_session(daemon, test_user, repo_root):
    d = daemon()
    service = d.login_service()
    code = _CLIENT.format(tests=str(TESTS_DIR), service=service, user=test_user.name,
                          confdir=str(d.service_dir))
    proc = subprocess.Popen([sys.executable, "-c", code], cwd=repo_root,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        line = _read_line(proc, 10)
        assert line, f"client failed: {proc.stderr.read() if proc.poll() is not None else ''}"
        assert json.loads(line)["XDG_RUNTIME_DIR"] == d.rundir(test_user.uid)
        sids = d.session_ids()
        assert len(sids) == 1
        assert d.session_state(sids[0])["LEADER"] == str(proc.pid)
        proc.kill()
        proc.wait(5)
        wait_for(lambda: _logged_out(d, test_user.uid), 5,
                 what="the login of a SIGKILLed client to end")
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(5)
        proc.stdout.close()
        proc.stderr.close()


# -- refusals by the real daemon


def _hs(uid: int, service: str = "login") -> Facts:
    return Facts(uid=uid, vtnr=0, remote=False, service=service, type="tty", klass="user")


def _exchange(path: str, data: bytes, timeout: float = 5.0) -> tuple[bytes, bool]:
    """Sends data; returns (everything received, whether the server closed)."""
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    s.settimeout(timeout)
    try:
        s.connect(path)
        s.sendall(data)
        out = b""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                chunk = s.recv(64)
            except TimeoutError:
                return out, False
            except ConnectionResetError:
                return out, True
            if not chunk:
                return out, True
            out += chunk
        return out, False
    finally:
        s.close()


def _nothing_registered(d, uid: int) -> None:
    assert d.user_ids() == [], d.log_tail()
    assert d.session_ids() == [], d.log_tail()
    assert not os.path.lexists(d.rundir(uid))


_AS_USER = """\
import socket, sys
data = sys.stdin.buffer.read()
s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
s.settimeout(5)
s.connect(sys.argv[1])
s.sendall(data)
out, end = b"", "open"
while True:
    try:
        chunk = s.recv(64)
    except TimeoutError:
        break
    except ConnectionResetError:
        end = "reset"
        break
    if not chunk:
        end = "eof"
        break
    out += chunk
print(out.hex(), end)
"""


@pytest.mark.parametrize("claimed", ["self", "root"])
def test_non_root_peer_is_refused(claimed, daemon, test_user):
    d = daemon()
    uid = test_user.uid if claimed == "self" else 0
    res = subprocess.run(["/usr/bin/python3", "-I", "-c", _AS_USER, d.socket_path],
                         input=encode_handshake(_hs(uid)), capture_output=True,
                         user=test_user.uid, group=test_user.gid, extra_groups=[], cwd="/",
                         timeout=20, check=False)
    assert res.returncode == 0, res.stderr
    out, end = res.stdout.decode().split()
    assert (out, end) == (f"{MSG_ERR:02x}", "eof"), (out, end, d.log_tail())
    _nothing_registered(d, test_user.uid)
    if claimed == "root":
        assert d.user_state(0) is None
    assert d.running()


def test_unknown_uid_is_refused(daemon):
    uid = 4_000_000
    try:
        pwd.getpwuid(uid)
    except KeyError:
        pass
    else:
        pytest.skip(f"uid {uid} exists here")
    d = daemon()
    out, closed = _exchange(d.socket_path, encode_handshake(_hs(uid)))
    assert (out, closed) == (bytes([MSG_ERR]), True), d.log_tail()
    _nothing_registered(d, uid)
    assert d.running()


def _raw_handshake(first: int, uid: int, service_len: int | None = None) -> bytes:
    data = bytes([first]) + struct.pack("@I", uid) + struct.pack("@L", 0) + b"\0"
    strings = [b"login", b"tty", b"user"] + [b""] * 6
    for i, s in enumerate(strings):
        if i == 0 and service_len is not None:
            s = b"s" * service_len
        data += struct.pack("@N", len(s)) + s
    return data


@pytest.mark.parametrize("case", ["bad-first-byte", "service-too-long", "type-empty"])
def test_malformed_handshake_is_dropped(case, daemon, test_user):
    d = daemon()
    if case == "bad-first-byte":
        data = _raw_handshake(MSG_REQ_ENV, test_user.uid)
    elif case == "service-too-long":
        data = _raw_handshake(MSG_START, test_user.uid, service_len=65)
    else:
        data = bytes([MSG_START]) + struct.pack("@I", test_user.uid) + \
            struct.pack("@L", 0) + b"\0" + struct.pack("@N", 5) + b"login" + \
            struct.pack("@N", 0)
    out, closed = _exchange(d.socket_path, data)
    assert closed, "the daemon kept a malformed client"
    assert out in (b"", bytes([MSG_ERR])), out
    _nothing_registered(d, test_user.uid)
    # The daemon still serves logins.
    with PamLogin(d.login_service(), test_user.name, d.service_dir) as login:
        env = login.open(timeout=OPEN_TIMEOUT, unblock=d.stop)
        assert env["XDG_RUNTIME_DIR"] == d.rundir(test_user.uid)


def test_stalled_client_blocks_no_one(daemon, test_user, test_users):
    """Half a handshake, then silence: a login in parallel still succeeds."""
    d = daemon()
    service = d.login_service()
    full = encode_handshake(_hs(test_users[1].uid))
    staller = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    staller.settimeout(5)
    try:
        staller.connect(d.socket_path)
        staller.sendall(full[: len(full) // 2])
        time.sleep(0.2)
        start = time.monotonic()
        with PamLogin(service, test_user.name, d.service_dir) as login:
            env = login.open(timeout=OPEN_TIMEOUT, unblock=d.stop)
            elapsed = time.monotonic() - start
            assert env["XDG_RUNTIME_DIR"] == d.rundir(test_user.uid)
            assert d.user_state(test_user.uid)["STATE"] == "ready"
        assert elapsed < 2, f"the login took {elapsed:.2f} s next to a stalled client"
        # The stalled client registered nothing.
        assert d.user_state(test_users[1].uid) is None
        wait_for(lambda: _logged_out(d, test_user.uid), 5, what="the login to end")
    finally:
        staller.close()
    assert d.running()

