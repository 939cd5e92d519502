"""org.freedesktop.login1 on a private system bus: the real daemon, real
logins (libpam, our module, a login process per session), and a D-Bus
client (dbus-fast's) as root, as a test user, and from inside a login.
Every Manager, Session, User and Seat method, property and signal."""

from __future__ import annotations

import json
import os
import signal
import time

import pytest
from busclient import (
    MANAGER,
    PROPERTIES,
    ROOT,
    SEAT,
    SESSION,
    USER,
    CallError,
    SignalRecorder,
)
from helpers import exited, proc_state, wait_for
from login1_harness import session_path, user_path

SEAT0 = "/org/freedesktop/login1/seat/seat0"
DENIED = "org.freedesktop.DBus.Error.AccessDenied"
SESSION_PROPS = {"Id", "User", "Name", "Timestamp", "TimestampMonotonic", "VTNr", "Seat",
                 "TTY", "Display", "Remote", "RemoteHost", "RemoteUser", "Service", "Desktop",
                 "Scope", "Leader", "Audit", "Type", "Class", "Active", "State", "IdleHint",
                 "LockedHint"}
USER_PROPS = {"UID", "GID", "Name", "Timestamp", "RuntimePath", "Service", "Slice", "Display",
              "State", "Sessions", "IdleHint", "Linger"}
SEAT_PROPS = {"Id", "ActiveSession", "CanTTY", "CanGraphical", "Sessions", "IdleHint"}


def error_of(fn, *args) -> CallError:
    with pytest.raises(CallError) as info:
        fn(*args)
    return info.value


@pytest.fixture
def two_logins(login1, test_users):
    """A login of user 0 on tty3 and one of user 1 without a tty."""
    setup = login1()
    a = setup.login(test_users[0], "tty3")
    b = setup.login(test_users[1])
    return setup, a, b


# -- Manager: listing and finding


def test_list_sessions_users_and_seats(two_logins, test_users):
    setup, a, b = two_logins
    ua, ub = test_users[0], test_users[1]
    [sessions] = setup.call(ROOT, MANAGER, "ListSessions")
    assert sorted(sessions) == sorted([
        [a.id, ua.uid, ua.name, "seat0", session_path(a.id)],
        [b.id, ub.uid, ub.name, "", session_path(b.id)]])
    [users] = setup.call(ROOT, MANAGER, "ListUsers")
    assert sorted(users) == sorted([[ua.uid, ua.name, user_path(ua.uid)],
                                    [ub.uid, ub.name, user_path(ub.uid)]])
    assert setup.call(ROOT, MANAGER, "ListSeats") == [[["seat0", SEAT0]]]


def test_get_session_user_and_seat_by_name(two_logins, test_users):
    setup, a, _ = two_logins
    assert setup.call(ROOT, MANAGER, "GetSession", "s", [a.id]) == [a.path]
    assert setup.call(ROOT, MANAGER, "GetUser", "u", [test_users[0].uid]) == \
        [user_path(test_users[0].uid)]
    assert setup.call(ROOT, MANAGER, "GetSeat", "s", ["seat0"]) == [SEAT0]
    err = error_of(setup.call, ROOT, MANAGER, "GetSession", "s", ["999"])
    assert err.name == "org.freedesktop.login1.NoSuchSession"
    err = error_of(setup.call, ROOT, MANAGER, "GetUser", "u", [test_users[3].uid])
    assert err.name == "org.freedesktop.login1.NoSuchUser"
    err = error_of(setup.call, ROOT, MANAGER, "GetSeat", "s", ["seat9"])
    assert err.name == "org.freedesktop.login1.NoSuchSeat"


def test_get_session_and_user_by_pid_follow_the_process_tree(two_logins, test_users):
    setup, a, _ = two_logins
    child = a.spawn(["sleep", "30"])
    for pid in (a.pid, child):
        assert setup.call(ROOT, MANAGER, "GetSessionByPID", "u", [pid]) == [a.path]
        assert setup.call(ROOT, MANAGER, "GetUserByPID", "u", [pid]) == \
            [user_path(test_users[0].uid)]
    # pytest itself is in no session.
    err = error_of(setup.call, ROOT, MANAGER, "GetSessionByPID", "u", [os.getpid()])
    assert err.name == "org.freedesktop.login1.NoSessionForPID"
    err = error_of(setup.call, ROOT, MANAGER, "GetUserByPID", "u", [os.getpid()])
    assert err.name == "org.freedesktop.login1.NoUserForPID"


