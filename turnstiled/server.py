"""The control socket: one connection per PAM session.

Checks the peer, decodes the handshake, registers the session, answers
once the user's manager is ready, hands out the environment, then holds the
connection until the PAM side closes it (logout, or the login process died).
A connection a previous daemon left (turnstiled.handover) is resumed where
it was.
"""

from __future__ import annotations

import asyncio
import collections
import enum
import logging
import os
import socket
import struct
import time

from . import protocol
from .protocol import MSG_ERR, MSG_OK_DONE, MSG_OK_WAIT, MSG_REQ_ENV, ProtocolError
from .registry import LoginError, Registry, Session

log = logging.getLogger("turnstiled")

# A client that has not finished its handshake by then is dropped.
HANDSHAKE_TIMEOUT = 10.0
# A non-root peer is answered ERR after this long at most, and may have
# this many connections waiting for that answer.
REFUSE_GRACE = 0.5
MAX_REFUSING_PER_USER = 4


class RateLimitedLog:
    """A warning that an attacker can trigger at will: logged at most once
    per interval, with a count of what was left out."""

    def __init__(self, interval: float = 10.0) -> None:
        self.interval = interval
        self._next = 0.0
        self._dropped = 0

    def note(self, message: str) -> None:
        now = time.monotonic()
        if now < self._next:
            self._dropped += 1
            return
        if self._dropped:
            message += f" ({self._dropped} more like it not logged)"
        log.warning("%s", message)
        self._next, self._dropped = now + self.interval, 0


_refusals = RateLimitedLog()


def peer_credentials(sock: socket.socket) -> tuple[int, int, int]:
    """(pid, uid, gid) of the process that connected."""
    raw = sock.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, struct.calcsize("3i"))
    pid, uid, gid = struct.unpack("3i", raw)
    return pid, uid, gid


def listen_unix(path: str, mode: int) -> socket.socket:
    """A listening socket at path, replacing a stale one but never a live one."""
    os.makedirs(os.path.dirname(path), mode=0o755, exist_ok=True)
    probe = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        probe.connect(path)
    except FileNotFoundError:
        pass
    except OSError:
        os.unlink(path)
    else:
        raise SystemExit(f"turnstiled: {path} is in use: is another turnstiled running?")
    finally:
        probe.close()
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    sock.bind(path)
    os.chmod(path, mode)
    sock.listen(512)
    return sock


class ControlServer:
    """Makes one ControlConnection per accepted connection and knows how many
    refused ones each user has open."""

    def __init__(self, registry: Registry) -> None:
        self.registry = registry
        self.refusing: collections.Counter[int] = collections.Counter()
        self._resuming: set[asyncio.Task] = set()

    def __call__(self) -> ControlConnection:
        return ControlConnection(self)

    def resume(self, session: Session, sock: socket.socket, answered: bool) -> None:
        """Serves an adopted session's connection from where it was: still
        waiting for its answer, or answered (REQ_ENV may still come)."""
        conn = ControlConnection(self, session, answered)
        loop = asyncio.get_running_loop()
        task = loop.create_task(loop.connect_accepted_socket(lambda: conn, sock))
        self._resuming.add(task)  # the loop keeps only a weak reference
        task.add_done_callback(self._resuming.discard)


class _Phase(enum.Enum):
    HANDSHAKE = "handshake"   # reading the client's START and facts
    WAITING = "waiting"       # session registered, its manager not ready yet
    ANSWERED = "answered"     # OK_DONE sent; REQ_ENV expected
    HELD = "held"             # environment sent: only the close may come
    REFUSING = "refusing"     # a non-root peer, to be answered ERR
    CLOSED = "closed"


