"""The real Registry with stand-ins around it, for its unit tests
(test_registry*.py): a fake manager that only records what it is asked and
reports ready, failed or gone when the test says so, fake cgroups that the
test empties, a listener that notes what it hears, and a stand-in for the
runtime-dir code. Not a test module: the tests import it."""

from __future__ import annotations

import os

from helpers import read_kv

from turnstiled import rundir
from turnstiled.cgroups import Place
from turnstiled.config import Config
from turnstiled.loop import current
from turnstiled.manager import ReadyReport
from turnstiled.protocol import Handshake
from turnstiled.registry import Registry
from turnstiled.statefiles import StateDir, StateFiles
from turnstiled.users import User

USER = User("tsdfake", 4_000_123, 4_000_123, "/", "/bin/sh", (4_000_123,))
FACTS = Handshake(uid=USER.uid, vtnr=0, remote=False, service="login", type="tty",
                  klass="user")


class FakeManager:
    """Stands in for turnstiled.manager.Manager: no holder, no processes."""

    def __init__(self, config, user, rundir, events, children, nofile) -> None:
        self.user, self.events = user, events
        self.pid: int | None = None
        self.since = 0.0
        self.started = False
        self.stops = 0
        self.group = None

    def start(self) -> None:
        self.started = True

    def stop(self) -> None:
        self.stops += 1

    # what the test makes it report
    def progress(self) -> None:
        self.events.manager_progressed(self)

    def ready(self) -> None:
        self.events.manager_ready(self, ReadyReport(1.0, [("core", 1.0)]))

    def fail(self) -> None:
        self.events.manager_failed(self, "it failed")

    def gone(self, status: int = 0) -> None:
        self.events.manager_gone(self, status)


class FakeRundirs:
    """Stands in for turnstiled.rundir's make(), which needs root: it
    insists every parent of the directory is root's and gives the directory
    to the user. Here the directory is made as whoever runs the tests, so
    the registry's part (when a runtime dir is made, when it is taken away)
    is tested without root. The real make() is tested end to end, on real
    daemons, in test_runit.py and test_hostile.py. Taking away (retire,
    remove) needs no privilege: the real code runs."""

    RundirError = rundir.RundirError
    retire = staticmethod(rundir.retire)
    remove = staticmethod(rundir.remove)

    def __init__(self) -> None:
        self.made: list[str] = []

    def make(self, path: str, uid: int, gid: int, size: str = "0") -> str | None:
        os.mkdir(path, 0o700)
        self.made.append(path)
        return None


class Recorder:
    """A listener that notes what it hears: (event, login state or session id)."""

    def __init__(self, heard: list) -> None:
        self.heard = heard

    def login_changed(self, login) -> None:
        self.heard.append(("login_changed", login.public_state))

    def login_ended(self, login) -> None:
        self.heard.append(("login_ended", login.user.name))

    def session_opened(self, session) -> None:
        self.heard.append(("session_opened", session.id))

    def session_closed(self, session) -> None:
        self.heard.append(("session_closed", session.id))

    def session_changed(self, session) -> None:
        self.heard.append(("session_changed", session.state.value))


class FakeGroup:
    """Stands in for turnstiled.tracking.Group: holds `procs` processes
    until the test empties it; records what it is asked."""

    def __init__(self, path: str, procs: int) -> None:
        self.path, self.procs = path, procs
        self.ends = 0
        self.signals: list[int] = []
        self.released = False
        self.leader_gone = False
        self._on_empty: list = []

    def populated(self) -> bool:
        return self.procs > 0

    def on_empty(self, call) -> None:
        self._on_empty.append(call)

    def end(self) -> None:
        assert self.leader_gone, "the leader is let go before its group is ended"
        self.ends += 1

    def let_leader_go(self) -> None:
        self.leader_gone = True

    def signal(self, sig: int) -> int:
        self.signals.append(sig)
        return self.procs

    def release(self) -> None:
        self.released = True

    # what the test makes happen
    def empty(self) -> None:
        """Its last process exits (the kernel's populated 0)."""
        self.procs = 0
        calls, self._on_empty = self._on_empty, []
        for call in calls:
            call()


class FakeTracking:
    """Stands in for turnstiled.tracking.CgroupTracking: a session's group
    holds `procs` processes (its leader and what it started)."""

    mode, reason, tracking = "cgroup", "fake groups", True

    def __init__(self, procs: int = 2) -> None:
        self.procs = procs
        self.sessions: dict[str, FakeGroup] = {}
        self.places: dict[int, Place] = {}

    def enter_session(self, uid: int, sid: str, leader: int) -> FakeGroup:
        group = self.sessions[sid] = FakeGroup(f"user-{uid}/session-{sid}", self.procs)
        self.places[leader] = Place(uid, sid)
        return group

    def manager_group(self, uid: int, make: bool = True) -> FakeGroup:
        return FakeGroup(f"user-{uid}/manager", 1)

    def place_of(self, pid: int) -> Place | None:
        return self.places.get(pid)


class Harness:
    """A Registry with fake managers (and fake groups when given), its state
    files in tmp_path. Made inside a running loop (Sessions need one)."""

    def __init__(self, tmp_path, groups=None, **config) -> None:
        settings = dict(backend="runit", state_dir=str(tmp_path / "state"),
                        linger_dir=str(tmp_path / "linger"), manage_rundir=True,
                        rundir_path=str(tmp_path / "user" / "%u"), rundir_size="0",
                        user_stop_delay=0.0)
        settings.update(config)
        os.makedirs(tmp_path / "user", exist_ok=True)
        self.managers: list[FakeManager] = []
        state = StateDir(settings["state_dir"])
        state.prepare()

        def factory(*args) -> FakeManager:
            m = FakeManager(*args)
            self.managers.append(m)
            return m

        config = Config(**settings)
        self.heard: list[tuple[str, str]] = []
        self.reg = Registry(config, None, manager_factory=factory,
                            listeners=[StateFiles(state, config), Recorder(self.heard)],
                            groups=groups)
        self.state_dir = tmp_path / "state"
        self.linger_dir = tmp_path / "linger"

    @property
    def manager(self) -> FakeManager:
        return self.managers[-1]

    def login(self):
        return self.reg.logins.get(USER.uid)

    def state(self) -> str:
        login = self.login()
        return "ended" if login is None else login.public_state

    def published(self) -> str | None:
        state = read_kv(self.state_dir / "users" / str(USER.uid))
        return None if state is None else state["STATE"]

    def open(self, leader: int = 1):
        return self.reg.open_session(USER, FACTS, leader)

    def lingers(self) -> bool:
        return (self.linger_dir / USER.name).exists()

    def set_linger(self, on: bool) -> None:
        """As enable-linger / disable-linger do: the file, then the registry
        (told also when nothing changed, as they do)."""
        path = self.linger_dir / USER.name
        if on:
            path.parent.mkdir(exist_ok=True)
            path.touch()
        else:
            path.unlink(missing_ok=True)
        self.reg.linger_changed(USER)

    def close_all(self) -> None:
        for s in list(self.login().sessions.values()):
            self.reg.close_session(s)

    def stop_delay_over(self) -> None:
        """The stop delay's timer fires, now: no test waits out a delay.
        The timer (if one runs) is cancelled and what it would call is
        called, as the loop would call it."""
        login = self.login()
        if login.stop_timer is not None:
            login.stop_timer.cancel()
        self.reg._stop_delay_over(login)

    def stop_delay_left(self) -> float | None:
        """How long the stop delay's timer has to run; None: none runs."""
        timer = self.login().stop_timer
        if timer is None:
            return None
        return timer.when() - current().time()