def test_self_and_auto_are_the_callers_own(two_logins, test_users):
    setup, a, _ = two_logins
    user = test_users[0]

    def inside(path, iface, member, sig="", args=None):
        out = a.run(setup.client_argv(path, iface, member, sig, args))
        assert out["rc"] == 0, out
        return json.loads(out["stdout"])["body"]

    for name in ("", "self", "auto"):
        assert inside(ROOT, MANAGER, "GetSession", "s", [name]) == [a.path]
        assert inside(ROOT, MANAGER, "GetSeat", "s", [name]) == [SEAT0]
    assert inside(ROOT, MANAGER, "GetSessionByPID", "u", [0]) == [a.path]
    assert inside(ROOT, MANAGER, "GetUserByPID", "u", [0]) == [user_path(user.uid)]
    for path in (ROOT + "/session/self", ROOT + "/session/auto"):
        assert inside(path, PROPERTIES, "Get", "ss", [SESSION, "Id"]) == [a.id]
    assert inside(ROOT + "/user/self", PROPERTIES, "Get", "ss", [USER, "UID"]) == [user.uid]
    assert inside(ROOT + "/seat/self", PROPERTIES, "Get", "ss", [SEAT, "Id"]) == ["seat0"]
    # Outside every login there is no self.
    err = error_of(setup.call, ROOT, MANAGER, "GetSession", "s", ["self"])
    assert err.name == "org.freedesktop.login1.NoSessionForPID"
    err = error_of(setup.call, ROOT + "/session/self", PROPERTIES, "GetAll", "s", [""])
    assert err.name == "org.freedesktop.DBus.Error.UnknownObject"


def test_manager_properties(two_logins):
    setup, _, _ = two_logins
    props = setup.props(ROOT)
    assert props["NCurrentSessions"] == 2
    assert props["IdleHint"] is False
    assert props["UserStopDelayUSec"] == 0  # the test daemon's user_stop_delay = 0
    assert props == setup.props(ROOT, MANAGER)


# -- Session


def test_session_properties(two_logins, test_users):
    setup, a, b = two_logins
    user = test_users[0]
    before = time.time()
    props = setup.props(a.path)
    assert SESSION_PROPS <= set(props)
    assert props == setup.props(a.path, SESSION), "GetAll with an empty interface name"
    assert props["Id"] == a.id and props["Name"] == user.name
    assert props["User"] == [user.uid, user_path(user.uid)]
    assert props["Seat"] == ["seat0", SEAT0] and props["VTNr"] == 3 and props["TTY"] == "tty3"
    assert props["Leader"] == a.pid and props["Service"] == "login"
    assert props["Type"] == "tty" and props["Class"] == "user"
    assert props["Remote"] is False and props["RemoteHost"] == "" and props["Scope"] == ""
    assert before - 30 < props["Timestamp"] / 1e6 <= time.time()
    assert 0 < props["TimestampMonotonic"] / 1e6 <= time.monotonic()
    # VT 1 is in front: the session on tty3 is not active; one without a seat is.
    assert (props["Active"], props["State"]) == (False, "online")
    other = setup.props(b.path)
    assert (other["Active"], other["State"], other["Seat"]) == (True, "active", ["", "/"])


def test_the_session_on_the_active_vt_is_active_and_the_change_is_signalled(two_logins):
    setup, a, _ = two_logins
    with SignalRecorder(setup.address) as rec:
        setup.set_vt(3)
        # A regular file raises no POLLPRI (sysfs does): the next read sees it.
        assert setup.props(a.path)["Active"] is True
        wait_for(lambda: rec.changes(a.path), 5, what="PropertiesChanged on the session")
        assert {"Active": True, "State": "active"}.items() <= rec.changes(a.path)[-1].items()
        assert setup.props(SEAT0)["ActiveSession"] == [a.id, a.path]
        wait_for(lambda: rec.changes(SEAT0), 5, what="PropertiesChanged on seat0")
        setup.set_vt(2)
        assert setup.props(a.path)["State"] == "online"
        wait_for(lambda: any(c.get("Active") is False for c in rec.changes(a.path)), 5,
                 what="the session becoming inactive, signalled")
        assert setup.props(SEAT0)["ActiveSession"] == ["", "/"]


