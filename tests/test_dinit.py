"""The dinit backend (backends/dinit) end to end: a real `dinit`, real
users, the real libpam loading pam_turnstile.so, the real daemon.

The dinit is the one named by $TURNSTILED_TEST_DINIT, else the one on the
test runner's PATH (tests/dinit.py), copied with dinitctl and dinit-monitor
into the sandbox and named as the backend config's dinit_path: what else
the machine has on its PATH is not used. Without a dinit these tests skip
with the reason.

The backend's `run` and `ready` alone, against stand-ins: test_dinit_run.py
and test_dinit_ready.py.
"""

from __future__ import annotations

import os
import re
import stat
import subprocess
import time
from pathlib import Path

import pytest
from dinit import (
    DINIT_OLD_ENV,
    MIN_VERSION,
    DinitSetup,
    UserDinit,
    dinits,
    dotted,
    fake_dinit,
    fake_monitor,
    install_dinit,
    version_of,
)
from helpers import PAM_SESSION_ERR, parse_kv, procs_of, status_of, wait_for, wait_gone
from pamclient import PamFailure, PamLogin


def login(pam: PamLogin, d) -> dict[str, str]:
    """pam.open(), failing with the daemon's log when the login fails."""
    try:
        return pam.open()
    except PamFailure as err:
        pytest.fail(f"{err}; daemon log:\n{d.log_tail(60)}")


# -- logging in and out


def test_login_waits_for_boot_services(dinit_setup, test_user):
    u = UserDinit(test_user)
    u.add("a", "type = process", "command = /bin/sleep 1000", boot=True)
    # b is up 0.5 s after it starts; the login waits for it
    b = u.script("b", 'sleep 0.5; : > "$HOME/b.ok"')
    u.add("b", "type = scripted", f"command = {b}", boot=True)
    # not in boot.d: not started
    u.add("c", "type = process", "command = /bin/sleep 1000")
    u.own()
    d = dinit_setup.start()
    t0 = time.monotonic()
    with PamLogin(d.login_service(), test_user.name, d.service_dir) as pam:
        login(pam, d)
        waited = time.monotonic() - t0
        assert (u.home / "b.ok").exists()
        assert 0.5 <= waited < 5, waited
        for name in ("a", "b", "boot", "login.target", "system"):
            assert dinit_setup.state(test_user, name) == "STARTED", name
        assert dinit_setup.state(test_user, "c") != "STARTED"  # not even loaded
        # the daemon got `up NAME` for each boot.d service
        line = next(ln for ln in d.log().splitlines() if "ready after" in ln)
        assert re.search(r"core services: (?=.*\ba \d)(?=.*\bb \d)", line), line
        pam.close()
    wait_gone(test_user.uid, 10)


def test_the_manager_is_the_users_dinit_on_their_runtime_dir(dinit_setup, test_user):
    u = UserDinit(test_user)
    u.add("a", "type = process", "command = /bin/sleep 1000", boot=True)
    u.own()
    d = dinit_setup.start()
    with PamLogin(d.login_service(), test_user.name, d.service_dir) as pam:
        env = login(pam, d)
        [manager] = dinits(test_user.uid)
        ids = status_of(manager)
        assert ids["Uid"].split() == [str(test_user.uid)] * 4
        assert ids["Gid"].split() == [str(test_user.gid)] * 4
        state = d.user_state(test_user.uid)
        assert state["STATE"] == "ready" and int(state["MANAGER_PID"]) == manager
        assert env["XDG_RUNTIME_DIR"] == d.rundir(test_user.uid)
        # dinit's socket is where the user's own dinitctl looks
        assert stat.S_ISSOCK(os.stat(os.path.join(env["XDG_RUNTIME_DIR"], "dinitctl")).st_mode)
        pam.close()
    wait_gone(test_user.uid, 10)


def test_boot_services_see_the_login_environment(dinit_setup, test_user):
    u = UserDinit(test_user)
    envdump = u.script("envdump", 'env > "$HOME/env.out"')
    u.add("envdump", "type = scripted", f"command = {envdump}", boot=True)
    u.own()
    d = dinit_setup.start()
    with PamLogin(d.login_service(), test_user.name, d.service_dir) as pam:
        login(pam, d)
        svc_env = parse_kv((u.home / "env.out").read_text())
        assert svc_env["HOME"] == test_user.home and svc_env["USER"] == test_user.name
        assert svc_env["XDG_RUNTIME_DIR"] == d.rundir(test_user.uid)
        # dinit_path first on PATH: the dinit under test's own tools win
        assert svc_env["PATH"].split(":")[0] == str(dinit_setup.dinit_dir)
        pam.close()
    wait_gone(test_user.uid, 10)


