"""The service on one bus connection: every method call to our objects is
answered here (interfaces from manager.py, session.py, user.py, seat.py,
plus Properties, Introspectable and Peer), and what changes in the
registry and on the seats goes out as signals.

Calls are taken in a message handler, which sees the sender; each runs as
a task, because knowing the caller (uid, pid) means asking the bus.
Properties.GetAll with an empty interface name (loginctl sends one) means
every interface of the object.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from dbus_fast import Message, MessageFlag, MessageType, Variant

from ..seats import SwitchError
from . import manager, paths, seat, session, user
from .interface import Interface, node_xml
from .objects import (
    FAILED,
    INVALID_ARGS,
    READ_ONLY,
    UNKNOWN_INTERFACE,
    UNKNOWN_METHOD,
    UNKNOWN_OBJECT,
    UNKNOWN_PROPERTY,
    BusError,
    Call,
)

if TYPE_CHECKING:
    from ..registry import Login, Registry, Session
    from ..seats import Seat, Seats

log = logging.getLogger("turnstiled")

PROPERTIES = "org.freedesktop.DBus.Properties"
INTROSPECTABLE = "org.freedesktop.DBus.Introspectable"
PEER = "org.freedesktop.DBus.Peer"
_KIND = {"manager": manager.INTERFACE, "session": session.INTERFACE,
         "user": user.INTERFACE, "seat": seat.INTERFACE}
# The properties whose changes are signalled, per interface.
_WATCHED = {i.name: [n for n, p in i.props.items() if p.emits_change]
            for i in _KIND.values()}


class Service:
    def __init__(self, bus: Any, registry: Registry, seats: Seats,
                 hints: dict[str, session.Hints]) -> None:
        self.bus, self.registry, self.seats, self.hints = bus, registry, seats, hints
        self.config = registry.config
        self._attached = False
        self._tasks: set[asyncio.Task] = set()
        # What was last signalled of each object: path -> {property: value}.
        self._shown: dict[str, dict[str, Any]] = {}
        self._announced_users: set[int] = set()
        self._released: Callable[[], None] | None = None
        bus.add_message_handler(self._on_message)

    # -- lifecycle (bus.BusLink)

    def attach(self) -> None:
        """Starts serving: the name is ours now."""
        if self._attached:
            return
        self._attached = True
        self.registry.listeners.append(self)
        self.seats.listeners.append(self)
        self._announced_users = set(self.registry.logins)
        for s in self.registry.sessions.values():
            self._refresh(paths.session_path(s.id), session.INTERFACE, s, quiet=True)
        for login in self.registry.logins.values():
            self._refresh(paths.user_path(login.user.uid), user.INTERFACE, login, quiet=True)
        for st in self.seats.seats.values():
            self._refresh(paths.seat_path(st.id), seat.INTERFACE, st, quiet=True)

    def detach(self) -> None:
        if self._attached:
            self.registry.listeners.remove(self)
            self.seats.listeners.remove(self)
            self._attached = False
        for task in self._tasks:
            task.cancel()

    def on_name_released(self, then: Callable[[], None]) -> None:
        """Calls then() once org.freedesktop.login1 has no owner."""
        self._released = then
        rule = ("type='signal',sender='org.freedesktop.DBus',interface='org.freedesktop.DBus',"
                "member='NameOwnerChanged',arg0='org.freedesktop.login1'")
        self.bus.send(Message(destination="org.freedesktop.DBus", path="/org/freedesktop/DBus",
                              interface="org.freedesktop.DBus", member="AddMatch",
                              signature="s", body=[rule]))

    # -- incoming

    def _on_message(self, msg: Message) -> bool | None:
        if msg.message_type == MessageType.SIGNAL:
            if (msg.member == "NameOwnerChanged" and msg.sender == "org.freedesktop.DBus"
                    and msg.body[:1] == ["org.freedesktop.login1"] and not msg.body[2]
                    and self._released is not None):
                then, self._released = self._released, None
                then()
            return None
        if msg.message_type != MessageType.METHOD_CALL or not self._attached:
            return None
        if msg.path != paths.ROOT and not msg.path.startswith(paths.ROOT + "/"):
            return None
        task = asyncio.get_running_loop().create_task(self._answer(msg))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return True

    async def _answer(self, msg: Message) -> None:
        try:
            signature, body = await self._dispatch(msg)
            reply = Message.new_method_return(msg, signature, body)
        except BusError as err:
            reply = Message.new_error(msg, err.name, err.text)
        except Exception:
            log.exception("login1: %s.%s on %s failed", msg.interface, msg.member, msg.path)
            reply = Message.new_error(msg, FAILED, "internal error")
        if not msg.flags & MessageFlag.NO_REPLY_EXPECTED:
            self.bus.send(reply)

    async def _dispatch(self, msg: Message) -> tuple[str, list]:
        call = Call(self, msg.sender)
        iface, member = msg.interface, msg.member
        if iface == PEER or (iface is None and member in ("Ping", "GetMachineId")):
            return _peer(member)
        if iface == INTROSPECTABLE or (iface is None and member == "Introspect"):
            if member != "Introspect":
                raise BusError(UNKNOWN_METHOD, f"No method {member}")
            return "s", [self._introspect(msg.path)]
        kind, obj = await self._resolve(call, msg.path)
        interface = _KIND[kind]
        if iface == PROPERTIES:
            return self._properties(interface, obj, member, msg.signature, msg.body)
        if iface not in (None, interface.name):
            raise BusError(UNKNOWN_INTERFACE, f"{msg.path} has no interface {iface}")
        method = interface.methods.get(member)
        if method is None:
            raise BusError(UNKNOWN_METHOD, f"{interface.name} has no method {member}")
        if msg.signature != method.in_sig:
            raise BusError(INVALID_ARGS, f"{interface.name}.{member} takes "
                           f"({method.in_sig}), not ({msg.signature})")
        return method.out_sig, await method.run(call, obj, *msg.body)

    async def _resolve(self, call: Call, path: str) -> tuple[str, Any]:
        parsed = paths.parse(path)
        unknown = BusError(UNKNOWN_OBJECT, f"No object at {path}")
        if parsed is None:
            raise unknown
        kind, name = parsed
        try:
            if kind == "manager":
                return kind, None
            if kind == "session":
                return kind, await call.session(name)
            if kind == "user":
                return kind, await call.user_by_name(name)
            return kind, await call.seat(name)
        except BusError as err:
            raise BusError(UNKNOWN_OBJECT, f"No object at {path}: {err.text}") from None

    def _properties(self, interface: Interface, obj: Any, member: str, signature: str,
                    body: list) -> tuple[str, list]:
        if member == "GetAll" and signature == "s":
            if body[0] not in ("", interface.name):
                raise BusError(UNKNOWN_INTERFACE, f"No interface {body[0]} here")
            return "a{sv}", [{name: Variant(p.signature, p.get(self, obj))
                              for name, p in interface.props.items()}]
        if member == "Get" and signature == "ss":
            if body[0] not in ("", interface.name):
                raise BusError(UNKNOWN_INTERFACE, f"No interface {body[0]} here")
            prop = interface.props.get(body[1])
            if prop is None:
                raise BusError(UNKNOWN_PROPERTY, f"{interface.name} has no property {body[1]}")
            return "v", [Variant(prop.signature, prop.get(self, obj))]
        if member == "Set" and signature == "ssv":
            raise BusError(READ_ONLY, f"{interface.name}.{body[1]} is read-only")
        raise BusError(UNKNOWN_METHOD, f"{PROPERTIES} has no method {member}({signature})")

    def _introspect(self, path: str) -> str:
        kids: dict[str, Callable[[], list[str]]] = {
            paths.ROOT: lambda: ["session", "user", "seat"],
            paths.SESSION: lambda: [paths.escape(sid) for sid in self.registry.sessions],
            paths.USER: lambda: [f"_{uid}" for uid in self.registry.logins],
            paths.SEAT: lambda: [paths.escape(sid) for sid in self.seats.seats],
        }
        if path in kids:
            ifaces = [manager.INTERFACE] if path == paths.ROOT else []
            return node_xml(ifaces, sorted(kids[path]()))
        parsed = paths.parse(path)
        if parsed is None:
            return node_xml([], [])
        return node_xml([_KIND[parsed[0]]], [])

    # -- acting (the interfaces' methods call these)

    def activate(self, s: Session) -> None:
        try:
            self.seats.activate(s)
        except SwitchError as err:
            raise BusError(FAILED, str(err)) from None

    def kill_session(self, s: Session, whom: str, signo: int) -> None:
        count = self.registry.kill_session(s, signo, leader_only=whom == "leader")
        log.info("signal %d sent to %d processes of session %s (%s)", signo, count, s.id, whom)

    def kill_user(self, login: Login, signo: int) -> None:
        count = self.registry.kill_user(login.user.uid, signo)
        log.info("signal %d sent to %d processes of %s", signo, count, login.user.name)

    def linger_changed(self, uid: int) -> None:
        login = self.registry.logins.get(uid)
        if login is not None:
            self._refresh(paths.user_path(uid), user.INTERFACE, login)

    def emit(self, path: str, interface: str, member: str, signature: str,
             body: list) -> None:
        self.bus.send(Message.new_signal(path, interface, member, signature, body))

    def changed(self, path: str, interface: str, obj: Any, names: list[str]) -> None:
        iface = _KIND_BY_NAME[interface]
        values = {n: Variant(iface.props[n].signature, iface.props[n].get(self, obj))
                  for n in names}
        self.emit(path, PROPERTIES, "PropertiesChanged", "sa{sv}as", [interface, values, []])

    def _refresh(self, path: str, iface: Interface, obj: Any, quiet: bool = False) -> None:
        """Signals the watched properties of obj that differ from what was
        last signalled."""
        now = {n: iface.props[n].get(self, obj) for n in _WATCHED[iface.name]}
        before = self._shown.get(path)
        self._shown[path] = now
        if quiet or before is None:
            return
        diff = [n for n in now if now[n] != before.get(n)]
        if diff:
            self.changed(path, iface.name, obj, diff)

    # -- turnstiled.registry.Listener

    def session_opened(self, s: Session) -> None:
        path = paths.session_path(s.id)
        self._refresh(path, session.INTERFACE, s, quiet=True)
        self.emit(paths.ROOT, manager.NAME, "SessionNew", "so", [s.id, path])
        self._refresh_seat_of(s)

    def session_closed(self, s: Session) -> None:
        path = paths.session_path(s.id)
        self._shown.pop(path, None)
        self.hints.pop(s.id, None)
        self.emit(paths.ROOT, manager.NAME, "SessionRemoved", "so", [s.id, path])
        self._refresh_seat_of(s)

    def login_changed(self, login: Login) -> None:
        uid = login.user.uid
        path = paths.user_path(uid)
        if uid not in self._announced_users:
            self._announced_users.add(uid)
            self._refresh(path, user.INTERFACE, login, quiet=True)
            self.emit(paths.ROOT, manager.NAME, "UserNew", "uo", [uid, path])
        else:
            self._refresh(path, user.INTERFACE, login)

    def login_ended(self, login: Login) -> None:
        uid = login.user.uid
        path = paths.user_path(uid)
        self._shown.pop(path, None)
        if uid in self._announced_users:
            self._announced_users.discard(uid)
            self.emit(paths.ROOT, manager.NAME, "UserRemoved", "uo", [uid, path])

    def _refresh_seat_of(self, s: Session) -> None:
        st = self.seats.seats.get(s.facts.seat)
        if st is not None:
            self._refresh(paths.seat_path(st.id), seat.INTERFACE, st)

    # -- turnstiled.seats.SeatListener

    def seat_added(self, st: Seat) -> None:
        path = paths.seat_path(st.id)
        self._refresh(path, seat.INTERFACE, st, quiet=True)
        self.emit(paths.ROOT, manager.NAME, "SeatNew", "so", [st.id, path])

    def seat_removed(self, st: Seat) -> None:
        path = paths.seat_path(st.id)
        self._shown.pop(path, None)
        self.emit(paths.ROOT, manager.NAME, "SeatRemoved", "so", [st.id, path])

    def active_changed(self, seat_id: str, before: Session | None,
                       after: Session | None) -> None:
        for s in (before, after):
            if s is not None and s.id in self.registry.sessions:
                self._refresh(paths.session_path(s.id), session.INTERFACE, s)
                login = self.registry.logins.get(s.user.uid)
                if login is not None:
                    self._refresh(paths.user_path(login.user.uid), user.INTERFACE, login)
        st = self.seats.seats.get(seat_id)
        if st is not None:
            self._refresh(paths.seat_path(st.id), seat.INTERFACE, st)


_KIND_BY_NAME = {i.name: i for i in _KIND.values()}


def _peer(member: str) -> tuple[str, list]:
    if member == "Ping":
        return "", []
    if member == "GetMachineId":
        try:
            with open("/etc/machine-id") as f:
                return "s", [f.read().strip()]
        except OSError as err:
            raise BusError(FAILED, f"no machine id: {err.strerror}") from None
    raise BusError(UNKNOWN_METHOD, f"{PEER} has no method {member}")