def test_lock_unlock_and_hints(two_logins, test_users):
    setup, a, _ = two_logins
    with SignalRecorder(setup.address) as rec:
        setup.call(ROOT, MANAGER, "LockSession", "s", [a.id])
        setup.call(a.path, SESSION, "Unlock")
        setup.call(a.path, SESSION, "Lock")
        setup.call(ROOT, MANAGER, "UnlockSession", "s", [a.id])
        wait_for(lambda: len(rec.named("Lock", a.path)) == 2 and
                 len(rec.named("Unlock", a.path)) == 2, 5, what="Lock and Unlock signals")
        setup.call(a.path, SESSION, "SetIdleHint", "b", [True])
        setup.call(a.path, SESSION, "SetLockedHint", "b", [True])
        props = setup.props(a.path)
        assert props["IdleHint"] is True and props["LockedHint"] is True
        assert props["IdleSinceHint"] > 0
        wait_for(lambda: any("LockedHint" in c for c in rec.changes(a.path)), 5,
                 what="PropertiesChanged for LockedHint")
        assert setup.props(user_path(test_users[0].uid))["IdleHint"] is True
        setup.call(ROOT, MANAGER, "LockSessions")
        setup.call(ROOT, MANAGER, "UnlockSessions")
        wait_for(lambda: len(rec.named("Lock")) == 4 and len(rec.named("Unlock")) == 4, 5,
                 what="Lock and Unlock for both sessions")


def test_terminate_session_by_both_ways(two_logins):
    setup, a, b = two_logins
    with SignalRecorder(setup.address) as rec:
        setup.call(ROOT, MANAGER, "TerminateSession", "s", [a.id])
        setup.call(b.path, SESSION, "Terminate")
        wait_for(lambda: len(rec.named("SessionRemoved")) == 2, 5, what="SessionRemoved twice")
        assert sorted(rec.named("SessionRemoved")) == sorted([[a.id, a.path],
                                                              [b.id, b.path]])
    assert setup.call(ROOT, MANAGER, "ListSessions") == [[]]


def test_kill_session_signals_its_processes(two_logins):
    setup, a, b = two_logins
    child = b.spawn(["sleep", "60"])
    setup.call(ROOT, MANAGER, "KillSession", "ssi", [b.id, "leader", signal.SIGSTOP])
    wait_for(lambda: proc_state(b.pid) == "T", 5, what="the leader stopped")
    assert proc_state(child) == "S", "only the leader was signalled"
    os.kill(b.pid, signal.SIGCONT)
    setup.call(b.path, SESSION, "Kill", "si", ["all", signal.SIGKILL])
    wait_for(lambda: exited(child), 5, what="the session's child killed")
    b.proc.wait(5)
    wait_for(lambda: setup.call(ROOT, MANAGER, "ListSessions") == [[
        [a.id, a.user.uid, a.user.name, "seat0", a.path]]], 5, what="the session ended")
    err = error_of(setup.call, a.path, SESSION, "Kill", "si", ["some", 15])
    assert err.name == "org.freedesktop.DBus.Error.InvalidArgs"


def test_activate_switches_the_vt_through_the_console(two_logins):
    """The sandbox's console is a regular file: VT_ACTIVATE fails with
    ENOTTY, which shows the switch was asked of it (and this machine's VT
    stays where it is)."""
    setup, a, b = two_logins
    for call in (lambda: setup.call(ROOT, MANAGER, "ActivateSession", "s", [a.id]),
                 lambda: setup.call(a.path, SESSION, "Activate"),
                 lambda: setup.call(ROOT, MANAGER, "ActivateSessionOnSeat", "ss",
                                    [a.id, "seat0"]),
                 lambda: setup.call(SEAT0, SEAT, "ActivateSession", "s", [a.id]),
                 lambda: setup.call(SEAT0, SEAT, "SwitchTo", "u", [3]),
                 lambda: setup.call(SEAT0, SEAT, "SwitchToNext"),
                 lambda: setup.call(SEAT0, SEAT, "SwitchToPrevious")):
        err = error_of(call)
        assert "cannot switch to VT 3" in err.message and "tty0" in err.message, err
    # A session without a seat is always in front: nothing to switch.
    setup.call(b.path, SESSION, "Activate")
    err = error_of(setup.call, SEAT0, SEAT, "ActivateSession", "s", [b.id])
    assert err.name == "org.freedesktop.login1.NoSuchSession"


