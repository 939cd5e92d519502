"""cgroup v2: finding the hierarchy, and the few things done to a group.

Mechanism only: which groups exist and when anything is moved, signalled
or removed is decided in turnstiled/tracking.py. The layout under the
configured root (cgroup_path, relative to the cgroup2 mount):

    ROOT/user-UID/session-ID   one per session: its leader and all it starts
    ROOT/user-UID/manager      the user's service manager and its services

Only leaf groups hold processes and no controller is ever enabled, so the
"no internal processes" rule of cgroup v2 never applies.
"""

from __future__ import annotations

import errno
import os
import re
import signal
from dataclasses import dataclass

from .children import signal_pids

MOUNTINFO = "/proc/self/mountinfo"
_USER = re.compile(r"user-(\d+)")
_SESSION = re.compile(r"session-(\d+)")


def find_mount(mountinfo: str) -> str | None:
    """The mount point of the cgroup2 hierarchy in mountinfo's text (the
    first one; a unified or hybrid layout has one), or None."""
    for line in mountinfo.splitlines():
        fields = line.split()
        try:
            sep = fields.index("-")
        except ValueError:
            continue
        if len(fields) > sep + 1 and fields[sep + 1] == "cgroup2":
            # Octal escapes (\040 for a space) as the kernel writes them.
            return re.sub(r"\\([0-7]{3})", lambda m: chr(int(m.group(1), 8)), fields[4])
    return None


def read_mountinfo() -> str:
    with open(MOUNTINFO, encoding="utf-8", errors="surrogateescape") as f:
        return f.read()


@dataclass(frozen=True)
class Place:
    """What a group under the root stands for: a session or a manager."""
    uid: int
    session: str | None  # None: the user's manager


def place_of(relative: str) -> Place | None:
    """The session or manager a path below the root names (the path of a
    process's group, relative to the root; groups below it count), or None."""
    parts = relative.strip("/").split("/")
    user = _USER.fullmatch(parts[0])
    if user is None or len(parts) < 2:
        return None
    if parts[1] == "manager":
        return Place(int(user.group(1)), None)
    session = _SESSION.fullmatch(parts[1])
    if session is None:
        return None
    return Place(int(user.group(1)), str(int(session.group(1))))


class Hierarchy:
    """Our part of the cgroup2 tree: ROOT under the mount."""

    def __init__(self, mount: str, root: str) -> None:
        self.mount = mount
        self.root_rel = root.strip("/")
        self.root = os.path.join(mount, self.root_rel)

    def session_group(self, uid: int, sid: str) -> str:
        return os.path.join(self.root, f"user-{uid}", f"session-{sid}")

    def manager_group(self, uid: int) -> str:
        return os.path.join(self.root, f"user-{uid}", "manager")

    def place_of_pid(self, pid: int) -> Place | None:
        """Which session or manager pid belongs to, from /proc/PID/cgroup;
        None when it is in none of ours (or gone)."""
        group = group_of(pid)
        if group is None:
            return None
        prefix = "/" + self.root_rel + "/"
        if not group.startswith(prefix):
            return None
        return place_of(group[len(prefix):])

    def existing(self) -> list[tuple[Place, str]]:
        """Every session and manager group there is now, with its path."""
        out = []
        try:
            users = os.listdir(self.root)
        except FileNotFoundError:
            return out
        for user_dir in users:
            try:
                entries = os.listdir(os.path.join(self.root, user_dir))
            except (NotADirectoryError, FileNotFoundError):
                continue
            for entry in entries:
                place = place_of(f"{user_dir}/{entry}")
                if place is not None:
                    out.append((place, os.path.join(self.root, user_dir, entry)))
        return out


def group_of(pid: int) -> str | None:
    """pid's cgroup v2 path (the `0::` line of /proc/PID/cgroup), or None."""
    try:
        with open(f"/proc/{pid}/cgroup", encoding="utf-8", errors="surrogateescape") as f:
            for line in f:
                if line.startswith("0::"):
                    return line[3:].rstrip("\n")
    except OSError:
        pass
    return None


def make(path: str) -> None:
    """Makes the group (and its parents); an existing one is fine."""
    os.makedirs(path, mode=0o755, exist_ok=True)


def move(pid: int, path: str) -> None:
    """Moves pid (all its threads) into the group. OSError: ESRCH when it
    has exited meanwhile, others when the group is not ours to write."""
    with open(os.path.join(path, "cgroup.procs"), "w") as f:
        f.write(str(pid))


def populated(path: str) -> bool:
    """Whether the group or a group below it holds a process; a group that
    is not there holds none."""
    try:
        with open(os.path.join(path, "cgroup.events"), "rb") as f:
            return parse_populated(f.read())
    except FileNotFoundError:
        return False


def parse_populated(events: bytes) -> bool:
    for line in events.splitlines():
        if line.startswith(b"populated "):
            return line.split()[1] != b"0"
    return False


def procs(path: str) -> list[int]:
    """The pids in the group (not in the groups below it)."""
    try:
        with open(os.path.join(path, "cgroup.procs"), "rb") as f:
            return [int(p) for p in f.read().split()]
    except FileNotFoundError:
        return []


def has_kill_file(path: str) -> bool:
    return os.path.exists(os.path.join(path, "cgroup.kill"))


def kill_all(path: str) -> None:
    """SIGKILLs everything in the group at once through cgroup.kill (Linux
    5.14 and later: no process can fork its way out)."""
    try:
        with open(os.path.join(path, "cgroup.kill"), "w") as f:
            f.write("1")
    except FileNotFoundError:
        pass


def signal_all(path: str, sig: int) -> int:
    """Sends sig to every pid in the group; returns how many got it."""
    return signal_pids(set(procs(path)), sig)


def remove(path: str) -> bool:
    """Removes an empty group; False when it still has processes or groups
    below it (the kernel refuses) or is gone already."""
    try:
        os.rmdir(path)
        return True
    except OSError as err:
        if err.errno in (errno.EBUSY, errno.ENOTEMPTY, errno.ENOENT):
            return False
        raise


SIGNALS = {s.name: s for s in signal.Signals}


def parse_signal(text: str) -> int:
    """A signal by name (TERM, SIGTERM) or number; ValueError otherwise."""
    t = text.strip().upper()
    if t.isdigit():
        number = int(t)
        if 0 < number < signal.NSIG:
            return number
        raise ValueError(f"no such signal: {text}")
    sig = SIGNALS.get(t) or SIGNALS.get("SIG" + t)
    if sig is None:
        raise ValueError(f"no such signal: {text}")
    return int(sig)
