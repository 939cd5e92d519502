"""Which processes belong to a session, and to a user's manager.

With cgroup v2 (`cgroups = auto` finding a writable hierarchy, or `yes`),
every session's leader is moved into a group of its own when the session
registers, before its login program starts the user's shell, and each
user's manager is started inside another (turnstiled/cgroups.py has the
layout). A group holds everything its first process ever started, however
it forks, daemonises or setsids: so a session can outlive its PAM
connection (tmux, nohup) and end only when its last process does, can be
ended whole, and a pid's session is read from /proc/PID/cgroup.

The leader (login, sshd's session process: root's, not the user's) is
handed back to the group it came from when its connection closes or the
session is terminated: it is finishing its own logout (the PAM modules
after ours, utmp) and is never what keeps a session closing, nor killed
with what the user left.

Without (`cgroups = no`, or no writable hierarchy), `choose` returns a
tracking that keeps no groups: a session is its connection alone.

This module decides when groups are made, signalled and removed; the
registry decides why (turnstiled/registry.py).
"""

from __future__ import annotations

import logging
import os
import signal
from collections.abc import Callable
from dataclasses import dataclass

from . import cgroups
from .cgroups import Hierarchy, Place
from .config import Config
from .groupwatch import GroupWatch
from .loop import Timer, current

log = logging.getLogger("turnstiled")

# A group being ended gets SIGTERM, then SIGKILL after this long, where the
# kernel has no cgroup.kill.
TERM_BOUND = 5.0
# Between SIGKILL rounds, while a group is not yet empty.
KILL_RETRY = 0.1
# A group whose processes outlast this many seconds of killing (stuck in
# the kernel) is left to its watch: its session stays closing.
GIVE_UP = 60.0
# Set: end groups with signals even where cgroup.kill exists (the way
# older kernels take), so that way can be tested on a new kernel.
NO_KILL_FILE_ENV = "TURNSTILED_NO_CGROUP_KILL"


class Tracking:
    """No groups: sessions are their connections alone (as upstream
    turnstile). Also the interface of CgroupTracking."""

    mode = "none"

    def __init__(self, reason: str) -> None:
        # Why this mode is in force, for the log and `turnstilectl status`.
        self.reason = reason

    @property
    def tracking(self) -> bool:
        return self.mode != "none"

    def enter_session(self, uid: int, sid: str, leader: int) -> Group | None:
        return None

    def session_group(self, uid: int, sid: str, leader: int = 0,
                      origin: str = "") -> Group | None:
        return None

    def manager_group(self, uid: int, make: bool = True) -> Group | None:
        return None

    def place_of(self, pid: int) -> Place | None:
        return None

    def leftovers(self, known: set[str]) -> None:
        """Removes the empty groups no session or manager of ours holds."""

    def close(self) -> None:
        """Runs the loop (bounded) until the groups being ended are."""