def test_second_login_reuses_the_manager(dinit_setup, test_users):
    user = test_users[1]
    u = UserDinit(user)
    u.add("a", "type = process", "command = /bin/sleep 1000", boot=True)
    u.own()
    d = dinit_setup.start()
    service = d.login_service()
    with PamLogin(service, user.name, d.service_dir) as first:
        login(first, d)
        [manager] = dinits(user.uid)
        t0 = time.monotonic()
        with PamLogin(service, user.name, d.service_dir) as second:
            login(second, d)
            assert time.monotonic() - t0 < 0.5
            assert dinits(user.uid) == [manager]
            second.close()
        assert dinits(user.uid) == [manager]  # one session remains
        assert dinit_setup.state(user, "a") == "STARTED"
        first.close()
    wait_gone(user.uid, 10)


def test_last_logout_stops_dinit_and_services_in_order(dinit_setup, test_user):
    u = UserDinit(test_user)
    # late depends on early, so dinit stops late first; late takes 0.3 s to
    # stop, so stopping both at once would log early first.
    for name, delay in (("early", "0"), ("late", "0.3")):
        run = u.script(name, f"trap 'sleep {delay}; echo {name} >> \"$HOME/stop.log\"; exit 0' "
                       "TERM\nwhile :; do sleep 0.05; done")
        u.add(name, "type = process", f"command = {run}",
              *(["depends-on = early"] if name == "late" else []))
    (u.boot_dir / "late").symlink_to("../late")
    u.own()
    d = dinit_setup.start()
    with PamLogin(d.login_service(), test_user.name, d.service_dir) as pam:
        login(pam, d)
        assert dinit_setup.state(test_user, "early") == "STARTED"
        assert len(procs_of(test_user.uid)) >= 3  # dinit, early, late
        pam.close()
    wait_gone(test_user.uid, 10)
    assert (u.home / "stop.log").read_text().split() == ["late", "early"]
    d.wait_logged_out(test_user.uid)
    wait_for(lambda: f"login of {test_user.name} ended" in d.log(), 5,
             what="the end of the login in the daemon's log")


# -- boot services that do not start


def _login_fails(d, user) -> float:
    """Logs user in, expecting the session to be refused; how long the
    refusal took, in seconds."""
    t0 = time.monotonic()
    with PamLogin(d.login_service(), user.name, d.service_dir) as pam:
        with pytest.raises(PamFailure):
            pam.open()
        assert pam.code == PAM_SESSION_ERR
    return time.monotonic() - t0


@pytest.mark.parametrize(("description", "logged"), [
    (("type = scripted", "command = /bin/false"),
     ("boot service 'bad' is not started: STOPPED",
      "the backend's ready exited with status 1")),
    (("type = no-such-type",), ("could not start boot",)),
], ids=["it-fails", "broken-description"])
def test_a_boot_service_that_cannot_start_fails_the_login(dinit_setup, test_user, description,
                                                         logged):
    u = UserDinit(test_user)
    u.add("a", "type = process", "command = /bin/sleep 1000", boot=True)
    u.add("bad", *description, boot=True)
    u.own()
    d = dinit_setup.start(login_timeout=20)
    assert _login_fails(d, test_user) < 5  # fails fast, not at login_timeout
    for line in logged:
        assert line in d.log()
    wait_gone(test_user.uid, 10)


def test_boot_service_that_never_starts_times_out_the_login(dinit_setup, test_user):
    u = UserDinit(test_user)
    u.add("a", "type = process", "command = /bin/sleep 1000", boot=True)
    u.add("never", "type = scripted", "command = /bin/sleep 1000", "start-timeout = 0",
          boot=True)
    u.own()
    d = dinit_setup.start(login_timeout=2)
    assert 2 <= _login_fails(d, test_user) < 4
    assert "not ready after login_timeout" in d.log()
    wait_gone(test_user.uid, 15)


# -- the backend's config


def test_configured_boot_dirs_with_blanks(dinit_setup, sandbox, test_user):
    """boot_dir and system_boot_dir from dinit.conf, quoted for dinit."""
    system_services = sandbox / "system services"
    system_boot = sandbox / "system boot.d"
    for p in (system_services, system_boot):
        p.mkdir(mode=0o755)
    (system_services / "sysd").write_text("type = process\ncommand = /bin/sleep 1000\n")
    (system_boot / "sysd").symlink_to(system_services / "sysd")
    u = UserDinit(test_user)
    u.add("a", "type = process", "command = /bin/sleep 1000")
    u.own()
    my_boot = u.home / ".config" / "my boot.d"
    d = dinit_setup.start('boot_dir="$HOME/.config/my boot.d"',
                          f"system_boot_dir='{system_boot}'",
                          f"services_dir5='{system_services}'")
    with PamLogin(d.login_service(), test_user.name, d.service_dir) as pam:
        # made by run, as the user; empty for this first login
        login(pam, d)
        assert my_boot.is_dir() and my_boot.stat().st_uid == test_user.uid
        assert dinit_setup.state(test_user, "sysd") == "STARTED"
        assert dinit_setup.state(test_user, "a") != "STARTED"
        pam.close()
    wait_gone(test_user.uid, 10)
    (my_boot / "a").symlink_to("../dinit.d/a")
    with PamLogin(d.login_service(), test_user.name, d.service_dir) as pam:
        login(pam, d)
        assert dinit_setup.state(test_user, "a") == "STARTED"
        pam.close()
    line = [ln for ln in d.log().splitlines() if "ready after" in ln][-1]
    assert re.search(r"core services: sysd [\d.]+ ms, a [\d.]+ ms\)", line), line
    wait_gone(test_user.uid, 10)


