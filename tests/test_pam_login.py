"""Real logins: pam_turnstile.so in the real libpam, from this process and
from a login program (pamtester), against the real turnstiled, seen in its
state files and runtime dirs.
"""

from __future__ import annotations

import json
import os
import select
import stat
import subprocess
import sys
import textwrap

import pytest
from c_parts import build_module
from helpers import OPEN_TIMEOUT, PAM_TTY, TESTS_DIR, read_kv, wait_for
from pamclient import PamLogin, pamtester

pytestmark = pytest.mark.usefixtures("no_session_vars")


def _stat_rundir(path: str):
    st = os.lstat(path)
    return stat.S_ISDIR(st.st_mode), stat.S_IMODE(st.st_mode), st.st_uid, st.st_gid


@pytest.fixture
def tty3_login(daemon, test_user):
    """test_user logged in on tty3 through the real daemon, from this
    process: (daemon, PamLogin, the session's PAM environment)."""
    d = daemon()
    with PamLogin(d.login_service(), test_user.name, d.service_dir) as login:
        env = login.open(items={PAM_TTY: "tty3"}, timeout=OPEN_TIMEOUT, unblock=d.stop)
        yield d, login, env


def test_login_gets_a_private_runtime_dir(tty3_login, test_user):
    d, _, env = tty3_login
    rundir = d.rundir(test_user.uid)
    assert env.get("XDG_RUNTIME_DIR") == rundir
    assert _stat_rundir(rundir) == (True, 0o700, test_user.uid, test_user.gid)


def test_login_publishes_its_user(tty3_login, test_user):
    d, _, _ = tty3_login
    user = d.user_state(test_user.uid)
    assert user is not None, d.log_tail()
    assert user["NAME"] == test_user.name
    assert user["STATE"] == "ready"
    assert user["RUNTIME"] == d.rundir(test_user.uid)
    assert user["SESSIONS"].split() == d.session_ids()


def test_login_publishes_its_session(tty3_login, test_user):
    d, login, _ = tty3_login
    sids = d.session_ids()
    assert len(sids) == 1
    sess = d.session_state(sids[0])
    assert sess["UID"] == str(test_user.uid)
    assert sess["SERVICE"] == login.service
    assert (sess["TTY"], sess["VTNR"], sess["SEAT"], sess["TYPE"]) == \
        ("tty3", "3", "seat0", "tty")
    assert sess["LEADER"] == str(os.getpid())


def test_logout_leaves_nothing_and_nothing_to_complain_of(tty3_login, test_user):
    d, login, _ = tty3_login
    login.close()
    d.wait_logged_out(test_user.uid)
    assert d.running()
    assert "WARNING" not in d.log() and "ERROR" not in d.log(), d.log_tail()
    assert d.stop() == 0, d.log_tail()


def test_real_daemon_two_sessions(daemon, test_user):
    d = daemon()
    service = d.login_service()
    uid, rundir = test_user.uid, d.rundir(test_user.uid)
    first = PamLogin(service, test_user.name, d.service_dir)
    second = PamLogin(service, test_user.name, d.service_dir)
    try:
        assert first.open(timeout=OPEN_TIMEOUT, unblock=d.stop)["XDG_RUNTIME_DIR"] == rundir
        assert second.open(timeout=OPEN_TIMEOUT, unblock=d.stop)["XDG_RUNTIME_DIR"] == rundir
        user = d.user_state(uid)
        sids = d.session_ids()
        assert len(sids) == 2, d.log_tail()
        assert sorted(user["SESSIONS"].split()) == sids
        assert d.user_ids() == [str(uid)]
        for sid in sids:
            assert d.session_state(sid)["UID"] == str(uid)

        first.close()
        wait_for(lambda: len(d.session_ids()) == 1, 5, what="one session file to go")
        user = wait_for(lambda: (u := d.user_state(uid)) and len(u["SESSIONS"].split()) == 1
                        and u, 5, what="the user file to list one session")
        assert user["SESSIONS"].split() == d.session_ids()
        assert user["STATE"] == "ready"
        assert _stat_rundir(rundir)[:3] == (True, 0o700, uid)

        second.close()
        d.wait_logged_out(uid)
    finally:
        first.close()
        second.close()


