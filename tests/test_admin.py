"""turnstilectl and the admin socket on a real daemon with real users and
runit managers: both output forms, authorisation, linger, terminate, the
stop delay, and hostile input."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import threading
import time

import pytest
from daemon import CTL
from helpers import fds_of, parse_kv, wait_for, wait_gone
from pamclient import PamLogin
from runit import Services, log_in_and_out, one_core_service, runsvdirs


def with_core_service(user) -> Services:
    sv = one_core_service(user)
    time.sleep(1.1)  # runsvdir skips a directory changed within the last second
    return sv


@pytest.fixture
def runit_login(daemon, test_user, pam_module):
    """test_user logged in, with a runit manager running one core service:
    (daemon, the manager's pid, the session's id)."""
    with_core_service(test_user)
    d = daemon(backend="runit")
    with PamLogin(d.login_service(), test_user.name, d.service_dir) as pam:
        pam.open()
        [manager] = runsvdirs(test_user.uid)
        [sid] = d.session_ids()
        yield d, manager, sid


def test_status_in_both_forms(runit_login):
    d, _, _ = runit_login
    out = d.ctl("status")
    assert out.returncode == 0
    assert "Backend: runit" in out.stdout and "Sessions: 1" in out.stdout
    status = json.loads(d.ctl("--json", "status").stdout)
    assert status["users"] == 1 and status["backend"] == "runit"


def test_list_users_in_both_forms(runit_login, test_user):
    d, manager, sid = runit_login
    out = d.ctl("list-users")
    assert out.stdout.splitlines()[0].split() == [
        "UID", "USER", "STATE", "SESSIONS", "MANAGER", "PID", "BACKEND", "LINGER"]
    row = out.stdout.splitlines()[1].split()
    assert row == [str(test_user.uid), test_user.name, "ready", "1", str(manager),
                   "runit", "no"]
    bare = d.ctl("list-users", "--no-legend").stdout.strip().splitlines()
    assert len(bare) == 1 and bare[0].split()[1] == test_user.name
    [user] = json.loads(d.ctl("--json", "list-users").stdout)
    assert user["manager_pid"] == manager and user["sessions"] == [sid]


def test_list_sessions_in_both_forms(runit_login, test_user):
    d, _, sid = runit_login
    out = d.ctl("list-sessions")
    assert out.stdout.splitlines()[1].split()[:3] == [sid, str(test_user.uid), test_user.name]
    [session] = json.loads(d.ctl("list-sessions", "--json").stdout)
    assert session["service"] == "login" and session["leader"] == os.getpid()


def test_show_user_in_both_forms(runit_login, test_user):
    d, manager, _ = runit_login
    props = parse_kv(d.ctl("show-user", test_user.name).stdout)
    assert props["STATE"] == "ready" and props["MANAGER_PID"] == str(manager)
    assert json.loads(d.ctl("--json", "show-user", str(test_user.uid)).stdout)["uid"] == \
        test_user.uid


def test_show_session(runit_login, test_user):
    d, _, sid = runit_login
    props = parse_kv(d.ctl("show-session", sid).stdout)
    assert props["USER"] == test_user.name and props["SERVICE"] == "login"


def test_user_status_in_both_forms(runit_login, test_user):
    d, manager, _ = runit_login
    out = d.ctl("user-status", test_user.name)
    assert f"Manager: runit, pid {manager}" in out.stdout
    assert "core services: a (" in out.stdout
    data = json.loads(d.ctl("--json", "user-status", test_user.name).stdout)
    assert [s["name"] for s in data["last_ready"]["services"]] == ["a"]
    assert data["last_ready"]["waited_ms"] > 0


def test_what_does_not_exist_is_an_error(daemon):
    d = daemon()
    missing = d.ctl("show-session", "999")
    assert missing.returncode == 1 and "no such session" in missing.stderr
    assert d.ctl("show-user", "root").returncode == 1
    assert d.ctl("no-such-command").returncode == 2


def test_no_daemon_is_one_line_of_error():
    down = subprocess.run(CTL + ["--admin-socket", "/nonexistent/admin.sock", "status"],
                          capture_output=True, text=True, timeout=30)
    assert down.returncode == 1
    assert len(down.stderr.strip().splitlines()) == 1
    assert "/nonexistent/admin.sock" in down.stderr and "running" in down.stderr


@pytest.fixture
def other_logged_in(daemon, test_users):
    """test_users[1] logged in (no backend): (daemon, the session's id)."""
    d = daemon()
    with PamLogin(d.login_service(), test_users[1].name, d.service_dir) as pam:
        pam.open()
        [sid] = d.session_ids()
        yield d, sid


def _lingers(d, user) -> bool:
    return os.path.exists(os.path.join(d.config["linger_dir"], user.name))


def test_a_user_cannot_change_another_users_login(other_logged_in, test_users):
    a, b = test_users[0], test_users[1]
    d, sid = other_logged_in
    out = d.ctl("enable-linger", b.name, user=a)
    assert out.returncode == 1 and "only root" in out.stderr
    assert not _lingers(d, b)
    out = d.ctl("terminate-session", sid, user=a)
    assert out.returncode == 1 and d.session_ids() == [sid]
    assert d.ctl("terminate-user", b.name, user=a).returncode == 1
    assert d.session_ids() == [sid]


def test_a_user_reads_everything_and_lingers_themselves(other_logged_in, test_users):
    a = test_users[0]
    d, _ = other_logged_in
    assert d.ctl("list-sessions", user=a).returncode == 0
    assert d.ctl("enable-linger", user=a).returncode == 0
    assert _lingers(d, a)


def test_root_changes_any_users_login(other_logged_in, test_users):
    b = test_users[1]
    d, sid = other_logged_in
    assert d.ctl("enable-linger", b.name).returncode == 0
    assert _lingers(d, b)
    assert d.ctl("terminate-session", sid).returncode == 0
    wait_for(lambda: not d.session_ids(), 5)


def test_linger_keeps_the_manager_after_logout(daemon, test_user, pam_module):
    with_core_service(test_user)
    d = daemon(backend="runit")
    assert d.ctl("enable-linger", test_user.name).returncode == 0
    manager = log_in_and_out(d, test_user)
    wait_for(lambda: d.state_of(test_user.uid) == "lingering", 5)
    assert runsvdirs(test_user.uid) == [manager]


def test_a_lingering_users_manager_starts_with_the_daemon(daemon, test_user, pam_module):
    with_core_service(test_user)
    d = daemon(backend="runit")
    assert d.ctl("enable-linger", test_user.name).returncode == 0
    wait_for(lambda: d.state_of(test_user.uid) == "lingering", 10)
    assert d.stop() == 0
    wait_gone(test_user.uid, 15)
    d2 = daemon(backend="runit")  # same sandbox, same linger_dir: "boot"
    wait_for(lambda: runsvdirs(test_user.uid), 10)
    wait_for(lambda: d2.state_of(test_user.uid) == "lingering", 10)


def test_disable_linger_stops_a_lingering_manager(daemon, test_user, pam_module):
    with_core_service(test_user)
    d = daemon(backend="runit")
    assert d.ctl("enable-linger", test_user.name).returncode == 0
    wait_for(lambda: d.state_of(test_user.uid) == "lingering" and runsvdirs(test_user.uid), 10)
    assert d.ctl("disable-linger", test_user.name).returncode == 0
    wait_gone(test_user.uid, 15)
    wait_for(lambda: d.user_state(test_user.uid) is None, 5)


def test_terminate_user_ends_the_pam_side_and_the_manager(daemon, test_user, pam_module):
    with_core_service(test_user)
    d = daemon(backend="runit")
    with PamLogin(d.login_service(), test_user.name, d.service_dir) as pam:
        pam.open()
        assert runsvdirs(test_user.uid)

        # The PAM side's end of the session: the module's socket to the
        # daemon, found among this process's fds (dup'ed, so ours to look at).
        conns = []
        for fd in fds_of():
            try:
                sock = socket.socket(fileno=os.dup(fd))
            except OSError:
                continue
            try:
                if sock.family == socket.AF_UNIX and sock.getpeername() == d.socket_path:
                    conns.append(sock)
                    continue
            except OSError:
                pass
            sock.close()
        assert len(conns) == 1
        [conn] = conns
        try:
            conn.recv(1, socket.MSG_PEEK | socket.MSG_DONTWAIT)
            raise AssertionError("the session's connection is readable before terminate")
        except BlockingIOError:
            pass  # open and quiet, as a session should be

        out = d.ctl("terminate-user", test_user.name)
        assert out.returncode == 0
        conn.settimeout(5)
        assert conn.recv(1) == b""  # EOF on the PAM side
        conn.close()
        wait_for(lambda: not d.session_ids(), 5)
        wait_gone(test_user.uid, 15)
        pam.close()


def test_a_login_within_the_stop_delay_reuses_the_manager(daemon, test_user, pam_module):
    with_core_service(test_user)
    d = daemon(backend="runit", user_stop_delay=2)
    manager = log_in_and_out(d, test_user)
    time.sleep(0.5)
    assert d.state_of(test_user.uid) == "lingering"
    assert log_in_and_out(d, test_user) == manager


def test_the_manager_stops_once_the_stop_delay_is_over(daemon, test_user, pam_module):
    with_core_service(test_user)
    d = daemon(backend="runit", user_stop_delay=2)
    log_in_and_out(d, test_user)
    t0 = time.monotonic()
    wait_gone(test_user.uid, 10)
    assert time.monotonic() - t0 > 1.5  # the delay held it


def _lines(sock: socket.socket, count: int) -> list[dict]:
    data = b""
    sock.settimeout(10)
    while data.count(b"\n") < count:
        chunk = sock.recv(65536)
        if not chunk:
            break
        data += chunk
    return [json.loads(line) for line in data.splitlines()]


def _admin_connection(d) -> socket.socket:
    sock = socket.socket(socket.AF_UNIX)
    sock.connect(d.admin_socket_path)
    return sock


def test_malformed_admin_lines_each_get_a_bad_request_reply(daemon):
    d = daemon()
    with _admin_connection(d) as bad:
        bad.sendall(b"garbage\n[1,2]\n{\"cmd\":\"nope\"}\n{\"cmd\":\"show-user\",\"args\":[]}\n"
                    b"\xff\xfe\n")
        replies = _lines(bad, 5)
    assert [r["status"] for r in replies] == ["bad-request"] * 5
    assert all(r["ok"] is False and r["error"] for r in replies)


def test_an_overlong_admin_line_gets_an_error_while_others_are_served(daemon):
    d = daemon()
    with _admin_connection(d) as bad, _admin_connection(d) as good:
        bad.sendall(b"x" * 70000 + b"\n")
        good.sendall(b'{"v":1,"cmd":"status"}\n')
        [reply] = _lines(good, 1)
        assert reply["ok"] and reply["data"]["sessions"] == 0
        [over] = _lines(bad, 1)
        assert over["status"] == "bad-request" and "65536" in over["error"]
    assert d.running()


def test_pipelined_requests_are_all_answered_in_order(daemon):
    """Sent at once, far more replies than the socket buffers hold: reading
    pauses while they wait and none is lost or reordered. A last request
    without its newline, then the end of the input, is answered too."""
    d = daemon()
    n = 5000
    requests = b"".join(json.dumps({"cmd": "show-user", "args": {"user": 3_000_000 + i}})
                        .encode() + b"\n" for i in range(n)) + b'{"cmd": "status"}'
    with _admin_connection(d) as sock:
        def send() -> None:
            sock.sendall(requests)
            sock.shutdown(socket.SHUT_WR)

        sender = threading.Thread(target=send)
        sender.start()
        replies = _lines(sock, n + 1)
        sender.join(10)
        assert sock.recv(10) == b""  # and then the daemon closes
    assert [r["error"] for r in replies[:n]] == [f"no such user: {3_000_000 + i}"
                                                 for i in range(n)]
    assert len(replies) == n + 1 and replies[n]["ok"]


def test_a_uid_past_any_machine_integer_is_not_found(daemon):
    d = daemon()
    with _admin_connection(d) as good:
        good.sendall(json.dumps({"cmd": "show-user", "args": {"user": 2**70}}).encode() + b"\n")
        [huge] = _lines(good, 1)
    assert huge["status"] == "not-found"


def test_linger_refused_without_a_managed_rundir(daemon, test_user, pam_module):
    with_core_service(test_user)
    d = daemon(backend="runit", manage_rundir="no")
    out = d.ctl("enable-linger", test_user.name)
    assert out.returncode == 0 and "manage_rundir" in out.stdout
    assert "manage_rundir" in d.ctl("status").stdout
    with PamLogin(d.login_service(), test_user.name, d.service_dir) as pam:
        pam.open()
        pam.close()
    wait_gone(test_user.uid, 15)


def test_linger_enabled_during_the_stop_delay_keeps_the_manager(daemon, test_user,
                                                               pam_module):
    with_core_service(test_user)
    d = daemon(backend="runit", user_stop_delay=2)
    manager = log_in_and_out(d, test_user)
    assert d.ctl("enable-linger", test_user.name).returncode == 0
    time.sleep(3)  # past the delay
    assert runsvdirs(test_user.uid) == [manager]
    assert d.state_of(test_user.uid) == "lingering"
