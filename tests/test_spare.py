"""The spare holder (turnstiled/children.py): one holder the daemon keeps
started, its PAM stack loaded, for the next cold login. Real daemon, real
runit, real users."""

from __future__ import annotations

import os
import shutil
import signal

import pytest
from c_parts import build_holder
from helpers import children_of, holders_of, proc_state, status_of, wait_for, wait_gone
from pamclient import PamFailure, PamLogin
from runit import Services, one_core_service, runsvdirs


def spares(daemon_pid: int) -> list[int]:
    """The daemon's holders that run no manager."""
    return holders_of(daemon_pid, managing=False)


def the_spare(daemon_pid: int, other_than: int = 0) -> int:
    [pid] = wait_for(lambda: [p for p in spares(daemon_pid) if p != other_than], 10,
                     what="a spare holder", detail=lambda: children_of(daemon_pid))
    return pid


def holder_of_manager(uid: int) -> int:
    [manager] = wait_for(lambda: runsvdirs(uid), 10, what="the user's runsvdir")
    return int(status_of(manager)["PPid"])


@pytest.fixture
def one_service(test_user) -> Services:
    return one_core_service(test_user)


def test_a_cold_login_takes_the_spare_and_a_new_one_is_started(daemon, test_user,
                                                               one_service, pam_module):
    d = daemon(backend="runit")
    spare = the_spare(d.pid)
    with PamLogin(d.login_service(), test_user.name, d.service_dir) as pam:
        pam.open()
        assert holder_of_manager(test_user.uid) == spare
        the_spare(d.pid, other_than=spare)
        pam.close()
    wait_gone(test_user.uid, 15)


def test_an_edit_of_the_managers_pam_stack_reaches_the_next_login(daemon, test_user,
                                                                  one_service, pam_module):
    d = daemon(backend="runit", login_timeout=5)
    spare = the_spare(d.pid)
    # Loaded before this edit, the spare would open a session the stack
    # now refuses.
    (d.sandbox / "pam.d" / "turnstiled").write_text(
        "auth required pam_permit.so\naccount required pam_permit.so\n"
        "session required pam_deny.so\n")
    with PamLogin(d.login_service(), test_user.name, d.service_dir) as pam:
        with pytest.raises(PamFailure):
            pam.open()
    assert "pam_open_session(turnstiled)" in d.log()
    wait_for(lambda: spare not in spares(d.pid), 5, what="the stale spare to exit")
    wait_gone(test_user.uid, 15)


def test_a_spare_of_a_replaced_holder_program_is_not_used(daemon, sandbox, test_user,
                                                          one_service, pam_module):
    program = sandbox / "turnstiled-holder"
    shutil.copy(build_holder(), program)
    d = daemon(backend="runit", holder_path=str(program))
    spare = the_spare(d.pid)
    # As a package upgrade does: the new program is renamed into place.
    shutil.copy(build_holder(), sandbox / "new-holder")
    os.rename(sandbox / "new-holder", program)
    with PamLogin(d.login_service(), test_user.name, d.service_dir) as pam:
        pam.open()
        assert holder_of_manager(test_user.uid) != spare
        pam.close()
    wait_for(lambda: spare not in spares(d.pid), 5, what="the old spare to exit")
    wait_gone(test_user.uid, 15)


def test_a_killed_spare_costs_nothing_but_its_head_start(daemon, test_user,
                                                       one_service, pam_module):
    d = daemon(backend="runit")
    spare = the_spare(d.pid)
    os.kill(spare, signal.SIGKILL)
    wait_for(lambda: spare not in [p for p, _ in children_of(d.pid)], 5)
    with PamLogin(d.login_service(), test_user.name, d.service_dir) as pam:
        pam.open()
        assert holder_of_manager(test_user.uid) != spare
        assert one_service.sv_status("a").startswith("run:")
        pam.close()
    wait_gone(test_user.uid, 15)
    the_spare(d.pid)  # kept again once one was asked for


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM])
def test_the_spare_ends_with_the_daemon(daemon, sig):
    d = daemon(backend="runit")
    spare = the_spare(d.pid)
    os.kill(d.pid, sig)
    assert d.proc.wait(15) == 0
    wait_for(lambda: proc_state(spare) in (None, "Z", "X"), 5, what="the spare to exit")
    assert "spare" not in d.log()  # nothing to report: it ran nothing


@pytest.mark.parametrize("config", [{"backend": "none"},
                                    {"backend": "runit", "spare_holder": False}])
def test_no_spare_without_managers_or_when_turned_off(daemon, config):
    d = daemon(**config)
    assert not holders_of(d.pid)
