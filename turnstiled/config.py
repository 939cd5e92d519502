"""turnstiled.conf: upstream turnstile's syntax and keys, plus our own paths.

The file is `key = value` lines; `#` starts a comment line. A bad value or an
unknown key is reported with file and line and the default is kept, so a typo
never stops logins; `turnstiled --check-config` turns the same reports into a
non-zero exit.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

DEFAULT_PATH = "/etc/turnstile/turnstiled.conf"


@dataclass(frozen=True)
class Config:
    debug: bool = False
    debug_stderr: bool = False
    backend: str = "runit"
    linger: str = "maybe"
    rundir_path: str = "/run/user/%u"
    manage_rundir: bool = True
    rundir_size: str = "10%"
    export_dbus_address: bool = True
    login_timeout: float = 60.0
    root_session: bool = False
    user_stop_delay: float = 10.0
    socket_path: str = "/run/turnstiled/control.sock"
    admin_socket_path: str = "/run/turnstiled/admin.sock"
    state_dir: str = "/run/turnstiled"
    linger_dir: str = "/var/lib/turnstiled/linger"
    backend_dir: str = "/usr/libexec/turnstiled"
    holder_path: str = "/usr/libexec/turnstiled/turnstiled-holder"
    # One holder kept started for the next cold login (turnstiled/children.py).
    spare_holder: bool = True
    fdstore_path: str = "/usr/libexec/turnstiled/turnstiled-fdstore"
    adopt_timeout: float = 60.0
    pam_service: str = "turnstiled"
    pam_dir: str = ""
    # Session tracking with cgroup v2 (turnstiled/tracking.py).
    cgroups: str = "auto"
    cgroup_path: str = "turnstiled"
    kill_user_processes: bool = False
    kill_exclude_users: tuple[str, ...] = ("root",)
    # org.freedesktop.login1 on the system bus (turnstiled/login1/): auto
    # takes the name when a bus is there and nobody owns it, yes insists.
    login1: str = "auto"
    # Empty: $DBUS_SYSTEM_BUS_ADDRESS, else the standard socket.
    system_bus_address: str = ""
    # The active VT (sysfs) and the console VTs are switched on (seats).
    vt_active_path: str = "/sys/class/tty/tty0/active"
    vt_console_path: str = "/dev/tty0"
    # Where the file came from; backends read their own config from
    # `backend/` beside it, so a sandboxed instance carries its own.
    path: str = DEFAULT_PATH

    @property
    def backend_conf_dir(self) -> str:
        return os.path.join(os.path.dirname(os.path.abspath(self.path)), "backend")

    def rundir_for(self, uid: int, gid: int) -> str:
        """Expands rundir_path's %u (uid), %g (gid) and %%."""
        out, chars = [], iter(self.rundir_path)
        for ch in chars:
            if ch != "%":
                out.append(ch)
                continue
            nxt = next(chars, "")
            out.append({"u": str(uid), "g": str(gid), "%": "%"}.get(nxt, "%" + nxt))
        return "".join(out)


@dataclass(frozen=True)
class Problem:
    path: str
    line: int
    message: str

    def __str__(self) -> str:
        return f"{self.path}:{self.line}: {self.message}"


class BadValue(ValueError):
    pass


def _bool(text: str) -> bool:
    if text in ("yes", "true"):
        return True
    if text in ("no", "false"):
        return False
    raise BadValue(f"expected yes or no, got {text!r}")


