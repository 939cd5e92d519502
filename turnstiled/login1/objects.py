"""What a call is about and who makes it: the caller's uid and pid (asked
of the bus, never taken from the call), `self`/`auto`/empty names resolved
to the caller's own session, user and seat as logind resolves them, the
authorisation check, and the errors logind answers with."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from ..users import may_act_for

if TYPE_CHECKING:
    from ..registry import Login, Registry, Session
    from ..seats import Seat, Seats

ACCESS_DENIED = "org.freedesktop.DBus.Error.AccessDenied"
INVALID_ARGS = "org.freedesktop.DBus.Error.InvalidArgs"
UNKNOWN_OBJECT = "org.freedesktop.DBus.Error.UnknownObject"
UNKNOWN_METHOD = "org.freedesktop.DBus.Error.UnknownMethod"
UNKNOWN_INTERFACE = "org.freedesktop.DBus.Error.UnknownInterface"
UNKNOWN_PROPERTY = "org.freedesktop.DBus.Error.UnknownProperty"
READ_ONLY = "org.freedesktop.DBus.Error.PropertyReadOnly"
NOT_SUPPORTED = "org.freedesktop.DBus.Error.NotSupported"
FAILED = "org.freedesktop.DBus.Error.Failed"
NO_SUCH_SESSION = "org.freedesktop.login1.NoSuchSession"
NO_SUCH_USER = "org.freedesktop.login1.NoSuchUser"
NO_SUCH_SEAT = "org.freedesktop.login1.NoSuchSeat"
NO_SESSION_FOR_PID = "org.freedesktop.login1.NoSessionForPID"
NO_USER_FOR_PID = "org.freedesktop.login1.NoUserForPID"

# uid -1 as an unsigned 32-bit value: "the caller" in SetUserLinger.
UID_CALLER = 0xFFFFFFFF


class BusError(Exception):
    """An error reply: a D-Bus error name and a message for a person."""

    def __init__(self, name: str, text: str) -> None:
        super().__init__(text)
        self.name = name
        self.text = text


async def bus_call(bus: Any, member: str, signature: str, body: list) -> list:
    """A call to the bus itself (org.freedesktop.DBus); the reply's body."""
    from dbus_fast import Message, MessageType

    reply = await bus.call(Message(destination="org.freedesktop.DBus",
                                   path="/org/freedesktop/DBus",
                                   interface="org.freedesktop.DBus", member=member,
                                   signature=signature, body=body))
    if reply.message_type == MessageType.ERROR:
        raise BusError(reply.error_name or FAILED, str(reply.body[0] if reply.body else ""))
    return reply.body


class Call:
    """One method call: its sender, whose credentials are asked of the bus
    once, when first needed."""

    def __init__(self, api: Any, sender: str) -> None:
        # api: the Service (service.py), which acts on what a call asks
        self.api, self.sender = api, sender
        self.bus = api.bus
        self.registry: Registry = api.registry
        self.seats: Seats = api.seats
        self._uid: int | None = None
        self._pid: int | None = None

    async def uid(self) -> int:
        if self._uid is None:
            [self._uid] = await bus_call(self.bus, "GetConnectionUnixUser", "s", [self.sender])
        return self._uid

    async def pid(self) -> int:
        if self._pid is None:
            [self._pid] = await bus_call(self.bus, "GetConnectionUnixProcessID", "s",
                                         [self.sender])
        return self._pid

    async def require(self, owner_uid: int, what: str) -> None:
        """Refuses (AccessDenied) unless the caller may act for owner_uid:
        the admin socket's policy, users.may_act_for."""
        uid = await self.uid()
        if not may_act_for(uid, owner_uid):
            raise BusError(ACCESS_DENIED, f"uid {uid} may not {what}")

    async def require_root(self, what: str) -> None:
        await self.require(0, what)

    # -- the caller's own

    async def own_session(self) -> Session | None:
        return self.registry.session_of_pid(await self.pid())

    async def session(self, name: str) -> Session:
        """A session by id; empty or `self`: the caller's; `auto`: the
        caller's, else their user's display session."""
        if name in ("", "self", "auto"):
            own = await self.own_session()
            if own is None and name == "auto":
                login = self.registry.logins.get(await self.uid())
                own = display_session(login, self.seats) if login is not None else None
            if own is None:
                raise BusError(NO_SESSION_FOR_PID,
                               f"PID {await self.pid()} does not belong to any known session")
            return own
        session = self.registry.sessions.get(name)
        if session is None:
            raise BusError(NO_SUCH_SESSION, f"No session '{name}' known")
        return session

    async def session_by_pid(self, pid: int) -> Session:
        if pid == 0:
            return await self.session("self")
        found = self.registry.session_of_pid(pid)
        if found is None:
            raise BusError(NO_SESSION_FOR_PID,
                           f"PID {pid} does not belong to any known session")
        return found

    async def user(self, uid: int) -> Login:
        login = self.registry.logins.get(uid)
        if login is None:
            raise BusError(NO_SUCH_USER, f"User ID {uid} is not logged in or lingering")
        return login

    async def user_by_name(self, name: str) -> Login:
        """A path's user part: a uid, or `self`/`auto` (the caller's
        session's user, else the caller's uid)."""
        if name in ("self", "auto"):
            own = await self.own_session()
            return await self.user(own.user.uid if own is not None else await self.uid())
        return await self.user(int(name))

    async def user_by_pid(self, pid: int) -> Login:
        if pid == 0:
            pid = await self.pid()
        found = self.registry.session_of_pid(pid)
        if found is None:
            raise BusError(NO_USER_FOR_PID, f"PID {pid} does not belong to any logged in user")
        return await self.user(found.user.uid)

    async def seat(self, name: str) -> Seat:
        """A seat by id; empty or `self`: the caller's session's seat;
        `auto`: that, else their user's display session's."""
        if name in ("", "self", "auto"):
            try:
                session = await self.session("auto" if name == "auto" else "self")
            except BusError:
                raise BusError(NO_SUCH_SEAT, "The caller has no session, so no seat") from None
            if not session.facts.seat or session.facts.seat not in self.seats.seats:
                raise BusError(NO_SUCH_SEAT, f"Session {session.id} has no seat")
            name = session.facts.seat
        seat = self.seats.seats.get(name)
        if seat is None:
            raise BusError(NO_SUCH_SEAT, f"No seat '{name}' known")
        return seat


_GRAPHICAL = ("x11", "wayland", "mir")


def display_session(login: Login, seats: Seats) -> Session | None:
    """The user's display session as logind elects it: a graphical session
    of class user before a text one, the oldest of each."""
    ranked = sorted((s for s in login.sessions.values() if s.facts.klass == "user"),
                    key=lambda s: (s.facts.type not in _GRAPHICAL, s.facts.type != "tty",
                                   int(s.id)))
    return ranked[0] if ranked else None
