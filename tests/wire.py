"""The wire format between the PAM module and the daemon, written out again
from its contract (turnstiled/protocol.py) for the tests.

It shares no code with turnstiled.protocol on purpose: a layout mistake
made by both the module and turnstiled.protocol would otherwise pass
unseen. Integers are native byte order and size.
"""

from __future__ import annotations

import struct
from dataclasses import field, make_dataclass

MSG_OK_WAIT, MSG_OK_DONE, MSG_REQ_ENV, MSG_ENV, MSG_START, MSG_ERR = 1, 2, 3, 4, 5, 6
UINT, ULONG, BOOL, SIZE = (struct.Struct(f) for f in ("@I", "@L", "@?", "@N"))
# (attribute, min, max) of the nine strings, in the order they are sent.
STRINGS = (("service", 1, 64), ("type", 1, 16), ("klass", 1, 16), ("desktop", 0, 64),
           ("seat", 0, 32), ("tty", 0, 16), ("display", 0, 16), ("remote_user", 0, 256),
           ("remote_host", 0, 256))

# One decoded handshake: uid, vtnr, remote and the nine strings by their
# attribute names; those that may be empty default to "".
Facts = make_dataclass(
    "Facts",
    [("uid", int), ("vtnr", int), ("remote", bool)]
    + [(name, str) if lo else (name, str, field(default="")) for name, lo, _ in STRINGS],
    frozen=True)


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