class ControlConnection(asyncio.Protocol):
    """One PAM connection, driven by callbacks rather than a task: a warm
    login is answered from the callback that read its handshake, without a
    trip through the event loop per read."""

    def __init__(self, server: ControlServer, session: Session | None = None,
                 answered: bool = False) -> None:
        self.server, self.registry = server, server.registry
        self.session = session
        self.phase = _Phase.HANDSHAKE
        if session is not None:
            self.phase = _Phase.ANSWERED if answered else _Phase.WAITING
        self.transport: asyncio.Transport | None = None
        self.pid, self.peer_uid = 0, 0
        self._decoder = protocol.HandshakeDecoder()
        self._pending = b""  # what came while waiting for the answer
        self._timer: asyncio.TimerHandle | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self.transport = transport
        if self.session is not None:  # adopted
            self.pid = self.session.leader
            self.session.close_connection = transport.abort
            if self.phase is _Phase.WAITING:
                self._await_outcome()
            return
        self.pid, self.peer_uid, _ = peer_credentials(transport.get_extra_info("socket"))
        loop = asyncio.get_running_loop()
        if self.peer_uid != 0:
            self._refuse(loop)
        else:
            self._timer = loop.call_later(HANDSHAKE_TIMEOUT, self._handshake_timed_out)

    def data_received(self, data: bytes) -> None:
        try:
            if self.phase is _Phase.HANDSHAKE:
                self._handshake(data)
            elif self.phase is _Phase.WAITING:
                if len(self._pending) + len(data) > 1:
                    raise ProtocolError("data before the answer")
                self._pending += data
            elif self.phase is _Phase.ANSWERED:
                self._request_env(data)
            elif self.phase is _Phase.HELD:
                raise ProtocolError("data after the session was set up")
            elif self.phase is _Phase.REFUSING:
                self._end_refusal()
        except ProtocolError as err:
            log.warning("control: dropping client pid %d: %s", self.pid, err)
            self._fail()

    def eof_received(self) -> bool:
        if self.phase is _Phase.HANDSHAKE and self._decoder.started:
            log.warning("control: client pid %d did not finish its handshake", self.pid)
        elif self.phase is _Phase.HANDSHAKE:
            log.debug("control: client pid %d closed without a word", self.pid)
        elif self.phase is _Phase.REFUSING:
            self._end_refusal()
        return False  # the session is over: close our end too

    def connection_lost(self, exc: Exception | None) -> None:
        if self._timer is not None:
            self._timer.cancel()
        if self.phase is _Phase.REFUSING:
            self._refusal_over()
        self.phase = _Phase.CLOSED
        if self.session is not None:
            self.registry.close_session(self.session)

    # -- the exchange, in order

    def _handshake(self, data: bytes) -> None:
        facts = self._decoder.feed(data)
        if facts is None:
            return
        if self._timer is not None:
            self._timer.cancel()
        user = self.registry.user(facts.uid)
        if user is None:
            raise ProtocolError(f"uid {facts.uid} is not in the password database")
        fd = self.transport.get_extra_info("socket").fileno()
        try:
            self.session = self.registry.open_session(user, facts, self.pid, fd)
        except LoginError as err:
            log.error("cannot log in %s: %s", user.name, err)
            self._fail()
            return
        self.session.close_connection = self.transport.abort
        self.phase = _Phase.WAITING
        if self.session.outcome.done():
            self._answer(self.session.outcome)
        else:
            self._send(MSG_OK_WAIT)
            self._await_outcome()

    def _await_outcome(self) -> None:
        self.session.outcome.add_done_callback(self._answer)

    def _answer(self, outcome: asyncio.Future) -> None:
        if self.phase is not _Phase.WAITING:
            return  # the connection ended meanwhile
        if not outcome.result():
            self._fail()
            return
        self._send(MSG_OK_DONE)
        self.phase = _Phase.ANSWERED
        pending, self._pending = self._pending, b""
        if pending:
            self.data_received(pending)

    def _request_env(self, data: bytes) -> None:
        if data[0] != MSG_REQ_ENV:
            raise ProtocolError(f"expected REQ_ENV (3), got {data[0]}")
        self.phase = _Phase.HELD
        self.transport.write(protocol.encode_env(self.registry.env_for(self.session)))
        if len(data) > 1:
            raise ProtocolError("data after the session was set up")

    # -- endings

    def _send(self, msg: int) -> None:
        if not self.transport.is_closing():
            self.transport.write(bytes([msg]))

    def _fail(self) -> None:
        self._send(MSG_ERR)
        self.transport.close()

    def _handshake_timed_out(self) -> None:
        log.warning("control: client pid %d did not finish its handshake", self.pid)
        self.transport.close()

    # -- a peer that is not root

    def _refuse(self, loop: asyncio.AbstractEventLoop) -> None:
        """Only root registers sessions: a user's connection is answered ERR
        at once, never held through the handshake timeout, and a user may
        have only a few of them open at all."""
        _refusals.note(f"control: refusing uid {self.peer_uid} (pid {self.pid}): only root "
                       "may register sessions")
        refusing = self.server.refusing
        if refusing[self.peer_uid] >= MAX_REFUSING_PER_USER:
            self.transport.abort()
            return
        refusing[self.peer_uid] += 1
        self.phase = _Phase.REFUSING
        # What the client sends first is read before the answer: closing on
        # unread data would reset the connection instead of ending it.
        self._timer = loop.call_later(REFUSE_GRACE, self._end_refusal)

    def _end_refusal(self) -> None:
        if self.phase is _Phase.REFUSING and not self.transport.is_closing():
            self._send(MSG_ERR)
            self.transport.close()

    def _refusal_over(self) -> None:
        refusing = self.server.refusing
        refusing[self.peer_uid] -= 1
        if not refusing[self.peer_uid]:
            del refusing[self.peer_uid]
