"""A holder killed under its manager (the OOM killer, a stray kill -9): the
manager's whole tree goes with it, and a new manager never runs beside the
old one. Real runit, real users, the real daemon and holder."""

from __future__ import annotations

import os
import signal

from helpers import holders_of, procs_of, wait_for, wait_gone
from pamclient import PamLogin
from runit import Services, runsvdirs


def holders(daemon_pid: int) -> list[int]:
    """The daemon's holders of a manager (not the spare, which runs nothing yet)."""
    return holders_of(daemon_pid, managing=True)


def services(user) -> Services:
    sv = Services(user)
    sv.add("a", "exec sleep infinity")
    # A daemonised grandchild: it leaves runsv's tree at once.
    sv.add("daemonised", "setsid sh -c 'exec sleep 1000' </dev/null >/dev/null 2>&1 &\n"
           "exec sleep infinity")
    sv.core("a", "daemonised")
    sv.own()
    return sv


def test_killed_holder_takes_its_manager_and_a_new_one_starts(daemon, test_user, pam_module):
    sv = services(test_user)
    d = daemon(backend="runit")
    with PamLogin(d.login_service(), test_user.name, d.service_dir) as pam:
        pam.open()
        [holder] = holders(d.pid)
        [old_manager] = runsvdirs(test_user.uid)
        old_pids = {pid for pid, _ in procs_of(test_user.uid)}
        assert any("sleep 1000" in cmd for _, cmd in procs_of(test_user.uid))

        os.kill(holder, signal.SIGKILL)
        # Every process of the old manager is gone, the daemonised one too ...
        wait_for(lambda: not old_pids & {p for p, _ in procs_of(test_user.uid)}, 10,
                 what="every process of the old manager to end",
                 detail=lambda: procs_of(test_user.uid))
        # ... and the user, still logged in, gets a fresh manager, alone.
        wait_for(lambda: (d.user_state(test_user.uid) or {}).get("STATE") == "ready"
                 and len(runsvdirs(test_user.uid)) == 1, 15)
        [new_manager] = runsvdirs(test_user.uid)
        assert new_manager != old_manager
        assert sv.sv_status("a").startswith("run:")
        assert "holder of" in d.log() and "died" in d.log()
        assert len(holders(d.pid)) == 1
        pam.close()
    wait_gone(test_user.uid, 15)
    wait_for(lambda: d.user_state(test_user.uid) is None, 5)


def test_killed_holder_during_the_stop_delay_ends_the_login(daemon, test_user, pam_module):
    services(test_user)
    d = daemon(backend="runit", user_stop_delay=30)
    with PamLogin(d.login_service(), test_user.name, d.service_dir) as pam:
        pam.open()
        pam.close()
    wait_for(lambda: (d.user_state(test_user.uid) or {}).get("STATE") == "lingering", 5)
    [holder] = holders(d.pid)
    os.kill(holder, signal.SIGKILL)
    wait_gone(test_user.uid, 10)
    wait_for(lambda: d.user_state(test_user.uid) is None, 5)
    assert holders(d.pid) == []
    # The daemon still serves: a new login gets a new manager.
    with PamLogin(d.login_service(), test_user.name, d.service_dir) as pam:
        pam.open()
        assert len(runsvdirs(test_user.uid)) == 1
        pam.close()
    assert d.ctl("status").returncode == 0
