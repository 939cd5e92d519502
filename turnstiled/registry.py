"""Logins and Sessions: the reference counting and the Login state machine.

One Login per uid, one Session per PAM connection. This module alone decides
state transitions; the server asks it to open and close sessions, and the
manager supervisor reports back through the ManagerEvents methods.

Login states: starting -> ready -> stopping, plus failed; a Login with no
sessions whose manager is kept (linger, stop delay) is published as
lingering. A Login with no sessions and no manager is removed.

Session states: open -> closing. A session whose connection closes ends at
once, unless its group (turnstiled/tracking.py) still holds processes: it
is closing until the group is empty, and counts for its user meanwhile, so
the manager serves what the session left running (tmux, nohup).

What changed reaches the listeners (the state files; see Listener) when the
entry point that changed it returns: once per Login, in order.
"""

from __future__ import annotations

import collections
import contextlib
import enum
import functools
import logging
import os
import stat
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field

from . import children as proc_tree
from . import linger, rundir, sessionof
from .children import Children
from .config import Config
from .loop import current
from .manager import Manager, ReadyReport
from .protocol import Handshake
from .sessionids import SessionIds
from .text import escape
from .tracking import Group, Tracking
from .users import User, lookup_name, lookup_uid

TYPE_CHECKING = False  # not typing's (see turnstiled/__init__.py)
if TYPE_CHECKING:
    from typing import Any, Protocol

    from .loop import Timer

log = logging.getLogger("turnstiled")

# A manager that dies after readiness is restarted at most this often.
MAX_RESTARTS = 5
RESTART_WINDOW = 60.0


class LoginError(Exception):
    """A session cannot be opened (the reason is for the log)."""


class SessionState(enum.StrEnum):
    """A session with its PAM connection open, or one whose connection has
    closed while processes of it still run."""
    OPEN = "open"
    CLOSING = "closing"


# As _ENTERED_FROM, for sessions. Ending is leaving the registry.
_SESSION_ENTERED_FROM = {
    SessionState.OPEN: set(),
    SessionState.CLOSING: {SessionState.OPEN},
}


class Outcome:
    """A session's answer once it is known: True when the user's manager is
    ready, False when it failed. Callbacks run on the loop, as a Future's."""

    __slots__ = ("_ok", "_calls")

    def __init__(self) -> None:
        self._ok: bool | None = None
        self._calls: list[Callable[[Outcome], object]] = []

    def done(self) -> bool:
        return self._ok is not None

    def result(self) -> bool:
        if self._ok is None:
            raise RuntimeError("the outcome is not known yet")
        return self._ok

    def set_result(self, ok: bool) -> None:
        if self._ok is not None:
            raise RuntimeError("the outcome is known already")
        self._ok = ok
        calls, self._calls = self._calls, []
        for call in calls:
            current().call_soon(call, self)

    def add_done_callback(self, call: Callable[[Outcome], object]) -> None:
        if self._ok is None:
            self._calls.append(call)
        else:
            current().call_soon(call, self)


@dataclass
class Session:
    id: str
    user: User
    facts: Handshake
    leader: int
    since: float = field(default_factory=time.time)
    state: SessionState = SessionState.OPEN
    # Its cgroup (None: not tracked by one).
    group: Group | None = None
    # Our end of the PAM connection (-1: none), kept across restarts.
    fd: int = -1
    # Resolved once: True when the user's manager is ready, False on failure.
    outcome: Outcome = field(default_factory=Outcome)
    # Set by the server: ends the PAM side's connection (terminate, shutdown).
    close_connection: Callable[[], None] = lambda: None

    def resolve(self, ok: bool) -> None:
        if not self.outcome.done():
            self.outcome.set_result(ok)


class LoginState(enum.StrEnum):
    """A Login's manager: being started, up, being stopped, or given up on
    (a start failed, or crashes came too often; it is stopped and the Login
    ends or starts afresh with the next session)."""
    STARTING = "starting"
    READY = "ready"
    STOPPING = "stopping"
    FAILED = "failed"


