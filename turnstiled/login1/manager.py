"""org.freedesktop.login1.Manager at /org/freedesktop/login1: listing and
finding sessions, users and seats, linger, and acting on them by name
(the same checks as the objects' own methods). Power, inhibitors and
device attachment are not here (see the package's contract)."""

from __future__ import annotations

import logging
from typing import Any

from .. import linger
from ..users import lookup_uid
from . import paths, seat, session, user
from .interface import Interface, Method, Prop
from .objects import NO_SUCH_SEAT, NO_SUCH_USER, UID_CALLER, BusError, Call

NAME = "org.freedesktop.login1.Manager"
log = logging.getLogger("turnstiled")


async def list_sessions(call: Call, _: Any) -> list:
    rows = sorted(call.registry.sessions.values(), key=lambda s: int(s.id))
    return [[(s.id, s.user.uid, s.user.name, s.facts.seat, paths.session_path(s.id))
             for s in rows]]


async def list_users(call: Call, _: Any) -> list:
    rows = sorted(call.registry.logins.values(), key=lambda lg: lg.user.uid)
    return [[(lg.user.uid, lg.user.name, paths.user_path(lg.user.uid)) for lg in rows]]


async def list_seats(call: Call, _: Any) -> list:
    return [[(sid, paths.seat_path(sid)) for sid in sorted(call.seats.seats)]]


async def get_session(call: Call, _: Any, sid: str) -> list:
    return [paths.session_path((await call.session(sid)).id)]


async def get_session_by_pid(call: Call, _: Any, pid: int) -> list:
    return [paths.session_path((await call.session_by_pid(pid)).id)]


async def get_user(call: Call, _: Any, uid: int) -> list:
    return [paths.user_path((await call.user(uid)).user.uid)]


async def get_user_by_pid(call: Call, _: Any, pid: int) -> list:
    return [paths.user_path((await call.user_by_pid(pid)).user.uid)]


async def get_seat(call: Call, _: Any, sid: str) -> list:
    return [paths.seat_path((await call.seat(sid)).id)]


async def set_user_linger(call: Call, _: Any, uid: int, enabled: bool,
                          interactive: bool) -> list:
    if uid == UID_CALLER:
        uid = await call.uid()
    target = lookup_uid(uid)
    if target is None:
        raise BusError(NO_SUCH_USER, f"No user with UID {uid}")
    await call.require(uid, f"change the linger of {target.name}")
    config = call.api.config
    if enabled and linger.disabled_reason(config):
        raise BusError("org.freedesktop.DBus.Error.NotSupported",
                       f"Lingering is off: {linger.disabled_reason(config)}")
    linger.set_file(config, target.name, enabled)
    log.info("linger %s for %s (D-Bus, uid %d)", "enabled" if enabled else "disabled",
             target.name, await call.uid())
    call.registry.linger_changed(target)
    call.api.linger_changed(uid)
    return []


async def _on_session(call: Call, sid: str, run, *args: Any) -> list:
    return await run(call, await call.session(sid), *args)


async def terminate_user(call: Call, _: Any, uid: int) -> list:
    return await user.terminate(call, await call.user(uid))


async def kill_user(call: Call, _: Any, uid: int, signo: int) -> list:
    return await user.kill(call, await call.user(uid), signo)


async def terminate_seat(call: Call, _: Any, sid: str) -> list:
    return await seat.terminate(call, await call.seat(sid))


async def activate_on_seat(call: Call, _: Any, sid: str, seat_id: str) -> list:
    found = await call.seat(seat_id)
    if found is None:
        raise BusError(NO_SUCH_SEAT, f"No seat '{seat_id}' known")
    return await seat.activate_session(call, found, sid)


async def lock_all(call: Call, _: Any, locked: bool) -> list:
    await call.require_root(f"{'lock' if locked else 'unlock'} every session")
    for s in list(call.registry.sessions.values()):
        await session.lock(call, s, locked)
    return []


def _count(ctx: Any, _: Any) -> int:
    return len(ctx.registry.sessions)


