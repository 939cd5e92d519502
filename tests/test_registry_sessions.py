"""The Session state machine on its own, for sessions tracked by cgroups:
the real Registry with a fake manager and fake groups (the test says when
one holds processes and when it empties; tests/fake_registry.py), in
milliseconds and without root. Real groups are in test_cgroups.py."""

from __future__ import annotations

import itertools
import os

import pytest
from fake_registry import USER, FakeTracking, Harness
from helpers import read_kv

from turnstiled.cgroups import Place
from turnstiled.registry import SessionState

pytestmark = pytest.mark.usefixtures("rundir_stand_in")


def _tracked(tmp_path, procs: int = 2, **config) -> tuple[Harness, FakeTracking]:
    groups = FakeTracking(procs)
    h = Harness(tmp_path, groups=groups, **config)
    return h, groups


def _one_session(tmp_path, procs: int = 2, leader: int = 1, **config):
    """A tracked Harness with one session, its manager ready; its group
    holds procs processes."""
    h, groups = _tracked(tmp_path, procs, **config)
    s = h.open(leader)
    h.manager.ready()
    return h, groups, s


def _log_out_and_empty(h: Harness, groups: FakeTracking, s) -> None:
    """s's connection closes, then the last process in its group ends."""
    h.reg.close_session(s)
    groups.sessions[s.id].empty()


def _session_state(h: Harness, s) -> str:
    if h.reg.sessions.get(s.id) is not s:
        return "ended"
    return s.state.value


SESSION_EVENTS = ("close", "emptied", "terminate")

# (session state, whether its group holds processes, event) -> (the
# session's state after, the Login's public state after, how many times
# its group was ended). One session, a ready manager; each row one case.
SESSION_TABLE = {
    ("open", True, "close"): ("closing", "ready", 0),
    ("open", True, "emptied"): ("open", "ready", 0),  # the connection holds it
    ("open", True, "terminate"): ("closing", "ready", 1),
    ("open", False, "close"): ("ended", "stopping", 0),
    # The kernel says a group emptied only when it held processes: this is
    # a group the test empties again, which must change nothing.
    ("open", False, "emptied"): ("open", "ready", 0),
    ("open", False, "terminate"): ("ended", "stopping", 1),
    ("closing", True, "close"): ("closing", "ready", 0),
    ("closing", True, "emptied"): ("ended", "stopping", 0),
    ("closing", True, "terminate"): ("closing", "ready", 1),
}

# A closing session whose group is empty cannot be: a session closes only
# while its group holds processes (Registry.close_session ends it at once
# otherwise), and its group emptying ends it (session_emptied).
CANNOT_HAPPEN = {("closing", False, event) for event in SESSION_EVENTS}


def test_the_session_table_has_every_state_and_event_that_can_happen():
    every = set(itertools.product((s.value for s in SessionState), (True, False),
                                  SESSION_EVENTS))
    assert set(SESSION_TABLE) == every - CANNOT_HAPPEN
    assert CANNOT_HAPPEN < every


@pytest.mark.parametrize(("state", "populated", "event"), sorted(SESSION_TABLE))
def test_every_session_state_and_event(tmp_path, state, populated, event, loop):
    h, groups, s = _one_session(tmp_path, procs=2 if populated else 0)
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


def test_closing_is_heard_and_can_only_follow_open(tmp_path, loop):
    h, groups, s = _one_session(tmp_path)
    h.heard.clear()
    h.reg.close_session(s)
    assert h.heard == [("session_changed", "closing"), ("login_changed", "ready")]
    h.heard.clear()
    groups.sessions[s.id].empty()
    assert h.heard[0] == ("session_closed", s.id)
    with pytest.raises(AssertionError, match="closing -> closing"):
        h.reg._set_session_state(s, SessionState.CLOSING)


@pytest.mark.parametrize(("kill", "excluded", "ends"), [
    (True, "root", 1), (True, f"root {USER.name}", 0), (False, "root", 0)])
def test_kill_user_processes_ends_the_group_at_logout(tmp_path, kill, excluded, ends, loop):
    h, groups, s = _one_session(tmp_path, kill_user_processes=kill,
                                kill_exclude_users=tuple(excluded.split()))
    h.reg.close_session(s)
    assert s.state == "closing" and groups.sessions[s.id].ends == ends


def test_a_closing_session_keeps_the_manager_and_its_end_starts_the_stop_delay(tmp_path, loop):
    h, groups, s = _one_session(tmp_path, user_stop_delay=10.0)
    h.reg.close_session(s)
    assert h.stop_delay_left() is None  # not while the session is closing
    assert h.state() == "ready" and h.manager.stops == 0
    groups.sessions[s.id].empty()
    assert h.state() == "lingering" and h.manager.stops == 0
    assert h.stop_delay_left() is not None
    h.stop_delay_over()
    assert h.state() == "stopping" and h.manager.stops == 1


def test_a_login_while_another_session_is_closing_shares_the_manager(tmp_path, loop):
    h, groups, old = _one_session(tmp_path, leader=10)
    h.reg.close_session(old)
    new = h.open(leader=11)
    assert new.outcome.result() is True and len(h.managers) == 1
    groups.sessions[old.id].empty()
    assert h.state() == "ready" and h.manager.stops == 0
    _log_out_and_empty(h, groups, new)
    assert h.state() == "stopping"


def test_linger_keeps_the_manager_when_the_closing_session_ends(tmp_path, loop):
    h, groups, s = _one_session(tmp_path)
    h.set_linger(True)
    _log_out_and_empty(h, groups, s)
    assert h.state() == "lingering" and h.manager.stops == 0


def test_a_manager_crash_while_only_closing_sessions_remain_restarts_it(tmp_path, loop):
    h, groups, s = _one_session(tmp_path)
    h.reg.close_session(s)
    h.manager.gone(137)
    assert h.state() == "starting" and len(h.managers) == 2


def test_terminate_user_stops_the_manager_without_the_delay_once_the_groups_empty(tmp_path, loop):
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


def test_a_new_login_after_terminate_user_brings_the_stop_delay_back(tmp_path, loop):
    h, groups, a = _one_session(tmp_path, leader=10, user_stop_delay=10.0)
    h.reg.terminate_user(USER.uid)
    b = h.open(leader=11)
    groups.sessions[a.id].empty()
    _log_out_and_empty(h, groups, b)
    assert h.state() == "lingering" and h.manager.stops == 0


def test_pid_to_session_is_the_groups_word(tmp_path, loop):
    h, groups = _tracked(tmp_path)
    s = h.open(leader=os.getppid())
    assert h.reg.session_of_pid(os.getppid()) is s
    assert h.reg.session_of_pid(os.getpid()) is None  # not in its group
    groups.places[4242] = Place(USER.uid, None)  # a manager's process
    assert h.reg.session_of_pid(4242) is None
    assert h.reg.login_of_pid(4242) is h.login()


def test_kill_session_and_kill_user_signal_the_groups(tmp_path, loop):
    h, groups = _tracked(tmp_path)
    s = h.open()
    assert h.reg.kill_session(s, 15) == 2 and groups.sessions[s.id].signals == [15]
    h.manager.ready()
    assert h.reg.kill_user(USER.uid, 1) == 2 + 1  # the session's and the manager's
