"""The Login and Session state machines on their own, in milliseconds: the
real Registry with a fake manager (it only records what it is asked, and
reports ready, failed or gone when the test says so) and, for sessions
tracked by cgroups, fake groups (the test says when one holds processes
and when it empties). The real manager runs in test_runit.py,
test_dinit.py and test_holder_death.py; real groups in test_cgroups.py."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess

import pytest
from helpers import read_kv, wait_for

from turnstiled.cgroups import Place
from turnstiled.config import Config
from turnstiled.manager import ReadyReport
from turnstiled.protocol import Handshake
from turnstiled.registry import MAX_RESTARTS, LoginState, Registry, SessionState
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
    def ready(self) -> None:
        self.events.manager_ready(self, ReadyReport(1.0, [("core", 1.0)]))

    def fail(self) -> None:
        self.events.manager_failed(self, "it failed")

    def gone(self, status: int = 0) -> None:
        self.events.manager_gone(self, status)


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

    def set_linger(self, on: bool) -> None:
        """As enable-linger / disable-linger do: the file, then the registry."""
        path = self.linger_dir / USER.name
        if on:
            path.parent.mkdir(exist_ok=True)
            path.touch()
        else:
            path.unlink()
        self.reg.linger_changed(USER)

    def close_all(self) -> None:
        for s in list(self.login().sessions.values()):
            self.reg.close_session(s)


def run(coro):
    return asyncio.run(coro)


def test_a_login_waits_for_its_manager_and_is_answered(tmp_path):
    async def main():
        h = Harness(tmp_path)
        s1 = h.open()
        assert h.manager.started and h.state() == "starting" and not s1.outcome.done()
        s2 = h.open()  # joins the same start
        assert len(h.managers) == 1
        h.manager.ready()
        assert s1.outcome.result() is s2.outcome.result() is True
        assert h.state() == h.published() == "ready"
        s3 = h.open()
        assert s3.outcome.result() is True  # answered at once
        h.close_all()
        assert h.state() == "stopping" and h.manager.stops == 1
        h.manager.gone()
        assert h.state() == "ended" and h.published() is None
        assert not os.path.exists(tmp_path / "user" / str(USER.uid))
    run(main())


def _into(h: Harness, state: str) -> None:
    h.open()
    if state == "ready":
        h.manager.ready()
    elif state == "stopping":
        h.manager.ready()
        h.close_all()
    elif state == "failed":
        h.manager.fail()
    assert h.login().state == state


# state x event: the Login's public state after, and how many managers were
# made in all. Each row is one combination; none is left out.
TABLE = {
    ("starting", "open"): ("starting", 1),
    ("starting", "close"): ("stopping", 1),
    ("starting", "ready"): ("ready", 1),
    ("starting", "fail"): ("failed", 1),
    ("starting", "gone"): ("failed", 1),
    ("ready", "open"): ("ready", 1),
    ("ready", "close"): ("stopping", 1),
    ("ready", "ready"): ("ready", 1),
    ("ready", "fail"): ("ready", 1),
    ("ready", "gone"): ("starting", 2),  # a crash: restarted
    ("stopping", "open"): ("stopping", 1),  # and a fresh start once it is gone
    ("stopping", "close"): ("stopping", 1),
    ("stopping", "ready"): ("stopping", 1),
    ("stopping", "fail"): ("stopping", 1),
    ("stopping", "gone"): ("ended", 1),
    ("failed", "open"): ("failed", 1),
    ("failed", "close"): ("failed", 1),
    ("failed", "ready"): ("failed", 1),
    ("failed", "fail"): ("failed", 1),
    ("failed", "gone"): ("failed", 1),  # its session still open: it ends with it
}


@pytest.mark.parametrize(("state", "event"), sorted(TABLE))
def test_every_state_and_event(tmp_path, state, event):
    async def main():
        h = Harness(tmp_path)
        _into(h, state)
        if event == "open":
            h.open()
        elif event == "close":
            h.close_all()
        else:
            getattr(h.manager, event)()
        after, managers = TABLE[(state, event)]
        assert (h.state(), len(h.managers)) == (after, managers)
        assert h.published() == (None if after == "ended" else after)
        # Whatever happened, closing every session and letting each manager
        # go ends the Login: nothing is left behind.
        for _ in range(3):
            if h.login() is None:
                break
            h.close_all()
            if h.login() is not None and h.login().manager is not None:
                h.login().manager.gone()
        assert h.state() == "ended" and h.reg.sessions == {}
        assert not list((tmp_path / "state" / "users").iterdir())
        assert not list((tmp_path / "state" / "sessions").iterdir())
    run(main())


def test_a_login_during_the_stop_gets_a_fresh_manager(tmp_path):
    async def main():
        h = Harness(tmp_path)
        _into(h, "stopping")
        s = h.open()
        old = h.manager
        old.gone()
        assert len(h.managers) == 2 and h.manager is not old and h.manager.started
        assert h.state() == "starting" and not s.outcome.done()
        h.manager.ready()
        assert s.outcome.result() is True
    run(main())


def test_crashes_are_restarted_up_to_the_limit(tmp_path):
    async def main():
        h = Harness(tmp_path)
        _into(h, "ready")
        for i in range(MAX_RESTARTS):
            h.manager.gone(137)
            assert h.state() == "starting" and len(h.managers) == i + 2
            h.manager.ready()
        h.manager.gone(137)
        assert h.state() == "failed" and len(h.managers) == MAX_RESTARTS + 1
        assert "not restarting" in h.reg.failures[USER.uid][1]
    run(main())


def test_the_stop_delay_keeps_the_manager_and_a_login_cancels_it(tmp_path):
    async def main():
        h = Harness(tmp_path, user_stop_delay=0.05)
        _into(h, "ready")
        h.close_all()
        assert h.state() == "lingering" and h.manager.stops == 0
        await asyncio.sleep(0.02)
        h.open()  # back within the delay: the same manager, answered at once
        assert h.state() == "ready" and len(h.managers) == 1
        await asyncio.sleep(0.1)
        assert h.manager.stops == 0
        h.close_all()
        await asyncio.sleep(0.1)
        assert h.state() == "stopping" and h.manager.stops == 1
    run(main())


def test_linger_keeps_the_manager_and_turning_it_off_stops_it(tmp_path):
    async def main():
        h = Harness(tmp_path)
        h.set_linger(True)
        _into(h, "ready")
        h.close_all()
        assert h.state() == "lingering" and h.manager.stops == 0
        h.set_linger(False)
        assert h.state() == "stopping" and h.manager.stops == 1
        h.manager.gone()
        assert h.state() == "ended"
    run(main())


def test_transitions_go_through_one_place(tmp_path):
    async def main():
        h = Harness(tmp_path)
        _into(h, "failed")
        with pytest.raises(AssertionError, match="failed -> stopping"):
            h.reg._set_state(h.login(), LoginState.STOPPING)
    run(main())


def test_a_joiner_gone_during_the_stop_starts_nothing(tmp_path):
    async def main():
        h = Harness(tmp_path)
        _into(h, "stopping")
        h.open()
        h.close_all()  # gave up before the old manager was gone
        h.manager.gone()
        assert h.state() == "ended" and len(h.managers) == 1
    run(main())


def test_linger_turned_on_during_the_stop_keeps_a_manager(tmp_path):
    async def main():
        h = Harness(tmp_path)
        _into(h, "stopping")
        h.set_linger(True)
        h.manager.gone()
        assert h.state() == "starting" and len(h.managers) == 2
        h.manager.ready()
        assert h.state() == "lingering"
    run(main())


def test_listeners_hear_each_change_once_and_in_order(tmp_path):
    async def main():
        h = Harness(tmp_path)
        h.open()  # a new Login starts its manager, and the session joins it
        assert h.heard == [("session_opened", "1"), ("login_changed", "starting")]
        h.heard.clear()
        h.manager.ready()
        h.open()
        assert h.heard == [("login_changed", "ready"), ("session_opened", "2"),
                           ("login_changed", "ready")]
        h.heard.clear()
        h.close_all()  # one entry point per session
        assert h.heard == [("session_closed", "1"), ("login_changed", "ready"),
                           ("session_closed", "2"), ("login_changed", "stopping")]
        h.heard.clear()
        h.manager.gone()  # an ended Login is not also "changed"
        assert h.heard == [("login_ended", USER.name)]
    run(main())


def test_linger_changes_reach_the_listeners(tmp_path):
    async def main():
        h = Harness(tmp_path)
        _into(h, "ready")
        h.heard.clear()
        h.set_linger(True)
        assert h.heard == [("login_changed", "ready")]
        text = (tmp_path / "state" / "users" / str(USER.uid)).read_text()
        assert "LINGER=1\n" in text
    run(main())


def test_a_failing_listener_breaks_nothing(tmp_path, caplog):
    class Broken:
        def __getattr__(self, name):
            def fail(subject):
                raise RuntimeError(name)
            return fail

    async def main():
        h = Harness(tmp_path)
        h.reg.listeners.insert(0, Broken())
        s = h.open()
        h.manager.ready()
        assert s.outcome.result() is True and h.published() == "ready"
        h.close_all()
        h.manager.gone()
        assert h.state() == "ended" and h.published() is None
    run(main())
    assert "Broken: login_changed failed" in caplog.text


# -- sessions tracked by cgroups

def _tracked(tmp_path, procs: int = 2, **config) -> tuple[Harness, FakeTracking]:
    groups = FakeTracking(procs)
    h = Harness(tmp_path, groups=groups, **config)
    return h, groups


def _session_state(h: Harness, s) -> str:
    if h.reg.sessions.get(s.id) is not s:
        return "ended"
    return s.state.value


# (session state, whether its group holds processes, event) -> (the
# session's state after, the Login's public state after, how many times
# its group was ended). One session, a ready manager; each row one case.
SESSION_TABLE = {
    ("open", True, "close"): ("closing", "ready", 0),
    ("open", False, "close"): ("ended", "stopping", 0),
    ("open", True, "emptied"): ("open", "ready", 0),  # the connection holds it
    ("open", True, "terminate"): ("closing", "ready", 1),
    ("open", False, "terminate"): ("ended", "stopping", 1),
    ("closing", True, "close"): ("closing", "ready", 0),
    ("closing", True, "emptied"): ("ended", "stopping", 0),
    ("closing", True, "terminate"): ("closing", "ready", 1),
}


@pytest.mark.parametrize(("state", "populated", "event"), sorted(SESSION_TABLE))
def test_every_session_state_and_event(tmp_path, state, populated, event):
    async def main():
        h, groups = _tracked(tmp_path, procs=2 if populated else 0)
        s = h.open()
        h.manager.ready()
        closed = []
        s.close_connection = lambda: closed.append(s.id)
        if state == "closing":
            h.reg.close_session(s)
        assert s.state == state
        group = groups.sessions[s.id]
        if event == "close":
            h.reg.close_session(s)
        elif event == "emptied":
            group.empty()
        else:
            h.reg.terminate_session(s)
            assert closed == [s.id]
        after, login_after, ends = SESSION_TABLE[(state, populated, event)]
        assert (_session_state(h, s), h.state(), group.ends) == (after, login_after, ends)
        published = read_kv(h.state_dir / "sessions" / s.id)
        # Published as logind has it: an open session without seats is active.
        assert (published or {}).get("STATE", "ended") == {"open": "active"}.get(after, after)
        assert group.released == (after == "ended")
        # However it got here, the group emptying and the connection
        # closing end it, and the manager with it.
        group.empty()
        h.reg.close_session(s)
        assert _session_state(h, s) == "ended" and h.state() == "stopping"
    run(main())


def test_closing_is_heard_and_can_only_follow_open(tmp_path):
    async def main():
        h, groups = _tracked(tmp_path)
        s = h.open()
        h.manager.ready()
        h.heard.clear()
        h.reg.close_session(s)
        assert h.heard == [("session_changed", "closing"), ("login_changed", "ready")]
        h.heard.clear()
        groups.sessions[s.id].empty()
        assert h.heard[0] == ("session_closed", s.id)
        with pytest.raises(AssertionError, match="closing -> closing"):
            h.reg._set_session_state(s, SessionState.CLOSING)
    run(main())


@pytest.mark.parametrize(("kill", "excluded", "ends"), [
    (True, "root", 1), (True, f"root {USER.name}", 0), (False, "root", 0)])
def test_kill_user_processes_ends_the_group_at_logout(tmp_path, kill, excluded, ends):
    async def main():
        h, groups = _tracked(tmp_path, kill_user_processes=kill,
                             kill_exclude_users=tuple(excluded.split()))
        s = h.open()
        h.manager.ready()
        h.reg.close_session(s)
        assert s.state == "closing" and groups.sessions[s.id].ends == ends
    run(main())


def test_a_closing_session_keeps_the_manager_and_its_end_starts_the_stop_delay(tmp_path):
    async def main():
        h, groups = _tracked(tmp_path, user_stop_delay=0.05)
        s = h.open()
        h.manager.ready()
        h.reg.close_session(s)
        await asyncio.sleep(0.1)  # longer than the delay: it has not started
        assert h.state() == "ready" and h.manager.stops == 0
        groups.sessions[s.id].empty()
        assert h.state() == "lingering" and h.manager.stops == 0
        await asyncio.sleep(0.1)
        assert h.state() == "stopping" and h.manager.stops == 1
    run(main())


def test_a_login_while_another_session_is_closing_shares_the_manager(tmp_path):
    async def main():
        h, groups = _tracked(tmp_path)
        old = h.open(leader=10)
        h.manager.ready()
        h.reg.close_session(old)
        new = h.open(leader=11)
        assert new.outcome.result() is True and len(h.managers) == 1
        groups.sessions[old.id].empty()
        assert h.state() == "ready" and h.manager.stops == 0
        h.reg.close_session(new)
        groups.sessions[new.id].empty()
        assert h.state() == "stopping"
    run(main())


def test_linger_keeps_the_manager_when_the_closing_session_ends(tmp_path):
    async def main():
        h, groups = _tracked(tmp_path)
        h.set_linger(True)
        s = h.open()
        h.manager.ready()
        h.reg.close_session(s)
        groups.sessions[s.id].empty()
        assert h.state() == "lingering" and h.manager.stops == 0
    run(main())


def test_a_manager_crash_while_only_closing_sessions_remain_restarts_it(tmp_path):
    async def main():
        h, groups = _tracked(tmp_path)
        s = h.open()
        h.manager.ready()
        h.reg.close_session(s)
        h.manager.gone(137)
        assert h.state() == "starting" and len(h.managers) == 2
    run(main())


def test_terminate_user_stops_the_manager_without_the_delay_once_the_groups_empty(tmp_path):
    async def main():
        h, groups = _tracked(tmp_path, user_stop_delay=10.0)
        a, b = h.open(leader=10), h.open(leader=11)
        h.manager.ready()
        h.reg.terminate_user(USER.uid)
        assert a.state == b.state == "closing" and h.manager.stops == 0
        assert groups.sessions[a.id].ends == groups.sessions[b.id].ends == 1
        groups.sessions[a.id].empty()
        assert h.manager.stops == 0
        groups.sessions[b.id].empty()
        assert h.state() == "stopping" and h.manager.stops == 1
    run(main())


def test_a_new_login_after_terminate_user_brings_the_stop_delay_back(tmp_path):
    async def main():
        h, groups = _tracked(tmp_path, user_stop_delay=10.0)
        a = h.open(leader=10)
        h.manager.ready()
        h.reg.terminate_user(USER.uid)
        b = h.open(leader=11)
        groups.sessions[a.id].empty()
        h.reg.close_session(b)
        groups.sessions[b.id].empty()
        assert h.state() == "lingering" and h.manager.stops == 0
    run(main())


def test_pid_to_session_is_the_groups_word_with_them_and_a_guess_without(tmp_path):
    async def main():
        h, groups = _tracked(tmp_path)
        s = h.open(leader=os.getppid())
        assert h.reg.session_of_pid(os.getppid()) is s
        assert h.reg.session_of_pid(os.getpid()) is None  # not in its group
        groups.places[4242] = Place(USER.uid, None)  # a manager's process
        assert h.reg.session_of_pid(4242) is None
        assert h.reg.login_of_pid(4242) is h.login()
    run(main())
    # Without groups: the nearest ancestor leading a session.
    tmp = tmp_path / "untracked"
    tmp.mkdir()

    async def untracked():
        h = Harness(tmp)
        s = h.open(leader=os.getppid())
        assert h.reg.session_of_pid(os.getpid()) is s
        assert h.reg.login_of_pid(os.getpid()) is h.login()
    run(untracked())


def test_kill_session_signals_its_group_and_without_one_its_leaders_tree(tmp_path):
    async def main():
        h, groups = _tracked(tmp_path)
        s = h.open()
        assert h.reg.kill_session(s, 15) == 2 and groups.sessions[s.id].signals == [15]
        h.manager.ready()
        assert h.reg.kill_user(USER.uid, 1) == 2 + 1  # the session's and the manager's
    run(main())
    tmp = tmp_path / "untracked"
    tmp.mkdir()

    async def untracked():
        h = Harness(tmp)
        # A real leader with a child: both are signalled (SIGCONT harms neither).
        leader = subprocess.Popen(["sh", "-c", "sleep 30 & wait"])
        try:
            wait_for(lambda: _children(leader.pid), 5)
            s = h.open(leader=leader.pid)
            assert h.reg.kill_session(s, signal.SIGCONT) == 2
            assert h.reg.kill_session(s, signal.SIGCONT, leader_only=True) == 1
        finally:
            for pid in _children(leader.pid) + [leader.pid]:
                os.kill(pid, signal.SIGKILL)
            leader.wait(5)
    run(untracked())


def _children(pid: int) -> list[int]:
    with open(f"/proc/{pid}/task/{pid}/children") as f:
        return [int(p) for p in f.read().split()]