def _seconds(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise BadValue(f"expected a number of seconds, got {text!r}") from None
    if not value >= 0 or value == float("inf"):
        raise BadValue(f"expected a non-negative number of seconds, got {text!r}")
    return value


def _linger(text: str) -> str:
    if text not in ("yes", "no", "maybe"):
        raise BadValue(f"expected yes, no or maybe, got {text!r}")
    return text


def _name(text: str) -> str:
    if not text or "/" in text or text.startswith("."):
        raise BadValue(f"expected a backend name (a file in backend_dir) or none, got {text!r}")
    return text


def _abspath(text: str) -> str:
    if not text.startswith("/"):
        raise BadValue(f"expected an absolute path, got {text!r}")
    return text


def _optional_abspath(text: str) -> str:
    return _abspath(text) if text else ""


def _pam_service(text: str) -> str:
    if "/" in text or text.startswith("."):
        raise BadValue(f"expected a PAM service name (or nothing), got {text!r}")
    return text


def _auto_yes_no(text: str) -> str:
    if text not in ("auto", "yes", "no"):
        raise BadValue(f"expected auto, yes or no, got {text!r}")
    return text


def _cgroup_path(text: str) -> str:
    """A group below the cgroup2 mount: a relative path of plain names."""
    parts = text.strip("/").split("/")
    if not text.strip("/") or any(p in ("", ".", "..") for p in parts):
        raise BadValue(f"expected a path below the cgroup2 mount like turnstiled, got {text!r}")
    return "/".join(parts)


def _names(text: str) -> tuple[str, ...]:
    """User names, separated by spaces or commas (nothing: none)."""
    return tuple(n for n in text.replace(",", " ").split() if n)


def _bus_address(text: str) -> str:
    # The form is D-Bus's (transport:key=value,...); the bus library checks
    # the rest when it connects.
    if text and ":" not in text:
        raise BadValue(f"expected a D-Bus address like unix:path=/run/dbus/system_bus_socket, "
                       f"got {text!r}")
    return text


def _size(text: str) -> str:
    """A tmpfs size: 0 (none), bytes with an optional k, m or g, or N% of RAM."""
    t = text.lower()
    number = t[:-1] if t[-1:] in ("k", "m", "g", "%") else t
    if not number.isascii() or not number.isdigit() or (t.endswith("%") and
                                                         not 0 < int(number) <= 100):
        raise BadValue(f"expected 0, a size like 64m, or a percentage of RAM like 10%, "
                       f"got {text!r}")
    return "0" if int(number) == 0 else t


def _rundir(text: str) -> str:
    _abspath(text)
    if "%u" not in text:
        raise BadValue(f"rundir_path must contain %u so every user gets their own, got {text!r}")
    return text


_PARSERS = {
    "debug": _bool,
    "debug_stderr": _bool,
    "backend": _name,
    "linger": _linger,
    "rundir_path": _rundir,
    "manage_rundir": _bool,
    "rundir_size": _size,
    "export_dbus_address": _bool,
    "login_timeout": _seconds,
    "root_session": _bool,
    "user_stop_delay": _seconds,
    "socket_path": _abspath,
    "admin_socket_path": _abspath,
    "state_dir": _abspath,
    "linger_dir": _abspath,
    "backend_dir": _abspath,
    "holder_path": _abspath,
    "spare_holder": _bool,
    "fdstore_path": _abspath,
    "adopt_timeout": _seconds,
    "pam_service": _pam_service,
    "pam_dir": _optional_abspath,
    "cgroups": _auto_yes_no,
    "cgroup_path": _cgroup_path,
    "kill_user_processes": _bool,
    "kill_exclude_users": _names,
    "login1": _auto_yes_no,
    "system_bus_address": _bus_address,
    "vt_active_path": _abspath,
    "vt_console_path": _abspath,
}


def parse(text: str, path: str) -> tuple[Config, list[Problem]]:
    """Parses config text; returns the config and every problem found."""
    values: dict[str, object] = {}
    problems: list[Problem] = []
    for lineno, raw in enumerate(text.splitlines(), 1):
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        key, sep, value = line.partition("=")
        key, value = key.strip(), value.strip()
        if not sep or not key:
            problems.append(Problem(path, lineno, f"expected 'key = value', got {line!r}"))
            continue
        parser = _PARSERS.get(key)
        if parser is None:
            problems.append(Problem(path, lineno, f"unknown key {key!r}, ignored"))
            continue
        try:
            values[key] = parser(value)
        except BadValue as err:
            problems.append(Problem(path, lineno, f"{key}: {err}; keeping the default"))
    return Config(path=path, **values), problems


def load(path: str) -> tuple[Config, list[Problem]]:
    """Reads the config file; a missing file means all defaults."""
    try:
        with open(path, encoding="utf-8", errors="surrogateescape") as f:
            text = f.read()
    except FileNotFoundError:
        return Config(path=path), []
    except OSError as err:
        return Config(path=path), [Problem(path, 0, f"cannot read: {err.strerror}")]
    return parse(text, path)

