"""The admin socket: JSON lines for turnstilectl and other tools.

One request object per line, one reply object per line (schema in
doc/admin-protocol.md). Anyone may read; a user may change their own linger
and end their own sessions; root may do everything. The peer is known from
SO_PEERCRED, never from what it says.
"""

from __future__ import annotations

import collections
import errno
import json
import logging
import os
import socket
import time

from . import ADMIN_PROTOCOL, __version__, linger, views
from .cgroups import parse_signal
from .loop import Timer, current
from .registry import Login, Registry, Session
from .seats import Seats
from .server import Acceptor, RateLimitedLog, peer_credentials
from .users import User, lookup_name, lookup_uid, may_act_for

log = logging.getLogger("turnstiled")
_limited = RateLimitedLog()

VERSION = ADMIN_PROTOCOL
MAX_REQUEST = 64 * 1024
# Clients waiting for more than this between requests are dropped.
IDLE_TIMEOUT = 60.0
# A client that does not read its replies for this long is dropped.
WRITE_TIMEOUT = 10.0
# Requests are not read while this much of the replies is unsent.
OUTPUT_HIGH = 64 * 1024
# After a request over MAX_REQUEST is answered, what the client still
# sends is read and dropped: this many reads, this long at most.
DISCARD_READS = 64
DISCARD_TIME = 1.0
READ_SIZE = 64 * 1024
# Open connections a non-root user may hold, and all users together: the
# socket is everyone's, the daemon's descriptors are the logins'.
MAX_CONNECTIONS_PER_USER = 16
MAX_CONNECTIONS = 512
# Most users one linger request may name.
MAX_USERS_PER_REQUEST = 256
MAX_UID = 2**32 - 2


class RequestError(Exception):
    def __init__(self, status: str, message: str) -> None:
        super().__init__(message)
        self.status = status


def _not_found(message: str) -> RequestError:
    return RequestError("not-found", message)


def _refused(message: str) -> RequestError:
    return RequestError("refused", message)


def _bad(message: str) -> RequestError:
    return RequestError("bad-request", message)


