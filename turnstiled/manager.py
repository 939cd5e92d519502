"""The manager supervisor: starts, readies and stops one user's service
manager through its holder (holder/turnstiled-holder, a small C program
that opens the manager's PAM session and runs the backend as the user), and
owns the login timeout. It reports to its owner, the registry, through
ManagerEvents.

Every wait is an event on the loop: the readiness fifo and the holder's
channel are readers, the holder's exit a SIGCHLD, the timeout a timer.

A run outlives a daemon restart: `snapshot()` is what the next daemon needs
(kept in the fd store with the channel and the fifo, see
turnstiled/handover.py) and `Manager.adopt` takes the run up again. An
adopted holder is not our child: its end is seen as the channel's.
"""

from __future__ import annotations

import enum
import logging
import os
import signal
import socket
import time
from contextlib import AbstractContextManager
from dataclasses import dataclass, field

from . import holderlink
from .children import Children
from .config import Config
from .loop import current
from .rundir import remove as remove_tree
from .rundir import retire
from .text import escape
from .users import User

TYPE_CHECKING = False  # not typing's (see turnstiled/__init__.py)
if TYPE_CHECKING:
    from typing import Protocol

    from .loop import Timer
    from .tracking import Group

log = logging.getLogger("turnstiled")

# How long the backend's `stop` may take before the holder kills what is left.
STOP_TIMEOUT = 10.0
# Longest readiness string accepted from the fifo (a path, as upstream).
MAX_READY = 4096
# Most core services a start reports (names come from the user's own config).
MAX_SERVICES = 256


@dataclass
class ReadyReport:
    """How long a start waited, and for which core services."""
    waited_ms: float
    services: list[tuple[str, float]] = field(default_factory=list)


class ManagerPhase(enum.StrEnum):
    """Where one run of a manager is. It only moves forward: starting ->
    ready -> stopping -> gone, skipping any (a failed start stops; a holder
    that cannot be spawned is gone at once)."""
    STARTING = "starting"
    READY = "ready"
    STOPPING = "stopping"
    GONE = "gone"


if TYPE_CHECKING:
    class ManagerEvents(Protocol):
        """What the owner (the registry) hears, and the one thing it does for a
        manager: removing its retired state dir where shutdown waits for it."""
        def remove_in_background(self, path: str) -> None: ...
        # The events reported inside are heard as one.
        def batch(self) -> AbstractContextManager[None]: ...
        def manager_progressed(self, manager: Manager) -> None: ...
        def manager_ready(self, manager: Manager, report: ReadyReport) -> None: ...
        def manager_failed(self, manager: Manager, reason: str) -> None: ...
        def manager_gone(self, manager: Manager, status: int | None) -> None: ...