def test_terminate_seat_ends_its_sessions(two_logins, test_users):
    setup, a, b = two_logins
    setup.call(ROOT, MANAGER, "TerminateSeat", "s", ["seat0"])
    wait_for(lambda: setup.call(ROOT, MANAGER, "ListSessions") == [[
        [b.id, b.user.uid, b.user.name, "", b.path]]], 5, what="seat0's session ended")
    c = setup.login(test_users[2], "tty5")

    def ids():
        return sorted(r[0] for r in setup.call(ROOT, MANAGER, "ListSessions")[0])

    assert ids() == sorted([b.id, c.id])
    setup.call(SEAT0, SEAT, "Terminate")
    wait_for(lambda: ids() == [b.id], 5, what="Seat.Terminate to end the session on tty5")


# -- User


def test_user_properties_and_state(two_logins, test_users):
    setup, a, _ = two_logins
    user = test_users[0]
    path = user_path(user.uid)
    props = setup.props(path)
    assert USER_PROPS <= set(props)
    assert props == setup.props(path, USER)
    assert (props["UID"], props["GID"], props["Name"]) == (user.uid, user.gid, user.name)
    assert props["RuntimePath"] == setup.daemon.rundir(user.uid)
    assert props["Sessions"] == [[a.id, a.path]] and props["Display"] == [a.id, a.path]
    assert props["State"] == "online" and props["Linger"] is False
    assert (props["Service"], props["Slice"]) == ("", "")
    assert props["Timestamp"] == setup.props(a.path)["Timestamp"], "since their first login"
    setup.set_vt(3)
    assert setup.props(path)["State"] == "active"


def test_linger_and_terminate_user(login1, test_users):
    setup = login1(linger="maybe")
    user = test_users[2]
    shell = setup.login(user)
    path = user_path(user.uid)
    with SignalRecorder(setup.address) as rec:
        setup.call(ROOT, MANAGER, "SetUserLinger", "ubb", [user.uid, True, False])
        assert setup.props(path)["Linger"] is True
        assert os.path.exists(os.path.join(setup.daemon.config["linger_dir"], user.name))
        wait_for(lambda: any(c.get("Linger") is True for c in rec.changes(path)), 5,
                 what="PropertiesChanged Linger")
        setup.call(ROOT, MANAGER, "TerminateUser", "u", [user.uid])
        wait_for(lambda: rec.named("SessionRemoved") and rec.named("UserRemoved"), 5,
                 what="SessionRemoved and UserRemoved")
        # Linger is set for a user who is not logged in too.
        setup.call(ROOT, MANAGER, "SetUserLinger", "ubb", [user.uid, False, False])
        assert not os.path.exists(os.path.join(setup.daemon.config["linger_dir"], user.name))
    shell.close()


def test_user_new_and_removed_signals(login1, test_users):
    setup = login1()
    user = test_users[0]
    with SignalRecorder(setup.address) as rec:
        shell = setup.login(user)
        wait_for(lambda: rec.named("UserNew") and rec.named("SessionNew"), 5,
                 what="UserNew and SessionNew")
        assert rec.named("UserNew") == [[user.uid, user_path(user.uid)]]
        assert rec.named("SessionNew") == [[shell.id, shell.path]]
        shell.close()
        wait_for(lambda: rec.named("UserRemoved") and rec.named("SessionRemoved"), 5,
                 what="UserRemoved and SessionRemoved")
        assert rec.named("UserRemoved") == [[user.uid, user_path(user.uid)]]


def test_kill_user_signals_the_users_processes(two_logins):
    setup, a, _ = two_logins
    child = a.spawn(["setpriv", f"--reuid={a.user.uid}", f"--regid={a.user.gid}",
                     "--init-groups", "sleep", "60"])
    wait_for(lambda: _uid(child) == a.user.uid, 5, what="the child to run as the user")
    setup.call(user_path(a.user.uid), USER, "Kill", "i", [signal.SIGKILL])
    wait_for(lambda: exited(child), 5, what="the user's process killed")
    assert a.proc.poll() is None, "the root leader is not the user's process"
    setup.call(ROOT, MANAGER, "KillUser", "ui", [a.user.uid, signal.SIGTERM])
    err = error_of(setup.call, ROOT, MANAGER, "KillUser", "ui", [a.user.uid, 0])
    assert err.name == "org.freedesktop.DBus.Error.InvalidArgs"
    setup.call(user_path(a.user.uid), USER, "Terminate")
    wait_for(lambda: len(setup.call(ROOT, MANAGER, "ListUsers")[0]) == 1, 5,
             what="the user gone")


