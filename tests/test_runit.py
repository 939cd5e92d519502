"""The runit backend end to end: real runsvdir/runsv/sv from Debian, real
users, the real libpam loading pam_turnstile.so, the real daemon."""

from __future__ import annotations

import fcntl
import os
import signal
import subprocess
import sys
import time

import pytest
from burst import OK, Burst, tally
from helpers import PAM_SESSION_ERR, procs_of, read_kv, status_of, wait_for, wait_gone
from pamclient import PamFailure, PamLogin
from runit import Services, log_in_and_out, one_core_service, runsvdirs
from users import setpriv


@pytest.fixture
def venv_bin():
    return os.path.dirname(sys.executable)


@pytest.fixture
def runit_daemon(daemon):
    def start(**overrides):
        overrides.setdefault("backend", "runit")
        return daemon(**overrides)
    return start


def test_login_waits_for_core_services(runit_daemon, test_user, pam_module):
    sv = Services(test_user)
    sv.add("a", "exec sleep infinity")
    sv.add("b", "sleep 0.3\nexec sleep infinity")
    # c is up once its check passes, 0.6 s after it starts
    sv.add("c", "rm -f ../c.ok; (sleep 0.6; touch ../c.ok) &\nexec sleep infinity",
           check="[ -e ../c.ok ]")
    # d is not core: it takes 5 s and must not delay the login
    sv.add("d", "rm -f ../d.ok; (sleep 5; touch ../d.ok) &\nexec sleep infinity",
           check="[ -e ../d.ok ]")
    sv.core("a", "b", "c")
    sv.own()
    d = runit_daemon()
    service = d.login_service()
    t0 = time.monotonic()
    with PamLogin(service, test_user.name, d.service_dir) as pam:
        env = pam.open()
        waited = time.monotonic() - t0
        for name in ("a", "b", "c"):
            assert sv.sv_status(name).startswith("run:"), sv.sv_status(name)
        assert os.path.exists(os.path.join(sv.dir, "c.ok"))
        assert not os.path.exists(os.path.join(sv.dir, "d.ok"))
        assert 0.6 <= waited < 4, waited
        assert env["XDG_RUNTIME_DIR"] == d.rundir(test_user.uid)
        state = d.user_state(test_user.uid)
        assert state["STATE"] == "ready" and int(state["MANAGER_PID"]) in runsvdirs(
            test_user.uid)
        pam.close()


def _env_service(user) -> Services:
    """user's services: e, a core service that dumps its environment to
    e.env in the service dir."""
    sv = Services(user)
    sv.add("e", "env > ../e.env\nexec sleep infinity", check="[ -s ../e.env ]")
    sv.core("e")
    sv.own()
    return sv


def test_a_second_login_reuses_the_manager(runit_daemon, test_users, pam_module):
    user = test_users[1]
    _env_service(user)
    d = runit_daemon()
    service = d.login_service()
    with PamLogin(service, user.name, d.service_dir) as first:
        first.open()
        [manager] = runsvdirs(user.uid)
        t0 = time.monotonic()
        with PamLogin(service, user.name, d.service_dir) as second:
            second.open()
            fast = time.monotonic() - t0
            assert runsvdirs(user.uid) == [manager]
            assert fast < 0.5, fast
            second.close()
        assert runsvdirs(user.uid) == [manager]  # one session remains
        first.close()


@pytest.fixture
def extra_group(test_users):
    """A throwaway group test_users[1] is a member of: its gid."""
    user = test_users[1]
    group = f"tsdg{os.getpid() % 100000}"
    subprocess.run(["groupadd", group], check=True)
    try:
        subprocess.run(["usermod", "-aG", group, user.name], check=True)
        yield int(subprocess.run(["getent", "group", group], capture_output=True,
                                 text=True).stdout.split(":")[2])
    finally:
        subprocess.run(["gpasswd", "-d", user.name, group], capture_output=True)
        subprocess.run(["groupdel", group], check=True)


def test_the_manager_runs_as_the_user_with_their_groups(runit_daemon, test_users,
                                                        pam_module, extra_group):
    user = test_users[1]
    _env_service(user)
    d = runit_daemon()
    with PamLogin(d.login_service(), user.name, d.service_dir) as pam:
        pam.open()
        [manager] = runsvdirs(user.uid)
        ids = status_of(manager)
        assert ids["Uid"].split() == [str(user.uid)] * 4
        assert ids["Gid"].split() == [str(user.gid)] * 4
        assert set(map(int, ids["Groups"].split())) == {user.gid, extra_group}
        pam.close()


