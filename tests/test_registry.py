"""The Login state machine on its own, in milliseconds: the real Registry
with a fake manager (it only records what it is asked, and reports ready,
failed or gone when the test says so). The real manager runs in
test_runit.py, test_dinit.py and test_holder_death.py."""

from __future__ import annotations

import asyncio
import os

import pytest
from helpers import read_kv

from turnstiled.config import Config
from turnstiled.manager import ReadyReport
from turnstiled.protocol import Handshake
from turnstiled.registry import MAX_RESTARTS, LoginState, Registry
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


class Harness:
    def __init__(self, tmp_path, **config) -> None:
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
                            listeners=[StateFiles(state, config), Recorder(self.heard)])
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

    def open(self):
        return self.reg.open_session(USER, FACTS, 1)

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
