"""The control socket: one connection per PAM session.

Checks the peer, decodes the handshake, registers the session, answers
once the user's manager is ready, hands out the environment, then holds the
connection until the PAM side closes it (logout, or the login process died).
A connection a previous daemon left (turnstiled.handover) is resumed where
it was.

The sockets are served straight from the loop's readiness callbacks
(turnstiled.loop). Every answer is a few bytes on a fresh socket, so a
send never finds the socket's buffer full.
"""

from __future__ import annotations

import collections
import enum
import logging
import os
import socket
import struct
import time
from collections.abc import Callable

from . import protocol
from .loop import Timer, current
from .protocol import MSG_ERR, MSG_OK_DONE, MSG_OK_WAIT, MSG_REQ_ENV, ProtocolError
from .registry import LoginError, Outcome, Registry, Session

log = logging.getLogger("turnstiled")

# A client that has not finished its handshake by then is dropped.
HANDSHAKE_TIMEOUT = 10.0
# A non-root peer is answered ERR after this long at most, and may have
# this many connections waiting for that answer.
REFUSE_GRACE = 0.5
MAX_REFUSING_PER_USER = 4
# Connections accepted per turn of the loop, so a flood of them cannot
# keep everything else waiting; the rest wait in the backlog.
ACCEPT_BATCH = 64
# Out of descriptors or memory: accepting pauses this long.
ACCEPT_PAUSE = 1.0
READ_SIZE = 4096


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


_UCRED = struct.Struct("3i")


def peer_credentials(sock: socket.socket) -> tuple[int, int, int]:
    """(pid, uid, gid) of the process that connected."""
    raw = sock.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, _UCRED.size)
    pid, uid, gid = _UCRED.unpack(raw)
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


class Acceptor:
    """Accepts on a listening socket from the loop and hands each new
    connection on. Out of descriptors or memory, it pauses (ACCEPT_PAUSE)
    instead of spinning, and says so at most every ten seconds."""

    def __init__(self, sock: socket.socket, connected: Callable[[socket.socket], None]) -> None:
        self.loop = current()
        sock.setblocking(False)
        self._listener: socket.socket | None = sock
        self._connected = connected
        self._errors = RateLimitedLog()
        self.loop.add_reader(sock.fileno(), self._accept)

    def close(self) -> None:
        if self._listener is not None:
            self.loop.remove_reader(self._listener.fileno())
            self._listener.close()
            self._listener = None

    def _accept(self) -> None:
        for _ in range(ACCEPT_BATCH):
            if self._listener is None:
                return
            try:
                sock, _ = self._listener.accept()
            except (BlockingIOError, InterruptedError, ConnectionAbortedError):
                return
            except OSError as err:  # EMFILE, ENFILE, ENOBUFS, ENOMEM
                self._errors.note(f"cannot accept a connection: {err.strerror}; retrying")
                self.loop.remove_reader(self._listener.fileno())
                self.loop.call_later(ACCEPT_PAUSE, self._accept_again)
                return
            self._connected(sock)

    def _accept_again(self) -> None:
        if self._listener is not None:
            self.loop.add_reader(self._listener.fileno(), self._accept)


class ControlServer:
    """Accepts on the control socket, makes one ControlConnection per
    connection and knows how many refused ones each user has open."""

    def __init__(self, registry: Registry) -> None:
        self.registry = registry
        self.refusing: collections.Counter[int] = collections.Counter()
        self.loop = current()
        self._acceptor: Acceptor | None = None

    def listen(self, sock: socket.socket) -> None:
        self._acceptor = Acceptor(sock, lambda conn: ControlConnection(self, conn).start())

    def close(self) -> None:
        """Stops accepting; connections stay as they are."""
        if self._acceptor is not None:
            self._acceptor.close()
            self._acceptor = None

    def resume(self, session: Session, sock: socket.socket, answered: bool) -> None:
        """Serves an adopted session's connection from where it was: still
        waiting for its answer, or answered (its REQ_ENV may still come)."""
        ControlConnection(self, sock, session, answered).resume()


class _Phase(enum.Enum):
    HANDSHAKE = "handshake"   # reading the client's START and facts
    WAITING = "waiting"       # session registered, its manager not ready yet
    ANSWERED = "answered"     # OK_DONE and the environment sent; REQ_ENV to come
    HELD = "held"             # REQ_ENV came: only the close may come
    REFUSING = "refusing"     # a non-root peer, to be answered ERR
    CLOSED = "closed"


