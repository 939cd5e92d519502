"""The real loginctl (systemd 252's) against the daemon's
org.freedesktop.login1 on a private system bus, each command with the
output it should have. loginctl runs in a private mount namespace
(sysbus.loginctl_argv); as a user it runs under that user's uid, from
inside their login where it asks about `self`."""

from __future__ import annotations

import os

import pytest
from busclient import SignalRecorder
from helpers import parse_kv, wait_for


@pytest.fixture
def logged_in(login1, test_users):
    """user 0 logged in on tty3 (VT 3 in front), user 1 without a tty."""
    setup = login1(linger="maybe")
    setup.set_vt(3)
    a = setup.login(test_users[0], "tty3")
    b = setup.login(test_users[1])
    return setup, a, b


def ok(res) -> str:
    if isinstance(res, dict):
        assert res["rc"] == 0, res
        return res["stdout"]
    assert res.returncode == 0, res.stderr
    return res.stdout


def rows(text: str) -> list[list[str]]:
    """A loginctl table's rows, without the header and the footer."""
    lines = [ln for ln in text.splitlines() if ln.strip()]
    return [ln.split() for ln in lines[1:-1]]


def test_list_sessions(logged_in):
    setup, a, b = logged_in
    out = ok(setup.loginctl("list-sessions"))
    assert out.splitlines()[0].split() == ["SESSION", "UID", "USER", "SEAT", "TTY"]
    assert sorted(rows(out)) == sorted([[a.id, str(a.user.uid), a.user.name, "seat0", "tty3"],
                                        # no seat, no tty: empty cells
                                        [b.id, str(b.user.uid), b.user.name]])
    assert out.rstrip().endswith("2 sessions listed.")


def test_list_users(logged_in):
    setup, a, b = logged_in
    out = ok(setup.loginctl("list-users"))
    # Debian's 252 has no STATE column (later versions read State too).
    assert out.splitlines()[0].split() == ["UID", "USER", "LINGER"]
    assert sorted(rows(out)) == sorted([[str(a.user.uid), a.user.name, "no"],
                                        [str(b.user.uid), b.user.name, "no"]])
    assert out.rstrip().endswith("2 users listed.")


def test_list_seats(logged_in):
    setup, _, _ = logged_in
    assert ok(setup.loginctl("list-seats")).split() == ["SEAT", "seat0", "1", "seats",
                                                        "listed."]


def test_show_session(logged_in):
    setup, a, _ = logged_in
    props = parse_kv(ok(setup.loginctl("show-session", a.id)))
    assert props["Id"] == a.id and props["Name"] == a.user.name
    assert props["User"] == str(a.user.uid) and props["Seat"] == "seat0"
    assert props["TTY"] == "tty3" and props["VTNr"] == "3"
    assert props["Leader"] == str(a.pid) and props["Active"] == "yes"
    assert props["State"] == "active" and props["Type"] == "tty"
    assert props["Class"] == "user" and props["Service"] == "login"
    assert props["Remote"] == "no" and props["LockedHint"] == "no"
    # One property, value only (loginctl -P).
    assert ok(setup.loginctl("show-session", a.id, "-P", "Leader")).strip() == str(a.pid)


def test_session_status(logged_in):
    setup, a, _ = logged_in
    out = ok(setup.loginctl("session-status", a.id))
    lines = [ln.strip() for ln in out.splitlines()]
    assert lines[0] == f"{a.id} - {a.user.name} ({a.user.uid})"
    assert lines[1].startswith("Since: ")
    assert lines[2].startswith(f"Leader: {a.pid} (python")
    assert lines[3:] == ["Seat: seat0; vc3", "TTY: tty3",
                         "Service: login; type tty; class user", "State: active"]
    # Without an id: the caller's own session (loginctl asks for session/auto).
    mine = ok(setup.loginctl("session-status", user=a.user, shell=a)).splitlines()
    assert mine[0] == lines[0] and [ln.strip() for ln in mine[3:]] == lines[3:]


