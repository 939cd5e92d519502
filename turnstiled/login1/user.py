"""org.freedesktop.login1.User at /org/freedesktop/login1/user/_UID.

A user is published while turnstiled has a Login for them: from the first
login (or a lingering manager's start) until the manager is gone. Service
and Slice are empty: there are no systemd units (loginctl then shows none).

State, from turnstiled.views.user and the sessions: active (a session of
theirs is active), online (sessions, none active), lingering (no session,
the manager kept by linger), closing (no session but closing ones, or the
manager on its way out or in its stop delay). offline is what logind says of a user it does
not track, which is never published.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from .. import views
from . import paths
from .interface import Interface, Method, Prop
from .objects import Call, display_session
from .session import Hints, check_signal, monotonic_usec, usec

if TYPE_CHECKING:
    from ..registry import Login

NAME = "org.freedesktop.login1.User"


def state(ctx: Any, login: Login) -> str:
    view = views.user(login, ctx.config)
    logged_in = [s for s in login.sessions.values() if s.state.value != "closing"]
    if logged_in:
        if any(ctx.seats.is_active(s) for s in logged_in):
            return "active"
        return "online"
    if login.sessions:
        return "closing"  # logged out, processes of their sessions still run
    if view["state"] == "lingering" and view["linger"]:
        return "lingering"
    if view["state"] == "starting" and view["linger"]:
        return "lingering"
    return "closing"


def _display(ctx: Any, login: Login) -> tuple[str, str]:
    s = display_session(login, ctx.seats)
    return (s.id, paths.session_path(s.id)) if s is not None else ("", "/")


def _sessions(ctx: Any, login: Login) -> list[tuple[str, str]]:
    ids = views.user(login, ctx.config)["sessions"]
    return [(sid, paths.session_path(sid)) for sid in ids]


def _idle(ctx: Any, login: Login) -> tuple[bool, float]:
    """Idle when every session is (logind's rule), since the latest of them."""
    hints = [ctx.hints.get(sid) or Hints() for sid in login.sessions]
    if not hints:
        return False, 0.0
    idle = all(h.idle for h in hints)
    return idle, max(h.idle_since for h in hints) if idle else 0.0


def first_seen(login: Login) -> float:
    """When the user came: their oldest session or their manager's start."""
    times = [s.since for s in login.sessions.values()]
    if login.manager is not None and login.manager.since:
        times.append(login.manager.since)
    return min(times) if times else login.since


PROPS = {
    "UID": Prop("u", lambda ctx, lg: lg.user.uid),
    "GID": Prop("u", lambda ctx, lg: lg.user.gid),
    "Name": Prop("s", lambda ctx, lg: lg.user.name),
    "Timestamp": Prop("t", lambda ctx, lg: usec(first_seen(lg))),
    "TimestampMonotonic": Prop("t", lambda ctx, lg: monotonic_usec(first_seen(lg))),
    "RuntimePath": Prop("s", lambda ctx, lg: views.user(lg, ctx.config)["runtime_dir"]),
    "Service": Prop("s", lambda ctx, lg: ""),
    "Slice": Prop("s", lambda ctx, lg: ""),
    "Display": Prop("(so)", _display, True),
    "State": Prop("s", state, True),
    "Sessions": Prop("a(so)", _sessions, True),
    "IdleHint": Prop("b", lambda ctx, lg: _idle(ctx, lg)[0], True),
    "IdleSinceHint": Prop("t", lambda ctx, lg: usec(_idle(ctx, lg)[1]), True),
    "IdleSinceHintMonotonic": Prop("t", lambda ctx, lg: monotonic_usec(_idle(ctx, lg)[1]),
                                   True),
    "Linger": Prop("b", lambda ctx, lg: bool(views.user(lg, ctx.config)["linger"]), True),
}


async def terminate(call: Call, login: Login) -> list:
    await call.require(login.user.uid, f"terminate user {login.user.name}")
    call.registry.terminate_user(login.user.uid)
    return []


async def kill(call: Call, login: Login, signo: int) -> list:
    check_signal(signo)
    await call.require(login.user.uid, f"send signals to the processes of {login.user.name}")
    call.api.kill_user(login, signo)
    return []


INTERFACE = Interface(
    NAME, PROPS,
    {"Terminate": Method("", "", terminate), "Kill": Method("i", "", kill, ("signal_number",))},
)