class ControlConnection:
    """One PAM connection, driven by the loop's callbacks: a warm login is
    answered from the callback that accepted it when its handshake is
    already there, as it usually is."""

    def __init__(self, server: ControlServer, sock: socket.socket,
                 session: Session | None = None, answered: bool = False) -> None:
        self.server, self.registry, self.loop = server, server.registry, server.loop
        self.sock: socket.socket | None = sock
        self.fd = sock.fileno()
        self.session = session
        self.phase = _Phase.HANDSHAKE
        if session is not None:
            self.phase = _Phase.ANSWERED if answered else _Phase.WAITING
        self.pid, self.peer_uid = 0, 0
        self._decoder = protocol.HandshakeDecoder()
        self._pending = b""  # what came while waiting for the answer
        self._timer: Timer | None = None

    def start(self) -> None:
        """A new connection: its peer is checked, then its handshake read.
        The handshake is usually there already: then the login is answered
        before the connection is watched, and needs no handshake timer."""
        self.sock.setblocking(False)
        try:
            self.pid, self.peer_uid, _ = peer_credentials(self.sock)
        except OSError:
            self.abort()
            return
        if self.peer_uid != 0:
            self.loop.add_reader(self.fd, self._readable)
            self._refuse()
            return
        try:
            self._readable()
        finally:
            if self.sock is not None:  # else failed, or closed without a word
                # Watched from now on: what came meanwhile is seen next turn.
                self.loop.add_reader(self.fd, self._readable)
                if self.phase is _Phase.HANDSHAKE:
                    self._timer = self.loop.call_later(HANDSHAKE_TIMEOUT,
                                                       self._handshake_timed_out)

    def resume(self) -> None:
        """An adopted connection, taken up in the phase it was in."""
        self.sock.setblocking(False)
        self.pid = self.session.leader
        self.session.close_connection = self.abort
        self.loop.add_reader(self.fd, self._readable)
        if self.phase is _Phase.WAITING:
            self._await_outcome()

    def _readable(self) -> None:
        if self.sock is None:
            return
        try:
            data = self.sock.recv(READ_SIZE)
        except (BlockingIOError, InterruptedError):
            return
        except OSError:  # reset by the peer: a close like any other
            data = b""
        if data:
            self._received(data)
        else:
            self._eof()

    def _received(self, data: bytes) -> None:
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

    def _eof(self) -> None:
        if self.phase is _Phase.HANDSHAKE and self._decoder.started:
            log.warning("control: client pid %d did not finish its handshake", self.pid)
        elif self.phase is _Phase.HANDSHAKE:
            log.debug("control: client pid %d closed without a word", self.pid)
        elif self.phase is _Phase.REFUSING:
            self._end_refusal()
        self.abort()  # the session is over: close our end too

    def abort(self) -> None:
        """Closes our end now; what the session was is ended on the next
        turn of the loop, as a connection lost while the registry is busy
        (terminating every session of a user, say) must be."""
        if self.sock is None:
            return
        self.loop.remove_reader(self.fd)
        self.sock.close()
        self.sock = None
        if self._timer is not None:
            self._timer.cancel()
        self.loop.call_soon(self._lost)

    def _lost(self) -> None:
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
        try:
            self.session = self.registry.open_session(user, facts, self.pid, self.fd)
        except LoginError as err:
            log.error("cannot log in %s: %s", user.name, err)
            self._fail()
            return
        self.session.close_connection = self.abort
        self.phase = _Phase.WAITING
        if self.session.outcome.done():
            self._answer(self.session.outcome)
        else:
            self._send(bytes([MSG_OK_WAIT]))
            self._await_outcome()

    def _await_outcome(self) -> None:
        self.session.outcome.add_done_callback(self._answer)

    def _answer(self, outcome: Outcome) -> None:
        if self.phase is not _Phase.WAITING:
            return  # the connection ended meanwhile
        if not outcome.result():
            self._fail()
            return
        # The environment goes with OK_DONE, before the client asks for it
        # (turnstiled.protocol): the REQ_ENV round trip is off the login's path.
        self._send(bytes([MSG_OK_DONE])
                   + protocol.encode_env(self.registry.env_for(self.session)))
        self.phase = _Phase.ANSWERED
        pending, self._pending = self._pending, b""
        if pending:
            self._received(pending)

    def _request_env(self, data: bytes) -> None:
        """The client's REQ_ENV: its answer already went with OK_DONE."""
        if data[0] != MSG_REQ_ENV:
            raise ProtocolError(f"expected REQ_ENV (3), got {data[0]}")
        self.phase = _Phase.HELD
        if len(data) > 1:
            raise ProtocolError("data after the session was set up")

    # -- endings

    def _send(self, data: bytes) -> None:
        if self.sock is None:
            return
        try:
            sent = self.sock.send(data)
        except (BlockingIOError, InterruptedError):
            sent = 0
        except OSError:  # the client is gone; its close is read next
            return
        if sent < len(data):
            log.warning("control: client pid %d does not read its answers", self.pid)
            self.abort()

    def _fail(self) -> None:
        self._send(bytes([MSG_ERR]))
        self.abort()

    def _handshake_timed_out(self) -> None:
        log.warning("control: client pid %d did not finish its handshake", self.pid)
        self.abort()

    # -- a peer that is not root

    def _refuse(self) -> None:
        """Only root registers sessions: a user's connection is answered ERR
        at once, never held through the handshake timeout, and a user may
        have only a few of them open at all."""
        _refusals.note(f"control: refusing uid {self.peer_uid} (pid {self.pid}): only root "
                       "may register sessions")
        refusing = self.server.refusing
        if refusing[self.peer_uid] >= MAX_REFUSING_PER_USER:
            self.abort()
            return
        refusing[self.peer_uid] += 1
        self.phase = _Phase.REFUSING
        # What the client sends first is read before the answer: closing on
        # unread data would reset the connection instead of ending it.
        self._timer = self.loop.call_later(REFUSE_GRACE, self._end_refusal)

    def _end_refusal(self) -> None:
        if self.phase is _Phase.REFUSING and self.sock is not None:
            self._send(bytes([MSG_ERR]))
            self.abort()

    def _refusal_over(self) -> None:
        refusing = self.server.refusing
        refusing[self.peer_uid] -= 1
        if not refusing[self.peer_uid]:
            del refusing[self.peer_uid]
