"""org.freedesktop.login1.Session at /org/freedesktop/login1/session/ID.

Properties come from turnstiled.views.session (the description the admin
socket and the state files use too); the idle and locked hints are the
D-Bus API's own (sessions set them through it, nothing else reads them).
Scope is empty: there is no systemd unit (loginctl then shows no unit).
"""

from __future__ import annotations

import signal
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from .. import views
from . import paths
from .interface import Interface, Method, Prop
from .objects import INVALID_ARGS, BusError, Call

if TYPE_CHECKING:
    from ..registry import Session

NAME = "org.freedesktop.login1.Session"


@dataclass
class Hints:
    idle: bool = False
    idle_since: float = 0.0  # time.time() of the last change, 0: never
    locked: bool = False


def usec(t: float) -> int:
    return int(t * 1_000_000) if t else 0


# CLOCK_REALTIME - CLOCK_MONOTONIC, taken once: a timestamp then reads the
# same on every call (a wall clock set later shifts none of them).
_REALTIME_AHEAD = time.time() - time.monotonic()


def monotonic_usec(t: float) -> int:
    """A time.time() value on CLOCK_MONOTONIC's scale, as logind reports
    both (realtime and monotonic) for every timestamp."""
    if not t:
        return 0
    return max(0, int((t - _REALTIME_AHEAD) * 1_000_000))


def _view(ctx: Any, s: Session) -> dict:
    return views.session(s, ctx.seats)


def _p(key: str, sig: str, convert=lambda v: v, emits: bool = False) -> Prop:
    return Prop(sig, lambda ctx, s: convert(_view(ctx, s)[key]), emits)


def _seat(ctx: Any, s: Session) -> tuple[str, str]:
    seat = s.facts.seat
    return (seat, paths.seat_path(seat) if seat else "/")


def _idle(ctx: Any, s: Session) -> Hints:
    return ctx.hints.get(s.id) or Hints()


PROPS = {
    "Id": _p("id", "s"),
    "User": Prop("(uo)", lambda ctx, s: (s.user.uid, paths.user_path(s.user.uid))),
    "Name": _p("user", "s"),
    "Timestamp": _p("since", "t", usec),
    "TimestampMonotonic": _p("since", "t", monotonic_usec),
    "VTNr": _p("vtnr", "u", lambda v: v or 0),
    "Seat": Prop("(so)", _seat),
    "TTY": _p("tty", "s"),
    "Display": _p("display", "s"),
    "Remote": _p("remote", "b", bool),
    "RemoteHost": _p("remote_host", "s"),
    "RemoteUser": _p("remote_user", "s"),
    "Service": _p("service", "s"),
    "Desktop": _p("desktop", "s"),
    "Scope": Prop("s", lambda ctx, s: ""),
    "Leader": _p("leader", "u"),
    "Audit": Prop("u", lambda ctx, s: 0),
    "Type": _p("type", "s"),
    "Class": _p("class", "s"),
    "Active": _p("active", "b", bool, emits=True),
    "State": _p("state", "s", emits=True),
    "IdleHint": Prop("b", lambda ctx, s: _idle(ctx, s).idle, True),
    "IdleSinceHint": Prop("t", lambda ctx, s: usec(_idle(ctx, s).idle_since), True),
    "IdleSinceHintMonotonic": Prop("t", lambda ctx, s: monotonic_usec(_idle(ctx, s)
                                                                         .idle_since), True),
    "LockedHint": Prop("b", lambda ctx, s: _idle(ctx, s).locked, True),
}


def check_signal(signo: int) -> None:
    if not 0 < signo < signal.SIGRTMAX + 1:
        raise BusError(INVALID_ARGS, f"Invalid signal {signo}")


def check_whom(whom: str) -> str:
    if whom not in ("", "all", "leader"):
        raise BusError(INVALID_ARGS, f"Invalid kill parameter '{whom}'")
    return whom or "all"


# -- the methods, shared with the Manager's by-id forms


async def terminate(call: Call, s: Session) -> list:
    await call.require(s.user.uid, f"terminate session {s.id} of {s.user.name}")
    call.registry.terminate_session(s)
    return []


async def kill(call: Call, s: Session, whom: str, signo: int) -> list:
    whom = check_whom(whom)
    check_signal(signo)
    await call.require(s.user.uid, f"send signals to session {s.id} of {s.user.name}")
    call.api.kill_session(s, whom, signo)
    return []


async def activate(call: Call, s: Session) -> list:
    await call.require(s.user.uid, f"activate session {s.id} of {s.user.name}")
    call.api.activate(s)
    return []


async def lock(call: Call, s: Session, locked: bool) -> list:
    await call.require(s.user.uid, f"{'lock' if locked else 'unlock'} session {s.id} of "
                       f"{s.user.name}")
    call.api.emit(paths.session_path(s.id), NAME, "Lock" if locked else "Unlock", "", [])
    return []


async def _set_idle(call: Call, s: Session, idle: bool) -> list:
    await call.require(s.user.uid, f"set the idle hint of session {s.id} of {s.user.name}")
    hints = call.api.hints.setdefault(s.id, Hints())
    if hints.idle != idle:
        hints.idle, hints.idle_since = idle, time.time()
        call.api.changed(paths.session_path(s.id), NAME, s,
                         ["IdleHint", "IdleSinceHint", "IdleSinceHintMonotonic"])
    return []


async def _set_locked(call: Call, s: Session, locked: bool) -> list:
    await call.require(s.user.uid, f"set the locked hint of session {s.id} of {s.user.name}")
    hints = call.api.hints.setdefault(s.id, Hints())
    if hints.locked != locked:
        hints.locked = locked
        call.api.changed(paths.session_path(s.id), NAME, s, ["LockedHint"])
    return []


INTERFACE = Interface(
    NAME, PROPS,
    {
        "Terminate": Method("", "", terminate),
        "Activate": Method("", "", activate),
        "Lock": Method("", "", lambda call, s: lock(call, s, True)),
        "Unlock": Method("", "", lambda call, s: lock(call, s, False)),
        "SetIdleHint": Method("b", "", _set_idle, ("idle",)),
        "SetLockedHint": Method("b", "", _set_locked, ("locked",)),
        "Kill": Method("si", "", kill, ("who", "signal_number")),
    },
    {"Lock": [], "Unlock": []},
)