class Manager:
    """One run of one user's service manager, from start to gone."""

    def __init__(self, config: Config, user: User, rundir: str, events: ManagerEvents,
                 children: Children, nofile: int) -> None:
        self.config, self.user, self.rundir, self.events = config, user, rundir, events
        self.children, self.nofile = children, nofile
        self.backend = os.path.join(config.backend_dir, config.backend)
        self.pid: int | None = None
        self.since = time.time()
        self.phase = ManagerPhase.STARTING
        self._t0 = time.monotonic()
        self._services: list[tuple[str, float]] = []
        self._holder_pid: int | None = None
        self._channel: socket.socket | None = None
        self._holder_done = False  # it said `gone`: nothing of the manager remains
        # The channel version its holder speaks: ours, for one we spawn.
        self._link = holderlink.VERSION
        self._status: int | None = None
        self._fifo_fd: int | None = None
        self._ready_buf = b""
        self._timer: Timer | None = None
        self._dir = os.path.join(config.state_dir, "managers", str(user.uid))
        # Taken over from a previous daemon: the holder is not our child.
        self._adopted = False
        self._let_go = False
        self._ready_sent = False
        # The manager's session id (its pid: run calls setsid), for as long
        # as anything of it may be left.
        self._sid: int | None = None
        # The cgroup the holder starts run, ready and stop in (set by the
        # owner before start; None: none). The run is over only once it
        # is empty.
        self.group: Group | None = None

    # -- across a daemon restart

    def snapshot(self) -> dict:
        """What a next daemon needs to take this run up (JSON-able)."""
        return {
            "holder_pid": self._holder_pid, "pid": self.pid, "sid": self._sid,
            "since": self.since,
            "phase": self.phase.value, "services": list(self._services),
            "ready_sent": self._ready_sent, "status": self._status,
            "holder_done": self._holder_done, "link": self._link,
        }

    def let_go(self) -> None:
        """This daemon is exiting and another takes the run up: stop
        watching and timing it, send it nothing (the fd store keeps the
        channel and the fifo open)."""
        self._let_go = True
        self._cancel_timer()
        loop = current()
        if self._fifo_fd is not None:
            loop.remove_reader(self._fifo_fd)
        if self._channel is not None:
            loop.remove_reader(self._channel.fileno())

    @property
    def channel_fd(self) -> int | None:
        return self._channel.fileno() if self._channel is not None else None

    @property
    def fifo_fd(self) -> int | None:
        return self._fifo_fd

    @classmethod
    def adopt(cls, config: Config, user: User, rundir: str, events: ManagerEvents,
              children: Children, snap: dict, channel: int, fifo: int | None) -> Manager:
        """A run a previous daemon started, with its channel and (while its
        readiness string is awaited) its fifo. ValueError/KeyError/TypeError
        if the snapshot is not one, or its holder speaks another channel
        version than ours."""
        link = snap.get("link")
        if link != holderlink.VERSION:
            raise ValueError(f"its holder speaks channel version {str(link)[:20]}, "
                             f"this turnstiled {holderlink.VERSION}")
        m = cls(config, user, rundir, events, children, 0)
        m.phase = ManagerPhase(snap["phase"])
        if m.phase is ManagerPhase.GONE:
            raise ValueError("a gone manager cannot be adopted")
        m._adopted = True
        m._holder_pid = _optional_int(snap["holder_pid"])
        m.pid = _optional_int(snap["pid"])
        m._sid = _optional_int(snap["sid"])
        m.since = float(snap["since"])
        m._t0 = time.monotonic() - max(0.0, time.time() - m.since)
        m._services = [(str(n), float(ms)) for n, ms in snap["services"]][:MAX_SERVICES]
        m._ready_sent = bool(snap["ready_sent"])
        m._status = _optional_int(snap["status"])
        m._holder_done = bool(snap["holder_done"])
        loop = current()
        m._channel = socket.socket(fileno=channel)
        m._channel.setblocking(False)
        loop.add_reader(channel, m._on_channel)
        if m.phase is ManagerPhase.STARTING:
            if fifo is not None and not m._ready_sent:
                m._fifo_fd = fifo
                os.set_blocking(fifo, False)
                loop.add_reader(fifo, m._on_fifo)
            elif fifo is not None:
                os.close(fifo)
            if config.login_timeout > 0:
                left = config.login_timeout - (time.monotonic() - m._t0)
                m._timer = loop.call_later(max(0.0, left), m._timed_out)
        elif fifo is not None:
            os.close(fifo)
        return m

    # -- public

    def start(self) -> None:
        """Spawns the holder; every outcome is reported through events, later."""
        loop = current()
        try:
            self._spawn_holder()
        except (OSError, holderlink.LinkError) as err:
            self._close_fifo()
            loop.call_soon(self._fail_to_start, f"cannot start the manager's holder: {err}")
            return
        if self.config.login_timeout > 0:
            self._timer = loop.call_later(self.config.login_timeout, self._timed_out)

    def stop(self) -> None:
        """Asks the manager to stop; `manager_gone` follows once nothing remains."""
        if self.phase in (ManagerPhase.STOPPING, ManagerPhase.GONE):
            return
        self._set_phase(ManagerPhase.STOPPING)
        self._cancel_timer()
        self._close_fifo()
        if self._channel is not None:  # else the holder is on its way out
            self._send("stop")

    # -- the run

    def _spawn_holder(self) -> None:
        fifo, srvdir = self._prepare()
        packet = holderlink.start_packet(
            self.user, self.rundir, self.backend, fifo, srvdir, self.config.backend_conf_dir,
            self.config.pam_service, self.config.pam_dir, STOP_TIMEOUT, self.nofile,
            self.group.path if self.group is not None else "")
        self._holder_pid, ours = self.children.holder(
            self.config.holder_path, holderlink.command_args(self.config), self._holder_exited)
        ours.setblocking(False)
        self._channel = ours
        loop = current()
        loop.add_reader(ours.fileno(), self._on_channel)
        self._send_packet(packet)
        # Only now may the user's side speak: whatever it says has a channel
        # to go to (the socket buffers it until the holder reads).
        assert self._fifo_fd is not None
        loop.add_reader(self._fifo_fd, self._on_fifo)

    def _prepare(self) -> tuple[str, str]:
        """The fifo (written by the user's side) and the backend's srvdir."""
        u = self.user
        os.makedirs(os.path.dirname(self._dir), mode=0o755, exist_ok=True)
        remove_tree(self._dir)
        os.mkdir(self._dir, 0o755)
        fifo = os.path.join(self._dir, "ready")
        os.mkfifo(fifo, 0o600)
        os.chown(fifo, u.uid, u.gid)
        srvdir = os.path.join(self._dir, "srv")
        os.mkdir(srvdir, 0o700)
        os.chown(srvdir, u.uid, u.gid)
        # Non-blocking read end: no EOF is reported before a writer has
        # opened it, so the loop sleeps until the backend writes.
        self._fifo_fd = os.open(fifo, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC)
        return fifo, srvdir

    def _on_channel(self) -> None:
        # What the holder said since the last read (a ready's `up` lines and
        # its exit come together) reaches the owner's listeners once.
        with self.events.batch():
            self._read_channel()

    def _read_channel(self) -> None:
        assert self._channel is not None
        while self._channel is not None:
            try:
                packet = self._channel.recv(holderlink.MAX_PACKET + 1)
            except BlockingIOError:
                return
            except OSError:
                packet = b""
            if not packet:
                # The holder has exited (or is about to); its exit finishes
                # us: a SIGCHLD for our own, this end for an adopted one.
                self._close_channel()
                if self._adopted:
                    self._holder_exited(None)
                return
            try:
                verb, fields = holderlink.decode(packet)
            except holderlink.LinkError as err:
                log.warning("manager of %s: holder said something odd: %s", self.user.name, err)
                continue
            self._on_event(verb, fields)

    def _on_event(self, verb: str, fields: list[str]) -> None:
        # Fields may carry what the user's side printed: one safe line each.
        arg = escape(fields[0]) if fields else ""
        if verb == "pid":
            self.pid = self._sid = int(arg)
            log.debug("manager of %s: pid %d", self.user.name, self.pid)
            self.events.manager_progressed(self)
        elif verb == "up":
            # Printed by the user's own ready config: counted while starting,
            # once per name, and never more than a bounded list.
            if (self.phase is ManagerPhase.STARTING and len(self._services) < MAX_SERVICES
                    and all(arg != n for n, _ in self._services)):
                self._services.append((arg, self._elapsed_ms()))
                self.events.manager_progressed(self)  # a restart keeps what came
        elif verb == "ready-exit":
            self._on_ready_exit(int(arg))
        elif verb == "exit":
            self._status = int(arg)
            self.pid = None
            if self.phase is ManagerPhase.STARTING:
                self._fail(f"the manager exited with status {self._status} before it was ready")
            elif self.phase is ManagerPhase.READY:
                log.warning("manager of %s exited with status %d", self.user.name, self._status)
        elif verb == "error":
            self._fail(arg)
        elif verb == "gone":
            self._holder_done = True

    def _on_fifo(self) -> None:
        assert self._fifo_fd is not None
        try:
            data = os.read(self._fifo_fd, MAX_READY)
        except BlockingIOError:
            return
        self._ready_buf += data
        # The string ends at a NUL (dinit) or when the writer closes (runit).
        done = not data or b"\0" in self._ready_buf or len(self._ready_buf) >= MAX_READY
        if not done:
            return
        # Passed on to `ready` byte for byte (paths need not be UTF-8).
        text = self._ready_buf.split(b"\0", 1)[0][:MAX_READY].decode(
            errors="surrogateescape").strip()
        self._close_fifo()
        os.unlink(os.path.join(self._dir, "ready"))
        log.debug("manager of %s: accepts commands (%r)", self.user.name, text)
        self._send("ready", text)
        self._ready_sent = True
        self.events.manager_progressed(self)

    def _on_ready_exit(self, code: int) -> None:
        if self.phase is not ManagerPhase.STARTING:
            return
        if code != 0:
            self._fail(f"the backend's ready exited with status {code}")
            return
        self._set_phase(ManagerPhase.READY)
        self._cancel_timer()
        report = ReadyReport(self._elapsed_ms(), self._services)
        self.events.manager_ready(self, report)

    def _timed_out(self) -> None:
        self._timer = None
        if self.phase is ManagerPhase.STARTING:
            waited = ", ".join(n for n, _ in self._services) or "nothing yet"
            self._fail(f"not ready after login_timeout ({self.config.login_timeout:g} s; "
                       f"up so far: {waited})")

    def _fail(self, reason: str) -> None:
        if self.phase not in (ManagerPhase.STARTING, ManagerPhase.READY):
            log.debug("manager of %s: %s (while %s)", self.user.name, reason, self.phase)
            return
        log.error("manager of %s failed: %s", self.user.name, reason)
        self.events.manager_failed(self, reason)
        self.stop()

    def _fail_to_start(self, reason: str) -> None:
        log.error("manager of %s failed: %s", self.user.name, reason)
        self.events.manager_failed(self, reason)
        self._finish()

    # -- the holder's end

    def _holder_exited(self, status: int | None) -> None:
        """The holder is gone (status None: an adopted one's channel ended)."""
        if self._let_go:
            return  # the next daemon sees it in the channel
        self._holder_pid = None
        if self._channel is not None:
            self._on_channel()  # what it said before it went
        if self._holder_done:
            self._finish_when_empty()
            return
        # Killed (OOM, kill -9) or crashed: its manager is ours now.
        how = "its channel ended" if status is None else f"status {status}"
        log.error("the holder of %s's manager died (%s): killing what is left of the "
                  "manager; its PAM session could not be closed", self.user.name, how)
        self._fail(f"the manager's holder died ({how})")
        self._clean_up_after_holder()

    def _finish_when_empty(self) -> None:
        """The holder killed every process below it; one that left its tree
        (through another process's hands) is still in the group, and must
        not outlive the run either."""
        if self.group is None or not self.group.populated():
            self._finish()
            return
        log.warning("processes of %s's manager outlived its holder: killing them",
                    self.user.name)
        self.group.end(STOP_TIMEOUT, self._outlivers_ended)

    def _outlivers_ended(self, empty: bool) -> None:
        if not empty:
            assert self.group is not None
            log.error("the group %s of %s's manager is not empty after %g s", self.group.path,
                      self.user.name, STOP_TIMEOUT)
        self._finish()

    def _clean_up_after_holder(self) -> None:
        """Kills what the dead holder's manager left, then finishes."""
        if self.group is not None:
            # Exact, whoever's child it is now.
            self.group.end(STOP_TIMEOUT, self._group_cleaned_up)
        elif not self._adopted:
            self.children.kill_orphans(self._cleaned_up)
        elif self._sid:
            # Not our child, so what it left went to init, not to us: the
            # manager's session (run's setsid) still names it.
            self.children.kill_session(self._sid, self._cleaned_up)
        else:
            current().call_soon(self._cleaned_up, 0)

    def _group_cleaned_up(self, empty: bool) -> None:
        log.info("killed what was left of %s's manager (its group)", self.user.name)
        self._finish()

    def _cleaned_up(self, killed: int | None) -> None:
        log.info("killed %s processes left by %s's manager",
                 "some" if killed is None else killed, self.user.name)
        self._finish()

    def _finish(self) -> None:
        if self.phase is ManagerPhase.GONE:
            return
        self._cancel_timer()
        self._close_fifo()
        self._close_channel()
        # srv/ is the user's to fill: renamed aside now, removed off the loop.
        try:
            dead = retire(self._dir)
        except OSError as err:
            log.error("cannot remove %s: %s", self._dir, err.strerror)
            dead = None
        if dead is not None:
            self.events.remove_in_background(dead)
        if self.group is not None:
            self.group.release()
        self._set_phase(ManagerPhase.GONE)
        self.pid = None
        self.events.manager_gone(self, self._status)

    # -- plumbing

    def _set_phase(self, phase: ManagerPhase) -> None:
        order = list(ManagerPhase)  # declaration order is the only way forward
        assert order.index(phase) > order.index(self.phase), f"{self.phase} -> {phase}"
        self.phase = phase

    def _send(self, verb: str, *fields: str) -> None:
        self._send_packet(holderlink.encode(verb, *fields))

    def _send_packet(self, packet: bytes) -> None:
        """One message to the holder; a channel that cannot take it is an
        error that ends the holder, never a message silently lost."""
        try:
            if self._channel is None:
                raise ConnectionError("the channel is closed")
            self._channel.send(packet)
            return
        except BlockingIOError:
            problem = "the holder does not read its channel"
        except OSError as err:
            if self.phase is ManagerPhase.STOPPING:
                return  # the holder is on its way out; its exit finishes us
            problem = f"the holder's channel is closed ({err.strerror})"
        verb = packet.split(b"\0", 1)[0].decode()
        log.error("manager of %s: cannot send %r: %s", self.user.name, verb, problem)
        if self._holder_pid is not None:  # not reaped yet: the pid is still its own
            os.kill(self._holder_pid, signal.SIGKILL)
        self._fail(problem)

    def _elapsed_ms(self) -> float:
        return round((time.monotonic() - self._t0) * 1000, 1)

    def _cancel_timer(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None

    def _close_fifo(self) -> None:
        if self._fifo_fd is not None:
            current().remove_reader(self._fifo_fd)
            os.close(self._fifo_fd)
            self._fifo_fd = None

    def _close_channel(self) -> None:
        if self._channel is not None:
            current().remove_reader(self._channel.fileno())
            self._channel.close()
            self._channel = None


def _optional_int(value: object) -> int | None:
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f"expected an integer, got {value!r}")
    return value
