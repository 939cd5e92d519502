"""org.freedesktop.login1.Seat at /org/freedesktop/login1/seat/ID
(turnstiled.seats decides which seats exist and who is in front)."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from .. import views
from ..seats import SwitchError
from . import paths
from .interface import Interface, Method, Prop
from .objects import FAILED, NO_SUCH_SESSION, NOT_SUPPORTED, BusError, Call
from .session import Hints, monotonic_usec, usec

if TYPE_CHECKING:
    from ..seats import Seat

NAME = "org.freedesktop.login1.Seat"


def _active(ctx: Any, seat: Seat) -> tuple[str, str]:
    sid = views.seat(seat, ctx.seats)["active_session"]
    return (sid, paths.session_path(sid)) if sid else ("", "/")


def _sessions(ctx: Any, seat: Seat) -> list[tuple[str, str]]:
    return [(sid, paths.session_path(sid)) for sid in views.seat(seat, ctx.seats)["sessions"]]


def _idle(ctx: Any, seat: Seat) -> tuple[bool, float]:
    hints = [ctx.hints.get(s.id) or Hints() for s in ctx.seats.sessions_on(seat.id)]
    if not hints:
        return False, 0.0
    idle = all(h.idle for h in hints)
    return idle, max(h.idle_since for h in hints) if idle else 0.0


PROPS = {
    "Id": Prop("s", lambda ctx, seat: seat.id),
    "ActiveSession": Prop("(so)", _active, True),
    "CanTTY": Prop("b", lambda ctx, seat: seat.can_tty),
    "CanGraphical": Prop("b", lambda ctx, seat: seat.can_graphical, True),
    "Sessions": Prop("a(so)", _sessions, True),
    "IdleHint": Prop("b", lambda ctx, seat: _idle(ctx, seat)[0], True),
    "IdleSinceHint": Prop("t", lambda ctx, seat: usec(_idle(ctx, seat)[1]), True),
    "IdleSinceHintMonotonic": Prop("t", lambda ctx, seat: monotonic_usec(_idle(ctx, seat)[1]),
                                   True),
}


def switch(do) -> None:
    """Runs a seats.Seats switch, its failure as a D-Bus error."""
    try:
        do()
    except SwitchError as err:
        raise BusError(FAILED, str(err)) from None


async def terminate(call: Call, seat: Seat) -> list:
    await call.require_root(f"terminate the sessions of {seat.id}")
    for s in call.seats.sessions_on(seat.id):
        call.registry.terminate_session(s)
    return []


async def activate_session(call: Call, seat: Seat, sid: str) -> list:
    session = await call.session(sid)
    if session.facts.seat != seat.id:
        raise BusError(NO_SUCH_SESSION, f"Session {session.id} is not on seat {seat.id}")
    await call.require(session.user.uid, f"activate session {session.id} of "
                       f"{session.user.name}")
    call.api.activate(session)
    return []


async def switch_to(call: Call, seat: Seat, vt: int) -> list:
    await call.require_root(f"switch the VT of {seat.id}")
    if not seat.can_tty:
        raise BusError(NOT_SUPPORTED, f"Seat {seat.id} has no VTs")
    switch(lambda: call.seats.switch_vt(vt))
    return []


async def switch_relative(call: Call, seat: Seat, step: int) -> list:
    await call.require_root(f"switch sessions on {seat.id}")
    switch(lambda: call.seats.switch_relative(seat.id, step))
    return []


INTERFACE = Interface(
    NAME, PROPS,
    {
        "Terminate": Method("", "", terminate),
        "ActivateSession": Method("s", "", activate_session, ("session_id",)),
        "SwitchTo": Method("u", "", switch_to, ("vtnr",)),
        "SwitchToNext": Method("", "", lambda call, seat: switch_relative(call, seat, 1)),
        "SwitchToPrevious": Method("", "", lambda call, seat: switch_relative(call, seat, -1)),
    },
)