class AdminServer:
    def __init__(self, registry: Registry, seats: Seats | None = None,
                 login1: object | None = None) -> None:
        self.registry = registry
        self.config = registry.config
        self.seats = seats
        # The D-Bus API's status (turnstiled.login1.Status), for status.
        self.login1 = login1
        self.connections: collections.Counter[int] = collections.Counter()
        self._open: set[AdminConnection] = set()
        self._acceptor: Acceptor | None = None

    def listen(self, sock: socket.socket) -> None:
        self._acceptor = Acceptor(sock, self._connected)

    def close(self) -> None:
        """Stops accepting and drops every connection."""
        if self._acceptor is not None:
            self._acceptor.close()
            self._acceptor = None
        for conn in list(self._open):
            conn.close()

    def _connected(self, sock: socket.socket) -> None:
        try:
            _, peer_uid, _ = peer_credentials(sock)
        except OSError:
            sock.close()
            return
        if self._over_capacity(peer_uid):
            sock.close()
            return
        self.connections[peer_uid] += 1
        self._open.add(AdminConnection(self, sock, peer_uid))

    def _closed(self, conn: AdminConnection) -> None:
        self._open.discard(conn)
        self.connections[conn.peer_uid] -= 1
        if not self.connections[conn.peer_uid]:
            del self.connections[conn.peer_uid]

    def _over_capacity(self, peer_uid: int) -> bool:
        if peer_uid == 0:
            return False  # root is the admin; the control socket is root's anyway
        if self.connections[peer_uid] >= MAX_CONNECTIONS_PER_USER:
            _limited.note(f"admin: uid {peer_uid} holds {MAX_CONNECTIONS_PER_USER} "
                          "connections; refusing more")
            return True
        if self.connections.total() >= MAX_CONNECTIONS:
            _limited.note(f"admin: {MAX_CONNECTIONS} connections open; refusing more")
            return True
        return False

    def dispatch(self, line: bytes, peer_uid: int) -> dict:
        try:
            try:
                req = json.loads(line)
            except (ValueError, UnicodeDecodeError):
                raise _bad("not a JSON object") from None
            except RecursionError:
                raise _bad("nested too deeply") from None
            if not isinstance(req, dict):
                raise _bad("not a JSON object")
            if req.get("v", VERSION) != VERSION:
                raise _bad(f"unsupported version {req.get('v')!r}; this daemon speaks {VERSION}")
            cmd, args = req.get("cmd"), req.get("args", {})
            handler = _COMMANDS.get(cmd) if isinstance(cmd, str) else None
            if handler is None:
                raise _bad(f"unknown command {cmd!r}")
            if not isinstance(args, dict):
                raise _bad("args must be an object")
            return {"v": VERSION, "ok": True, "data": handler(self, args, peer_uid)}
        except RequestError as err:
            return {"v": VERSION, "ok": False, "status": err.status, "error": str(err)}
        except Exception:  # one bad request must not take the daemon down
            log.exception("admin: request failed")
            return {"v": VERSION, "ok": False, "status": "error", "error": "internal error"}

    # -- helpers

    def _user_arg(self, args: dict, peer_uid: int, key: str = "user") -> User:
        value = args.get(key)
        if value is None:
            user = lookup_uid(peer_uid)
        elif isinstance(value, bool):
            raise _bad(f"{key} must be a user name or uid")
        elif isinstance(value, int) or (isinstance(value, str) and value.isascii()
                                        and value.isdigit()):
            uid = int(value)
            if not 0 <= uid <= MAX_UID:
                raise _not_found(f"no such user: {uid}")
            user = lookup_uid(uid)
        elif isinstance(value, str):
            if not value or len(value) > 256 or "\0" in value:
                raise _bad(f"{key} must be a user name or uid")
            user = lookup_name(value)
        else:
            raise _bad(f"{key} must be a user name or uid")
        if user is None:
            raise _not_found(f"no such user: {value!r}")
        return user

    def _session_arg(self, args: dict) -> Session:
        sid = args.get("id", "")
        if not isinstance(sid, (str, int)) or isinstance(sid, bool) or len(str(sid)) > 32:
            raise _bad("id must be a session id")
        sid = str(sid)
        session = self.registry.sessions.get(sid)
        if session is None:
            raise _not_found(f"no such session: {sid}")
        return session

    def _login(self, user: User) -> Login:
        login = self.registry.logins.get(user.uid)
        if login is None:
            raise _not_found(f"{user.name} has no login and no running manager")
        return login

    # -- views

    def user_status(self, login: Login) -> dict:
        out = views.user(login, self.config)
        out["session_details"] = [views.session(s, self.seats) for s in login.sessions.values()]
        ready = login.last_ready
        out["last_ready"] = None if ready is None else {
            "waited_ms": ready.waited_ms,
            "services": [{"name": n, "ms": ms} for n, ms in ready.services]}
        failure = self.registry.failures.get(login.user.uid)
        out["last_failure"] = None if failure is None else {"time": failure[0],
                                                            "reason": failure[1]}
        out["restarts"] = len(login.restarts)
        return out

    # -- commands

    def cmd_status(self, args: dict, peer_uid: int) -> dict:
        reg = self.registry
        return {
            "version": __version__, "pid": os.getpid(), "since": reg.started,
            "uptime": round(time.time() - reg.started, 3), "config": self.config.path,
            "backend": self.config.backend, "users": len(reg.logins),
            "sessions": len(reg.sessions), "linger": self.config.linger,
            "linger_disabled": linger.disabled_reason(self.config),
            "tracking": reg.groups.mode, "tracking_reason": reg.groups.reason,
            "kill_user_processes": self.config.kill_user_processes,
            "login1": self.login1.as_dict() if self.login1 is not None else None,
        }

    def cmd_list_seats(self, args: dict, peer_uid: int) -> list:
        if self.seats is None:
            return []
        return [views.seat(self.seats.seats[sid], self.seats) for sid in sorted(self.seats.seats)]

    def cmd_seat_status(self, args: dict, peer_uid: int) -> dict:
        sid = args.get("seat") or "seat0"
        if not isinstance(sid, str) or len(sid) > 64:
            raise _bad("seat must be a seat name")
        seat = self.seats.seats.get(sid) if self.seats is not None else None
        if seat is None:
            raise _not_found(f"no such seat: {sid}")
        out = views.seat(seat, self.seats)
        out["session_details"] = [views.session(s, self.seats)
                                  for s in self.seats.sessions_on(sid)]
        return out

    def cmd_list_users(self, args: dict, peer_uid: int) -> list:
        logins = sorted(self.registry.logins.values(), key=lambda lg: lg.user.uid)
        return [views.user(lg, self.config) for lg in logins]

    def cmd_list_sessions(self, args: dict, peer_uid: int) -> list:
        sessions = sorted(self.registry.sessions.values(), key=lambda s: int(s.id))
        return [views.session(s, self.seats) for s in sessions]

    def cmd_show_user(self, args: dict, peer_uid: int) -> dict:
        return views.user(self._login(self._user_arg(args, peer_uid)), self.config)

    def cmd_show_session(self, args: dict, peer_uid: int) -> dict:
        return views.session(self._session_arg(args), self.seats)

    def cmd_user_status(self, args: dict, peer_uid: int) -> dict:
        user = self._user_arg(args, peer_uid)
        login = self.registry.logins.get(user.uid)
        if login is None:
            failure = self.registry.failures.get(user.uid)
            if failure is None:
                raise _not_found(f"{user.name} has no login and no running manager")
            return {"uid": user.uid, "user": user.name, "state": "stopped",
                    "last_failure": {"time": failure[0], "reason": failure[1]}}
        return self.user_status(login)

    def _set_linger(self, args: dict, peer_uid: int, enabled: bool) -> dict:
        names = args.get("users") or [None]
        if not isinstance(names, list):
            raise _bad("users must be a list")
        # Permission and size before any lookup: a user names only themselves.
        if peer_uid != 0 and len(names) > 1:
            raise _refused("only root may change linger for other users")
        if len(names) > MAX_USERS_PER_REQUEST:
            raise _bad(f"at most {MAX_USERS_PER_REQUEST} users per request")
        users = [self._user_arg({"user": n}, peer_uid) for n in names]
        for user in users:
            if not may_act_for(peer_uid, user.uid):
                raise _refused(f"only root may change linger for {user.name}")
        reason = linger.disabled_reason(self.config) if enabled else None
        for user in users:
            linger.set_file(self.config, user.name, enabled)
            log.info("linger %s for %s", "enabled" if enabled else "disabled", user.name)
            self.registry.linger_changed(user)
        return {"users": [u.name for u in users], "linger": enabled, "warning": reason}

    def cmd_enable_linger(self, args: dict, peer_uid: int) -> dict:
        return self._set_linger(args, peer_uid, True)

    def cmd_disable_linger(self, args: dict, peer_uid: int) -> dict:
        return self._set_linger(args, peer_uid, False)

    def cmd_terminate_session(self, args: dict, peer_uid: int) -> dict:
        session = self._session_arg(args)
        if not may_act_for(peer_uid, session.user.uid):
            raise _refused(f"session {session.id} belongs to {session.user.name}")
        self.registry.terminate_session(session)
        log.info("session %s terminated by uid %d", session.id, peer_uid)
        return {"id": session.id}

    def cmd_terminate_user(self, args: dict, peer_uid: int) -> dict:
        user = self._user_arg(args, peer_uid)
        if not may_act_for(peer_uid, user.uid):
            raise _refused(f"only root may terminate {user.name}")
        login = self._login(user)
        count = len(login.sessions)
        self.registry.terminate_user(user.uid)
        log.info("%s terminated by uid %d", user.name, peer_uid)
        return {"user": user.name, "sessions": count}

    def _signal_arg(self, args: dict) -> int:
        value = args.get("signal")
        if isinstance(value, bool) or not isinstance(value, (str, int)) or len(str(value)) > 16:
            raise _bad("signal must be a signal name or number")
        try:
            return parse_signal(str(value))
        except ValueError as err:
            raise _bad(str(err)) from None

    def cmd_kill_session(self, args: dict, peer_uid: int) -> dict:
        session = self._session_arg(args)
        sig = self._signal_arg(args)
        if not may_act_for(peer_uid, session.user.uid):
            raise _refused(f"session {session.id} belongs to {session.user.name}")
        count = self.registry.kill_session(session, sig)
        log.info("signal %d sent to %d processes of session %s by uid %d", sig, count,
                 session.id, peer_uid)
        return {"id": session.id, "signal": sig, "processes": count}

    def cmd_kill_user(self, args: dict, peer_uid: int) -> dict:
        user = self._user_arg(args, peer_uid)
        sig = self._signal_arg(args)
        if not may_act_for(peer_uid, user.uid):
            raise _refused(f"only root may signal {user.name}'s processes")
        self._login(user)
        count = self.registry.kill_user(user.uid, sig)
        log.info("signal %d sent to %d processes of %s by uid %d", sig, count, user.name,
                 peer_uid)
        return {"user": user.name, "signal": sig, "processes": count}

    def cmd_session_of(self, args: dict, peer_uid: int) -> dict:
        pid = args.get("pid")
        if isinstance(pid, bool) or not isinstance(pid, int) or not 0 < pid < 2**31:
            raise _bad("pid must be a process id")
        session = self.registry.session_of_pid(pid)
        if session is None:
            login = self.registry.login_of_pid(pid)
            where = f" (a process of {login.user.name}'s manager)" if login else ""
            raise _not_found(f"process {pid} is in no session{where}")
        return {"pid": pid, "id": session.id, "user": session.user.name,
                "exact": session.group is not None}


