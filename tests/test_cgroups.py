"""Sessions tracked with cgroup v2, end to end: the real daemon on the real
cgroup2 mount, real logins through libpam by a login process of their own
(login_process.py: the daemon moves that process, the session's leader),
real users, real runit managers. Each test has a group tree of its own
(cgroup_path = turnstiled-test-RANDOM), removed at its end; without a
writable cgroup2 hierarchy the tests skip, saying why."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import time

import pytest
from cgroup import group_of, populated, procs
from helpers import children_of, cmdline_of, exited, proc_state, procs_of, wait_for
from login_process import LoginProcess
from pamclient import PamLogin
from runit import Services, runsvdirs
from users import setpriv


@pytest.fixture
def tracked(daemon, cgroup_tree, pam_module):
    """tracked(**config) -> a daemon tracking sessions in cgroup_tree."""
    def start(**overrides):
        overrides.setdefault("cgroups", "yes")
        overrides.setdefault("cgroup_path", cgroup_tree.name)
        return daemon(**overrides)
    return start


@pytest.fixture
def logins():
    """login(daemon, user, command) -> LoginProcess; every one is killed
    (by pid) at the end."""
    started: list[LoginProcess] = []

    def login(d, user, command: str = "exec sleep 300") -> LoginProcess:
        lp = LoginProcess(d.login_service(), user.name, d.service_dir, command)
        started.append(lp)
        return lp

    yield login
    for lp in started:
        lp.kill()


def only_session(d, uid: int) -> str:
    [sid] = wait_for(lambda: d.sessions_of(uid), 5, what=f"a session of uid {uid}")
    return sid


def ctl_json(d, *args: str):
    out = d.ctl("--json", *args)
    assert out.returncode == 0, out.stderr
    return json.loads(out.stdout)


def sleeps_in(group) -> list[int]:
    return [pid for pid in procs(group) if cmdline_of(pid).startswith("sleep")]


def with_core_service(user) -> Services:
    sv = Services(user)
    sv.add("a", "exec sleep infinity")
    sv.core("a")
    sv.own()
    time.sleep(1.1)  # runsvdir skips a directory changed within the last second
    return sv


def test_a_sessions_shell_and_its_children_are_in_its_group(tracked, cgroup_tree, logins,
                                                             test_user):
    d = tracked()
    lp = logins(d, test_user, "sleep 300 & sleep 301 & wait")
    sid = only_session(d, test_user.uid)
    group = cgroup_tree.session(test_user.uid, sid)
    kids = wait_for(lambda: [p for p, _ in children_of(lp.shell)] if len(children_of(lp.shell))
                    == 2 else None, 5, what="the shell's two children")
    expected = cgroup_tree.rel(group)
    # The leader (the login process), the shell it started after the
    # answer, and what the shell started.
    assert {group_of(p) for p in (lp.pid, lp.shell, *kids)} == {expected}
    state = d.session_state(sid)
    assert state["STATE"] == "active" and state["CGROUP"] == str(group)
    status = d.ctl("status").stdout
    assert "Session tracking: cgroup v2" in status, status

    for pid in kids:  # no terminal here to hang them up with the shell
        os.kill(pid, signal.SIGKILL)
    lp.logout()
    d.wait_logged_out(test_user.uid)
    assert not group.exists() and not group.parent.exists()


def test_session_of_names_the_session_of_a_grandchild(tracked, cgroup_tree, logins,
                                                      test_users):
    d = tracked()
    a, b = test_users[:2]
    first = logins(d, a, "sh -c 'sleep 300' & wait")
    second = logins(d, b, "sh -c 'sleep 300' & wait")
    for lp, user in ((first, a), (second, b)):
        sid = only_session(d, user.uid)
        [(child, _)] = wait_for(lambda lp=lp: children_of(lp.shell), 5, what="the shell's child")
        [(grandchild, _)] = wait_for(lambda c=child: children_of(c), 5, what="a grandchild")
        found = ctl_json(d, "session-of", str(grandchild))
        assert found == {"pid": grandchild, "id": sid, "user": user.name, "exact": True}
        assert d.ctl("session-of", str(grandchild)).stdout.split() == [sid, user.name]
    # The daemon itself is in no session.
    out = d.ctl("session-of", str(d.pid))
    assert out.returncode == 1 and "in no session" in out.stderr


def test_a_process_left_by_a_logout_keeps_the_session_closing_and_the_manager_up(
        tracked, cgroup_tree, logins, test_user):
    with_core_service(test_user)
    d = tracked(backend="runit")
    lp = logins(d, test_user, "setsid nohup sleep 300 >/dev/null 2>&1 &")
    sid = only_session(d, test_user.uid)
    group = cgroup_tree.session(test_user.uid, sid)
    lp.wait()  # the shell exited at once: a logout
    [left] = wait_for(lambda: sleeps_in(group), 5, what="the nohup sleep in the group")
    wait_for(lambda: d.session_state(sid)["STATE"] == "closing", 5, what="the session closing",
             detail=lambda: d.session_state(sid))
    [manager] = runsvdirs(test_user.uid)
    assert d.state_of(test_user.uid) == "ready"
    assert group_of(manager) == cgroup_tree.rel(cgroup_tree.manager(test_user.uid))
    [listed] = ctl_json(d, "list-sessions")
    assert listed["id"] == sid and listed["state"] == "closing"
    assert "closing" in d.ctl("user-status", test_user.name).stdout
    time.sleep(0.5)  # nothing ends it while the process runs
    assert d.session_state(sid)["STATE"] == "closing" and runsvdirs(test_user.uid) == [manager]

    os.kill(left, signal.SIGTERM)
    d.wait_logged_out(test_user.uid, timeout=15)
    wait_for(lambda: not procs_of(test_user.uid), 10, what="the manager to stop",
             detail=lambda: procs_of(test_user.uid))
    wait_for(lambda: not (cgroup_tree.root / f"user-{test_user.uid}").exists(), 5,
             what="the user's groups to be removed")


@pytest.mark.parametrize("excluded", [False, True])
def test_kill_user_processes_kills_what_a_logout_leaves(tracked, cgroup_tree, logins,
                                                        test_user, excluded):
    d = tracked(kill_user_processes=True,
                kill_exclude_users=f"root {test_user.name}" if excluded else "root")
    lp = logins(d, test_user, "setsid nohup sleep 300 >/dev/null 2>&1 &")
    sid = only_session(d, test_user.uid)
    group = cgroup_tree.session(test_user.uid, sid)
    # The login program is handed back its own group first: never killed.
    assert lp.wait() == 0
    if excluded:
        # An excluded user's leftovers are kept, as without the key.
        [left] = wait_for(lambda: sleeps_in(group), 5, what="the nohup sleep in the group")
        wait_for(lambda: d.session_state(sid)["STATE"] == "closing", 5, what="closing")
        time.sleep(0.3)
        assert not exited(left)
        os.kill(left, signal.SIGKILL)
    d.wait_logged_out(test_user.uid, timeout=10)
    assert not procs_of(test_user.uid) and not populated(group) and not group.exists()


@pytest.mark.parametrize("kill_file", [True, False])
def test_terminate_session_kills_a_process_that_ignores_sigterm(tracked, cgroup_tree, logins,
                                                                test_user, monkeypatch,
                                                                kill_file):
    """With cgroup.kill at once; without (forced, as on kernels before
    5.14), SIGTERM and SIGKILL after the 5 s bound (tracking.TERM_BOUND)."""
    if not kill_file:
        monkeypatch.setenv("TURNSTILED_NO_CGROUP_KILL", "1")  # the daemon's environment
    d = tracked()
    lp = logins(d, test_user, "trap '' TERM HUP; setsid sleep 300 & wait")
    sid = only_session(d, test_user.uid)
    group = cgroup_tree.session(test_user.uid, sid)
    wait_for(lambda: sleeps_in(group), 5, what="the sleep in the group")
    t0 = time.monotonic()
    out = d.ctl("terminate-session", sid)
    assert out.returncode == 0, out.stderr
    d.wait_logged_out(test_user.uid, timeout=15)
    took = time.monotonic() - t0
    assert took < 3 if kill_file else 5 <= took < 12, took
    assert not procs_of(test_user.uid) and not group.exists()
    # The login program saw its shell killed and ended the login itself.
    assert lp.wait() == 256 - signal.SIGKILL


def test_kill_session_and_kill_user_send_a_signal_to_every_process(tracked, cgroup_tree,
                                                                   logins, test_user,
                                                                   test_users):
    d = tracked()
    lp = logins(d, test_user, "sleep 300 & sleep 301 & wait")
    sid = only_session(d, test_user.uid)
    group = cgroup_tree.session(test_user.uid, sid)
    sleeps = wait_for(lambda: len(sleeps_in(group)) == 2 and sleeps_in(group), 5,
                      what="two sleeps in the group")
    other = test_users[1]
    refused = admin_as(d, other, "kill-session", id=sid, signal="TERM")
    assert refused["status"] == "refused" and "belongs to" in refused["error"]
    refused = admin_as(d, other, "kill-user", user=test_user.name, signal="TERM")
    assert refused["status"] == "refused"
    bad = d.ctl("kill-session", sid, "NOSUCH")
    assert bad.returncode == 1 and "no such signal" in bad.stderr
    # The owner may: SIGSTOP every process, then SIGCONT.
    reply = ctl_json(d, "kill-session", sid, "STOP")
    assert reply["processes"] == len(procs(group))
    for pid in sleeps:
        wait_for(lambda p=pid: proc_state(p) == "T", 5, what=f"pid {pid} stopped")
    assert admin_as(d, test_user, "kill-user", user=test_user.name, signal="CONT")["ok"]
    for pid in sleeps:
        wait_for(lambda p=pid: proc_state(p) in ("S", "R"), 5, what=f"pid {pid} running")
    assert ctl_json(d, "kill-user", test_user.name, "KILL")["processes"] >= 3
    lp.wait()
    d.wait_logged_out(test_user.uid)


def admin_as(d, peer, cmd: str, **args) -> dict:
    """One admin request sent by peer, a user (SO_PEERCRED says who asks), with the
    system's python: the checkout's turnstilectl may be out of their reach."""
    script = ("import json, socket, sys\n"
              "s = socket.socket(socket.AF_UNIX); s.connect(sys.argv[1])\n"
              "s.sendall(sys.argv[2].encode() + b'\\n')\n"
              "print(s.makefile().readline())\n")
    request = json.dumps({"cmd": cmd, "args": args})
    out = subprocess.run(setpriv(peer, "/usr/bin/python3", "-c", script, d.admin_socket_path,
                                 request), capture_output=True, text=True, timeout=30)
    assert out.returncode == 0, out.stderr
    return json.loads(out.stdout)


def test_a_managers_daemonised_service_is_gone_after_it_stops(tracked, cgroup_tree, logins,
                                                              test_user):
    sv = Services(test_user)
    # The service daemonises a process (setsid, parent gone) and stays up.
    sv.add("a", "setsid sh -c 'sleep 302 & exit' </dev/null >/dev/null 2>&1\n"
                "exec sleep infinity")
    sv.core("a")
    sv.own()
    time.sleep(1.1)
    d = tracked(backend="runit")
    lp = logins(d, test_user)
    manager = cgroup_tree.manager(test_user.uid)
    wait_for(lambda: any(cmdline_of(p).startswith("sleep 302") for p in procs(manager)), 10,
             what="the daemonised sleep in the manager's group")
    # A process of the manager that is not below its holder (started by
    # another's hands into the group): the group still ends it.
    stray = subprocess.Popen(["setpriv", f"--reuid={test_user.uid}",
                              f"--regid={test_user.gid}", "--init-groups", "sleep", "303"],
                             start_new_session=True)
    try:
        (manager / "cgroup.procs").write_text(str(stray.pid))
        lp.logout()
        d.wait_logged_out(test_user.uid, timeout=15)
        wait_for(lambda: not procs_of(test_user.uid), 15, what="every process of the user",
                 detail=lambda: procs_of(test_user.uid))
        assert stray.wait(5) == -signal.SIGKILL
        assert not manager.exists()
        assert "outlived its holder" in d.log()
    finally:
        if stray.poll() is None:
            stray.kill()
            stray.wait(5)


def test_a_restarted_daemon_finds_its_groups_and_a_closing_session(tracked, cgroup_tree,
                                                                   logins, test_user):
    with_core_service(test_user)
    d = tracked(backend="runit")
    lp = logins(d, test_user, "setsid nohup sleep 300 >/dev/null 2>&1 & exec sleep 301")
    sid = only_session(d, test_user.uid)
    group = cgroup_tree.session(test_user.uid, sid)
    [left] = wait_for(lambda: [p for p in sleeps_in(group) if cmdline_of(p) == "sleep 300"], 5,
                      what="the nohup sleep")
    [manager] = runsvdirs(test_user.uid)

    d = restart(d, tracked)
    assert d.session_state(sid)["CGROUP"] == str(group)
    assert ctl_json(d, "session-of", str(lp.shell))["id"] == sid
    lp.logout()
    wait_for(lambda: (d.session_state(sid) or {}).get("STATE") == "closing", 5,
             what="the session closing", detail=lambda: d.session_state(sid))

    # A closing session survives a restart too, and still ends with its group.
    d = restart(d, tracked)
    assert d.session_state(sid)["STATE"] == "closing"
    assert runsvdirs(test_user.uid) == [manager]
    os.kill(left, signal.SIGKILL)
    d.wait_logged_out(test_user.uid, timeout=15)
    wait_for(lambda: not procs_of(test_user.uid), 15, what="the manager to stop")
    assert not group.exists()


def restart(d, start):
    """SIGTERM (a restart) and the next daemon on the same sandbox."""
    d.proc.send_signal(signal.SIGTERM)
    d.proc.wait(15)
    assert d.proc.returncode == 0, d.log_tail()
    return start(backend=d.config["backend"])


def test_without_cgroups_a_session_is_its_connection(daemon, pam_module, test_user):
    """cgroups = no: as before tracking existed. The login is in-process
    here (the leader is the test runner, which nothing moves)."""
    d = daemon(cgroups="no")
    status = d.ctl("status").stdout
    assert "Session tracking: connections only (turned off (cgroups = no))" in status
    with PamLogin(d.login_service(), test_user.name, d.service_dir) as pam:
        pam.open()
        sid = only_session(d, test_user.uid)
        assert d.session_state(sid)["CGROUP"] == ""
        # pid -> session is a guess from the process tree: a child of the
        # leader is found, not exactly.
        child = subprocess.Popen(["sleep", "300"])
        try:
            found = ctl_json(d, "session-of", str(child.pid))
            assert found["id"] == sid and found["exact"] is False
        finally:
            child.kill()
            child.wait(5)
        # kill-session reaches the leader's process tree: the child, and
        # the leader (this test process), which SIGCONT leaves alone.
        child = subprocess.Popen(["sleep", "300"])
        try:
            sent = ctl_json(d, "kill-session", sid, "CONT")
            assert sent["processes"] >= 2
        finally:
            child.kill()
            child.wait(5)
    # The connection's end is the session's, whatever still runs.
    d.wait_logged_out(test_user.uid)