def _idle(ctx: Any, _: Any) -> tuple[bool, float]:
    hints = [ctx.hints.get(sid) or session.Hints() for sid in ctx.registry.sessions]
    if not hints:
        return False, 0.0
    idle = all(h.idle for h in hints)
    return idle, max(h.idle_since for h in hints) if idle else 0.0


PROPS = {
    "NAutoVTs": Prop("u", lambda ctx, _: 0),
    "KillUserProcesses": Prop("b", lambda ctx, _: False),
    "KillOnlyUsers": Prop("as", lambda ctx, _: []),
    "KillExcludeUsers": Prop("as", lambda ctx, _: []),
    "IdleHint": Prop("b", lambda ctx, _: _idle(ctx, _)[0], True),
    "IdleSinceHint": Prop("t", lambda ctx, _: session.usec(_idle(ctx, _)[1]), True),
    "IdleSinceHintMonotonic": Prop("t", lambda ctx, _: session.monotonic_usec(
        _idle(ctx, _)[1]), True),
    "IdleAction": Prop("s", lambda ctx, _: "ignore"),
    "UserStopDelayUSec": Prop("t", lambda ctx, _: int(ctx.config.user_stop_delay * 1e6)),
    "NCurrentSessions": Prop("t", _count),
    "SessionsMax": Prop("t", lambda ctx, _: 2**64 - 1),
    "BlockInhibited": Prop("s", lambda ctx, _: ""),
    "DelayInhibited": Prop("s", lambda ctx, _: ""),
    "PreparingForShutdown": Prop("b", lambda ctx, _: False),
    "PreparingForSleep": Prop("b", lambda ctx, _: False),
}

INTERFACE = Interface(
    NAME, PROPS,
    {
        "ListSessions": Method("", "a(susso)", list_sessions, (), ("sessions",)),
        "ListUsers": Method("", "a(uso)", list_users, (), ("users",)),
        "ListSeats": Method("", "a(so)", list_seats, (), ("seats",)),
        "GetSession": Method("s", "o", get_session, ("session_id",), ("object_path",)),
        "GetSessionByPID": Method("u", "o", get_session_by_pid, ("pid",), ("object_path",)),
        "GetUser": Method("u", "o", get_user, ("uid",), ("object_path",)),
        "GetUserByPID": Method("u", "o", get_user_by_pid, ("pid",), ("object_path",)),
        "GetSeat": Method("s", "o", get_seat, ("seat_id",), ("object_path",)),
        "SetUserLinger": Method("ubb", "", set_user_linger, ("uid", "enable", "interactive")),
        "TerminateSession": Method("s", "", lambda call, _, sid: _on_session(
            call, sid, session.terminate), ("session_id",)),
        "TerminateUser": Method("u", "", terminate_user, ("uid",)),
        "TerminateSeat": Method("s", "", terminate_seat, ("seat_id",)),
        "KillSession": Method("ssi", "", lambda call, _, sid, whom, signo: _on_session(
            call, sid, session.kill, whom, signo), ("session_id", "who", "signal_number")),
        "KillUser": Method("ui", "", kill_user, ("uid", "signal_number")),
        "ActivateSession": Method("s", "", lambda call, _, sid: _on_session(
            call, sid, session.activate), ("session_id",)),
        "ActivateSessionOnSeat": Method("ss", "", activate_on_seat, ("session_id", "seat_id")),
        "LockSession": Method("s", "", lambda call, _, sid: _on_session(
            call, sid, session.lock, True), ("session_id",)),
        "UnlockSession": Method("s", "", lambda call, _, sid: _on_session(
            call, sid, session.lock, False), ("session_id",)),
        "LockSessions": Method("", "", lambda call, _: lock_all(call, _, True)),
        "UnlockSessions": Method("", "", lambda call, _: lock_all(call, _, False)),
    },
    {
        "SessionNew": [("session_id", "s"), ("object_path", "o")],
        "SessionRemoved": [("session_id", "s"), ("object_path", "o")],
        "UserNew": [("uid", "u"), ("object_path", "o")],
        "UserRemoved": [("uid", "u"), ("object_path", "o")],
        "SeatNew": [("seat_id", "s"), ("object_path", "o")],
        "SeatRemoved": [("seat_id", "s"), ("object_path", "o")],
    },
)
