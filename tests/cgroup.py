"""The real cgroup v2 hierarchy for tests: where it is, a group tree of the
test's own (never a real daemon's, never another test's), and how to look
at and clean up what is in it.

Found through /proc/self/mountinfo, as the daemon does, but by code of its
own: a bug shared by the daemon and this would otherwise go unseen.
"""

from __future__ import annotations

import os
import secrets
import signal
import time
from pathlib import Path

import pytest
from helpers import mounts


def mount_point() -> str | None:
    """The cgroup2 mount, or None."""
    for fields in mounts():
        if "-" in fields:
            sep = fields.index("-")
            if fields[sep + 1] == "cgroup2":
                return fields[4]
    return None


def writable_mount() -> Path:
    """The cgroup2 mount if groups can be made and processes moved there;
    skips the test (with why) otherwise."""
    mount = mount_point()
    if mount is None:
        pytest.skip("no cgroup2 hierarchy is mounted here")
    if os.geteuid() != 0:
        pytest.skip("needs root to make cgroups")
    probe = Path(mount) / f"turnstiled-probe-{secrets.token_hex(4)}"
    try:
        probe.mkdir()
    except OSError as err:
        pytest.skip(f"cannot make a group under the cgroup2 mount {mount}: {err.strerror}")
    try:
        if not os.access(probe / "cgroup.procs", os.W_OK):
            pytest.skip(f"{probe}/cgroup.procs is not writable")
    finally:
        probe.rmdir()
    return Path(mount)


def group_of(pid: int) -> str | None:
    """pid's cgroup v2 path, relative to the mount; None once it is gone."""
    try:
        for line in Path(f"/proc/{pid}/cgroup").read_text().splitlines():
            if line.startswith("0::"):
                return line[3:]
    except OSError:
        return None
    return None


def procs(group: Path) -> list[int]:
    try:
        return [int(p) for p in (group / "cgroup.procs").read_text().split()]
    except FileNotFoundError:
        return []


def populated(group: Path) -> bool:
    try:
        return "populated 1" in (group / "cgroup.events").read_text()
    except FileNotFoundError:
        return False


def tree(root: Path) -> list[str]:
    """Every group below root, relative, sorted; [] if root is gone."""
    if not root.exists():
        return []
    return sorted(str(Path(d).relative_to(root)) for d, _, _ in os.walk(root) if Path(d) != root)


class CgroupTree:
    """A group tree of one test's own under the mount: its name is the
    daemon's cgroup_path. Cleaned up at the end, processes and all."""

    def __init__(self, mount: Path) -> None:
        self.mount = mount
        self.name = f"turnstiled-test-{secrets.token_hex(4)}"
        self.root = mount / self.name

    def session(self, uid: int, sid: str) -> Path:
        return self.root / f"user-{uid}" / f"session-{sid}"

    def manager(self, uid: int) -> Path:
        return self.root / f"user-{uid}" / "manager"

    def rel(self, group: Path) -> str:
        """group as /proc/PID/cgroup names it."""
        return "/" + str(group.relative_to(self.mount))

    def tree(self, root: Path) -> list[str]:
        return tree(root)

    def clean(self, timeout: float = 10.0) -> None:
        """Kills what is left in the tree and removes it."""
        deadline = time.monotonic() + timeout
        while self.root.exists() and time.monotonic() < deadline:
            for d, _, _ in os.walk(self.root, topdown=False):
                for pid in procs(Path(d)):
                    try:
                        os.kill(pid, signal.SIGKILL)
                    except ProcessLookupError:
                        pass
                try:
                    os.rmdir(d)
                except OSError:
                    pass
            time.sleep(0.05)
