"""A daemon restart is invisible: sessions, managers and their services
survive kill -9 and SIGTERM, and the next daemon takes them up. Real
daemons, the real fd store and holders, runit, real libpam and users."""

from __future__ import annotations

import os
import signal
import socket
import threading
import time

import pytest
import wire
from dinit import UserDinit
from helpers import procs_of, wait_for, wait_gone
from pamclient import PamFailure, PamLogin
from restart_helpers import (
    end,
    kill9,
    listing,
    managers,
    runit_services,
    sessions,
    start_runit,
    store_answers,
    user_processes,
    user_status,
)
from runit import Services

from turnstiled.registry import MAX_RESTARTS


@pytest.fixture
def runit(daemon):
    return lambda **overrides: start_runit(daemon, **overrides)


def restart(d, runit, how: str, **overrides):
    """Ends d (kill -9 or SIGTERM) and starts the next daemon on the same
    sandbox and config."""
    end(d, how)
    return runit(**overrides)


@pytest.mark.parametrize("how", ["kill", "term"])
def test_a_restart_keeps_every_session_manager_and_service(runit, test_users, pam_module,
                                                            how):
    users = test_users[:3]
    for u in users:
        runit_services(u)
    d = runit()
    service = d.login_service()
    logins = []
    for u, count in zip(users, (2, 2, 1), strict=True):
        for _ in range(count):
            pam = PamLogin(service, u.name, d.service_dir)
            pam.open()
            logins.append((u, pam, d.sessions_of(u.uid)[-1]))
    before_sessions = sessions(d)
    before_listing = listing(d)
    before_status = {u.uid: user_status(d, u) for u in users}
    before_managers = managers(d, users)
    before_procs = user_processes(users)
    assert len(before_sessions) == 5 and all(before_managers.values())
    assert len({sid for _, _, sid in logins}) == 5

    d2 = restart(d, runit, how)
    assert "took up 3 logins, 3 managers and 5 sessions" in d2.log()
    assert sessions(d2) == before_sessions
    # What turnstilectl shows is the same, to the last field.
    assert listing(d2) == before_listing
    assert {u.uid: user_status(d2, u) for u in users} == before_status
    assert managers(d2, users) == before_managers
    assert user_processes(users) == before_procs
    assert {d2.user_state(u.uid)["STATE"] for u in users} == {"ready"}

    # Each logout is seen as before: its session goes, the manager stays
    # until the user's last one, which stops it.
    for n, (u, pam, sid) in enumerate(logins):
        pam.close()
        wait_for(lambda sid=sid: sid not in [s["id"] for s in listing(d2)], 10,
                 f"session {sid} gone from list-sessions", lambda: listing(d2))
        last = all(other is not u for other, _, _ in logins[n + 1:])
        if last:
            wait_for(lambda u=u: d2.user_state(u.uid) is None, 15,
                     f"the login of {u.name} to end", d2.log_tail)
            wait_gone(u.uid, 15)
        else:
            assert managers(d2, [u]) == {u.uid: before_managers[u.uid]}
            assert user_processes([u]) == {u.uid: before_procs[u.uid]}
    assert d2.session_ids() == [] and d2.user_ids() == []


def test_a_login_in_the_gap_waits_for_the_next_daemon(runit, test_users, pam_module):
    first, late = test_users[:2]
    runit_services(first)
    runit_services(late)
    d = runit()
    service = d.login_service()
    keep = PamLogin(service, first.name, d.service_dir)
    keep.open()
    kill9(d)
    result = {}

    def log_in():
        t0 = time.monotonic()
        pam = PamLogin(service, late.name, d.service_dir)
        try:
            result["env"] = pam.open()
        except PamFailure as err:
            result["error"] = err
        result["took"] = time.monotonic() - t0
        result["pam"] = pam

    t = threading.Thread(target=log_in)
    t.start()
    time.sleep(1.0)
    assert t.is_alive(), result  # waiting, not failed
    d2 = runit()
    t.join(30)
    assert "env" in result, (result, d2.log_tail())
    assert result["env"]["XDG_RUNTIME_DIR"] == d2.rundir(late.uid)
    assert result["took"] >= 1.0
    assert d2.user_state(late.uid)["STATE"] == "ready"
    result["pam"].close()
    keep.close()