def test_the_users_services_get_the_login_environment(runit_daemon, test_users, pam_module):
    user = test_users[1]
    sv = _env_service(user)
    d = runit_daemon()
    with PamLogin(d.login_service(), user.name, d.service_dir) as pam:
        pam.open()
        env = read_kv(os.path.join(sv.dir, "e.env"))
        assert env["XDG_RUNTIME_DIR"] == d.rundir(user.uid)
        assert env["TURNSTILE_ENV_DIR"] == os.path.join(user.home, ".config", "service-env")
        assert env["HOME"] == user.home and env["USER"] == user.name
        pam.close()


def test_last_logout_stops_everything(runit_daemon, test_user, pam_module):
    sv = Services(test_user)
    sv.add("a", "exec sleep infinity")
    sv.add("b", "trap 'exit 0' TERM\nwhile :; do sleep 0.1; done")
    sv.core("a", "b")
    sv.own()
    d = runit_daemon()
    with PamLogin(d.login_service(), test_user.name, d.service_dir) as pam:
        pam.open()
        assert len(procs_of(test_user.uid)) >= 5  # runsvdir, runsv x3, services
        pam.close()
    t0 = time.monotonic()
    wait_gone(test_user.uid, 10)
    assert time.monotonic() - t0 < 10
    wait_for(lambda: not os.path.exists(d.rundir(test_user.uid)), 5)
    # The runtime dir goes as the Login ends, its state file just after.
    wait_for(lambda: d.user_state(test_user.uid) is None, 5, what="the user's state file to go")


def test_core_service_that_never_comes_up_fails_the_login(runit_daemon, test_user,
                                                          pam_module):
    sv = Services(test_user)
    sv.add("a", "exec sleep infinity")
    sv.add("never", "exec sleep infinity", check="exit 1")
    sv.core("a", "never")
    sv.own()
    d = runit_daemon(login_timeout=2)
    t0 = time.monotonic()
    with PamLogin(d.login_service(), test_user.name, d.service_dir) as pam:
        with pytest.raises(PamFailure):
            pam.open()
        assert pam.code == PAM_SESSION_ERR
    assert time.monotonic() - t0 < 3.0
    wait_gone(test_user.uid, 15)
    assert "not ready after login_timeout" in d.log()
    assert "up so far: a" in d.log()


def test_a_stale_run_status_does_not_count_as_up(runit_daemon, test_user, pam_module):
    # A crash leaves supervise/stat saying "run". Here that service's runsv
    # can never write a fresh one (its lock is held), so only the backend
    # clearing the old file keeps the login from passing on stale news.
    sv = Services(test_user)
    d_svc = sv.add("stale", "exec sleep infinity")
    sv.core("stale")
    os.makedirs(f"{d_svc}/supervise")
    with open(f"{d_svc}/supervise/stat", "w") as f:
        f.write("run\n")
    sv.own()
    lock = os.open(f"{d_svc}/supervise/lock", os.O_RDWR | os.O_CREAT, 0o600)
    try:
        fcntl.flock(lock, fcntl.LOCK_EX)
        d = runit_daemon(login_timeout=2)
        with PamLogin(d.login_service(), test_user.name, d.service_dir) as pam:
            with pytest.raises(PamFailure):
                pam.open()
        assert "not ready after login_timeout" in d.log()
    finally:
        os.close(lock)
    wait_gone(test_user.uid, 15)


def test_a_fifo_for_a_status_file_does_not_hold_the_login(runit_daemon, test_user,
                                                          pam_module):
    # The backend reads each status file before runsvdir starts: a fifo in
    # its place (nothing writes it) must be passed over, not read.
    sv = Services(test_user)
    sv.add("a", "exec sleep infinity")
    sv.core("a")
    d_odd = sv.add("odd", "exec sleep infinity")
    os.makedirs(f"{d_odd}/supervise")
    os.mkfifo(f"{d_odd}/supervise/stat")
    sv.own()
    d = runit_daemon(login_timeout=3)
    with PamLogin(d.login_service(), test_user.name, d.service_dir) as pam:
        pam.open()
        assert d.state_of(test_user.uid) == "ready"
    wait_gone(test_user.uid, 15)