class CgroupTracking(Tracking):
    mode = "cgroup"

    def __init__(self, tree: Hierarchy, reason: str, use_kill_file: bool = True,
                 term_bound: float = TERM_BOUND) -> None:
        super().__init__(reason)
        self.tree = tree
        # cgroup.kill where the kernel has it (5.14); else signals, pid by pid.
        self.use_kill_file = use_kill_file
        self.term_bound = term_bound
        self.watch = GroupWatch()
        self._ending: set[_Ending] = set()

    def enter_session(self, uid: int, sid: str, leader: int) -> Group | None:
        """Makes the session's group and moves its leader in. A leader we
        cannot move (gone already, another pid namespace) leaves an empty
        group, and the session is its connection alone."""
        group = Group(self, self.tree.session_group(uid, sid))
        try:
            cgroups.make(group.path)
        except OSError as err:
            log.error("cannot make the group of session %s: %s: %s", sid, group.path,
                      err.strerror)
            return None
        if leader <= 1 or leader == os.getpid():
            return group
        origin = cgroups.group_of(leader)
        try:
            # Held from before the move: a pid seen alive through it later
            # is still the leader's, never a reused number.
            pidfd = os.pidfd_open(leader)
        except OSError as err:
            log.warning("session %s: its leader (pid %d) is gone: %s", sid, leader, err.strerror)
            return group
        try:
            cgroups.move(leader, group.path)
        except OSError as err:
            os.close(pidfd)
            log.warning("cannot move the leader (pid %d) of session %s into %s: %s", leader,
                        sid, group.path, err.strerror)
            return group
        group.leader = Leader(leader, pidfd, self._absolute(origin))
        return group

    def session_group(self, uid: int, sid: str, leader: int = 0,
                      origin: str = "") -> Group | None:
        """An existing session group (a previous daemon's), or None; its
        leader is known again if it is still in it (origin: where it came
        from, as Group.leader_origin said)."""
        group = Group(self, self.tree.session_group(uid, sid))
        if not os.path.isdir(group.path):
            return None
        if leader > 1 and origin:
            try:
                pidfd = os.pidfd_open(leader)
            except OSError:
                return group
            if self._absolute(cgroups.group_of(leader)) == group.path:
                group.leader = Leader(leader, pidfd, origin)
            else:
                os.close(pidfd)
        return group

    def _absolute(self, group: str | None) -> str:
        """A path from /proc/PID/cgroup as a directory; the mount's root
        when unknown."""
        return os.path.join(self.tree.mount, (group or "/").lstrip("/")).rstrip("/")

    def manager_group(self, uid: int, make: bool = True) -> Group | None:
        """The group a manager is started in (made if make), or None."""
        group = Group(self, self.tree.manager_group(uid))
        if not make:
            return group if os.path.isdir(group.path) else None
        try:
            cgroups.make(group.path)
        except OSError as err:
            log.error("cannot make the manager group %s: %s; the manager runs outside",
                      group.path, err.strerror)
            return None
        return group

    def place_of(self, pid: int) -> Place | None:
        return self.tree.place_of_pid(pid)

    def leftovers(self, known: set[str]) -> None:
        for place, path in self.tree.existing():
            if path in known:
                continue
            if cgroups.populated(path):
                what = (f"session {place.session}" if place.session is not None
                        else "manager")
                log.warning("group %s (uid %d's %s) has processes but no session or manager "
                            "of ours: left alone", path, place.uid, what)
            else:
                Group(self, path).release()

    def end(self, group: Group, timeout: float = GIVE_UP,
            then: Callable[[bool], object] | None = None) -> None:
        """Ends everything in the group, in the background; then(empty) once
        it is empty (True) or timeout seconds have passed (False)."""
        if then is None:
            def then(empty: bool) -> None:
                if not empty:
                    log.error("processes of %s survive %g s of SIGKILL: given up on them",
                              group.path, timeout)
        _Ending(self, group, timeout, then).start()

    def close(self) -> None:
        if self._ending:
            current().run(until=lambda: not self._ending, timeout=self.term_bound + 1)
        self.watch.close()
        try:
            cgroups.remove(self.tree.root)  # only if no group is left in it
        except OSError as err:
            log.warning("cannot remove %s: %s", self.tree.root, err.strerror)


class _Ending:
    """One group being ended. With cgroup.kill: killed, and killed again
    each second while it is not empty (a fork can race the first kill).
    Without: SIGTERM, term_bound seconds for it to empty, then SIGKILL
    rounds each KILL_RETRY, each catching what forked meanwhile; the round
    after the last process went finds the group empty."""

    def __init__(self, tracking: CgroupTracking, group: Group, timeout: float,
                 then: Callable[[bool], object]) -> None:
        self.tracking = tracking
        self.group = group
        self.then: Callable[[bool], object] | None = then
        self._deadline = current().call_later(timeout, self._finish, False)
        self._wait: Timer | None = None

    def start(self) -> None:
        """Begins on the loop's next turn, so then() never runs inside end()."""
        self.tracking._ending.add(self)
        current().call_soon(self._first_round)

    def _first_round(self) -> None:
        if self.then is None:
            return  # timed out already
        path = self.group.path
        if self.tracking.use_kill_file and cgroups.has_kill_file(path):
            self._kill_round()
            return
        cgroups.signal_all(path, signal.SIGTERM)
        self._wait_empty(self.tracking.term_bound, self._sigkill_round)

    def _kill_round(self) -> None:
        if not self.group.populated():
            self._finish(True)
            return
        cgroups.kill_all(self.group.path)
        self._wait_empty(1.0, self._kill_round)

    def _sigkill_round(self) -> None:
        if not cgroups.signal_all(self.group.path, signal.SIGKILL):
            self._finish(True)
            return
        self._wait_empty(KILL_RETRY, self._sigkill_round)

    def _wait_empty(self, seconds: float, otherwise: Callable[[], None]) -> None:
        """_finish(True) when the group empties within seconds, else otherwise()."""
        self.tracking.watch.watch(self.group.path, self._emptied)
        self._wait = current().call_later(seconds, self._waited, otherwise)

    def _waited(self, otherwise: Callable[[], None]) -> None:
        self._wait = None
        self.tracking.watch.unwatch(self.group.path, self._emptied)
        otherwise()

    def _emptied(self) -> None:
        self._finish(True)

    def _finish(self, empty: bool) -> None:
        then, self.then = self.then, None
        if then is None:
            return  # finished already
        self._deadline.cancel()
        if self._wait is not None:
            self._wait.cancel()
            self._wait = None
        self.tracking.watch.unwatch(self.group.path, self._emptied)
        self.tracking._ending.discard(self)
        then(empty)


