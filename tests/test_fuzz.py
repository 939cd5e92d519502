"""Malformed input by the hundred thousand, from a seeded generator with a
fixed budget: handshakes through the decoder, then handshakes and admin
lines through a running daemon, which must afterwards serve a login and
hold nothing.
(Holder commands are fuzzed against the real holder in test_holder.py.)"""

from __future__ import annotations

import json
import os
import random
import socket
import struct

from helpers import wait_for
from pamclient import PamLogin

from turnstiled import protocol
from turnstiled.protocol import Handshake, ProtocolError

SEED = 20261125


def valid_handshake(rng: random.Random, uid: int) -> bytes:
    return protocol.encode_handshake(Handshake(
        uid=uid, vtnr=rng.randrange(64), remote=rng.random() < 0.5,
        service=rng.choice(["login", "sshd", "x" * 64]), type="tty", klass="user",
        tty=rng.choice(["", "tty1", "pts/3"]), remote_host=rng.choice(["", "h" * 256])))


def mutate(rng: random.Random, data: bytes) -> bytes:
    """One of: truncated, bytes flipped, lengths made huge, garbage, or
    valid followed by more."""
    kind = rng.randrange(6)
    b = bytearray(data)
    if kind == 0:
        return bytes(b[:rng.randrange(len(b))])
    if kind == 1:
        for _ in range(rng.randrange(1, 6)):
            b[rng.randrange(len(b))] = rng.randrange(256)
        return bytes(b)
    if kind == 2:
        at = rng.randrange(14, len(b) - 8)
        b[at:at + 8] = struct.pack("@N", rng.choice([2**63, 2**64 - 1, 65, 257, 10**9]))
        return bytes(b)
    if kind == 3:
        return rng.randbytes(rng.randrange(1, 200))
    if kind == 4:
        return bytes([protocol.MSG_START]) + rng.randbytes(rng.randrange(0, 80))
    return data + rng.randbytes(rng.randrange(1, 20))


def test_100k_malformed_handshakes_through_the_decoder():
    rng = random.Random(SEED)
    outcomes = {"error": 0, "incomplete": 0, "decoded": 0}
    for _ in range(100_000):
        data = mutate(rng, valid_handshake(rng, rng.randrange(2**32)))
        decoder = protocol.HandshakeDecoder()
        try:
            # Fed in random pieces, as a socket delivers them.
            facts = None
            while data and facts is None:
                n = rng.randrange(1, 40)
                facts, data = decoder.feed(data[:n]), data[n:]
        except ProtocolError:
            outcomes["error"] += 1
            continue
        outcomes["decoded" if facts is not None else "incomplete"] += 1
        if facts is not None:
            for (_, lo, hi), value in zip(protocol.FIELDS, facts.strings(), strict=True):
                assert lo <= len(value.encode(errors="surrogateescape")) <= hi
    assert all(outcomes.values()), outcomes  # every kind of outcome was reached


def admin_line(rng: random.Random) -> bytes:
    kind = rng.randrange(5)
    if kind == 0:
        return rng.randbytes(rng.randrange(0, 120)).replace(b"\n", b"")
    if kind == 1:
        return b"[" * rng.randrange(1, 3000)
    values = [None, True, -1, 2**70, "", "\u00b2", "root", "x" * 300, [], {}, [1] * 50, 1.5,
              {"a": {"b": []}}]
    cmd = rng.choice(["status", "list-users", "show-user", "show-session", "user-status",
                      "enable-linger", "disable-linger", "terminate-session",
                      "terminate-user", "nope", 7, None])
    args = {k: rng.choice(values) for k in rng.sample(["user", "users", "id", "x"],
                                                      rng.randrange(0, 3))}
    req = {"cmd": cmd, "args": args if kind != 2 else rng.choice(values)}
    if kind == 3:
        req["v"] = rng.choice(values)
    return json.dumps(req).encode()


def _serves_a_login_and_holds_nothing(d, user) -> None:
    """After the fuzz: valid-looking fuzz may have logged the user in for a
    moment; all of it is over, a login works, and nothing broke."""
    wait_for(lambda: d.session_ids() == [] and d.user_ids() == [], 10,
             what="every session and user to end", detail=lambda: (d.session_ids(), d.user_ids()))
    with PamLogin(d.login_service(), user.name, d.service_dir) as pam:
        pam.open()
        assert len(d.session_ids()) == 1
        pam.close()
    wait_for(lambda: d.session_ids() == [] and d.user_ids() == [], 5)
    assert d.running() and "Traceback" not in d.log()


def test_a_running_daemon_takes_3000_malformed_handshakes(daemon, test_user, pam_module):
    """From root, one connection each (a bad one ends its connection)."""
    d = daemon()
    rng = random.Random(SEED + 1)
    for _ in range(3000):
        s = socket.socket(socket.AF_UNIX)
        s.connect(d.socket_path)
        data = mutate(rng, valid_handshake(rng, test_user.uid))
        try:
            s.sendall(data)
            s.shutdown(socket.SHUT_WR)
            s.settimeout(15)
            while s.recv(4096):
                pass
        except OSError:
            pass
        s.close()
    _serves_a_login_and_holds_nothing(d, test_user)


def test_a_running_daemon_answers_100k_odd_admin_lines(daemon, test_user, pam_module):
    """On pipelined connections: every line gets a reply, none an internal
    error."""
    d = daemon()
    rng = random.Random(SEED + 2)
    for _ in range(100):
        s = socket.socket(socket.AF_UNIX)
        s.connect(d.admin_socket_path)
        lines = [admin_line(rng) for _ in range(1000)]
        s.sendall(b"\n".join(lines) + b"\n")
        s.shutdown(socket.SHUT_WR)
        s.settimeout(30)
        replies = b""
        while chunk := s.recv(65536):
            replies += chunk
        s.close()
        replies = [json.loads(raw) for raw in replies.splitlines()]
        assert len(replies) == len(lines)
        assert not [r for r in replies if r.get("status") == "error"]
    # Root may enable linger for any real user, and the fuzz does (users
    # [1, 1, ...] is uid 1's): undone here as an admin would, since a
    # lingering login is rightly held.
    linger_dir = d.config["linger_dir"]
    for name in os.listdir(linger_dir) if os.path.isdir(linger_dir) else []:
        assert d.ctl("disable-linger", name).returncode == 0
    _serves_a_login_and_holds_nothing(d, test_user)