def test_with_no_daemon_coming_back_a_login_fails_at_its_timeout(runit, test_users,
                                                                  pam_module):
    first, late = test_users[:2]
    runit_services(first)
    d = runit()
    keep = PamLogin(d.login_service(), first.name, d.service_dir)
    keep.open()
    kill9(d)
    service = d.login_service("short", "timeout=2")
    t0 = time.monotonic()
    with PamLogin(service, late.name, d.service_dir) as pam:
        with pytest.raises(PamFailure):
            pam.open()
    assert 1.9 <= time.monotonic() - t0 < 5
    runit()  # takes the first session up, so teardown ends it cleanly
    keep.close()


def test_a_session_whose_login_process_died_in_the_gap_is_closed(runit, test_user,
                                                                  pam_module):
    runit_services(test_user)
    d = runit()
    service = d.login_service()
    # The login program: a process of its own holding the session.
    r, w = os.pipe()
    child = os.fork()
    if child == 0:
        os.close(r)
        try:
            with PamLogin(service, test_user.name, d.service_dir) as pam:
                pam.open()
                os.write(w, b"1")
                time.sleep(3600)
        finally:
            os._exit(0)
    os.close(w)
    assert os.read(r, 1) == b"1"
    os.close(r)
    kill9(d)
    os.kill(child, signal.SIGKILL)
    os.waitpid(child, 0)
    d2 = runit()
    # Taken up, seen closed, and as it was the last one, the manager stops.
    assert wait_for(lambda: d2.user_state(test_user.uid) is None, 15), d2.log_tail()
    assert d2.session_ids() == []
    assert wait_for(lambda: not procs_of(test_user.uid), 15)


def test_sigint_is_a_full_stop(runit, test_user, pam_module):
    runit_services(test_user)
    d = runit()
    pam = PamLogin(d.login_service(), test_user.name, d.service_dir)
    pam.open()
    d.proc.send_signal(signal.SIGINT)
    assert d.proc.wait(20) == 0
    assert wait_for(lambda: not procs_of(test_user.uid), 15)
    assert not os.path.exists(d.socket_path)
    assert wait_for(lambda: not store_answers(d), 5)
    pam.close()


def test_a_second_signal_does_not_cut_a_full_stop_short(runit, test_user, pam_module):
    """Ctrl-C twice, or SIGTERM after SIGINT: the full stop still waits for
    the manager to stop (runsv takes a second for services that ran less)."""
    runit_services(test_user)
    d = runit()
    pam = PamLogin(d.login_service(), test_user.name, d.service_dir)
    pam.open()
    d.proc.send_signal(signal.SIGINT)
    time.sleep(0.2)
    d.proc.send_signal(signal.SIGTERM)
    assert d.proc.wait(20) == 0
    log = d.log()
    assert "still running" not in log, log
    assert f"login of {test_user.name} ended" in log
    pam.close()


@pytest.mark.parametrize("how", ["kill", "term"])
def test_linger_and_the_stop_delay_survive_a_restart(runit, test_users, pam_module, how):
    lingering, leaving = test_users[:2]
    for u in (lingering, leaving):
        runit_services(u)
    d = runit(user_stop_delay=4, linger="maybe")
    os.makedirs(d.sandbox / "linger", exist_ok=True)
    (d.sandbox / "linger" / lingering.name).touch()
    service = d.login_service()
    for u in (lingering, leaving):
        with PamLogin(service, u.name, d.service_dir) as pam:
            pam.open()
            pam.close()
    t_logout = time.monotonic()
    for u in (lingering, leaving):  # leaving: within its stop delay
        assert wait_for(lambda u=u: d.user_state(u.uid)["STATE"] == "lingering", 5)
    before = managers(d, (lingering, leaving))
    assert all(before.values())
    d2 = restart(d, runit, how, user_stop_delay=4, linger="maybe")
    assert d2.user_state(lingering.uid)["STATE"] == "lingering"
    assert d2.user_state(leaving.uid)["STATE"] == "lingering"
    assert managers(d2, (lingering, leaving)) == before
    # The delay runs on from where it was, not from the restart.
    assert wait_for(lambda: d2.user_state(leaving.uid) is None, 10)
    assert 3.5 <= time.monotonic() - t_logout < 7
    assert d2.user_state(lingering.uid)["STATE"] == "lingering"
    assert managers(d2, (lingering,)) == {lingering.uid: before[lingering.uid]}