# Which state a transition may leave, for each state it enters: anything
# else is a bug in this module, caught where it happens.
_ENTERED_FROM = {
    LoginState.STARTING: {LoginState.STARTING, LoginState.READY, LoginState.STOPPING,
                          LoginState.FAILED},
    LoginState.READY: {LoginState.STARTING, LoginState.READY, LoginState.FAILED},
    LoginState.STOPPING: {LoginState.STARTING, LoginState.READY, LoginState.STOPPING},
    LoginState.FAILED: {LoginState.STARTING, LoginState.READY},
}


@dataclass
class Login:
    user: User
    # XDG_RUNTIME_DIR, made and removed by us only when rundir_managed; else
    # another program's (elogind's), which the manager is still pointed at.
    rundir: str
    rundir_managed: bool
    state: LoginState = LoginState.STARTING
    since: float = field(default_factory=time.time)
    sessions: dict[str, Session] = field(default_factory=dict)
    manager: Manager | None = None
    start_again: bool = False
    restarts: collections.deque = field(default_factory=collections.deque)
    last_ready: ReadyReport | None = None
    # Why the runtime dir is not usable, when it is not (for user-status).
    rundir_problem: str = ""
    stop_timer: Timer | None = None
    # terminate-user ended its sessions: the manager stops without a delay
    # once the last of them is gone.
    stop_at_once: bool = False

    @property
    def public_state(self) -> str:
        """The state as state files, the admin socket and turnstilectl show
        it: a ready manager without sessions is lingering."""
        if self.state is LoginState.READY and not self.sessions:
            return "lingering"
        return self.state.value


if TYPE_CHECKING:
    class Listener(Protocol):
        """Hears every change to Logins and Sessions. A Login whose fields
        changed (state, sessions, manager, linger) is told once per entry point
        into the registry, after the session events of that entry point."""

        def login_changed(self, login: Login) -> None: ...
        def login_ended(self, login: Login) -> None: ...
        def session_opened(self, session: Session) -> None: ...
        def session_closed(self, session: Session) -> None: ...
        # Optional: a session's state changed (it is closing).
        def session_changed(self, session: Session) -> None: ...


def _entry_point(method: Callable[..., Any]) -> Callable[..., Any]:
    """Marks a way into the registry (a request, a manager event, a timer):
    the listeners hear what it changed when it returns, not halfway."""

    @functools.wraps(method)
    def run(self: Registry, *args: Any, **kwargs: Any) -> Any:
        if self._let_go:
            return None  # handed over: this daemon changes nothing any more
        with self.batch():
            return method(self, *args, **kwargs)
    return run


