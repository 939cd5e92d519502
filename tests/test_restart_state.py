"""What a restarted daemon finds and what it makes of it: session ids that
never repeat, records it cannot take up, state files and runtime dirs a
previous run left. Real daemons, the real fd store and holders, runit,
real libpam and users (the flows themselves: test_restart.py)."""

from __future__ import annotations

import json
import os
import time

import pytest
from helpers import procs_of, wait_for
from pamclient import PamLogin
from restart_helpers import (
    alive,
    end,
    holders,
    kill9,
    listed_sessions,
    runit_services,
    runsvdirs,
    start_runit,
    store_answers,
    store_keep,
    store_records,
    wait_alive_gone,
)

NO_SUCH_UID = 59999


@pytest.fixture
def runit(daemon):
    return lambda **overrides: start_runit(daemon, **overrides)


def test_session_ids_never_repeat_across_a_restart(runit, test_user, pam_module):
    runit_services(test_user)
    d = runit()
    service = d.login_service()
    seen = set()
    for _ in range(3):
        with PamLogin(service, test_user.name, d.service_dir) as pam:
            pam.open()
            seen |= set(d.session_ids())
            pam.close()
    end(d, "kill")
    d2 = runit()
    with PamLogin(service, test_user.name, d2.service_dir) as pam:
        pam.open()
        (new,) = d2.session_ids()
    assert new not in seen and int(new) > max(map(int, seen))


def test_ids_do_not_repeat_with_the_id_file_lost(runit, test_users, pam_module):
    """Without STATE_DIR/session-ids the count would start at 1 again, and
    a new login would take the id of a session taken up, and its place."""
    first, second = test_users[:2]
    runit_services(first)
    runit_services(second)
    d = runit()
    kept = PamLogin(d.login_service(), first.name, d.service_dir)
    kept.open()
    (old,) = d.session_ids()
    kill9(d)
    os.unlink(d.state_dir / "session-ids")
    d2 = runit()
    new = PamLogin(d2.login_service(), second.name, d2.service_dir)
    new.open()
    ids = d2.session_ids()
    assert len(ids) == 2 and old in ids, (ids, d2.log_tail())
    (fresh,) = set(ids) - {old}
    assert int(fresh) > int(old)
    assert {(s[0], s[1]) for s in listed_sessions(d2)} == {(old, first.name),
                                                           (fresh, second.name)}
    # The count moved on is written down, for the daemon after this one.
    assert int((d2.state_dir / "session-ids").read_text()) > int(fresh)
    # The session taken up is still seen to end.
    kept.close()
    wait_for(lambda: d2.session_ids() == [fresh], 10, "the first session's end",
             lambda: d2.session_ids())
    new.close()
    wait_for(lambda: d2.user_ids() == [], 15, "both logins' end")


def _record(d, name: str) -> dict:
    return json.loads(store_records(d)[name])


def _manager_of_another_version(d, uid):
    store_keep(d, f"manager:{uid}", json.dumps({"v": 99}).encode())
    return f"login {uid}: manager:{uid}: a record of another version"


def _holder_of_another_channel_version(d, uid):
    rec = _record(d, f"manager:{uid}")
    assert rec["link"] == 1  # what the daemon recorded at spawn
    rec["link"] = 0
    store_keep(d, f"manager:{uid}", json.dumps(rec).encode())
    return f"login {uid}: its holder speaks channel version 0, this turnstiled 1"


def _login_not_json(d, uid):
    store_keep(d, f"login:{uid}", b"{not json")
    return f"login {uid}: login:{uid}: not JSON"


def _login_of_another_version(d, uid):
    rec = _record(d, f"login:{uid}")
    rec["v"] = 2
    store_keep(d, f"login:{uid}", json.dumps(rec).encode())
    return f"login {uid}: login:{uid}: a record of another version"


def _user_gone(d, uid):
    rec = _record(d, f"login:{uid}")
    rec["uid"] = NO_SUCH_UID
    store_keep(d, f"login:{uid}", json.dumps(rec).encode())
    return f"login {uid}: uid {NO_SUCH_UID} is no longer in the password database"


@pytest.mark.parametrize("spoil", [_manager_of_another_version,
                                   _holder_of_another_channel_version, _login_not_json,
                                   _login_of_another_version, _user_gone],
                         ids=["manager-version", "channel-version", "login-not-json",
                              "login-version", "user-gone"])
