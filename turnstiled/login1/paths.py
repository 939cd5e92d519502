"""Object paths as logind names them.

    /org/freedesktop/login1                 the Manager
    /org/freedesktop/login1/session/LABEL   a Session, LABEL its escaped id
    /org/freedesktop/login1/user/_UID       a User (the uid in decimal)
    /org/freedesktop/login1/seat/LABEL      a Seat, LABEL its escaped id

A label is escaped as sd-bus escapes one: ASCII letters stay, so do digits
except in the first place; every other byte becomes `_` and two lower-case
hex digits; the empty string is `_` alone. So session 1 is `_31` and seat0
is `seat0`. The names self and auto (session/self, seat/auto, user/self)
stand for the caller's own, resolved per call.
"""

from __future__ import annotations

ROOT = "/org/freedesktop/login1"
SESSION = ROOT + "/session"
USER = ROOT + "/user"
SEAT = ROOT + "/seat"
_HEX = "0123456789abcdef"


def escape(label: str) -> str:
    if not label:
        return "_"
    out = []
    for i, byte in enumerate(label.encode("utf-8", "surrogateescape")):
        ch = chr(byte)
        if ch.isascii() and (ch.isalpha() or (i > 0 and ch.isdigit())):
            out.append(ch)
        else:
            out.append("_" + _HEX[byte >> 4] + _HEX[byte & 15])
    return "".join(out)


def unescape(label: str) -> str | None:
    """The label escape() made, or None for one it cannot have made."""
    if label == "_":
        return ""
    out = bytearray()
    i = 0
    while i < len(label):
        ch = label[i]
        if ch == "_":
            pair = label[i + 1:i + 3]
            if len(pair) != 2 or any(c not in _HEX for c in pair):
                return None
            out.append(int(pair, 16))
            i += 3
        elif ch.isascii() and ch.isalnum():
            out.append(ord(ch))
            i += 1
        else:
            return None
    return out.decode("utf-8", "surrogateescape")


def session_path(session_id: str) -> str:
    return f"{SESSION}/{escape(session_id)}"


def user_path(uid: int) -> str:
    return f"{USER}/_{uid}"


def seat_path(seat_id: str) -> str:
    return f"{SEAT}/{escape(seat_id)}"


def parse(path: str) -> tuple[str, str] | None:
    """("manager", ""), ("session", id), ("user", uid text or self/auto) or
    ("seat", id) for a path of ours; None for any other path."""
    if path == ROOT:
        return ("manager", "")
    for kind, prefix in (("session", SESSION), ("seat", SEAT)):
        if path.startswith(prefix + "/"):
            name = unescape(path[len(prefix) + 1:])
            return None if name is None or "/" in name else (kind, name)
    if path.startswith(USER + "/"):
        rest = path[len(USER) + 1:]
        if rest in ("self", "auto"):
            return ("user", rest)
        if rest.startswith("_") and rest[1:].isascii() and rest[1:].isdigit():
            return ("user", rest[1:])
    return None