class Registry:
    def __init__(self, config: Config, children: Children, user_nofile: int = 1024,
                 manager_factory: Callable[..., Manager] = Manager,
                 listeners: Iterable[Listener] = (),
                 groups: Tracking | None = None) -> None:
        self.config = config
        self.children = children
        # The descriptor limit users' managers start with (ours is raised).
        self.user_nofile = user_nofile
        # Makes a Manager; the registry's unit tests pass a fake one.
        self.manager_factory = manager_factory
        self.logins: dict[int, Login] = {}
        self.sessions: dict[str, Session] = {}
        self.failures: dict[int, tuple[float, str]] = {}
        self.started = time.time()
        self.ids = SessionIds(os.path.join(config.state_dir, "session-ids"))
        # Retired trees being removed in threads; shutdown waits for them.
        self._removing = 0
        self.listeners = list(listeners)
        # Sessions' and managers' cgroups, where there are any.
        self.groups = groups if groups is not None else Tracking("not asked for")
        # What the running entry point changed, for the listeners.
        self._depth = 0
        self._let_go = False
        self._events: list[tuple[str, Login | Session]] = []
        self._changed: dict[int, Login] = {}

    # -- sessions (called by the server)

    def user(self, uid: int) -> User | None:
        """The password database's entry for uid. A logged-in user's is the
        one read at their first login (as logind's user record): a second
        login costs no group file scan."""
        login = self.logins.get(uid)
        return login.user if login is not None else lookup_uid(uid)

    @_entry_point
    def open_session(self, user: User, facts: Handshake, leader: int, fd: int = -1) -> Session:
        login = self.logins.get(user.uid)
        if login is None:
            login = self._new_login(user)
        session = Session(self.ids.take(), user, facts, leader, fd=fd)
        # Before the answer: the login program starts the shell only after
        # it, so everything of the session starts in the group.
        session.group = self.groups.enter_session(user.uid, session.id, leader)
        login.stop_at_once = False
        login.sessions[session.id] = session
        self.sessions[session.id] = session
        self._events.append(("session_opened", session))
        self._touch(login)
        self._cancel_stop_delay(login)
        log.info("session %s opened: %s (uid %d) via %s, tty %s", session.id, user.name,
                 user.uid, escape(facts.service), escape(facts.tty))
        if login.state is LoginState.READY:
            session.resolve(True)
        elif login.manager is None:
            self._start(login)
        elif login.state in (LoginState.STOPPING, LoginState.FAILED):
            # The old manager is still on its way out; start afresh after it.
            login.start_again = True
        return session

    @_entry_point
    def close_session(self, session: Session) -> None:
        """The session's PAM connection has closed (a logout, or its login
        process died): it ends now, or closes until its group is empty."""
        if self.sessions.get(session.id) is not session:
            return
        session.resolve(False)
        if session.state is SessionState.CLOSING:
            return
        session.fd = -1  # the server closes it; nothing may keep its number
        group = session.group
        if group is not None:
            group.let_leader_go()
        if group is None or not group.populated():
            self._end_session(session)
            return
        self._set_session_state(session, SessionState.CLOSING)
        log.info("session %s closing: %s logged out, processes of the session still run",
                 session.id, session.user.name)
        group.on_empty(lambda: self.session_emptied(session))
        if self._kills_leftovers(session.user):
            group.end()

    @_entry_point
    def session_emptied(self, session: Session) -> None:
        """The session's group has no process left."""
        if self.sessions.get(session.id) is session and session.state is SessionState.CLOSING:
            self._end_session(session)

    def _kills_leftovers(self, user: User) -> bool:
        return (self.config.kill_user_processes
                and user.name not in self.config.kill_exclude_users)

    def _set_session_state(self, session: Session, state: SessionState) -> None:
        """The one place a Session changes state."""
        assert session.state in _SESSION_ENTERED_FROM[state], f"{session.state} -> {state}"
        session.state = state
        self._events.append(("session_changed", session))
        self._touch(self.logins[session.user.uid])

    def _end_session(self, session: Session) -> None:
        del self.sessions[session.id]
        login = self.logins[session.user.uid]
        del login.sessions[session.id]
        if session.group is not None:
            session.group.release()
        self._events.append(("session_closed", session))
        self._touch(login)
        log.info("session %s closed: %s", session.id, session.user.name)
        if not login.sessions:
            self._last_session_gone(login)

    def env_for(self, session: Session) -> dict[str, str]:
        """The environment the PAM module exports into the session:
        XDG_SESSION_ID always (as pam_systemd/pam_elogind do; tools find
        their session by it), the runtime dir and the session bus."""
        login = self.logins[session.user.uid]
        env = {"XDG_SESSION_ID": session.id}
        if login.rundir_managed:
            # Unmanaged, the login's own PAM stack (pam_elogind) sets it.
            env["XDG_RUNTIME_DIR"] = login.rundir
        if self.config.export_dbus_address:
            bus = os.path.join(login.rundir, "bus")
            try:
                if stat.S_ISSOCK(os.lstat(bus).st_mode):
                    env["DBUS_SESSION_BUS_ADDRESS"] = f"unix:path={bus}"
            except OSError:
                pass
        return env

    # -- admin requests

    @_entry_point
    def start_lingering(self) -> None:
        """Starts the managers of lingering users (at daemon start, as logind)."""
        for name in linger.lingering_users(self.config):
            user = lookup_name(name)
            if user is None:
                log.warning("linger file for unknown user %r ignored", name)
            elif user.uid not in self.logins:
                self._linger_login(user)

    @_entry_point
    def linger_changed(self, user: User) -> None:
        """Applies a changed linger file at once, not only at the next logout."""
        login = self.logins.get(user.uid)
        if login is not None:
            self._touch(login)
        if linger.wants_linger(self.config, user.name):
            if login is None:
                self._linger_login(user)
            elif login.state is LoginState.STOPPING:
                login.start_again = True  # the stop was for a non-lingering user
            else:
                self._cancel_stop_delay(login)
        elif login is not None and not login.sessions:
            self._stop(login)

    @_entry_point
    def terminate_session(self, session: Session) -> None:
        """Ends the session: its connection, and every process in its group
        (the session is closing until they are gone)."""
        session.close_connection()
        if session.group is not None:
            # The login program lives on to see its shell end, and logs out.
            session.group.let_leader_go()
            session.group.end()
        self.close_session(session)

    @_entry_point
    def terminate_user(self, uid: int) -> None:
        login = self.logins.get(uid)
        if login is None:
            return
        for session in list(login.sessions.values()):
            self.terminate_session(session)
        if self.logins.get(uid) is not login:
            return
        # An admin asked for it: no stop delay, but linger still holds.
        if login.sessions:
            login.stop_at_once = True  # once the closing sessions are gone
        elif not self._keeps_manager(login):
            self._stop(login)

    def kill_session(self, session: Session, sig: int, leader_only: bool = False) -> int:
        """Sends sig to every process of the session (or to its leader
        alone); how many got it. With a group, every process in it; without,
        the leader's process tree, which a daemonised process has left."""
        if leader_only:
            return proc_tree.signal_pids({session.leader}, sig)
        if session.group is not None:
            return session.group.signal(sig)
        return proc_tree.signal_pids(proc_tree.process_trees([session.leader]), sig)

    def kill_user(self, uid: int, sig: int) -> int:
        """Sends sig to every process of the user's sessions and manager:
        their groups; without, the user's processes in their process trees."""
        login = self.logins.get(uid)
        if login is None:
            return 0
        count, roots = 0, []
        for s in login.sessions.values():
            if s.group is not None:
                count += s.group.signal(sig)
            else:
                roots.append(s.leader)
        m = login.manager
        if m is not None and m.group is not None:
            count += m.group.signal(sig)
        elif m is not None and m.pid:
            roots.append(m.pid)
        if not roots:  # everything in groups: no walk of /proc
            return count
        untracked = {p for p in proc_tree.process_trees(roots) if proc_tree.uid_of(p) == uid}
        return count + proc_tree.signal_pids(untracked, sig)

    # -- which session a process is in

    def session_of_pid(self, pid: int) -> Session | None:
        """The session pid belongs to. With groups it is exact (the group in
        /proc/PID/cgroup); without, a guess: the nearest ancestor that
        leads a session (a daemonised process has none)."""
        place = self.groups.place_of(pid)
        if place is not None:
            if place.session is None:
                return None  # a manager's process: no session's
            session = self.sessions.get(place.session)
            return session if session is not None and session.user.uid == place.uid else None
        return sessionof.session_of_pid(
            (s for s in self.sessions.values() if s.group is None), pid)

    def login_of_pid(self, pid: int) -> Login | None:
        """The Login pid belongs to: through its session or manager group,
        or (without groups) its session's."""
        place = self.groups.place_of(pid)
        if place is not None:
            return self.logins.get(place.uid)
        session = self.session_of_pid(pid)
        return None if session is None else self.logins.get(session.user.uid)

    def _linger_login(self, user: User) -> None:
        try:
            self._new_login(user)
        except LoginError as err:
            log.error("cannot start the lingering manager of %s: %s", user.name, err)
            return
        log.info("%s lingers: manager started without a login", user.name)

    # -- the Login state machine

    def _new_login(self, user: User) -> Login:
        path = self.config.rundir_for(user.uid, user.gid)
        if self.config.manage_rundir:
            try:
                stale = rundir.make(path, user.uid, user.gid, self.config.rundir_size)
            except rundir.RundirError as err:
                raise LoginError(f"cannot make the runtime directory: {err}") from None
            if stale is not None:
                log.warning("%s was there before %s's login: not adopted, replaced", path,
                            user.name)
                self.remove_in_background(stale)
        login = Login(user, path, self.config.manage_rundir)
        self.logins[user.uid] = login
        self._start(login)
        return login

    def _needs_manager(self, user: User) -> bool:
        if self.config.backend == "none":
            return False
        return user.uid != 0 or self.config.root_session

    def _start(self, login: Login) -> None:
        login.start_again = False
        if not self._needs_manager(login.user):
            self._set_ready(login)
            return
        self._set_state(login, LoginState.STARTING)
        self._check_foreign_rundir(login)
        login.manager = self.manager_factory(self.config, login.user, login.rundir, self,
                                             self.children, self.user_nofile)
        login.manager.group = self.groups.manager_group(login.user.uid)
        login.manager.start()
        log.info("starting the %s manager of %s", self.config.backend, login.user.name)

    def _check_foreign_rundir(self, login: Login) -> None:
        """With manage_rundir = no the manager still gets XDG_RUNTIME_DIR; say
        so when whoever should have made it (elogind) has not."""
        if login.rundir_managed:
            return
        if os.path.isdir(login.rundir):
            login.rundir_problem = ""
            return
        login.rundir_problem = ("missing when the manager started (manage_rundir = no: "
                                "elogind or another program should make it)")
        log.warning("runtime dir %s of %s is %s", login.rundir, login.user.name,
                    login.rundir_problem)

    def _set_state(self, login: Login, state: LoginState) -> None:
        """The one place a Login changes state."""
        assert login.state in _ENTERED_FROM[state], f"{login.state} -> {state}"
        if login.state is not state:
            log.debug("login of %s: %s -> %s", login.user.name, login.state, state)
        login.state = state
        login.since = time.time()
        self._touch(login)

    def _set_ready(self, login: Login) -> None:
        self._set_state(login, LoginState.READY)
        for session in login.sessions.values():
            session.resolve(True)

    def _last_session_gone(self, login: Login) -> None:
        if self._keeps_manager(login):
            return
        delay = 0 if login.stop_at_once else self.config.user_stop_delay
        if login.state is LoginState.READY and delay > 0 and login.manager is not None:
            login.stop_timer = current().call_later(
                delay, self._stop_delay_over, login)
        else:
            self._stop(login)

    def _keeps_manager(self, login: Login) -> bool:
        return (login.manager is not None and login.state in (LoginState.STARTING, LoginState.READY)
                and linger.wants_linger(self.config, login.user.name))

    @_entry_point
    def _stop_delay_over(self, login: Login) -> None:
        login.stop_timer = None
        if not login.sessions and not self._keeps_manager(login):
            self._stop(login)

    def _cancel_stop_delay(self, login: Login) -> None:
        if login.stop_timer is not None:
            login.stop_timer.cancel()
            login.stop_timer = None

    def _stop(self, login: Login) -> None:
        """Stops the manager if one runs; ends the Login once nothing does."""
        self._cancel_stop_delay(login)
        if login.manager is None:
            self._end_login(login)
            return
        if login.state is not LoginState.FAILED:
            self._set_state(login, LoginState.STOPPING)
        login.manager.stop()

    def _end_login(self, login: Login) -> None:
        self._cancel_stop_delay(login)
        del self.logins[login.user.uid]
        if login.rundir_managed:
            self._remove_rundir(login.rundir)
        self._events.append(("login_ended", login))
        log.info("login of %s ended", login.user.name)

    def _remove_rundir(self, path: str) -> None:
        # Its contents are the user's: however many files they made, the
        # removal must not hold the loop (and so everyone else's logins).
        try:
            dead = rundir.retire(path)
        except OSError as err:
            log.error("cannot remove the runtime directory %s: %s", path, err.strerror)
            return
        if dead is not None:
            self.remove_in_background(dead)

    def remove_left_rundirs(self, previous: dict[int, str]) -> None:
        """Removes the runtime dirs a previous run made (previous: uid ->
        path, statefiles.StateDir.managed_rundirs) for users with no Login
        now: no daemon took theirs up in time, or it could not be taken up.
        Only a directory that is the one this config makes for its owner,
        owned by that uid, is removed; anything else is logged and left."""
        if not self.config.manage_rundir:
            return
        for uid, path in sorted(previous.items()):
            if uid in self.logins:
                continue  # taken up: its Login removes it in time
            try:
                st = os.lstat(path)
            except FileNotFoundError:
                continue
            except OSError as err:
                log.error("cannot look at the runtime directory %s: %s", path, err.strerror)
                continue
            if (not stat.S_ISDIR(st.st_mode) or st.st_uid != uid
                    or path != self.config.rundir_for(uid, st.st_gid)):
                log.warning("%s is not a runtime directory of uid %d made by turnstiled; "
                            "left alone", escape(path), uid)
                continue
            log.info("removing the runtime directory %s a previous run left", path)
            self._remove_rundir(path)

    def remove_in_background(self, path: str) -> None:
        """Removes a retired tree (rundir.retire) off the loop; shutdown and
        let_go wait for it."""
        self._removing += 1
        current().in_thread(rundir.remove, path, done=self._removed)

    def _removed(self, _: object) -> None:
        self._removing -= 1

    # -- manager events (turnstiled.manager.ManagerEvents)

    def _login_of(self, manager: Manager) -> Login | None:
        login = self.logins.get(manager.user.uid)
        return login if login is not None and login.manager is manager else None

    @_entry_point
    def manager_progressed(self, manager: Manager) -> None:
        """Its pid is known, a core service came up, or its readiness string
        was passed on."""
        login = self._login_of(manager)
        if login is not None:
            self._touch(login)

    @_entry_point
    def manager_ready(self, manager: Manager, report: ReadyReport) -> None:
        login = self._login_of(manager)
        if login is None or login.state is not LoginState.STARTING:
            return
        login.last_ready = report
        services = ", ".join(f"{n} {ms:g} ms" for n, ms in report.services) or "none"
        log.info("manager of %s ready after %g ms (core services: %s)", login.user.name,
                 report.waited_ms, services)
        self._set_ready(login)
        if not login.sessions and not self._keeps_manager(login):
            self._stop(login)

    @_entry_point
    def manager_failed(self, manager: Manager, reason: str) -> None:
        login = self._login_of(manager)
        if login is None:
            return
        self.failures[login.user.uid] = (time.time(), reason)
        if login.state is LoginState.STARTING:
            self._set_state(login, LoginState.FAILED)
            for session in login.sessions.values():
                session.resolve(False)

    @_entry_point
    def manager_gone(self, manager: Manager, status: int | None) -> None:
        login = self._login_of(manager)
        if login is None:
            return
        wanted = bool(login.sessions) or self._keeps_manager(login)
        # A start asked for while this one stopped (a login, linger turned
        # on), if whoever asked still wants it.
        again = login.start_again and (bool(login.sessions) or linger.wants_linger(
            self.config, login.user.name))
        login.manager = None
        self._touch(login)
        if login.state is LoginState.STARTING:
            # A manager reports its failure before it goes; should one not,
            # its waiting sessions must still get their answer.
            self.failures[login.user.uid] = (time.time(), "the manager went before it was "
                                             f"ready (status {status})")
            self._set_state(login, LoginState.FAILED)
            for session in login.sessions.values():
                session.resolve(False)
        if login.state is LoginState.READY and wanted:
            self._restart_after_crash(login, status)
        elif again or (login.state is LoginState.STOPPING and login.sessions):
            self._start(login)
        elif not login.sessions:
            self._end_login(login)

    def _restart_after_crash(self, login: Login, status: int | None) -> None:
        now = time.monotonic()
        while login.restarts and now - login.restarts[0] > RESTART_WINDOW:
            login.restarts.popleft()
        if len(login.restarts) >= MAX_RESTARTS:
            reason = (f"the manager died {MAX_RESTARTS + 1} times within "
                      f"{RESTART_WINDOW:g} s (last status {status}); not restarting")
            log.error("manager of %s: %s", login.user.name, reason)
            self.failures[login.user.uid] = (time.time(), reason)
            self._set_state(login, LoginState.FAILED)
            return
        login.restarts.append(now)
        log.warning("manager of %s died (status %s); restarting", login.user.name, status)
        self._start(login)

    # -- a previous daemon's (turnstiled.handover)

    @_entry_point
    def adopt(self, login: Login, stop_in: float | None) -> None:
        """Takes up a Login, with its sessions and manager, as a previous
        daemon left it; stop_in: what was left of its stop delay."""
        self.logins[login.user.uid] = login
        for session in login.sessions.values():
            self.sessions[session.id] = session
            self._events.append(("session_opened", session))
        for session in list(login.sessions.values()):
            if session.state is SessionState.CLOSING:
                # Its group may have emptied while no daemon watched.
                if session.group is None:
                    self._end_session(session)
                else:
                    session.group.on_empty(lambda s=session: self.session_emptied(s))
        if stop_in is not None and not login.sessions:
            login.stop_timer = current().call_later(
                stop_in, self._stop_delay_over, login)
        self._touch(login)

    # -- shutdown

    def shutdown(self, timeout: float) -> None:
        """Ends every session and Login; runs the loop until the managers
        have gone (at most timeout seconds each wait)."""
        self._stop_all()
        loop = current()
        loop.run(until=lambda: not self.logins, timeout=timeout)
        if self.logins:
            log.error("shutdown: %d user managers still running after %g s",
                      len(self.logins), timeout)
        loop.run(until=lambda: not self._removing, timeout=timeout)

    def let_go(self, timeout: float) -> None:
        """Leaves every Login as it is for the next daemon: nothing is
        stopped, ended or told from now on (connections closing as this
        daemon exits are not logouts). Waits (bounded) for the removals
        under way, which would otherwise leave half-removed directories."""
        self._let_go = True
        for login in self.logins.values():
            self._cancel_stop_delay(login)
            if login.manager is not None:
                login.manager.let_go()
        current().run(until=lambda: not self._removing, timeout=timeout)

    @_entry_point
    def _stop_all(self) -> None:
        for login in list(self.logins.values()):
            for session in list(login.sessions.values()):
                # Ended whatever its group holds: a full stop of the daemon
                # leaves users' processes alone (a next daemon finds the
                # group and says so).
                session.close_connection()
                session.resolve(False)
                self._end_session(session)
            login.start_again = False
            if self.logins.get(login.user.uid) is login:
                self._stop(login)

    # -- the listeners

    @contextlib.contextmanager
    def batch(self) -> Iterator[None]:
        """Entry points made inside are heard as one: the listeners hear what
        they changed once, at the end (a holder's burst of reports, at a
        cold login, is one state file and one record, not one per line)."""
        self._depth += 1
        try:
            yield
        finally:
            self._depth -= 1
            if not self._depth:
                self._tell_listeners()

    def _touch(self, login: Login) -> None:
        """login's public fields changed: its listeners hear of it."""
        self._changed[id(login)] = login

    def _tell_listeners(self) -> None:
        events, self._events = self._events, []
        changed, self._changed = self._changed, {}
        for name, subject in events:
            self._tell(name, subject)
        for login in changed.values():
            if self.logins.get(login.user.uid) is login:  # not ended meanwhile
                self._tell("login_changed", login)

    def _tell(self, name: str, subject: Login | Session) -> None:
        for listener in self.listeners:
            method = getattr(listener, name, None)
            if method is None:
                continue  # an optional event this listener does not take
            try:
                method(subject)
            except Exception:  # a view must never break the registry
                log.exception("%s: %s failed", type(listener).__name__, name)