# -- the graphical target


def test_graphical_target_starts_when_a_display_appears(dinit_setup, test_user):
    monitor = dinit_setup.dinit_dir / "dinit-monitor"
    if not monitor.exists() or "--env" not in subprocess.run(
            [monitor, "--help"], capture_output=True, text=True, timeout=10).stdout:
        pytest.skip("needs dinit-monitor with -E (dinit 0.19.1 or later) beside dinit")
    u = UserDinit(test_user)
    u.add("a", "type = process", "command = /bin/sleep 1000", boot=True)
    u.own()
    d = dinit_setup.start()
    with PamLogin(d.login_service(), test_user.name, d.service_dir) as pam:
        login(pam, d)  # does not wait for a display
        assert dinit_setup.state(test_user, "graphical.monitor") == "STARTED"
        assert dinit_setup.state(test_user, "graphical.target").startswith("STARTING")
        res = dinit_setup.ctl(test_user, "setenv", "WAYLAND_DISPLAY=wayland-7")
        assert res.returncode == 0, res.stderr
        wait_for(lambda: dinit_setup.state(test_user, "graphical.target") == "STARTED", 5,
                 what="graphical.target to start",
                 detail=lambda: dinit_setup.state(test_user, "graphical.target"))
        pam.close()
    wait_gone(test_user.uid, 10)


def test_with_the_graphical_target_left_out_the_login_works(daemon, sandbox, real_dinit,
                                                            pam_module, test_user):
    """The real dinit beside a stand-in dinit-monitor without -E
    (fake_monitor): the backend leaves graphical.target out, as it does
    without any dinit-monitor. The stand-in, searched first, keeps a
    dinit-monitor elsewhere on the machine's PATH out of the test."""
    bindir = install_dinit(real_dinit, sandbox / "dinit-bin", monitor=False)
    fake_monitor(bindir, env=False)
    setup = DinitSetup(daemon, bindir)
    u = UserDinit(test_user)
    u.add("a", "type = process", "command = /bin/sleep 1000", boot=True)
    u.own()
    d = setup.start()
    with PamLogin(d.login_service(), test_user.name, d.service_dir) as pam:
        login(pam, d)
        assert setup.state(test_user, "a") == "STARTED"
        srvdir = Path(d.state_dir) / "managers" / str(test_user.uid) / "srv"
        assert not (srvdir / "graphical.target").exists()
        assert f"graphical.target left out: {bindir}/dinit-monitor has no -E" in d.log()
        pam.close()
    wait_gone(test_user.uid, 10)


# -- dinit too old


def _assert_version_error(d, user, found: str) -> None:
    assert _login_fails(d, user) < 5  # fails fast, not at login_timeout
    log = d.log()
    assert f"is dinit {found}; turnstiled's dinit backend needs dinit 0.17.0 or later" in log
    assert "the manager exited with status 69 before it was ready" in log
    wait_gone(user.uid, 10)


def test_dinit_older_than_needed_is_reported_stand_in(daemon, sandbox, pam_module, test_user):
    """A stand-in for an old dinit (fake_dinit) that prints `Dinit version
    0.16.1.` (a real one: see the next test). No real dinit is needed: the
    backend stops at the version check."""
    bindir = sandbox / "old-dinit"
    bindir.mkdir(mode=0o755)
    fake_dinit(bindir, sandbox, version="0.16.1", monitor=None)
    UserDinit(test_user).own()
    setup = DinitSetup(daemon, bindir)
    _assert_version_error(setup.start(login_timeout=20), test_user, "0.16.1")


def test_real_old_dinit_is_reported(daemon, sandbox, pam_module, test_user):
    named = os.environ.get(DINIT_OLD_ENV)
    if not named:
        pytest.skip(f"no old dinit: name one older than 0.17 with {DINIT_OLD_ENV}")
    old = Path(named).resolve()
    version = version_of(old)
    if version is None or version >= MIN_VERSION:
        pytest.skip(f"{DINIT_OLD_ENV}={named} is not a dinit older than 0.17 ({version})")
    UserDinit(test_user).own()
    setup = DinitSetup(daemon, install_dinit(old, sandbox / "old-dinit"))
    _assert_version_error(setup.start(login_timeout=20), test_user, dotted(version))
