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
    def __init__(self, registry: Registry) -> None:
        self.registry = registry
        self._refusing: collections.Counter[int] = collections.Counter()
        self._resumed: set[asyncio.Task] = set()

    async def handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        pid, peer_uid, _ = peer_credentials(writer.get_extra_info("socket"))
        if peer_uid != 0:
            await self._refuse(reader, writer, pid, peer_uid)
            return
        try:
            await self._serve(reader, writer, pid, peer_uid)
        except ProtocolError as err:
            log.warning("control: dropping client pid %d: %s", pid, err)
            _send(writer, MSG_ERR)
        except (TimeoutError, asyncio.IncompleteReadError):
            log.warning("control: client pid %d did not finish its handshake", pid)
        except ConnectionError:
            pass
        finally:
            writer.close()

    async def _refuse(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter,
                      pid: int, peer_uid: int) -> None:
        """Only root registers sessions: a user's connection is answered ERR
        at once, never held through the handshake timeout, and a user may
        have only a few of them open at all."""
        _refusals.note(f"control: refusing uid {peer_uid} (pid {pid}): only root may "
                       "register sessions")
        if self._refusing[peer_uid] >= MAX_REFUSING_PER_USER:
            writer.transport.abort()
            return
        self._refusing[peer_uid] += 1
        try:
            # What the client already sent is read first: closing on unread
            # data would reset the connection instead of ending it.
            await asyncio.wait_for(reader.read(protocol.MAX_HANDSHAKE), REFUSE_GRACE)
        except (TimeoutError, ConnectionError):
            pass
        finally:
            self._refusing[peer_uid] -= 1
            if not self._refusing[peer_uid]:
                del self._refusing[peer_uid]
        _send(writer, MSG_ERR)
        writer.close()

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter,
                     pid: int, peer_uid: int) -> None:
        facts = await asyncio.wait_for(self._handshake(reader, peer_uid), HANDSHAKE_TIMEOUT)
        if facts is None:
            log.debug("control: client pid %d closed without a word", pid)
            return
        user = self.registry.user(facts.uid)
        if user is None:
            raise ProtocolError(f"uid {facts.uid} is not in the password database")
        fd = writer.get_extra_info("socket").fileno()
        try:
            session = self.registry.open_session(user, facts, pid, fd)
        except LoginError as err:
            log.error("cannot log in %s: %s", user.name, err)
            _send(writer, MSG_ERR)
            return
        await self._hold(reader, writer, session, answered=False)

    def resume_in_background(self, session: Session, sock: socket.socket,
                             answered: bool) -> None:
        task = asyncio.get_running_loop().create_task(self.resume(session, sock, answered))
        self._resumed.add(task)
        task.add_done_callback(self._resumed.discard)

    async def resume(self, session: Session, sock: socket.socket, answered: bool) -> None:
        """Serves an adopted session's connection from where it was: still
        waiting for its answer, or answered (REQ_ENV may still come)."""
        reader, writer = await asyncio.open_unix_connection(sock=sock)
        try:
            await self._hold(reader, writer, session, answered)
        except ProtocolError as err:
            log.warning("control: dropping adopted session %s: %s", session.id, err)
        except ConnectionError:
            pass
        finally:
            writer.close()

    async def _hold(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter,
                    session: Session, answered: bool) -> None:
        session.close_connection = writer.transport.abort
        try:
            if answered:
                await self._send_env(reader, writer, session)
            else:
                await self._answer(reader, writer, session)
            # The session lasts as long as the connection: wait for EOF.
            if await reader.read(1):
                raise ProtocolError("data after the session was set up")
        finally:
            self.registry.close_session(session)

    async def _handshake(self, reader: asyncio.StreamReader,
                         peer_uid: int) -> protocol.Handshake | None:
        decoder = protocol.HandshakeDecoder()
        checked = False
        started = False
        while True:
            data = await reader.read(1024)
            if not data:
                if not started:
                    return None  # a probe (is the daemon up?), not a client
                raise asyncio.IncompleteReadError(b"", None)
            started = True
            facts = decoder.feed(data)
            if decoder.uid is not None and not checked:
                if peer_uid != 0:
                    raise ProtocolError(f"peer uid {peer_uid} is not root; "
                                        "only root may register sessions")
                checked = True
            if facts is not None:
                return facts

    async def _answer(self, reader, writer, session) -> None:
        if not session.outcome.done():
            _send(writer, MSG_OK_WAIT)
        if not await session.outcome:
            _send(writer, MSG_ERR)
            return
        _send(writer, MSG_OK_DONE)
        await self._send_env(reader, writer, session)

    async def _send_env(self, reader, writer, session) -> None:
        msg = await reader.read(1)
        if msg != bytes([MSG_REQ_ENV]):
            if msg:
                raise ProtocolError(f"expected REQ_ENV (3), got {msg[0]}")
            return
        writer.write(protocol.encode_env(self.registry.env_for(session)))
        await writer.drain()


def _send(writer: asyncio.StreamWriter, msg: int) -> None:
    if not writer.is_closing():
        writer.write(bytes([msg]))
