"""The daemon's side of the channel to a holder (holder/turnstiled-holder.c
holds the contract): a SOCK_SEQPACKET socketpair, one packet per message,
NUL-separated fields, the verb first. A packet boundary cannot be forged
from inside a field, so a readiness string a user wrote never becomes a
second command."""

from __future__ import annotations

import os

from .config import Config
from .users import User

# The channel's version: raised with any change to the packets either side
# sends. A daemon records it with each manager it starts (the holder it
# spawns speaks it) so that a next daemon, maybe of another version, can
# tell a holder it cannot talk to (turnstiled/handover.py).
VERSION = 1
MAX_PACKET = 16384
# Events a holder sends, with how many fields each carries.
EVENTS = {"pid": 1, "up": 1, "ready-exit": 1, "exit": 1, "error": 1, "gone": 0}


class LinkError(Exception):
    """A packet from a holder that does not follow the contract."""


def encode(verb: str, *fields: str) -> bytes:
    packet = "\0".join((verb, *fields)).encode(errors="surrogateescape")
    if len(packet) > MAX_PACKET:
        raise LinkError(f"{verb}: packet of {len(packet)} bytes is over {MAX_PACKET}")
    return packet


def command_args(config: Config) -> list[str]:
    """The holder's arguments: the PAM stack it loads while it waits."""
    return [config.pam_service, config.pam_dir] if config.pam_service else []


def spare_stamp(config: Config) -> object:
    """What changes when a spare holder may no longer be what a holder
    started now would be: the holder program itself (an upgrade replaces
    it), and the manager's PAM stack, seen in the times of the service
    file and its directory (an editor that renames into place, a package
    that adds a file, changes the directory's). A spare started under
    another stamp is not used."""
    directory = config.pam_dir or "/etc/pam.d"
    stamp = []
    for path in (config.holder_path, directory,
                 os.path.join(directory, config.pam_service)):
        try:
            st = os.stat(path)
        except OSError:
            stamp.append(None)
        else:
            stamp.append((st.st_ino, st.st_mtime_ns))
    return tuple(stamp)


def start_packet(user: User, rundir: str, backend: str, fifo: str, srvdir: str,
                 confdir: str, pam_service: str, pam_dir: str, stop_timeout: float,
                 nofile: int, cgroup: str = "") -> bytes:
    spec = {
        "uid": user.uid, "gid": user.gid, "groups": ",".join(map(str, user.groups)),
        "user": user.name, "home": user.home, "shell": user.shell, "rundir": rundir,
        "backend": backend, "fifo": fifo, "srvdir": srvdir, "confdir": confdir,
        "pam_service": pam_service, "pam_dir": pam_dir,
        "stop_timeout": int(stop_timeout * 1000), "nofile": max(nofile, 0),
        "cgroup": cgroup,
    }
    for key, value in spec.items():
        if "\0" in str(value):
            raise LinkError(f"start: {key} contains a NUL byte")
    return encode("start", *(f"{k}={v}" for k, v in spec.items()))


def decode(packet: bytes) -> tuple[str, list[str]]:
    """(verb, fields) of one event; LinkError when it is not one."""
    verb, *fields = packet.decode(errors="replace").split("\0")
    want = EVENTS.get(verb)
    if want is None:
        raise LinkError(f"unknown event {verb[:40]!r}")
    if len(fields) != want:
        raise LinkError(f"{verb}: {len(fields)} fields, expected {want}")
    if verb in ("pid", "ready-exit", "exit") and not (fields[0].isascii()
                                                   and fields[0].isdigit()):
        raise LinkError(f"{verb}: not a number: {fields[0][:40]!r}")
    return verb, fields