def test_a_login_waiting_for_its_services_is_answered_by_the_next_daemon(runit, test_user,
                                                                        pam_module):
    runit_services(test_user, delay=3)
    d = runit()
    result = {}

    def log_in():
        pam = PamLogin(d.login_service(), test_user.name, d.service_dir)
        try:
            result["env"] = pam.open()
        except PamFailure as err:
            result["error"] = err
        result["pam"] = pam

    t = threading.Thread(target=log_in)
    t.start()
    assert wait_for(lambda: (d.user_state(test_user.uid) or {}).get("STATE") == "starting", 5)
    time.sleep(0.5)
    kill9(d)
    d2 = runit()
    t.join(20)
    assert "env" in result, (result, d2.log_tail())
    assert d2.user_state(test_user.uid)["STATE"] == "ready"
    result["pam"].close()
    assert wait_for(lambda: d2.user_state(test_user.uid) is None, 15)


def test_services_up_before_a_restart_stay_in_the_readiness_report(runit, test_user,
                                                                  pam_module):
    """s0 comes up at once and is reported to the first daemon; s1 only
    after the restart. The readiness report the second daemon keeps names
    both: what a manager had reported went into its record as it came."""
    sv = Services(test_user)
    sv.add("s0", "exec sleep infinity")
    sv.add("s1", "date +%s > started\nexec sleep infinity",
           "read t < started && [ $(($(date +%s) - t)) -ge 3 ]")
    sv.core("s0", "s1")
    sv.own()
    time.sleep(1.1)  # runsvdir's one-second guard on a freshly edited dir
    d = runit()
    pam = PamLogin(d.login_service(), test_user.name, d.service_dir)
    t = threading.Thread(target=pam.open)
    t.start()
    assert wait_for(lambda: (d.user_state(test_user.uid) or {}).get("STATE") == "starting", 5)
    time.sleep(1)  # s0 is up and reported by now; s1 is two seconds away
    kill9(d)
    d2 = runit()
    t.join(20)
    assert d2.user_state(test_user.uid)["STATE"] == "ready"
    status = d2.ctl("user-status", test_user.name).stdout
    assert "s0 (" in status and "s1 (" in status, status
    pam.close()


def raw_login(d, user) -> socket.socket:
    """A client speaking the wire protocol itself, so a test can stop it
    between any two messages."""
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    sock.settimeout(20)
    sock.connect(d.socket_path)
    sock.sendall(wire.encode_handshake(wire.Facts(uid=user.uid, vtnr=0, remote=False,
                                                  service="raw", type="tty", klass="user")))
    return sock


def test_a_client_told_ready_asks_the_next_daemon_for_nothing_more(runit, test_user,
                                                                   pam_module):
    """Told ready, the client has its environment already (it came with
    OK_DONE); its REQ_ENV reaches the next daemon, which answers nothing
    more and keeps the session."""
    runit_services(test_user)
    d = runit()
    sock = raw_login(d, test_user)
    msg = sock.recv(1)
    while msg == bytes([wire.MSG_OK_WAIT]):
        msg = sock.recv(1)
    assert msg == bytes([wire.MSG_OK_DONE])
    assert sock.recv(1) == bytes([wire.MSG_ENV])
    (length,) = wire.UINT.unpack(sock.recv(wire.UINT.size))
    env = sock.recv(length)
    assert f"XDG_RUNTIME_DIR={d.rundir(test_user.uid)}".encode() in env
    kill9(d)  # told ready; REQ_ENV not sent yet
    d2 = runit()
    sock.sendall(bytes([wire.MSG_REQ_ENV]))
    sock.settimeout(0.5)
    with pytest.raises(TimeoutError):
        sock.recv(64)  # no second OK_DONE or ENV, which would break the protocol
    assert len(d2.session_ids()) == 1, d2.log_tail()
    sock.close()
    wait_for(lambda: d2.user_state(test_user.uid) is None, 15, "the logout")