@dataclass
class Leader:
    """A session's leader while it is in the session's group."""
    pid: int
    pidfd: int
    origin: str  # the group it came from


class Group:
    """One session's or manager's group."""

    def __init__(self, tracking: CgroupTracking, path: str) -> None:
        self.tracking = tracking
        self.path = path
        self.leader: Leader | None = None

    @property
    def leader_origin(self) -> str:
        """Where the leader goes back to ("" once it has, or without one)."""
        return self.leader.origin if self.leader is not None else ""

    def let_leader_go(self) -> None:
        """Moves the session's leader back to the group it came from (or,
        should that be gone, the mount's root): its connection is over."""
        leader, self.leader = self.leader, None
        if leader is None:
            return
        try:
            signal.pidfd_send_signal(leader.pidfd, 0)
            if cgroups.group_of(leader.pid) != "/" + os.path.relpath(
                    self.path, self.tracking.tree.mount):
                return  # moved on by someone else (a nested login)
            for place in (leader.origin, self.tracking.tree.mount):
                try:
                    cgroups.move(leader.pid, place)
                    return
                except FileNotFoundError:
                    continue
        except ProcessLookupError:
            pass  # it has exited: nothing to move
        except OSError as err:
            log.warning("cannot move the leader (pid %d) out of %s: %s", leader.pid, self.path,
                        err.strerror)
        finally:
            os.close(leader.pidfd)

    def populated(self) -> bool:
        return cgroups.populated(self.path)

    def on_empty(self, call) -> None:
        """call() once the group is (or becomes) empty."""
        self.tracking.watch.watch(self.path, call)

    def end(self, timeout: float = GIVE_UP,
            then: Callable[[bool], object] | None = None) -> None:
        """Kills everything in it (cgroup.kill, else TERM and then KILL),
        in the background; on_empty hears when it is done, and then(empty)
        too (False: not empty after timeout seconds)."""
        self.tracking.end(self, timeout, then)

    def signal(self, sig: int) -> int:
        """Sends sig to every process in it; how many got it."""
        return cgroups.signal_all(self.path, sig)

    def release(self) -> None:
        """Stops watching it and removes it (and the user's group, once
        empty) if nothing is in it; a group that still has processes stays
        and is found again by a next daemon."""
        if self.leader is not None:
            os.close(self.leader.pidfd)
            self.leader = None
        self.tracking.watch.unwatch(self.path)
        try:
            if cgroups.remove(self.path):
                cgroups.remove(os.path.dirname(self.path))
        except OSError as err:
            log.warning("cannot remove the group %s: %s", self.path, err.strerror)


def choose(config: Config, mountinfo: str | None = None) -> Tracking:
    """The tracking config.cgroups asks for and the machine allows; why is
    in its reason."""
    if config.cgroups == "no":
        return Tracking("turned off (cgroups = no)")
    try:
        mount = cgroups.find_mount(mountinfo if mountinfo is not None
                                   else cgroups.read_mountinfo())
    except OSError as err:
        mount, problem = None, f"cannot read {cgroups.MOUNTINFO}: {err.strerror}"
    else:
        problem = "no cgroup2 hierarchy is mounted"
    if mount is not None:
        tree = Hierarchy(mount, config.cgroup_path)
        try:
            cgroups.make(tree.root)
            if not os.access(os.path.join(tree.root, "cgroup.procs"), os.W_OK):
                raise PermissionError(13, "cgroup.procs is not writable")
        except OSError as err:
            problem = f"cannot use {tree.root}: {err.strerror}"
        else:
            return CgroupTracking(tree, f"cgroup2 at {mount}, groups in {tree.root}",
                                  use_kill_file=not os.environ.get(NO_KILL_FILE_ENV))
    if config.cgroups == "yes":
        log.error("cgroups = yes, but %s: sessions are tracked by their connections alone",
                  problem)
    return Tracking(f"{problem} (cgroups = {config.cgroups})")
