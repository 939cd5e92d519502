"""pam_turnstile while the daemon restarts: a refused or missing socket and a
daemon that hangs up before its first answer are tried again within the
module's timeout=. The real module in the real libpam against raw sockets
standing in for the daemon (its restart is tested end to end in
test_restart.py)."""

from __future__ import annotations

import socket
import threading
import time

import pytest
from helpers import PAM_SESSION_ERR
from pamclient import PamFailure, PamLogin

from turnstiled import protocol


def service(sandbox, pam_module, sock_path: str, args: str = "") -> str:
    (sandbox / "pam.d").mkdir(exist_ok=True)
    (sandbox / "pam.d" / "retry").write_text(
        "auth required pam_permit.so\naccount required pam_permit.so\n"
        f"session required {pam_module} socket={sock_path} {args}\n")
    return "retry"


def fails_after(sandbox, user, name: str) -> float:
    t0 = time.monotonic()
    with PamLogin(name, user.name, str(sandbox / "pam.d")) as pam:
        with pytest.raises(PamFailure):
            pam.open()
        assert pam.code == PAM_SESSION_ERR
    return time.monotonic() - t0


def test_a_refused_socket_is_tried_until_the_timeout(sandbox, pam_module, test_user):
    path = str(sandbox / "control.sock")
    stale = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    stale.bind(path)  # bound, never listening: connect() is refused
    try:
        took = fails_after(sandbox, test_user, service(sandbox, pam_module, path, "timeout=2"))
    finally:
        stale.close()
    assert 1.9 <= took < 4, took


def test_a_missing_socket_is_waited_for_at_most_ten_seconds(sandbox, pam_module, test_user):
    path = str(sandbox / "control.sock")
    took = fails_after(sandbox, test_user, service(sandbox, pam_module, path, "timeout=60"))
    assert 9.5 <= took < 13, took


def test_a_socket_that_appears_is_used(sandbox, pam_module, test_user):
    path = str(sandbox / "control.sock")
    served = []

    def daemon_comes_up():
        time.sleep(1.0)
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as lsock:
            lsock.bind(path)
            lsock.listen(1)
            conn, _ = lsock.accept()
            served.append(answer(conn))

    t = threading.Thread(target=daemon_comes_up)
    t.start()
    t0 = time.monotonic()
    with PamLogin(service(sandbox, pam_module, path, "timeout=10"), test_user.name,
                  str(sandbox / "pam.d")) as pam:
        env = pam.open()
        pam.close()
    t.join(10)
    assert env.get("XDG_RUNTIME_DIR") == "/run/user/test"
    assert served == [test_user.uid] and 1.0 <= time.monotonic() - t0 < 5


def test_a_daemon_that_hangs_up_before_answering_is_tried_again(sandbox, pam_module,
                                                                test_user):
    path = str(sandbox / "control.sock")
    connections = []
    lsock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    lsock.bind(path)
    lsock.listen(4)

    def serve():
        # The first daemon dies after the handshake, before any answer; the
        # next one answers.
        conn, _ = lsock.accept()
        connections.append(read_handshake(conn).uid)
        conn.close()
        conn, _ = lsock.accept()
        connections.append(answer(conn))

    t = threading.Thread(target=serve)
    t.start()
    try:
        with PamLogin(service(sandbox, pam_module, path, "timeout=10"), test_user.name,
                      str(sandbox / "pam.d")) as pam:
            env = pam.open()
            pam.close()
    finally:
        t.join(10)
        lsock.close()
    assert connections == [test_user.uid, test_user.uid]
    assert env.get("XDG_RUNTIME_DIR") == "/run/user/test"


def test_a_daemon_that_hangs_up_after_answering_fails_at_once(sandbox, pam_module, test_user):
    """OK_WAIT, then a hang-up: the session was taken and lost; no retry."""
    path = str(sandbox / "control.sock")
    lsock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    lsock.bind(path)
    lsock.listen(4)
    connections = []

    def serve():
        conn, _ = lsock.accept()
        connections.append(read_handshake(conn).uid)
        conn.sendall(bytes([protocol.MSG_OK_WAIT]))
        conn.close()

    t = threading.Thread(target=serve)
    t.start()
    try:
        took = fails_after(sandbox, test_user, service(sandbox, pam_module, path, "timeout=10"))
    finally:
        t.join(10)
        lsock.close()
    assert took < 2 and connections == [test_user.uid]


def read_handshake(conn: socket.socket) -> protocol.Handshake:
    decoder = protocol.HandshakeDecoder()
    conn.settimeout(10)
    while True:
        facts = decoder.feed(conn.recv(4096))
        if facts is not None:
            return facts


def answer(conn: socket.socket) -> int:
    """Serves one login as the daemon would; returns its uid."""
    with conn:
        facts = read_handshake(conn)
        conn.sendall(bytes([protocol.MSG_OK_DONE]))
        assert conn.recv(1) == bytes([protocol.MSG_REQ_ENV])
        conn.sendall(protocol.encode_env({"XDG_RUNTIME_DIR": "/run/user/test"}))
        conn.recv(1)  # the module's close
    return facts.uid