def test_a_client_still_waiting_is_told_ready_by_the_next_daemon(runit, test_user,
                                                                 pam_module):
    runit_services(test_user, delay=2)
    d = runit()
    sock = raw_login(d, test_user)
    assert sock.recv(1) == bytes([wire.MSG_OK_WAIT])
    kill9(d)
    runit()
    msg = sock.recv(1)
    while msg == bytes([wire.MSG_OK_WAIT]):  # the next daemon may say it again
        msg = sock.recv(1)
    assert msg == bytes([wire.MSG_OK_DONE])
    sock.close()


def test_a_restart_keeps_a_dinit_manager_and_its_services(dinit_setup, test_user):
    u = UserDinit(test_user)
    u.add("a", "type = process", "command = /bin/sleep 1000", boot=True)
    u.own()
    d = dinit_setup.start()
    pam = PamLogin(d.login_service(), test_user.name, d.service_dir)
    pam.open()
    before = user_processes([test_user])
    manager = managers(d, [test_user])
    kill9(d)
    d2 = dinit_setup.start()
    assert "took up 1 logins, 1 managers and 1 sessions" in d2.log()
    assert user_processes([test_user]) == before
    assert managers(d2, [test_user]) == manager
    assert dinit_setup.state(test_user, "a") == "STARTED"
    pam.close()
    wait_gone(test_user.uid, 15)


@pytest.mark.parametrize("how", ["kill", "term"])
def test_restart_counts_survive_a_restart(runit, test_user, pam_module, how):
    runit_services(test_user)
    d = runit()
    pam = PamLogin(d.login_service(), test_user.name, d.service_dir)
    pam.open()

    def restarts(daemon) -> int:
        return user_status(daemon, test_user)["restarts"]

    crashed = int(managers(d, [test_user])[test_user.uid])
    os.kill(crashed, signal.SIGKILL)  # a crash: the daemon starts it again
    wait_for(lambda: managers(d, [test_user])[test_user.uid] not in ("", str(crashed))
             and d.state_of(test_user.uid) == "ready", 15, "the manager's restart")
    assert restarts(d) == 1
    restarted = managers(d, [test_user])
    d2 = restart(d, runit, how)
    assert restarts(d2) == 1
    assert managers(d2, [test_user]) == restarted
    pam.close()
    wait_gone(test_user.uid, 15)


def test_a_manager_given_up_on_is_still_reported_after_a_restart(runit, test_user,
                                                                 pam_module):
    """A manager that died too often is not started again: its Login is
    failed, its session still open, and user-status says why, before a
    restart as after it."""
    runit_services(test_user)
    d = runit()
    pam = PamLogin(d.login_service(), test_user.name, d.service_dir)
    pam.open()
    for _ in range(MAX_RESTARTS + 1):
        crashed = managers(d, [test_user])[test_user.uid]
        os.kill(int(crashed), signal.SIGKILL)
        wait_for(lambda crashed=crashed: managers(d, [test_user])[test_user.uid] != crashed
                 and d.state_of(test_user.uid) in ("ready", "failed"), 15,
                 "the manager's restart or the end of them")
    before = user_status(d, test_user)
    assert before["state"] == "failed" and "not restarting" in before["last_failure"]["reason"]
    d2 = restart(d, runit, "kill")
    assert user_status(d2, test_user) == before
    pam.close()
    wait_for(lambda: d2.user_state(test_user.uid) is None, 15, "the logout")