def test_real_daemon_sessions_of_two_users(daemon, test_users):
    d = daemon()
    service = d.login_service()
    a, b = test_users[0], test_users[1]
    with PamLogin(service, a.name, d.service_dir) as la, \
            PamLogin(service, b.name, d.service_dir) as lb:
        assert la.open(timeout=OPEN_TIMEOUT, unblock=d.stop)["XDG_RUNTIME_DIR"] == d.rundir(a.uid)
        assert lb.open(timeout=OPEN_TIMEOUT, unblock=d.stop)["XDG_RUNTIME_DIR"] == d.rundir(b.uid)
        assert d.user_ids() == sorted([str(a.uid), str(b.uid)])
        assert _stat_rundir(d.rundir(b.uid))[2] == b.uid
        lb.close()
        d.wait_logged_out(b.uid)
        assert d.user_state(a.uid) is not None
    d.wait_logged_out(a.uid)


def test_real_daemon_pamtester_login(daemon, test_user, sandbox):
    """A real login program's view: pamtester under pam_wrapper. pam_exec
    after our module snapshots the session (it gets the PAM environment)."""
    d = daemon()
    snap = sandbox / "snap"
    script = sandbox / "snapshot.sh"
    script.write_text(textwrap.dedent(f"""\
        #!/bin/sh
        [ "$PAM_TYPE" = open_session ] || exit 0
        mkdir -p {snap}
        env > {snap}/env
        cp -r {d.state_dir}/users {d.state_dir}/sessions {snap}/
        stat -c '%F %a %u' "$XDG_RUNTIME_DIR" > {snap}/rundir
        """))
    script.chmod(0o755)
    (d.service_dir / "ptlogin").write_text(
        "auth required pam_permit.so\n"
        "account required pam_permit.so\n"
        f"session required {build_module()} socket={d.socket_path}\n"
        f"session required pam_exec.so {script}\n"
        "session required pam_permit.so\n")
    res = pamtester("ptlogin", test_user.name, d.service_dir, "open_session", "close_session",
                    items={"tty": "tty2"}, timeout=20)
    assert res.returncode == 0, res.stdout + res.stderr + d.log_tail()
    assert "successfully opened a session" in res.stdout + res.stderr
    env = read_kv(snap / "env")
    rundir = d.rundir(test_user.uid)
    assert env["XDG_RUNTIME_DIR"] == rundir
    assert (snap / "rundir").read_text().split() == ["directory", "700", str(test_user.uid)]
    user = read_kv(snap / "users" / str(test_user.uid))
    assert user is not None and user["STATE"] == "ready"
    sids = sorted(os.listdir(snap / "sessions"))
    assert user["SESSIONS"].split() == sids and len(sids) == 1
    sess = read_kv(snap / "sessions" / sids[0])
    assert (sess["SERVICE"], sess["TTY"], sess["VTNR"]) == ("ptlogin", "tty2", "2")
    d.wait_logged_out(test_user.uid)


def test_real_daemon_pamtester_open_only(daemon, test_user):
    """pamtester exits right after open_session: the process ending ends the
    session even without close_session."""
    d = daemon()
    service = d.login_service()
    res = pamtester(service, test_user.name, d.service_dir, "open_session", timeout=20)
    assert res.returncode == 0, res.stdout + res.stderr + d.log_tail()
    d.wait_logged_out(test_user.uid)
    assert "session 1 opened" in d.log() and "session 1 closed" in d.log()


_CLIENT = """\
import json, sys, time
sys.path.insert(0, {tests!r})
from pamclient import PamLogin
login = PamLogin({service!r}, {user!r}, {confdir!r})
env = login.open()
print(json.dumps(env), flush=True)
time.sleep(60)
"""


def _read_line(proc: subprocess.Popen, timeout: float) -> str:
    r, _, _ = select.select([proc.stdout], [], [], timeout)
    assert r, f"the PAM client printed nothing within {timeout:g} s"
    return proc.stdout.readline()


def test_real_daemon_killed_client_ends_session(daemon, test_user, repo_root):
    d = daemon()
    service = d.login_service()
    code = _CLIENT.format(tests=str(TESTS_DIR), service=service, user=test_user.name,
                          confdir=str(d.service_dir))
    proc = subprocess.Popen([sys.executable, "-c", code], cwd=repo_root,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        line = _read_line(proc, 10)
        assert line, f"client failed: {proc.stderr.read() if proc.poll() is not None else ''}"
        assert json.loads(line)["XDG_RUNTIME_DIR"] == d.rundir(test_user.uid)
        sids = d.session_ids()
        assert len(sids) == 1
        assert d.session_state(sids[0])["LEADER"] == str(proc.pid)
        proc.kill()
        proc.wait(5)
        d.wait_logged_out(test_user.uid)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(5)
        proc.stdout.close()
        proc.stderr.close()