def _uid(pid: int) -> int | None:
    try:
        return os.stat(f"/proc/{pid}").st_uid
    except OSError:
        return None


# -- Seat


def test_seat0_properties(two_logins):
    setup, a, _ = two_logins
    props = setup.props(SEAT0)
    assert SEAT_PROPS <= set(props)
    assert props == setup.props(SEAT0, SEAT)
    assert props["Id"] == "seat0" and props["CanTTY"] is True
    assert props["CanGraphical"] is False  # no DRM or framebuffer device here
    assert props["Sessions"] == [[a.id, a.path]]
    assert props["ActiveSession"] == ["", "/"]


# -- authorisation


def test_a_user_may_not_act_on_another_users_sessions(two_logins, test_users):
    setup, a, b = two_logins
    stranger = test_users[1]  # b's user, acting on a's
    refused = [
        (ROOT, MANAGER, "TerminateSession", "s", [a.id]),
        (ROOT, MANAGER, "TerminateUser", "u", [a.user.uid]),
        (ROOT, MANAGER, "KillSession", "ssi", [a.id, "all", 15]),
        (ROOT, MANAGER, "KillUser", "ui", [a.user.uid, 15]),
        (ROOT, MANAGER, "LockSession", "s", [a.id]),
        (ROOT, MANAGER, "UnlockSession", "s", [a.id]),
        (ROOT, MANAGER, "ActivateSession", "s", [a.id]),
        (ROOT, MANAGER, "ActivateSessionOnSeat", "ss", [a.id, "seat0"]),
        (ROOT, MANAGER, "SetUserLinger", "ubb", [a.user.uid, True, False]),
        (ROOT, MANAGER, "TerminateSeat", "s", ["seat0"]),
        (ROOT, MANAGER, "LockSessions", "", []),
        (ROOT, MANAGER, "UnlockSessions", "", []),
        (a.path, SESSION, "Terminate", "", []),
        (a.path, SESSION, "Kill", "si", ["all", 15]),
        (a.path, SESSION, "Activate", "", []),
        (a.path, SESSION, "Lock", "", []),
        (a.path, SESSION, "Unlock", "", []),
        (a.path, SESSION, "SetIdleHint", "b", [True]),
        (a.path, SESSION, "SetLockedHint", "b", [True]),
        (user_path(a.user.uid), USER, "Terminate", "", []),
        (user_path(a.user.uid), USER, "Kill", "i", [15]),
        (SEAT0, SEAT, "Terminate", "", []),
        (SEAT0, SEAT, "ActivateSession", "s", [a.id]),
        (SEAT0, SEAT, "SwitchTo", "u", [3]),
        (SEAT0, SEAT, "SwitchToNext", "", []),
        (SEAT0, SEAT, "SwitchToPrevious", "", []),
    ]
    for path, iface, member, sig, args in refused:
        reply = setup.call_as(stranger, path, iface, member, sig, args)
        assert reply.get("error") == DENIED, (member, reply)
        assert f"uid {stranger.uid} may not" in reply["message"]
    # Nothing happened: a's session and linger are as they were.
    props = setup.props(a.path)
    assert props["LockedHint"] is False and props["IdleHint"] is False
    assert setup.props(user_path(a.user.uid))["Linger"] is False
    # Reading is everyone's.
    assert setup.call_as(stranger, a.path, PROPERTIES, "Get", "ss", [SESSION, "Id"]) == \
        {"body": [a.id]}


def test_a_user_may_act_on_their_own(two_logins, test_users):
    setup, a, b = two_logins
    owner = test_users[1]
    for path, iface, member, sig, args in [
            (ROOT, MANAGER, "LockSession", "s", [b.id]),
            (b.path, SESSION, "SetIdleHint", "b", [True]),
            (b.path, SESSION, "SetLockedHint", "b", [True]),
            (ROOT, MANAGER, "SetUserLinger", "ubb", [0xFFFFFFFF, True, False]),
            (ROOT, MANAGER, "SetUserLinger", "ubb", [owner.uid, False, False]),
            (ROOT, MANAGER, "TerminateSession", "s", [b.id])]:
        assert setup.call_as(owner, path, iface, member, sig, args) == {"body": []}, member
    assert setup.call(ROOT, MANAGER, "ListSessions")[0] == [
        [a.id, a.user.uid, a.user.name, "seat0", a.path]]