def _kill_the_manager(d, user, restarts: bool) -> None:
    """SIGKILLs user's runsvdir; with restarts, waits for a new one, ready."""
    [old] = wait_for(lambda: runsvdirs(user.uid), 10)
    os.kill(old, signal.SIGKILL)
    if restarts:
        wait_for(lambda: runsvdirs(user.uid) not in ([], [old])
                 and d.state_of(user.uid) == "ready", 10, what="a new manager, ready")


def test_a_killed_manager_is_restarted_and_logins_go_on(runit_daemon, test_user,
                                                        pam_module):
    one_core_service(test_user)
    d = runit_daemon()
    service = d.login_service()
    with PamLogin(service, test_user.name, d.service_dir) as pam:
        pam.open()
        _kill_the_manager(d, test_user, restarts=True)
        with PamLogin(service, test_user.name, d.service_dir) as again:
            again.open()
            again.close()
        pam.close()
    wait_gone(test_user.uid, 10)


def test_a_manager_killed_six_times_is_given_up(runit_daemon, test_user, pam_module):
    one_core_service(test_user)
    d = runit_daemon()
    with PamLogin(d.login_service(), test_user.name, d.service_dir) as pam:
        pam.open()
        for _ in range(5):
            _kill_the_manager(d, test_user, restarts=True)
        _kill_the_manager(d, test_user, restarts=False)
        wait_for(lambda: d.state_of(test_user.uid) == "failed", 10)
        assert "not restarting" in d.log()
        wait_for(lambda: not runsvdirs(test_user.uid), 10)
        pam.close()
    wait_gone(test_user.uid, 10)


def test_login_during_stop_gets_a_fresh_manager(runit_daemon, test_user, pam_module):
    sv = Services(test_user)
    # Takes a second to stop, so the next login lands in the middle of it.
    sv.add("slow", "trap 'sleep 1; exit 0' TERM\nwhile :; do sleep 0.05; done")
    sv.core("slow")
    sv.own()
    d = runit_daemon()
    service = d.login_service()
    with PamLogin(service, test_user.name, d.service_dir) as pam:
        pam.open()
        [old] = runsvdirs(test_user.uid)
        pam.close()
    wait_for(lambda: d.user_state(test_user.uid)["STATE"] == "stopping", 5)
    with PamLogin(service, test_user.name, d.service_dir) as pam:
        pam.open()
        [new] = runsvdirs(test_user.uid)
        assert new != old
        assert sv.sv_status("slow").startswith("run:")
        pam.close()
    wait_gone(test_user.uid, 15)


def test_update_runit_env_reaches_services(runit_daemon, test_user, pam_module, venv_bin):
    sv = Services(test_user)
    sv.add("a", "exec sleep infinity")
    sv.add("uses-env", 'exec chpst -e "$TURNSTILE_ENV_DIR" sh -c '
           '\'echo "FOO=$FOO" > ../foo.out; exec sleep infinity\'', down=True)
    sv.core("a")
    sv.own()
    d = runit_daemon()
    with PamLogin(d.login_service(), test_user.name, d.service_dir) as pam:
        pam.open()
        out = subprocess.run(
            setpriv(test_user, "env", f"HOME={test_user.home}",
                    os.path.join(venv_bin, "turnstile-update-runit-env"), "-c",
                    str(d.config_path), "FOO=bar baz"),
            capture_output=True, text=True, timeout=30)
        assert out.returncode == 0, out.stderr
        env_file = os.path.join(test_user.home, ".config", "service-env", "FOO")
        assert os.stat(env_file).st_uid == test_user.uid
        subprocess.run(["sv", "up", os.path.join(sv.dir, "uses-env")], check=True,
                       timeout=10, capture_output=True)
        out_file = os.path.join(sv.dir, "foo.out")
        wait_for(lambda: os.path.exists(out_file) and open(out_file).read(), 10)
        assert open(out_file).read().strip() == "FOO=bar baz"
        pam.close()


