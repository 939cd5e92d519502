"""The daemon's children: one holder per running manager, and the remains of
a holder that died.

The daemon is a child subreaper. While a holder lives, whatever its manager
leaves behind is re-parented to the holder (a subreaper too); only when a
holder itself dies (the OOM killer, a stray kill -9) do its manager and
services come to us. So every child of the daemon that is not a live holder
is the remains of a dead holder's manager, and is killed: a manager must
never outlive its holder, nor run beside its successor.

One SIGCHLD handler on the loop reaps every child; holders' exits go to
whoever spawned them.

A spare holder. A holder takes milliseconds to become useful: its exec and
libraries, and the PAM stack of the manager's session (pam_start loads
every module of the service). So the daemon keeps one holder started and
waiting, its stack loaded (turnstiled-holder loads the one named on its
command line before its start message comes), and a cold login takes it
instead of starting one: that time is off the login's path. A new spare
is started a moment after one is taken, away from the login in progress.
A spare is used only while its stamp (the times of the holder program and
of the PAM files) is unchanged: one started before an upgrade of the
holder or an edit of the stack is let go, and the login starts a holder
afresh.
"""

from __future__ import annotations

import logging
import os
import signal
import socket
import time
from collections.abc import Callable, Sequence

from . import libc
from .loop import Loop, Timer, current

log = logging.getLogger("turnstiled")

# Signals Python ignores that a spawned program must not inherit ignored.
_RESET_SIGNALS = (signal.SIGPIPE, signal.SIGXFSZ)
# How long after a spare is taken the next one starts: after the login
# that took it has gone on (its holder's exec and PAM session, its run).
SPARE_DELAY = 0.25


def wait_status(status: int) -> int:
    """A shell-style exit status: the exit code, or 128 + the signal."""
    code = os.waitstatus_to_exitcode(status)
    return code if code >= 0 else 128 - code


def _stat(pid: str | int) -> list[bytes] | None:
    """/proc/PID/stat after the command name: state, ppid, pgrp, session, ...;
    None once the process is gone."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            stat = f.read()
    except OSError:
        return None
    return stat[stat.rfind(b")") + 2:].split()


def _state_and_ppid(pid: str | int) -> tuple[bytes, int] | None:
    """A process's state letter and parent; None once it is gone."""
    fields = _stat(pid)
    return None if fields is None else (fields[0], int(fields[1]))


def _ppids() -> dict[int, list[int]]:
    """Every live process's children, from /proc."""
    children: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        found = _state_and_ppid(entry) if entry.isdigit() else None
        if found is not None and found[0] != b"Z":
            children.setdefault(found[1], []).append(int(entry))
    return children


def _trees(roots: list[int], children: dict[int, list[int]]) -> set[int]:
    found, todo = set(roots), list(roots)
    while todo:
        for child in children.get(todo.pop(), []):
            if child not in found:
                found.add(child)
                todo.append(child)
    return found


def parent_of(pid: int) -> int | None:
    """A live process's parent pid; None once it is gone (or a zombie)."""
    found = _state_and_ppid(pid)
    return None if found is None or found[0] == b"Z" else found[1]


def process_trees(roots: list[int]) -> set[int]:
    """The live processes among roots and everything below them."""
    children = _ppids()
    return {p for p in _trees(roots, children) if _alive(p)}


def uid_of(pid: int) -> int | None:
    """The uid a process runs as; None once it is gone."""
    try:
        return os.stat(f"/proc/{pid}").st_uid
    except OSError:
        return None


def signal_pids(pids: set[int], sig: int) -> int:
    """Sends sig to each of pids (never to init or to us); how many got it."""
    sent = 0
    for pid in pids:
        if pid <= 1 or pid == os.getpid():
            continue
        try:
            os.kill(pid, sig)
            sent += 1
        except (ProcessLookupError, PermissionError):
            pass
    return sent


def kill_orphans(keep: set[int], deadline: float) -> int:
    """SIGKILLs every process below the daemon that is not below a pid in
    keep (the live holders); returns how many."""
    me = os.getpid()

    def orphans() -> set[int]:
        children = _ppids()
        return _trees([p for p in children.get(me, []) if p not in keep], children)

    killed = _stop_then_kill(orphans, deadline)
    # Gone means dead: a zombie (ours to reap) no longer holds anything.
    while time.monotonic() < deadline and any(_alive(pid) for pid in killed):
        time.sleep(0.005)
    return len(killed)


def kill_session(sid: int, deadline: float) -> int:
    """SIGKILLs every process in session sid; returns how many."""
    return len(_stop_then_kill(
        lambda: {int(e) for e in os.listdir("/proc") if e.isdigit() and _session_of(e) == sid},
        deadline))


def _stop_then_kill(members: Callable[[], set[int]], deadline: float) -> set[int]:
    """SIGSTOPs what members() finds until it finds nothing new, so nothing
    forks its way out while we look; then SIGKILLs all of it."""
    stopped: set[int] = set()
    while time.monotonic() < deadline:
        found = members() - stopped
        if not found:
            break
        for pid in found:
            _signal(pid, signal.SIGSTOP)
        stopped |= found
    for pid in stopped:
        _signal(pid, signal.SIGKILL)
        _signal(pid, signal.SIGCONT)
    return stopped


def _session_of(pid: str) -> int | None:
    fields = _stat(pid)
    return None if fields is None else int(fields[3])


def _alive(pid: int) -> bool:
    found = _state_and_ppid(pid)
    return found is not None and found[0] != b"Z"


def _signal(pid: int, sig: int) -> None:
    try:
        os.kill(pid, sig)
    except ProcessLookupError:
        pass


