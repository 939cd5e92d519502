"""Next to elogind (`manage_rundir = no`): another program owns the runtime
dir, turnstiled only points the manager at it. Real runit, a real session
bus (dbus-daemon) as a core service, real users, the real daemon.

elogind itself is not run here (it needs its own system bus and cgroup
setup); the test makes the directory exactly as elogind does before a
login, 0700 and owned by the user, and leaves it in place afterwards.
"""

from __future__ import annotations

import os
import shutil
import stat

import pytest
from helpers import read_kv, wait_for, wait_gone
from pamclient import PamLogin
from runit import Services, one_core_service


def elogind_rundir(d, user) -> str:
    path = d.rundir(user.uid)
    os.makedirs(os.path.dirname(path), mode=0o755, exist_ok=True)
    os.mkdir(path, 0o700)
    os.chown(path, user.uid, user.gid)
    return path


def services_with_session_bus(user) -> Services:
    sv = Services(user)
    sv.add("env", "env > ../env.out\nexec sleep infinity", check="[ -s ../env.out ]")
    sv.add("dbus", 'exec dbus-daemon --session --nofork --nopidfile '
           '--address="unix:path=$XDG_RUNTIME_DIR/bus"',
           check='[ -S "$XDG_RUNTIME_DIR/bus" ]')
    sv.core("env", "dbus")
    sv.own()
    return sv


def read_env(sv: Services) -> dict[str, str]:
    return read_kv(os.path.join(sv.dir, "env.out"))


@pytest.fixture
def beside_elogind(daemon, test_user, pam_module):
    """A runit daemon with manage_rundir = no, and test_user's runtime dir
    made as elogind makes it: (daemon, the dir's path)."""
    d = daemon(backend="runit", manage_rundir=False)
    return d, elogind_rundir(d, test_user)


@pytest.mark.skipif(shutil.which("dbus-daemon") is None,
                    reason="dbus-daemon is not installed (Debian package dbus-daemon)")
def test_services_get_the_foreign_rundir_and_a_session_bus(beside_elogind, test_user):
    d, path = beside_elogind
    sv = services_with_session_bus(test_user)
    with PamLogin(d.login_service(), test_user.name, d.service_dir) as pam:
        env = pam.open()
        assert read_env(sv)["XDG_RUNTIME_DIR"] == path
        assert stat.S_ISSOCK(os.lstat(os.path.join(path, "bus")).st_mode)
        assert env["DBUS_SESSION_BUS_ADDRESS"] == f"unix:path={path}/bus"
        # The login's own XDG_RUNTIME_DIR is elogind's to set, not ours.
        assert "XDG_RUNTIME_DIR" not in env
        pam.close()


@pytest.fixture
def logged_in_beside_elogind(beside_elogind, test_user):
    """beside_elogind, test_user logged in (one core service): (daemon, the
    dir's path, the PamLogin)."""
    d, path = beside_elogind
    one_core_service(test_user)
    with PamLogin(d.login_service(), test_user.name, d.service_dir) as pam:
        pam.open()
        yield d, path, pam


def test_user_status_shows_the_foreign_rundir_as_not_managed(logged_in_beside_elogind,
                                                             test_user):
    d, path, _ = logged_in_beside_elogind
    status = d.ctl("user-status", test_user.name).stdout
    assert f"Runtime dir: {path} (not managed by turnstiled)" in status
    assert "missing" not in status


def test_the_foreign_rundir_outlives_the_login_untouched(logged_in_beside_elogind, test_user):
    d, path, pam = logged_in_beside_elogind
    pam.close()
    wait_gone(test_user.uid, 15)
    wait_for(lambda: d.user_state(test_user.uid) is None, 5)
    # elogind's directory: still there, still the user's, untouched.
    st = os.lstat(path)
    assert stat.S_ISDIR(st.st_mode) and st.st_uid == test_user.uid
    assert stat.S_IMODE(st.st_mode) == 0o700


def test_missing_foreign_rundir_is_reported_and_the_login_goes_on(daemon, test_user,
                                                                  pam_module):
    d = daemon(backend="runit", manage_rundir=False)
    path = d.rundir(test_user.uid)
    sv = Services(test_user)
    sv.add("env", "env > ../env.out\nexec sleep infinity", check="[ -s ../env.out ]")
    sv.core("env")
    sv.own()
    with PamLogin(d.login_service(), test_user.name, d.service_dir) as pam:
        env = pam.open()
        assert "XDG_RUNTIME_DIR" not in env
        assert read_env(sv)["XDG_RUNTIME_DIR"] == path
        assert not os.path.exists(path), "turnstiled made a runtime dir it does not manage"
        status = d.ctl("user-status", test_user.name).stdout
        assert "missing when the manager started" in status, status
        assert f"runtime dir {path} of {test_user.name} is missing" in d.log()
        pam.close()
    wait_gone(test_user.uid, 15)