def test_root_login_has_no_manager_by_default(runit_daemon, pam_module):
    d = runit_daemon()
    with PamLogin(d.login_service(), "root", d.service_dir) as pam:
        pam.open()
        state = d.user_state(0)
        assert state["STATE"] == "ready" and state["MANAGER_PID"] == ""
        assert not runsvdirs(0)
        pam.close()


def test_unknown_user_is_refused(runit_daemon, pam_module):
    # pam_get_user succeeds for any name; the module finds no passwd entry.
    d = runit_daemon()
    with PamLogin(d.login_service(), "tsd-no-such-user", d.service_dir) as pam:
        with pytest.raises(PamFailure):
            pam.open()
        assert pam.code == PAM_SESSION_ERR


def test_200_concurrent_cold_logins(runit_daemon, test_users, pam_module):
    users = test_users[2:4]
    for user in users:
        sv = Services(user)
        sv.add("a", "exec sleep infinity")
        sv.add("b", "sleep 0.2\nexec sleep infinity")
        sv.core("a", "b")
        sv.own()
    d = runit_daemon(login_timeout=60)
    burst = Burst(d.login_service(), [users[i % 2].name for i in range(200)], d.service_dir)
    try:
        codes = burst.wait(90)
        assert codes.count(OK) == 200, tally(codes)
        for user in users:
            assert len(runsvdirs(user.uid)) == 1
            assert len(d.user_state(user.uid)["SESSIONS"].split()) == 100
    finally:
        burst.release()
    for user in users:
        wait_gone(user.uid, 15)
        wait_for(lambda u=user: d.user_state(u.uid) is None, 5)


def test_first_ever_login_is_not_held_by_runsvdirs_rescan(runit_daemon, test_user,
                                                          pam_module):
    """The backend creates turnstile-ready/ at a user's first login; runsvdir
    puts off a directory changed within the last second, which must not
    become a second of login time."""
    sv = Services(test_user)
    sv.add("a", "exec sleep infinity")
    sv.own()
    time.sleep(1.1)  # the user's own edits are old news to runsvdir
    d = runit_daemon()
    t0 = time.monotonic()
    with PamLogin(d.login_service(), test_user.name, d.service_dir) as pam:
        pam.open()
        waited = time.monotonic() - t0
        assert os.path.isdir(os.path.join(sv.dir, "turnstile-ready"))
        pam.close()
    assert waited < 0.8, waited


@pytest.mark.parametrize("linked", [False, True], ids=["dir", "symlink"])
def test_a_service_added_just_before_a_login_does_not_hold_it(runit_daemon, test_user,
                                                             pam_module, linked):
    """A core service added in the very second of the login (a provisioning
    script, then a login): runsvdir would sleep a second before its first
    scan of the freshly changed directory. ~/.config/service may be a
    symlink (to a dotfiles checkout, say): the directory's time counts."""
    sv = one_core_service(test_user)
    if linked:
        os.rename(sv.dir, sv.dir + ".real")
        os.symlink(sv.dir + ".real", sv.dir)
        os.utime(sv.dir, (1e9, 1e9), follow_symlinks=False)
        sv.own()
    d = runit_daemon()
    log_in_and_out(d, test_user)  # the readiness service has run before
    wait_gone(test_user.uid, 10)
    late = time.time() % 1
    if late > 0.3:  # the edit and the login in one second
        time.sleep(1.01 - late)
    sv.add("b", "exec sleep infinity")
    sv.core("a", "b")
    sv.own()
    t0 = time.monotonic()
    with PamLogin(d.login_service(), test_user.name, d.service_dir) as pam:
        pam.open()
        waited = time.monotonic() - t0
        assert sv.sv_status("b").startswith("run:"), sv.sv_status("b")
        pam.close()
    assert waited < 0.8, waited


def test_a_service_dir_unchanged_since_the_last_run_is_left_alone(runit_daemon, test_user,
                                                                 pam_module):
    """Only a change since the manager last ran gets its time looked at."""
    sv = one_core_service(test_user)
    d = runit_daemon()
    log_in_and_out(d, test_user)
    wait_gone(test_user.uid, 10)
    before = os.stat(sv.dir).st_mtime_ns
    log_in_and_out(d, test_user)
    wait_gone(test_user.uid, 10)
    assert os.stat(sv.dir).st_mtime_ns == before
