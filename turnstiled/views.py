"""What a Login and a Session look like from outside: one description, two
renderings.

- The admin socket (doc/admin-protocol.md) sends the description as it is:
  lower-case keys, JSON values, times in seconds since the epoch.
- The state files (/run/turnstiled/users/UID, /run/turnstiled/sessions/ID,
  for scripts) carry the same fields as KEY=VALUE lines: the key upper-cased
  (or its old name, below), lists space-separated, booleans 1 or 0, None
  empty, times in microseconds since the epoch.

A field added here reaches both; state-file readers ignore keys they do not
know, admin clients too (within version 1).
"""

from __future__ import annotations

from . import linger
from .config import Config
from .text import escape

TYPE_CHECKING = False  # not typing's (see turnstiled/__init__.py)
if TYPE_CHECKING:
    from .registry import Login, Session
    from .seats import Seat, Seats

# State-file keys that are not the field's name upper-cased (kept for the
# readers that already use them).
_USER_RENAMED = {"user": "NAME", "runtime_dir": "RUNTIME"}
_SESSION_RENAMED = {"since": "REALTIME"}
# Fields holding a time.time() value.
_TIMES = {"since", "manager_since"}


def user(login: Login, config: Config) -> dict[str, object]:
    u, m = login.user, login.manager
    return {
        "uid": u.uid, "user": u.name, "state": login.public_state, "since": login.since,
        "sessions": sorted(login.sessions, key=int), "backend": config.backend,
        "manager_pid": m.pid if m else None,
        "manager_since": m.since if m else None,
        "linger": linger.wants_linger(config, u.name),
        "runtime_dir": login.rundir,
        "runtime_dir_managed": login.rundir_managed,
        "runtime_dir_problem": login.rundir_problem or None,
        "seats": sorted({s.facts.seat for s in login.sessions.values() if s.facts.seat}),
    }


def session(s: Session, seats: Seats | None = None) -> dict[str, object]:
    """A session; active as logind has it (seats.is_active): without seats
    known, every open session counts as active. Its state is logind's:
    closing, else active or online."""
    f = s.facts
    closing = s.state.value == "closing"
    active = not closing and (seats is None or seats.is_active(s))
    return {
        "id": s.id, "uid": s.user.uid, "user": s.user.name, "active": active,
        "state": "closing" if closing else "active" if active else "online", "seat": f.seat,
        "tty": f.tty, "display": f.display, "class": f.klass, "type": f.type,
        "service": f.service, "desktop": f.desktop, "vtnr": f.vtnr, "remote": f.remote,
        "remote_host": f.remote_host, "remote_user": f.remote_user, "leader": s.leader,
        "since": s.since,
        "cgroup": s.group.path if s.group is not None else None,
    }


def seat(st: Seat, seats: Seats) -> dict[str, object]:
    front = seats.active_session(st.id)
    return {
        "id": st.id, "active_session": front.id if front is not None else None,
        "sessions": [s.id for s in seats.sessions_on(st.id)],
        "can_tty": st.can_tty, "can_graphical": st.can_graphical,
        "active_vt": seats.active_vt if st.can_tty else None, "devices": list(st.devices),
    }


def user_file(login: Login, config: Config) -> str:
    """The text of the user's state file."""
    return _file_text(user(login, config), _USER_FILE_KEYS)


def session_file(s: Session, seats: Seats | None = None) -> str:
    """The text of the session's state file."""
    return _file_text(session(s, seats), _SESSION_FILE_KEYS)


class _FileKeys(dict):
    """A view's key -> "KEY=" as its state file writes it, worked out once
    per key: the files are written at every login."""

    def __init__(self, renamed: dict[str, str]) -> None:
        super().__init__()
        self.renamed = renamed

    def __missing__(self, key: str) -> str:
        line_start = self[key] = f"{self.renamed.get(key, key.upper())}="
        return line_start


_USER_FILE_KEYS = _FileKeys(_USER_RENAMED)
_SESSION_FILE_KEYS = _FileKeys(_SESSION_RENAMED)


def _file_text(view: dict[str, object], keys: _FileKeys) -> str:
    """KEY=VALUE lines. Values come from clients and users (a remote host,
    a service name): one line each, whatever a reader takes for a line
    break (turnstiled.text.escape)."""
    out: list[str] = []
    for key, value in view.items():
        kind = type(value)
        if kind is str:
            text = escape(value)
        elif value is None:
            text = ""
        elif key in _TIMES:
            text = str(int(value * 1_000_000))
        elif kind is int:
            text = str(value)
        elif kind is bool:
            text = "1" if value else "0"
        elif kind is list:
            text = escape(" ".join(map(str, value)))
        else:
            text = escape(str(value))
        out.append(keys[key])
        out.append(text)
        out.append("\n")
    return "".join(out)