class AdminConnection:
    """One client, served from the loop's callbacks: requests are read a
    line at a time and answered in order; reading pauses while the client
    leaves OUTPUT_HIGH of replies unread. One timer runs at a time, for
    what the connection waits on: the next request (IDLE_TIMEOUT), the
    client to read (WRITE_TIMEOUT, from the last progress), or the end of
    discarding (DISCARD_TIME)."""

    def __init__(self, server: AdminServer, sock: socket.socket, peer_uid: int) -> None:
        self.server, self.peer_uid = server, peer_uid
        self.loop = current()
        sock.setblocking(False)
        self.sock: socket.socket | None = sock
        self.fd = sock.fileno()
        self._in = b""
        self._out = bytearray()
        self._reading = False
        self._eof = False         # the client has sent all it will
        self._discarding = False  # an over-long request was answered
        self._discards = 0
        self._timer: Timer | None = None
        self._waiting_on = ""
        self._read(True)
        self._wait("request", IDLE_TIMEOUT)

    def close(self) -> None:
        if self.sock is None:
            return
        self._wait("", 0)
        self._read(False)
        self.loop.remove_writer(self.fd)
        self.sock.close()
        self.sock = None
        self.server._closed(self)

    def _wait(self, what: str, seconds: float) -> None:
        """Closes the connection unless what it waits on comes in time
        ("": waits on nothing)."""
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        self._waiting_on = what
        if what:
            self._timer = self.loop.call_later(seconds, self.close)

    def _read(self, on: bool) -> None:
        if on and not self._reading:
            self.loop.add_reader(self.fd, self._readable)
        elif not on and self._reading:
            self.loop.remove_reader(self.fd)
        self._reading = on

    def _readable(self) -> None:
        if self.sock is None:
            return
        try:
            data = self.sock.recv(READ_SIZE)
        except (BlockingIOError, InterruptedError):
            return
        except OSError:
            self.close()
            return
        if self._discarding:
            self._discards += 1
            if not data or self._discards >= DISCARD_READS:
                self.close()
            return
        if data:
            self._in += data
        else:
            self._eof = True
        self._serve()

    def _serve(self) -> None:
        """Answers the complete requests read while the client keeps up
        with the replies; a last line without a newline is a request too."""
        served = False
        while self.sock is not None and not self._discarding and len(self._out) < OUTPUT_HIGH:
            end = self._in.find(b"\n", 0, MAX_REQUEST)
            if end < 0 and len(self._in) >= MAX_REQUEST:
                # Answered, then dropped: the rest of the line cannot be
                # told apart from a next request.
                self._in, self._discarding = b"", True
                self._send({"v": VERSION, "ok": False, "status": "bad-request",
                            "error": f"request over {MAX_REQUEST} bytes"})
                return
            if end < 0 and not (self._eof and self._in):
                break
            cut = len(self._in) if end < 0 else end + 1
            line, self._in = self._in[:cut], self._in[cut:]
            self._send(self.server.dispatch(line, self.peer_uid))
            served = True
        if self.sock is None or self._discarding:
            return
        self._read(not self._eof and len(self._out) < OUTPUT_HIGH)
        if self._out:
            return  # waiting on the client to read
        if self._eof:
            self.close()
        elif served or self._waiting_on != "request":
            self._wait("request", IDLE_TIMEOUT)

    def _send(self, reply: dict) -> None:
        self._out += json.dumps(reply).encode() + b"\n"
        self._flush()

    def _flush(self) -> None:
        assert self.sock is not None
        try:
            sent = self.sock.send(self._out)
        except (BlockingIOError, InterruptedError):
            sent = 0
        except OSError:
            self.close()
            return
        del self._out[:sent]
        if self._out:
            # Bounded like the read: a client that sends and never reads
            # would hold its replies, and a descriptor, forever.
            if sent or self._waiting_on != "reader":
                self._wait("reader", WRITE_TIMEOUT)
            self.loop.add_writer(self.fd, self._writable)
            return
        self.loop.remove_writer(self.fd)
        if self._discarding:
            self._end_reply_side()
        elif self._waiting_on == "reader":
            self._wait("", 0)

    def _writable(self) -> None:
        if self.sock is None:
            return
        self._flush()
        if self.sock is not None and not self._out and not self._discarding:
            self._serve()

    def _end_reply_side(self) -> None:
        """The reply to an over-long request is out: our side ends, and what
        the client still sends is read (briefly) and dropped, so that the
        close does not reset the connection under the reply."""
        assert self.sock is not None
        try:
            self.sock.shutdown(socket.SHUT_WR)
        except OSError as err:
            if err.errno != errno.ENOTCONN:
                self.close()
                return
        self._read(True)
        self._wait("discarding", DISCARD_TIME)


_COMMANDS = {
    "status": AdminServer.cmd_status,
    "list-users": AdminServer.cmd_list_users,
    "list-sessions": AdminServer.cmd_list_sessions,
    "show-user": AdminServer.cmd_show_user,
    "show-session": AdminServer.cmd_show_session,
    "user-status": AdminServer.cmd_user_status,
    "list-seats": AdminServer.cmd_list_seats,
    "seat-status": AdminServer.cmd_seat_status,
    "enable-linger": AdminServer.cmd_enable_linger,
    "disable-linger": AdminServer.cmd_disable_linger,
    "terminate-session": AdminServer.cmd_terminate_session,
    "terminate-user": AdminServer.cmd_terminate_user,
    "kill-session": AdminServer.cmd_kill_session,
    "kill-user": AdminServer.cmd_kill_user,
    "session-of": AdminServer.cmd_session_of,
}