# -- the standard interfaces


def test_properties_introspection_and_peer(two_logins):
    setup, a, _ = two_logins
    assert setup.call(a.path, PROPERTIES, "Get", "ss", [SESSION, "TTY"]) == ["tty3"]
    err = error_of(setup.call, a.path, PROPERTIES, "Get", "ss", [SESSION, "Nope"])
    assert err.name == "org.freedesktop.DBus.Error.UnknownProperty"
    err = error_of(setup.call, a.path, PROPERTIES, "Set", "ssv", [SESSION, "TTY",
                                                                 _variant("s", "x")])
    assert err.name == "org.freedesktop.DBus.Error.PropertyReadOnly"
    err = error_of(setup.call, a.path, PROPERTIES, "GetAll", "s", [USER])
    assert err.name == "org.freedesktop.DBus.Error.UnknownInterface"
    err = error_of(setup.call, ROOT + "/session/_3999", PROPERTIES, "GetAll", "s", [""])
    assert err.name == "org.freedesktop.DBus.Error.UnknownObject"
    [xml] = setup.call(ROOT, "org.freedesktop.DBus.Introspectable", "Introspect")
    assert '<interface name="org.freedesktop.login1.Manager">' in xml
    assert all(f'<node name="{n}"/>' in xml for n in ("session", "user", "seat"))
    [xml] = setup.call(ROOT + "/session", "org.freedesktop.DBus.Introspectable", "Introspect")
    assert f'<node name="{a.path.rsplit("/", 1)[1]}"/>' in xml
    [xml] = setup.call(a.path, "org.freedesktop.DBus.Introspectable", "Introspect")
    assert '<method name="SetLockedHint">' in xml and '<signal name="Lock">' in xml
    assert setup.call(ROOT, "org.freedesktop.DBus.Peer", "Ping") == []
    err = error_of(setup.call, ROOT, MANAGER, "GetSession", "u", [1])
    assert err.name == "org.freedesktop.DBus.Error.InvalidArgs"


def _variant(sig, value):
    from dbus_fast import Variant
    return Variant(sig, value)


def test_every_login_gets_its_session_id(two_logins):
    setup, a, b = two_logins
    assert a.env["XDG_SESSION_ID"] != b.env["XDG_SESSION_ID"]
    assert setup.daemon.session_state(a.id)["ID"] == a.env["XDG_SESSION_ID"]


def test_turnstilectl_shows_seats_and_the_active_session(two_logins):
    setup, a, b = two_logins
    setup.set_vt(3)
    out = setup.daemon.ctl("list-seats")
    assert out.returncode == 0, out.stderr
    assert out.stdout.splitlines()[1].split()[:4] == ["seat0", a.id, "1", "3"]
    out = setup.daemon.ctl("seat-status")
    assert "Active VT: 3" in out.stdout and f"Active session: {a.id}" in out.stdout
    assert f"{a.id}: login on tty3 on seat0 vt3" in out.stdout
    rows = {line.split()[0]: line.split() for line in
            setup.daemon.ctl("list-sessions", "--no-legend").stdout.splitlines()}
    assert rows[a.id][3:6] == ["seat0", "tty3", "yes"]
    status = setup.daemon.ctl("status").stdout
    assert "login1: active (org.freedesktop.login1 on unix:path=" in status


def test_the_machines_own_active_vt(login1, test_users):
    """The daemon follows the real /sys/class/tty/tty0/active (read and
    polled, never switched): a login on the VT in front is active."""
    real = "/sys/class/tty/tty0/active"
    if not os.path.exists(real):
        pytest.skip(f"{real} does not exist here")
    with open(real) as f:
        front = f.read().strip()
    setup = login1(vt_active_path=real)
    assert f"following the active VT in {real}" in setup.daemon.log()
    shell = setup.login(test_users[0], front)
    props = setup.props(shell.path)
    assert (props["Active"], props["VTNr"]) == (True, int(front[3:]))
    assert setup.props(SEAT0)["ActiveSession"] == [shell.id, shell.path]
