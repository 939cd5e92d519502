"""The Login state machine on its own, in milliseconds and without root:
the real Registry with a fake manager (tests/fake_registry.py). The real
manager runs in test_runit.py, test_dinit.py and test_holder_death.py;
sessions tracked by cgroups are in test_registry_sessions.py, the registry
on real processes in test_registry_processes.py."""

from __future__ import annotations

import itertools
import os

import pytest
from fake_registry import USER, Harness

from turnstiled.registry import MAX_RESTARTS, LoginState, Registry

pytestmark = pytest.mark.usefixtures("rundir_stand_in")

# The table's Logins have a stop delay, never waited out: it is over when
# the test says so (stop_delay_over).
STOP_DELAY = 10.0


def test_a_login_waits_for_its_manager_and_is_answered(tmp_path, rundir_stand_in, loop):
    h = Harness(tmp_path)
    s1 = h.open()
    assert h.manager.started and h.state() == "starting" and not s1.outcome.done()
    assert rundir_stand_in.made == [str(tmp_path / "user" / str(USER.uid))]
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
    assert len(rundir_stand_in.made) == 1


# Every public state (Login.public_state): the LoginStates, and lingering,
# a ready Login without sessions whose manager is kept.
STATES = (*(s.value for s in LoginState), "lingering")

# Each event, and the Registry entry point it goes through.
EVENTS = {
    "open": "open_session",
    "close": "close_session",  # of every session the Login has
    "progressed": "manager_progressed",
    "ready": "manager_ready",
    "fail": "manager_failed",
    "gone": "manager_gone",
    "linger_on": "linger_changed",
    "linger_off": "linger_changed",
    "terminate_user": "terminate_user",
    "stop_delay_over": "_stop_delay_over",  # run also where no delay runs: it changes nothing
}

# The entry points no column of the table goes through, and why.
NOT_IN_THE_TABLE = {
    "session_emptied": "a session's event: test_registry_sessions.py",
    "terminate_session": "a session's event: test_registry_sessions.py",
    "start_lingering": "makes Logins at daemon start, before any state: test_admin.py",
    "adopt": "takes a Login up from a previous daemon: test_restart.py",
    "_stop_all": "the daemon's stop, which ends every Login whatever its state",
    "batch": "changes nothing: entry points made inside it are heard as one",
}


def _into(h: Harness, state: str) -> None:
    """Brings h's Login into state, with one session unless it lingers."""
    if state == "lingering (linger file)":
        h.set_linger(True)
        state = "lingering"
    h.open()
    if state == "failed":
        h.manager.fail()
    if state in ("ready", "lingering", "stopping"):
        h.manager.ready()
    if state in ("lingering", "stopping"):
        h.close_all()
    if state == "stopping":
        h.stop_delay_over()
    assert h.state() == state


def _apply(h: Harness, event: str) -> None:
    if event == "open":
        h.open()
    elif event == "close":
        h.close_all()
    elif event in ("linger_on", "linger_off"):
        h.set_linger(event == "linger_on")
    elif event == "terminate_user":
        h.reg.terminate_user(USER.uid)
    elif event == "stop_delay_over":
        h.stop_delay_over()
    else:
        getattr(h.manager, {"progressed": "progress"}.get(event, event))()


