"""Many distinct users logging in at once (a shell server after a reboot, a
cron minute), on real runit: every login succeeds with its core service up,
also with both cores busy, where the daemon's loop is slow to answer and the
users' services race it."""

from __future__ import annotations

import os

import pytest
from burst import OK, Burst, CpuHog, tally
from helpers import procs_of, wait_for, wait_gone
from runit import Services, runsvdirs

# Bounded so a lost readiness answer fails the test in seconds, not minutes;
# a healthy login here takes well under a second even on a loaded machine.
LOGIN_TIMEOUT = 30


@pytest.fixture
def burst_daemon(daemon, many_users):
    for user in many_users:
        sv = Services(user)
        sv.add("core", "exec sleep infinity")
        sv.core("core")
        sv.own()
    return daemon(backend="runit", login_timeout=LOGIN_TIMEOUT)


def _assert_logged_in(d, users, sessions_each: int) -> None:
    for user in users:
        state = d.user_state(user.uid)
        assert state["STATE"] == "ready", (user.name, state)
        assert len(state["SESSIONS"].split()) == sessions_each, (user.name, state)
        assert len(runsvdirs(user.uid)) == 1, (user.name, procs_of(user.uid))
        stat = os.path.join(user.home, ".config", "service", "core", "supervise", "stat")
        with open(stat) as f:
            assert f.read().startswith("run"), user.name


def _assert_all_gone(d, users) -> None:
    for user in users:
        wait_gone(user.uid, 20)
        wait_for(lambda u=user: d.user_state(u.uid) is None, 5,
                 what=f"the state file of {user.name} to go")
    assert d.session_ids() == []


def _burst(d, users, names, sessions_each: int) -> None:
    burst = Burst(d.login_service(), names, d.service_dir)
    try:
        codes = burst.wait(LOGIN_TIMEOUT + 30)
        assert codes.count(OK) == len(names), tally(codes)
        _assert_logged_in(d, users, sessions_each)
    finally:
        burst.release()
    _assert_all_gone(d, users)


@pytest.mark.parametrize("load", [False, True], ids=["idle", "loaded"])
def test_40_distinct_users_at_once(burst_daemon, many_users, pam_module, load):
    names = [u.name for u in many_users]
    if load:
        with CpuHog():
            _burst(burst_daemon, many_users, names, 1)
    else:
        _burst(burst_daemon, many_users, names, 1)


def test_200_logins_over_40_users_at_once_loaded(burst_daemon, many_users, pam_module):
    names = [many_users[i % len(many_users)].name for i in range(200)]
    with CpuHog():
        _burst(burst_daemon, many_users, names, 200 // len(many_users))