def test_show_user_and_user_status(logged_in):
    setup, a, _ = logged_in
    props = parse_kv(ok(setup.loginctl("show-user", a.user.name)))
    assert props["UID"] == str(a.user.uid) and props["Name"] == a.user.name
    assert props["State"] == "active" and props["Linger"] == "no"
    assert props["Sessions"] == a.id and props["Display"] == a.id
    assert props["RuntimePath"] == setup.daemon.rundir(a.user.uid)
    out = ok(setup.loginctl("user-status", a.user.name))
    lines = [ln.strip() for ln in out.splitlines()]
    assert lines[0] == f"{a.user.name} ({a.user.uid})"
    assert lines[1].startswith("Since: ")
    assert lines[2:] == ["State: active", f"Sessions: *{a.id}", "Linger: no"]
    # Without a name, from inside the login: the caller (user/self).
    mine = ok(setup.loginctl("user-status", user=a.user, shell=a))
    assert mine.splitlines()[0] == f"{a.user.name} ({a.user.uid})"


def test_show_seat_and_seat_status(logged_in):
    setup, a, b = logged_in
    props = parse_kv(ok(setup.loginctl("show-seat", "seat0")))
    assert props["Id"] == "seat0" and props["ActiveSession"] == a.id
    assert props["CanTTY"] == "yes" and props["CanGraphical"] == "no"
    assert props["Sessions"] == a.id
    out = ok(setup.loginctl("seat-status", "seat0"))
    assert out.splitlines()[:2] == ["seat0", f"\tSessions: *{a.id}"]


def test_enable_and_disable_linger(logged_in):
    setup, a, b = logged_in
    linger_file = os.path.join(setup.daemon.config["linger_dir"], a.user.name)
    ok(setup.loginctl("enable-linger", a.user.name))
    assert os.path.exists(linger_file)
    assert [a.user.name, "yes"] in [r[1:] for r in rows(ok(setup.loginctl("list-users")))]
    ok(setup.loginctl("disable-linger", a.user.name))
    assert not os.path.exists(linger_file)
    # A user, for themselves (no name: logind takes the caller's uid).
    ok(setup.loginctl("enable-linger", user=b.user))
    assert os.path.exists(os.path.join(setup.daemon.config["linger_dir"], b.user.name))
    ok(setup.loginctl("disable-linger", user=b.user))
    # ... and not for someone else.
    res = setup.loginctl("enable-linger", a.user.name, user=b.user)
    # sd-bus prints AccessDenied as EACCES's text.
    assert res.returncode == 1
    assert "Could not enable linger: Access denied" in res.stderr
    assert not os.path.exists(linger_file)


def test_terminate_session(logged_in):
    setup, a, b = logged_in
    res = setup.loginctl("terminate-session", a.id, user=b.user)
    assert res.returncode == 1 and "Access denied" in res.stderr
    ok(setup.loginctl("terminate-session", a.id))
    wait_for(lambda: [r[0] for r in rows(ok(setup.loginctl("list-sessions")))] == [b.id], 5,
             what="the session gone from list-sessions")


def test_terminate_user(logged_in):
    setup, a, b = logged_in
    ok(setup.loginctl("terminate-user", b.user.name, user=b.user))
    wait_for(lambda: [r[1] for r in rows(ok(setup.loginctl("list-users")))] == [a.user.name],
             5, what="the user gone from list-users")


def test_lock_session(logged_in):
    setup, a, b = logged_in
    with SignalRecorder(setup.address) as rec:
        ok(setup.loginctl("lock-session", a.id))
        # No id, from inside b's login: b's own session.
        ok(setup.loginctl("lock-session", user=b.user, shell=b))
        res = setup.loginctl("lock-session", a.id, user=b.user)
        assert res.returncode == 1 and "Access denied" in res.stderr
        wait_for(lambda: len(rec.named("Lock")) == 2, 5, what="two Lock signals")
        assert sorted(p for p, _, m, _ in rec.signals if m == "Lock") == sorted([a.path,
                                                                                 b.path])
