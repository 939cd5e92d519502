"""The real turnstiled's control socket against raw clients that are not
the PAM module: peers that are not root, unknown uids, malformed and
stalled handshakes. The handshakes are built by wire.py.
"""

from __future__ import annotations

import os
import socket
import struct
import subprocess
import time

import pytest
from helpers import OPEN_TIMEOUT
from pamclient import PamLogin
from users import no_such_account
from wire import (
    MSG_ENV,
    MSG_ERR,
    MSG_OK_DONE,
    MSG_REQ_ENV,
    MSG_START,
    UINT,
    Facts,
    encode_handshake,
)

pytestmark = pytest.mark.usefixtures("no_session_vars")


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
    uid = no_such_account(4_000_000)
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
        d.wait_logged_out(test_user.uid)
    finally:
        staller.close()
    assert d.running()


def _recv_exactly(sock: socket.socket, n: int) -> bytes:
    out = b""
    while len(out) < n:
        chunk = sock.recv(n - len(out))
        assert chunk, f"the daemon closed after {out!r}"
        out += chunk
    return out


def test_the_environment_comes_with_ok_done(daemon, test_user):
    """ENV follows OK_DONE unasked; the client's REQ_ENV then gets no second
    answer, and anything after it ends the session."""
    d = daemon()
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    s.settimeout(5)
    try:
        s.connect(d.socket_path)
        s.sendall(encode_handshake(_hs(test_user.uid)))
        assert _recv_exactly(s, 2) == bytes([MSG_OK_DONE, MSG_ENV])  # REQ_ENV not sent yet
        (length,) = UINT.unpack(_recv_exactly(s, UINT.size))
        env = _recv_exactly(s, length)
        assert f"XDG_RUNTIME_DIR={d.rundir(test_user.uid)}\0".encode() in env
        s.sendall(bytes([MSG_REQ_ENV]))
        s.settimeout(0.5)
        with pytest.raises(TimeoutError):
            s.recv(64)  # nothing more: the answer went ahead
        assert len(d.session_ids()) == 1, d.log_tail()
        s.settimeout(5)
        s.sendall(bytes([MSG_REQ_ENV]))  # a second one is a protocol error
        assert s.recv(64) == bytes([MSG_ERR])
        d.wait_logged_out(test_user.uid)
        assert "data after the session was set up" in d.log_tail()
    finally:
        s.close()