# (state, event) -> the Login's public state after, how many managers were
# made in all, and how many stops they were asked for in all. (*) A stop
# asked of a manager already stopping: Manager.stop takes it once.
TABLE = {
    ("starting", "open"): ("starting", 1, 0),
    ("starting", "close"): ("stopping", 1, 1),  # no delay for a manager not yet up
    ("starting", "progressed"): ("starting", 1, 0),
    ("starting", "ready"): ("ready", 1, 0),
    ("starting", "fail"): ("failed", 1, 0),
    ("starting", "gone"): ("failed", 1, 0),
    ("starting", "linger_on"): ("starting", 1, 0),
    ("starting", "linger_off"): ("starting", 1, 0),
    ("starting", "terminate_user"): ("stopping", 1, 2),  # asked twice (*)
    ("starting", "stop_delay_over"): ("starting", 1, 0),
    ("ready", "open"): ("ready", 1, 0),
    ("ready", "close"): ("lingering", 1, 0),  # the stop delay runs
    ("ready", "progressed"): ("ready", 1, 0),
    ("ready", "ready"): ("ready", 1, 0),
    ("ready", "fail"): ("ready", 1, 0),
    ("ready", "gone"): ("starting", 2, 0),  # a crash: restarted
    ("ready", "linger_on"): ("ready", 1, 0),
    ("ready", "linger_off"): ("ready", 1, 0),
    ("ready", "terminate_user"): ("stopping", 1, 1),  # without the stop delay
    ("ready", "stop_delay_over"): ("ready", 1, 0),
    ("lingering", "open"): ("ready", 1, 0),  # back within the delay: the same manager
    ("lingering", "close"): ("lingering", 1, 0),
    ("lingering", "progressed"): ("lingering", 1, 0),
    ("lingering", "ready"): ("lingering", 1, 0),
    ("lingering", "fail"): ("lingering", 1, 0),
    ("lingering", "gone"): ("ended", 1, 0),  # no one wants it restarted
    ("lingering", "linger_on"): ("lingering", 1, 0),  # and kept past the delay
    ("lingering", "linger_off"): ("stopping", 1, 1),  # a disable-linger cuts the delay short
    ("lingering", "terminate_user"): ("stopping", 1, 1),
    ("lingering", "stop_delay_over"): ("stopping", 1, 1),
    ("stopping", "open"): ("stopping", 1, 1),  # and a fresh start once it is gone
    ("stopping", "close"): ("stopping", 1, 1),
    ("stopping", "progressed"): ("stopping", 1, 1),
    ("stopping", "ready"): ("stopping", 1, 1),
    ("stopping", "fail"): ("stopping", 1, 1),
    ("stopping", "gone"): ("ended", 1, 1),
    ("stopping", "linger_on"): ("stopping", 1, 1),  # and a fresh start once it is gone
    ("stopping", "linger_off"): ("stopping", 1, 2),  # asked again (*)
    ("stopping", "terminate_user"): ("stopping", 1, 2),  # asked again (*)
    ("stopping", "stop_delay_over"): ("stopping", 1, 2),  # asked again (*)
    ("failed", "open"): ("failed", 1, 0),  # and a fresh start once it is gone
    ("failed", "close"): ("failed", 1, 1),  # stopped; it ends once the manager is gone
    ("failed", "progressed"): ("failed", 1, 0),
    ("failed", "ready"): ("failed", 1, 0),
    ("failed", "fail"): ("failed", 1, 0),
    ("failed", "gone"): ("failed", 1, 0),  # its session still open: it ends with it
    ("failed", "linger_on"): ("failed", 1, 0),
    ("failed", "linger_off"): ("failed", 1, 0),
    ("failed", "terminate_user"): ("failed", 1, 2),  # asked twice (*)
    ("failed", "stop_delay_over"): ("failed", 1, 0),
}

# Lingering because of a linger file rather than the stop delay: where it
# differs, linger holds the manager.
LINGERING_BY_FILE = {
    "open": ("ready", 1, 0),
    "close": ("lingering", 1, 0),
    "progressed": ("lingering", 1, 0),
    "ready": ("lingering", 1, 0),
    "fail": ("lingering", 1, 0),
    "gone": ("starting", 2, 0),  # a crash: restarted, linger wants it
    "linger_on": ("lingering", 1, 0),
    "linger_off": ("stopping", 1, 1),
    "terminate_user": ("lingering", 1, 0),  # terminate-user ends sessions, not linger
    "stop_delay_over": ("lingering", 1, 0),
}


def test_the_table_has_every_state_and_event():
    assert set(TABLE) == set(itertools.product(STATES, EVENTS))
    assert set(LINGERING_BY_FILE) == set(EVENTS)
    entry_points = {name for name, value in vars(Registry).items()
                    if hasattr(value, "__wrapped__")}  # functools.wraps of _entry_point
    assert entry_points == set(EVENTS.values()) | set(NOT_IN_THE_TABLE)


CASES = [*TABLE, *(("lingering (linger file)", event) for event in LINGERING_BY_FILE)]


@pytest.mark.parametrize(("state", "event"), CASES)
def test_every_state_and_event(tmp_path, state, event, loop):
    h = Harness(tmp_path, user_stop_delay=STOP_DELAY)
    _into(h, state)
    _apply(h, event)
    expected = (LINGERING_BY_FILE[event] if state == "lingering (linger file)"
                else TABLE[(state, event)])
    after = h.state()
    assert (after, len(h.managers), sum(m.stops for m in h.managers)) == expected
    assert h.published() == (None if after == "ended" else after)
    # Whatever happened, turning linger off, closing every session, the
    # delay running out and each manager going end the Login: nothing
    # is left behind.
    for _ in range(3):
        if h.login() is None:
            break
        if h.lingers():
            h.set_linger(False)
        h.close_all()
        if h.login() is not None:
            h.stop_delay_over()
        if h.login() is not None and h.login().manager is not None:
            h.login().manager.gone()
    assert h.state() == "ended" and h.reg.sessions == {}
    assert not list((tmp_path / "state" / "users").iterdir())
    assert not list((tmp_path / "state" / "sessions").iterdir())
    assert not (tmp_path / "user" / str(USER.uid)).exists()


