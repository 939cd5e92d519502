"""What arrives while a user's manager is still starting: an admin's
terminate, a linger change, a login program that dies. Each must reach the
manager (queued if need be, never dropped) and leave nothing of the user
behind. Real runit, real users, the real daemon."""

from __future__ import annotations

import os
import signal
import threading
import time

import pytest
from helpers import wait_for, wait_gone
from pamclient import PamFailure, PamLogin
from runit import Services, runsvdirs

# The core service comes up this long after it starts: the window in which
# the events below arrive.
SLOW = 3


def slow_core(user) -> Services:
    sv = Services(user)
    sv.add("slow", f"rm -f ../slow.ok; (sleep {SLOW}; touch ../slow.ok) &\nexec sleep infinity",
           check="[ -e ../slow.ok ]")
    sv.core("slow")
    sv.own()
    return sv


def starting(d, uid: int) -> bool:
    return (d.user_state(uid) or {}).get("STATE") == "starting" and bool(runsvdirs(uid))


def assert_nothing_left(d, user) -> None:
    wait_gone(user.uid, 15)
    wait_for(lambda: d.user_state(user.uid) is None, 5, what="the user's state file to go",
             detail=lambda: d.user_state(user.uid))
    assert d.session_ids() == []


def test_terminate_user_while_the_login_waits(daemon, test_user, pam_module):
    slow_core(test_user)
    d = daemon(backend="runit", login_timeout=30)
    outcome: dict[str, object] = {}

    def login() -> None:
        with PamLogin(d.login_service(), test_user.name, d.service_dir) as pam:
            try:
                pam.open(timeout=20)
                outcome["ok"] = True
            except PamFailure as err:
                outcome["code"] = err.code

    t = threading.Thread(target=login)
    t.start()
    wait_for(lambda: starting(d, test_user.uid), 10)
    t0 = time.monotonic()
    assert d.ctl("terminate-user", test_user.name).returncode == 0
    t.join(20)
    assert not t.is_alive()
    assert "ok" not in outcome, "the login went on after terminate-user"
    assert time.monotonic() - t0 < SLOW, "the login waited for the core service"
    assert_nothing_left(d, test_user)
    assert "Traceback" not in d.log()


def test_disable_linger_while_the_lingering_manager_starts(daemon, test_user, pam_module):
    slow_core(test_user)
    d = daemon(backend="runit", login_timeout=30)
    assert d.ctl("enable-linger", test_user.name).returncode == 0
    wait_for(lambda: starting(d, test_user.uid), 10)
    assert d.ctl("disable-linger", test_user.name).returncode == 0
    assert_nothing_left(d, test_user)


@pytest.mark.parametrize("login_timeout", [0, 30])
def test_login_program_killed_while_its_manager_starts(daemon, test_user, pam_module,
                                                       login_timeout):
    """A login given up (the program killed, say by a user's ^C in sshd) leaves
    no manager behind, also with login_timeout = 0 (wait forever)."""
    slow_core(test_user)
    d = daemon(backend="runit", login_timeout=login_timeout)
    service = d.login_service()
    pid = os.fork()
    if pid == 0:
        try:
            with PamLogin(service, test_user.name, d.service_dir) as pam:
                pam.open(timeout=None)
        finally:
            os._exit(0)
    try:
        wait_for(lambda: starting(d, test_user.uid), 10)
    finally:
        os.kill(pid, signal.SIGKILL)
        os.waitpid(pid, 0)
    assert_nothing_left(d, test_user)
