"""Password database lookups, done once per Login, and who may act for whom."""

from __future__ import annotations

import os
import pwd
from dataclasses import dataclass


@dataclass(frozen=True)
class User:
    name: str
    uid: int
    gid: int
    home: str
    shell: str
    groups: tuple[int, ...]


def lookup_uid(uid: int) -> User | None:
    """The user with this uid, or None when the password database has none."""
    try:
        pw = pwd.getpwuid(uid)
    except KeyError:
        return None
    return _from_pw(pw)


def lookup_name(name: str) -> User | None:
    try:
        pw = pwd.getpwnam(name)
    except KeyError:
        return None
    return _from_pw(pw)


def _from_pw(pw: pwd.struct_passwd) -> User:
    try:
        groups = tuple(os.getgrouplist(pw.pw_name, pw.pw_gid))
    except OSError:
        groups = (pw.pw_gid,)
    return User(pw.pw_name, pw.pw_uid, pw.pw_gid, pw.pw_dir or "/", pw.pw_shell or "/bin/sh",
                groups)


def may_act_for(peer_uid: int, owner_uid: int) -> bool:
    """Whether a peer (known from SO_PEERCRED, never from what it says) may
    change what belongs to owner_uid: end their sessions, set their linger.
    Root may; so may the owner."""
    return peer_uid in (0, owner_uid)