def test_a_login_during_the_stop_gets_a_fresh_manager(tmp_path, loop):
    h = Harness(tmp_path)
    _into(h, "stopping")
    s = h.open()
    old = h.manager
    old.gone()
    assert len(h.managers) == 2 and h.manager is not old and h.manager.started
    assert h.state() == "starting" and not s.outcome.done()
    h.manager.ready()
    assert s.outcome.result() is True


def test_crashes_are_restarted_up_to_the_limit(tmp_path, loop):
    h = Harness(tmp_path)
    _into(h, "ready")
    for i in range(MAX_RESTARTS):
        h.manager.gone(137)
        assert h.state() == "starting" and len(h.managers) == i + 2
        h.manager.ready()
    h.manager.gone(137)
    assert h.state() == "failed" and len(h.managers) == MAX_RESTARTS + 1
    assert "not restarting" in h.reg.failures[USER.uid][1]


def test_the_stop_delay_keeps_the_manager_and_a_login_cancels_it(tmp_path, loop):
    h = Harness(tmp_path, user_stop_delay=STOP_DELAY)
    _into(h, "ready")
    h.close_all()
    assert h.state() == "lingering" and h.manager.stops == 0
    assert 0 < h.stop_delay_left() <= STOP_DELAY
    timer = h.login().stop_timer
    h.open()  # back within the delay: the same manager, answered at once
    assert h.state() == "ready" and len(h.managers) == 1
    assert timer.cancelled() and h.stop_delay_left() is None
    h.close_all()  # a new delay, in full
    assert h.state() == "lingering" and h.manager.stops == 0
    h.stop_delay_over()
    assert h.state() == "stopping" and h.manager.stops == 1


def test_linger_keeps_the_manager_and_turning_it_off_stops_it(tmp_path, loop):
    h = Harness(tmp_path)
    h.set_linger(True)
    _into(h, "ready")
    h.close_all()
    assert h.state() == "lingering" and h.manager.stops == 0
    h.set_linger(False)
    assert h.state() == "stopping" and h.manager.stops == 1
    h.manager.gone()
    assert h.state() == "ended"


def test_transitions_go_through_one_place(tmp_path, loop):
    h = Harness(tmp_path)
    _into(h, "failed")
    with pytest.raises(AssertionError, match="failed -> stopping"):
        h.reg._set_state(h.login(), LoginState.STOPPING)


def test_a_joiner_gone_during_the_stop_starts_nothing(tmp_path, loop):
    h = Harness(tmp_path)
    _into(h, "stopping")
    h.open()
    h.close_all()  # gave up before the old manager was gone
    h.manager.gone()
    assert h.state() == "ended" and len(h.managers) == 1


def test_linger_turned_on_during_the_stop_keeps_a_manager(tmp_path, loop):
    h = Harness(tmp_path)
    _into(h, "stopping")
    h.set_linger(True)
    h.manager.gone()
    assert h.state() == "starting" and len(h.managers) == 2
    h.manager.ready()
    assert h.state() == "lingering"


def test_listeners_hear_each_change_once_and_in_order(tmp_path, loop):
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


def test_a_batch_of_reports_is_heard_once_at_its_end(tmp_path, loop):
    h = Harness(tmp_path)
    h.open()
    h.heard.clear()
    with h.reg.batch():  # a holder's burst: three `up` lines and ready's exit
        for _ in range(3):
            h.manager.progress()
        h.manager.ready()
        assert h.heard == []
    assert h.heard == [("login_changed", "ready")]
    h.heard.clear()
    h.manager.progress()  # outside a batch, each report is heard at once
    assert h.heard == [("login_changed", "ready")]


def test_linger_changes_reach_the_listeners(tmp_path, loop):
    h = Harness(tmp_path)
    _into(h, "ready")
    h.heard.clear()
    h.set_linger(True)
    assert h.heard == [("login_changed", "ready")]
    text = (tmp_path / "state" / "users" / str(USER.uid)).read_text()
    assert "LINGER=1\n" in text


def test_a_failing_listener_breaks_nothing(tmp_path, caplog, loop):
    class Broken:
        def __getattr__(self, name):
            def fail(subject):
                raise RuntimeError(name)
            return fail

    h = Harness(tmp_path)
    h.reg.listeners.insert(0, Broken())
    s = h.open()
    h.manager.ready()
    assert s.outcome.result() is True and h.published() == "ready"
    h.close_all()
    h.manager.gone()
    assert h.state() == "ended" and h.published() is None
    assert "Broken: login_changed failed" in caplog.text
