"""The PAM <-> daemon wire protocol, its contract and its pure functions.

The client (pam/pam_turnstile.c, or upstream turnstile's module) connects to
the control socket (SOCK_STREAM, mode 0666; only a root peer may register a
session) and the exchange is:

    client  START, uid (unsigned int), vt (unsigned long, 0: none),
            remote (bool), then FIELDS in order: each a size_t length and
            that many bytes, no NUL, the length within its bounds
    server  OK_DONE when the user's manager is ready; else OK_WAIT and,
            later, OK_DONE or ERR (failed, timed out) and close
    client  REQ_ENV
    server  ENV, an unsigned int length, then NAME=value\0 entries
            (XDG_SESSION_ID, XDG_RUNTIME_DIR, DBUS_SESSION_BUS_ADDRESS;
            length 0: none)

This daemon writes ENV right behind OK_DONE, without waiting for REQ_ENV:
clients (ours and upstream's) read each message by its known size, so ENV
waits in their socket until they ask, and the login saves a round trip.
The REQ_ENV that still comes is read and needs no answer.

The client then holds the connection for the whole session: its close is
the logout. Anything else (an unknown byte, a length out of bounds, a
non-root peer) gets ERR where a reply is still possible, and the close.

Integers are native byte order and size, as upstream turnstile's C++ sends
them, so either side can be swapped for upstream's. Nothing else in the
daemon knows byte layouts.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass

MSG_OK_WAIT = 1
MSG_OK_DONE = 2
MSG_REQ_ENV = 3
MSG_ENV = 4
MSG_START = 5
MSG_ERR = 6

_UINT = struct.Struct("@I")
_ULONG = struct.Struct("@L")
_BOOL = struct.Struct("@?")
_SIZE = struct.Struct("@N")

# (name, min, max) in the order the client sends them.
FIELDS: tuple[tuple[str, int, int], ...] = (
    ("service", 1, 64),
    ("type", 1, 16),
    ("class", 1, 16),
    ("desktop", 0, 64),
    ("seat", 0, 32),
    ("tty", 0, 16),
    ("display", 0, 16),
    ("remote_user", 0, 256),
    ("remote_host", 0, 256),
)

# The longest handshake a client can send.
MAX_HANDSHAKE = (1 + _UINT.size + _ULONG.size + _BOOL.size
                 + sum(_SIZE.size + hi for _, _, hi in FIELDS))

# The environment the daemon sends is small; this bounds what a client
# decoding it will accept.
MAX_ENV = 64 * 1024


class ProtocolError(Exception):
    """The peer sent something the protocol does not allow."""


@dataclass(frozen=True)
class Handshake:
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

    def strings(self) -> tuple[str, ...]:
        return (self.service, self.type, self.klass, self.desktop, self.seat,
                self.tty, self.display, self.remote_user, self.remote_host)


def encode_handshake(hs: Handshake) -> bytes:
    """What a PAM client sends to open a session (used by tests and bench)."""
    out = [bytes([MSG_START]), _UINT.pack(hs.uid), _ULONG.pack(hs.vtnr), _BOOL.pack(hs.remote)]
    for (name, lo, hi), value in zip(FIELDS, hs.strings(), strict=True):
        data = value.encode()
        if not lo <= len(data) <= hi:
            raise ProtocolError(f"{name}: length {len(data)} outside {lo}..{hi}")
        out += [_SIZE.pack(len(data)), data]
    return b"".join(out)


# The decoder's stages, in order.
_START, _UID, _VTNR, _REMOTE, _STRINGS, _DONE = range(6)


class HandshakeDecoder:
    """Incremental decoder of the client's handshake.

    Feed it bytes as they arrive; `uid` is known as soon as it has arrived
    (so the caller can check the peer before reading the rest), and `feed`
    returns the Handshake once complete. Every length is checked against its
    bound before anything is buffered for it.

    Each feed decodes what it can from where the last one stopped, reading
    at offsets into the buffer and dropping what it used once: a handshake
    that comes in one piece, as it usually does, is decoded in one pass.
    """

    def __init__(self) -> None:
        self._buf = bytearray()
        self.uid: int | None = None
        self._vtnr = 0
        self._remote = False
        self._strings: list[str] = []
        self._want_len: int | None = None
        self._stage = _START
        # Whether any byte came: a connection closed before one is a probe
        # (is the daemon up?), not a client.
        self.started = False

    def feed(self, data: bytes) -> Handshake | None:
        if self._stage == _DONE:
            raise ProtocolError("data after the handshake")
        if data:
            self.started = True
        buf = self._buf
        buf += data
        used = self._decode(buf)
        if used:
            del buf[:used]
        if self._stage == _DONE:
            if buf:
                raise ProtocolError("data after the handshake")
            return Handshake(self.uid or 0, self._vtnr, self._remote, *self._strings)
        return None

    def _decode(self, buf: bytearray) -> int:
        """Decodes the items buf holds whole; how many bytes they took."""
        pos, end, stage = 0, len(buf), self._stage
        if stage == _START:
            if end < 1:
                return pos
            if buf[0] != MSG_START:
                raise ProtocolError(f"expected START (5), got message byte {buf[0]}")
            pos, stage = 1, _UID
            self._stage = stage
        if stage == _UID:
            if end - pos < _UINT.size:
                return pos
            (self.uid,) = _UINT.unpack_from(buf, pos)
            pos += _UINT.size
            stage = self._stage = _VTNR
        if stage == _VTNR:
            if end - pos < _ULONG.size:
                return pos
            (self._vtnr,) = _ULONG.unpack_from(buf, pos)
            pos += _ULONG.size
            stage = self._stage = _REMOTE
        if stage == _REMOTE:
            if end - pos < _BOOL.size:
                return pos
            flag = buf[pos]
            if flag > 1:
                raise ProtocolError(f"remote flag must be 0 or 1, got {flag}")
            self._remote = bool(flag)
            pos += _BOOL.size
            stage = self._stage = _STRINGS
        strings = self._strings
        while stage == _STRINGS:
            name, lo, hi = FIELDS[len(strings)]
            length = self._want_len
            if length is None:
                if end - pos < _SIZE.size:
                    return pos
                (length,) = _SIZE.unpack_from(buf, pos)
                if not lo <= length <= hi:
                    raise ProtocolError(f"{name}: length {length} outside {lo}..{hi}")
                pos += _SIZE.size
                self._want_len = length
            if end - pos < length:
                return pos
            data = buf[pos:pos + length]
            if b"\0" in data:
                raise ProtocolError(f"{name}: contains a NUL byte")
            try:
                strings.append(data.decode())
            except UnicodeDecodeError:
                raise ProtocolError(f"{name}: not valid UTF-8") from None
            pos += length
            self._want_len = None
            if len(strings) == len(FIELDS):
                stage = self._stage = _DONE
        return pos


def encode_env(env: dict[str, str]) -> bytes:
    """ENV message: byte, unsigned int length, NAME=value\\0 entries."""
    body = b"".join(f"{k}={v}".encode() + b"\0" for k, v in env.items())
    return bytes([MSG_ENV]) + _UINT.pack(len(body)) + body


def decode_env(data: bytes) -> dict[str, str]:
    """Inverse of encode_env for a complete message (tests and bench)."""
    if len(data) < 1 + _UINT.size or data[0] != MSG_ENV:
        raise ProtocolError("not an ENV message")
    (length,) = _UINT.unpack_from(data, 1)
    if length > MAX_ENV:
        raise ProtocolError(f"environment length {length} over {MAX_ENV}")
    body = data[1 + _UINT.size:]
    if len(body) != length:
        raise ProtocolError(f"environment length {length}, got {len(body)} bytes")
    if body and not body.endswith(b"\0"):
        raise ProtocolError("environment does not end with NUL")
    env = {}
    for entry in body.split(b"\0")[:-1]:
        name, sep, value = entry.decode().partition("=")
        if not sep or not name:
            raise ProtocolError(f"environment entry without a name: {entry!r}")
        env[name] = value
    return env