def test_a_manager_that_cannot_be_taken_up_is_stopped(runit, test_user, pam_module, spoil):
    runit_services(test_user)
    d = runit()
    pam = PamLogin(d.login_service(), test_user.name, d.service_dir)
    pam.open()
    its_holders = holders(d)
    rundir = d.rundir(test_user.uid)
    assert its_holders and runsvdirs(test_user) and os.path.isdir(rundir)
    kill9(d)
    why = spoil(d, test_user.uid)
    d2 = runit()
    assert f"not taken up: {why}" in d2.log(), d2.log_tail()
    assert wait_alive_gone(its_holders, 15), alive(its_holders)
    wait_for(lambda: not procs_of(test_user.uid), 15, "the manager's end",
             lambda: procs_of(test_user.uid))
    assert not runsvdirs(test_user)
    # Nothing of the login is left: no state, no runtime dir.
    assert d2.user_ids() == [] and d2.session_ids() == []
    assert not os.path.lexists(rundir)
    pam.close()


def test_no_daemon_within_adopt_timeout_stops_every_manager(runit, test_user, pam_module):
    runit_services(test_user)
    d = runit(adopt_timeout=2)
    pam = PamLogin(d.login_service(), test_user.name, d.service_dir)
    pam.open()
    its_holders = holders(d)
    rundir = d.rundir(test_user.uid)
    assert procs_of(test_user.uid) and its_holders
    kill9(d)
    time.sleep(1)
    assert procs_of(test_user.uid), "stopped before adopt_timeout"
    wait_for(lambda: not procs_of(test_user.uid), 15, "the manager's end",
             lambda: procs_of(test_user.uid))
    assert wait_alive_gone(its_holders, 5), alive(its_holders)
    assert not os.path.exists(d.state_dir / "fdstore.sock") or not store_answers(d)
    pam.close()
    # What the dead daemon published is still there, its runtime dir too:
    # the next daemon clears both.
    assert d.user_ids() and d.session_ids() and os.path.isdir(rundir)
    d2 = runit(adopt_timeout=2)
    assert d2.user_ids() == [] and d2.session_ids() == []
    wait_for(lambda: not os.path.lexists(rundir), 5, f"{rundir} removed")
    assert not [n for n in os.listdir(os.path.dirname(rundir)) if n.startswith(".")]


def test_what_a_previous_run_left_is_cleared_at_start(runit, test_users, pam_module, sandbox):
    """State files of no live login or session are removed; so is a runtime
    dir a dead daemon made for a user with no login now, but only one that
    is where this config puts it and owned by its user."""
    kept, left, decoy = test_users[:3]
    runit_services(kept)
    d = runit()
    pam = PamLogin(d.login_service(), kept.name, d.service_dir)
    pam.open()
    (sid,) = d.session_ids()
    kill9(d)
    users, sessions = d.state_dir / "users", d.state_dir / "sessions"
    (sessions / "9999").write_text(f"UID={left.uid}\n")
    (users / "54321").write_text("STATE=ready\n")
    # A runtime dir the dead daemon made for `left`, whose login the store
    # no longer has.
    orphan = d.rundir(left.uid)
    os.mkdir(orphan, 0o700)
    os.chown(orphan, left.uid, left.gid)
    (users / str(left.uid)).write_text(f"RUNTIME={orphan}\nRUNTIME_DIR_MANAGED=1\n")
    # One its file names but this config would not make: left alone.
    elsewhere = sandbox / "elsewhere"
    os.mkdir(elsewhere, 0o700)
    os.chown(elsewhere, decoy.uid, decoy.gid)
    (users / str(decoy.uid)).write_text(f"RUNTIME={elsewhere}\nRUNTIME_DIR_MANAGED=1\n")
    d2 = runit()
    assert d2.session_ids() == [sid]
    assert d2.user_ids() == [str(kept.uid)]
    wait_for(lambda: not os.path.lexists(orphan), 5, f"{orphan} removed")
    assert os.path.isdir(elsewhere) and os.path.isdir(d2.rundir(kept.uid))
    assert f"{elsewhere} is not a runtime directory of uid {decoy.uid}" in d2.log()
    pam.close()
    wait_for(lambda: d2.user_state(kept.uid) is None, 15, "the logout")
