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


class HandshakeDecoder:
    """Incremental decoder of the client's handshake.

    Feed it bytes as they arrive; `uid` is known as soon as it has arrived
    (so the caller can check the peer before reading the rest), and `feed`
    returns the Handshake once complete. Every length is checked against its
    bound before anything is buffered for it.
    """

    def __init__(self) -> None:
        self._buf = bytearray()
        self.uid: int | None = None
        self._vtnr = 0
        self._remote = False
        self._strings: list[str] = []
        self._want_len: int | None = None
        self._stage = "start"
        # Whether any byte came: a connection closed before one is a probe
        # (is the daemon up?), not a client.
        self.started = False

    def feed(self, data: bytes) -> Handshake | None:
        if self._stage == "done":
            raise ProtocolError("data after the handshake")
        self.started = self.started or bool(data)
        self._buf += data
        while self._step():
            pass
        if self._stage == "done":
            if self._buf:
                raise ProtocolError("data after the handshake")
            return Handshake(self.uid or 0, self._vtnr, self._remote, *self._strings)
        return None

    def _take(self, n: int) -> bytes | None:
        if len(self._buf) < n:
            return None
        data = bytes(self._buf[:n])
        del self._buf[:n]
        return data

    def _step(self) -> bool:
        """Decodes one item if enough bytes are there; False when it needs more."""
        stage = self._stage
        if stage == "start":
            head = self._take(1)
            if head is None:
                return False
            if head[0] != MSG_START:
                raise ProtocolError(f"expected START (5), got message byte {head[0]}")
            self._stage = "uid"
        elif stage == "uid":
            raw = self._take(_UINT.size)
            if raw is None:
                return False
            (self.uid,) = _UINT.unpack(raw)
            self._stage = "vtnr"
        elif stage == "vtnr":
            raw = self._take(_ULONG.size)
            if raw is None:
                return False
            (self._vtnr,) = _ULONG.unpack(raw)
            self._stage = "remote"
        elif stage == "remote":
            raw = self._take(_BOOL.size)
            if raw is None:
                return False
            if raw[0] > 1:
                raise ProtocolError(f"remote flag must be 0 or 1, got {raw[0]}")
            self._remote = bool(raw[0])
            self._stage = "strings"
        elif stage == "strings":
            return self._step_string()
        else:
            return False
        return True

    def _step_string(self) -> bool:
        name, lo, hi = FIELDS[len(self._strings)]
        if self._want_len is None:
            raw = self._take(_SIZE.size)
            if raw is None:
                return False
            (length,) = _SIZE.unpack(raw)
            if not lo <= length <= hi:
                raise ProtocolError(f"{name}: length {length} outside {lo}..{hi}")
            self._want_len = length
        data = self._take(self._want_len)
        if data is None:
            return False
        if b"\0" in data:
            raise ProtocolError(f"{name}: contains a NUL byte")
        try:
            self._strings.append(data.decode())
        except UnicodeDecodeError:
            raise ProtocolError(f"{name}: not valid UTF-8") from None
        self._want_len = None
        if len(self._strings) == len(FIELDS):
            self._stage = "done"
        return True


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