class _Spare:
    """A holder started ahead: what it runs and the stamp it was made under."""

    def __init__(self, pid: int, sock: socket.socket, command: tuple[str, ...],
                 stamp: object) -> None:
        self.pid, self.sock, self.command, self.stamp = pid, sock, command, stamp


class Children:
    """Spawns holders and reaps every child of the daemon."""

    def __init__(self) -> None:
        self._exits: dict[int, Callable[[int], None]] = {}
        self._spare: _Spare | None = None
        # What keep_spare asked for: the command and its stamp's source.
        self._spare_wanted: tuple[tuple[str, ...], Callable[[], object]] | None = None
        self._spare_timer: Timer | None = None

    def attach(self, loop: Loop) -> None:
        libc.set_child_subreaper()
        loop.add_signal_handler(signal.SIGCHLD, self.reap)

    def spawn(self, path: str, channel: int, on_exit: Callable[[int], None],
              args: Sequence[str] = ()) -> int:
        """Starts path with channel as its fd 3, stdin /dev/null, our stderr
        as its stdout and stderr, in a session of its own."""
        if channel == 3:  # dup2(3, 3) would leave close-on-exec set
            moved = os.dup(channel)
            try:
                return self.spawn(path, moved, on_exit, args)
            finally:
                os.close(moved)
        pid = os.posix_spawn(
            path, [path, *args], {"PATH": "/usr/sbin:/usr/bin:/sbin:/bin"},
            file_actions=[(os.POSIX_SPAWN_OPEN, 0, "/dev/null", os.O_RDONLY, 0),
                          (os.POSIX_SPAWN_DUP2, 2, 1),
                          (os.POSIX_SPAWN_DUP2, channel, 3)],
            setsid=True, setsigdef=_RESET_SIGNALS)
        self._exits[pid] = on_exit
        return pid

    def holder(self, path: str, args: Sequence[str],
               on_exit: Callable[[int], None]) -> tuple[int, socket.socket]:
        """A holder running path with args, and our end of its channel: the
        spare, if it runs the same and its stamp still holds, else one
        started now. OSError if none can be started."""
        command = (path, *args)
        spare, self._spare = self._spare, None
        self._spare_soon()
        if spare is not None:
            if spare.command == command and spare.stamp == self._stamp():
                self._exits[spare.pid] = on_exit
                return spare.pid, spare.sock
            log.debug("spare holder %d let go: its program or PAM stack changed", spare.pid)
            spare.sock.close()  # it exits
        return self._spawn_with_channel(path, args, on_exit)

    def _spawn_with_channel(self, path: str, args: Sequence[str],
                            on_exit: Callable[[int], None]) -> tuple[int, socket.socket]:
        ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        try:
            pid = self.spawn(path, theirs.fileno(), on_exit, args)
        except OSError:
            ours.close()
            raise
        finally:
            theirs.close()
        return pid, ours

    def keep_spare(self, path: str, args: Sequence[str], stamp: Callable[[], object]) -> None:
        """From now on keep one holder (path args) started ahead of the next
        holder(); stamp() is taken when it starts and must be the same when
        it is used."""
        self._spare_wanted = ((path, *args), stamp)
        self._start_spare()

    def drop_spare(self) -> None:
        """No spare any more (the daemon is on its way out): the one there
        sees its channel end and exits."""
        self._spare_wanted = None
        if self._spare_timer is not None:
            self._spare_timer.cancel()
            self._spare_timer = None
        spare, self._spare = self._spare, None
        if spare is not None:
            spare.sock.close()

    def _stamp(self) -> object:
        return self._spare_wanted[1]() if self._spare_wanted is not None else None

    def _spare_soon(self) -> None:
        if self._spare_wanted is not None and self._spare_timer is None:
            self._spare_timer = current().call_later(SPARE_DELAY, self._start_spare)

    def _start_spare(self) -> None:
        self._spare_timer = None
        if self._spare is not None or self._spare_wanted is None:
            return
        command = self._spare_wanted[0]
        stamp = self._stamp()
        try:
            pid, ours = self._spawn_with_channel(command[0], command[1:], lambda status: None)
        except OSError as err:
            # Not again until a holder is asked for: that one will fail
            # too, and say why where it matters.
            log.debug("cannot start a spare holder: %s", err)
            return
        # Its exit handler needs its pid, known only now.
        self._exits[pid] = lambda status: self._spare_exited(pid, status)
        self._spare = _Spare(pid, ours, command, stamp)

    def _spare_exited(self, pid: int, status: int) -> None:
        # Killed while it waited (a stray kill): started again when the next
        # holder is taken, not in a loop.
        if self._spare is not None and self._spare.pid == pid:
            log.debug("spare holder %d exited with status %d", pid, status)
            self._spare.sock.close()
            self._spare = None

    def reap(self) -> None:
        orphans_died = False
        while True:
            try:
                pid, status = os.waitpid(-1, os.WNOHANG)
            except ChildProcessError:
                break
            if pid == 0:
                break
            on_exit = self._exits.pop(pid, None)
            if on_exit is None:
                orphans_died = True
                continue
            on_exit(wait_status(status))
        if orphans_died:
            log.debug("reaped what a dead holder left behind")

    def kill_orphans(self, done: Callable[[int | None], object], timeout: float = 5.0) -> None:
        """Kills the remains of dead holders (in a thread: it walks /proc);
        done(how many) on the loop, None if the walk failed."""
        keep = set(self._exits)
        deadline = time.monotonic() + timeout
        current().in_thread(kill_orphans, keep, deadline, done=done)

    def kill_session(self, sid: int, done: Callable[[int | None], object],
                     timeout: float = 5.0) -> None:
        """Kills what is left of an adopted holder's manager (in a thread);
        done(how many) on the loop."""
        if sid <= 1:
            current().call_soon(done, 0)
            return
        current().in_thread(kill_session, sid, time.monotonic() + timeout, done=done)
