"""Attacks by local users, played as an unprivileged test user with real
processes against the real daemon, while another user logs in."""

from __future__ import annotations

import contextlib
import json
import os
import stat
import subprocess
import sys
import time

import pytest
from helpers import PAM_RHOST, fds_of, mounts, open_files_limit, rss_kb, wait_for, wait_gone
from pamclient import PamFailure, PamLogin
from runit import Services
from users import setpriv


def as_user(user, *argv: str, timeout: float = 30) -> subprocess.CompletedProcess:
    return subprocess.run(setpriv(user, *argv), capture_output=True, text=True,
                          timeout=timeout)


def test_a_runtime_dir_planted_by_another_user_is_not_adopted(daemon, test_users, sandbox,
                                                              pam_module):
    victim, attacker = test_users[0], test_users[1]
    shared = sandbox / "tmp"
    shared.mkdir()
    os.chmod(shared, 0o1777)  # sticky and world-writable, as /tmp
    d = daemon(rundir_path=f"{shared}/run-%u")
    planted = f"{shared}/run-{victim.uid}"
    out = as_user(attacker, "/usr/bin/python3", "-c",
                  "import os, socket, sys; os.mkdir(sys.argv[1], 0o777); "
                  "socket.socket(socket.AF_UNIX).bind(sys.argv[1] + '/bus')", planted)
    assert out.returncode == 0, out.stderr
    with PamLogin(d.login_service(), victim.name, d.service_dir) as pam:
        env = pam.open()
        assert env["XDG_RUNTIME_DIR"] == planted
        assert "DBUS_SESSION_BUS_ADDRESS" not in env, "the attacker's bus was exported"
        st = os.lstat(planted)
        assert st.st_uid == victim.uid and stat.S_IMODE(st.st_mode) == 0o700
        assert os.listdir(planted) == []
        assert "not adopted, replaced" in d.log()
        pam.close()
    # What the attacker planted is gone too (removed off the loop).
    wait_for(lambda: not os.listdir(shared), 5, what="the planted dir to go",
             detail=lambda: os.listdir(shared))


def test_an_injected_readiness_line_forges_nothing(daemon, test_users, pam_module):
    """A user service writes `PATH\\nready PATH` into the readiness fifo: one
    string, one `ready`, and nothing of the manager survives logout."""
    user = test_users[1]
    sv = Services(user)
    d = daemon(backend="runit", login_timeout=30)
    # The fifo is in the daemon's state dir, where the user may look.
    fifo = os.path.join(d.state_dir, "managers", str(user.uid), "ready")
    sv.add("inject", f'svc="$(cd ..; pwd)/turnstile-ready"\n'
           f'[ -p {fifo} ] && printf "%s\\nready %s" "$svc" "$svc" > {fifo}\n'
           "exec sleep infinity")
    sv.add("a", "exec sleep infinity")
    sv.core("a")
    sv.own()
    time.sleep(1.1)  # runsvdir's edit guard
    with PamLogin(d.login_service(), user.name, d.service_dir) as pam:
        try:
            pam.open()  # whichever write won the race, the login is the user's own
        except PamFailure:
            assert "the backend's ready exited with status 69" in d.log()
        pam.close()
    wait_gone(user.uid, 15)
    wait_for(lambda: d.user_state(user.uid) is None, 5)
    log = d.log()
    assert "Traceback" not in log and "ready ignored" not in log
    assert "a malformed or unknown message" not in log


def test_a_flood_of_up_lines_does_not_grow_the_daemon(daemon, test_users, pam_module):
    """turnstile-ready/conf is sourced as the user: a background loop there
    prints `up NAME` lines as fast as it can while a core service is slow."""
    user = test_users[1]
    sv = Services(user)
    sv.add("slow", "rm -f ../slow.ok; (sleep 3; touch ../slow.ok) &\nexec sleep infinity",
           check="[ -e ../slow.ok ]")
    sv.core("slow")
    with open(os.path.join(sv.dir, "turnstile-ready", "conf"), "a") as f:
        f.write("( i=0; while :; do echo \"up n$i\"; i=$((i+1)); done ) &\n")
    sv.own()
    time.sleep(1.1)
    d = daemon(backend="runit", login_timeout=20)
    with PamLogin(d.login_service(), user.name, d.service_dir) as pam:
        pam.open()
        assert rss_kb(d.pid) < 100_000
        status = d.ctl("--json", "user-status", user.name).stdout
        assert len(status) < 64_000
        pam.close()
    wait_gone(user.uid, 15)
    assert len(d.log()) < 1_000_000


_HOLD_CONNECTIONS = """\
import os, select, socket, sys, time
path, count = sys.argv[1], int(sys.argv[2])
held = []
for _ in range(count):
    s = socket.socket(socket.AF_UNIX)
    try:
        s.connect(path)
    except OSError:
        break
    held.append(s)
time.sleep(1.0)  # the daemon has had time to turn the extra ones away
open_ = 0
for s in held:
    try:
        open_ += s.recv(1, socket.MSG_DONTWAIT | socket.MSG_PEEK) != b""
    except BlockingIOError:
        open_ += 1
    except OSError:
        pass
print(open_, flush=True)
sys.stdin.read()  # hold them until told
"""


def _login_time(d, user) -> float:
    t0 = time.monotonic()
    with PamLogin(d.login_service(), user.name, d.service_dir) as pam:
        pam.open(timeout=20)
        pam.close()
    return time.monotonic() - t0


def test_the_daemon_raises_its_open_files_limit(daemon):
    d = daemon()
    assert open_files_limit(d.pid) >= 4096  # raised, as daemons do


def test_a_user_holding_connections_cannot_starve_logins(daemon, test_users, pam_module):
    victim, attacker = test_users[0], test_users[1]
    d = daemon()
    holders = []
    try:
        for path in (d.admin_socket_path, d.socket_path):
            p = subprocess.Popen(setpriv(attacker, "/usr/bin/python3", "-c", _HOLD_CONNECTIONS,
                                         path, "1500"),
                                 stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
            holders.append(p)
        admin_open = int(holders[0].stdout.readline())
        control_open = int(holders[1].stdout.readline())
        assert admin_open <= 16, admin_open
        # Refused control connections are answered within half a second;
        # what counts is that the daemon holds few descriptors for them.
        assert control_open <= 16, control_open
        assert len(fds_of(d.pid)) < 64
        assert _login_time(d, victim) < 1.0
    finally:
        for p in holders:
            p.kill()
            p.wait(10)
    log = d.log()
    assert len(log) < 100_000, len(log)
    assert "Traceback" not in log


def test_a_client_that_never_reads_is_dropped(daemon, test_users, pam_module):
    victim, attacker = test_users[0], test_users[1]
    d = daemon()
    flood = subprocess.Popen(setpriv(
        attacker, "/usr/bin/python3", "-c",
        "import socket, sys, time\n"
        "s = socket.socket(socket.AF_UNIX); s.connect(sys.argv[1]); s.settimeout(30)\n"
        "req = b'{\"cmd\": \"list-sessions\"}\\n' * 1000\n"
        "t0 = time.monotonic()\n"
        "try:\n"
        "    while time.monotonic() - t0 < 25: s.sendall(req)\n"
        "except OSError: print('dropped after %.1f s' % (time.monotonic() - t0))\n",
        d.admin_socket_path), stdout=subprocess.PIPE, text=True)
    try:
        time.sleep(1)
        assert _login_time(d, victim) < 1.0
        out, _ = flood.communicate(timeout=40)
    finally:
        flood.kill()
        flood.wait(5)
    assert out.startswith("dropped after"), out
    assert rss_kb(d.pid) < 100_000


def _admin(d, line: bytes, user=None) -> dict:
    code = ("import socket, sys\n"
            "s = socket.socket(socket.AF_UNIX); s.connect(sys.argv[1]); s.settimeout(20)\n"
            "s.sendall(sys.stdin.buffer.read())\n"
            "out = b''\n"
            "while not out.endswith(b'\\n'):\n"
            "    chunk = s.recv(65536)\n"
            "    if not chunk: break\n"
            "    out += chunk\n"
            "sys.stdout.buffer.write(out)\n")
    argv = ["/usr/bin/python3", "-c", code, d.admin_socket_path]
    if user is not None:
        argv = setpriv(user, *argv)
    out = subprocess.run(argv, input=line, capture_output=True, timeout=30)
    return json.loads(out.stdout)


ODD_REQUESTS = {
    "digit-like-name": (b'{"cmd": "show-user", "args": {"user": "\\u00b2"}}\n', "not-found"),
    "bool-as-user": (b'{"cmd": "show-user", "args": {"user": true}}\n', "bad-request"),
    "uid-past-64-bits": (b'{"cmd": "show-user", "args": {"user": 99999999999999999999}}\n',
                         "not-found"),
    "negative-uid": (b'{"cmd": "show-user", "args": {"user": -1}}\n', "not-found"),
    "list-as-session-id": (b'{"cmd": "show-session", "args": {"id": [1]}}\n', "bad-request"),
    "deep-nesting": (b"[" * 50000 + b"\n", "bad-request"),
}


@pytest.mark.parametrize("case", list(ODD_REQUESTS))
def test_an_odd_admin_request_gets_a_clear_error(case, daemon, test_users):
    line, status = ODD_REQUESTS[case]
    d = daemon()
    reply = _admin(d, line, user=test_users[1])
    assert reply["ok"] is False and reply["status"] == status, reply
    assert "Traceback" not in d.log()


def test_huge_linger_requests_get_quick_errors(daemon, test_users):
    attacker = test_users[1]
    d = daemon()
    many = [f"u{i}" for i in range(21000)]
    line = json.dumps({"cmd": "enable-linger", "args": {"users": many}}).encode() + b"\n"
    assert len(line) < 64 * 1024 * 4
    t0 = time.monotonic()
    reply = _admin(d, line[:64 * 1024 - 2] + b"\n", user=attacker)
    assert reply["ok"] is False
    small = json.dumps({"cmd": "enable-linger", "args": {"users": many[:5000]}}).encode()
    reply = _admin(d, small + b"\n", user=attacker)
    assert reply["status"] == "refused", reply
    reply = _admin(d, small + b"\n")
    assert reply["status"] == "bad-request", reply
    assert time.monotonic() - t0 < 3
    assert "Traceback" not in d.log()


@contextlib.contextmanager
def _tmpfs_run(sandbox, size: str):
    """SANDBOX/run, a tmpfs of size standing in for /run; unmounted at the
    end with whatever is mounted below it."""
    run = sandbox / "run"
    run.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size},mode=0755", "tmpfs", str(run)],
                   check=True)
    try:
        yield run
    finally:
        subprocess.run(["umount", "-R", "-l", str(run)], check=False)


def test_a_full_run_never_leaves_a_phantom_session(daemon, test_users, sandbox, pam_module):
    """/run is a small tmpfs shared by the state files and everyone's runtime
    dirs: when it is full, a login either completes or leaves nothing."""
    user = test_users[0]
    with _tmpfs_run(sandbox, "256k") as run:
        d = daemon(state_dir=str(run / "state"), rundir_path=f"{run}/user/%u")
        filler = run / "filler"
        subprocess.run(["dd", "if=/dev/zero", f"of={filler}", "bs=4k"], capture_output=True)
        with PamLogin(d.login_service(), user.name, d.service_dir) as pam:
            try:
                pam.open()
            except PamFailure:
                pass  # no room for the runtime dir: refused, and said why
            pam.close()
        wait_for(lambda: not [e for e in (run / "state" / "sessions").iterdir()], 5)
        assert not list((run / "state" / "users").iterdir())
        reply = _admin(d, b'{"cmd": "list-sessions"}\n')
        assert reply["ok"] and reply["data"] == [], reply
        assert "cannot publish" in d.log() or "runtime directory" in d.log()
        assert "Traceback" not in d.log()
        # Room again: the same user logs in as if nothing happened.
        filler.unlink()
        with PamLogin(d.login_service(), user.name, d.service_dir) as pam:
            pam.open()
            assert d.session_ids()
            pam.close()
        wait_for(lambda: not d.session_ids() and d.user_ids() == [], 5)
        d.stop()


def test_control_characters_from_a_login_stay_on_their_line(daemon, test_user, pam_module):
    d = daemon()
    evil = "host\nUID=0\r\u2028\x1b[31m"
    with PamLogin(d.login_service(), test_user.name, d.service_dir) as pam:
        pam.open(items={PAM_RHOST: evil})
        [sid] = d.session_ids()
        text = (d.state_dir / "sessions" / sid).read_text()
        assert text.count("\n") == len(text.splitlines())  # no extra breaks anywhere
        state = d.session_state(sid)
        assert state["UID"] == str(test_user.uid)
        assert state["REMOTE_HOST"] == "host\\x0aUID=0\\x0d\\u2028\\x1b[31m"
        out = d.ctl("show-session", sid).stdout
        assert "\x1b" not in out and "\r" not in out and "\u2028" not in out
        pam.close()
    assert "\x1b" not in d.log()


def _update_runit_env(env_dir, assignment: str) -> subprocess.CompletedProcess:
    """turnstile-update-runit-env as root on env_dir."""
    return subprocess.run([sys.executable, "-m", "turnstiled.update_runit_env", "-d",
                           str(env_dir), assignment], capture_output=True, text=True, timeout=30)


@pytest.fixture
def attackers_env_dir(test_users, sandbox):
    """SANDBOX/env, owned by test_users[1]."""
    env_dir = sandbox / "env"
    env_dir.mkdir()
    os.chown(env_dir, test_users[1].uid, test_users[1].gid)
    return env_dir


def test_update_runit_env_as_root_follows_no_planted_symlink(test_users, sandbox,
                                                             attackers_env_dir):
    attacker, env_dir = test_users[1], attackers_env_dir
    target = sandbox / "precious"
    target.write_text("root's\n")
    # Every name a writer might pick for its temporary file, and the file
    # itself, lead to root's file.
    for name in (".FOO.tmp", "FOO"):
        out = as_user(attacker, "ln", "-s", str(target), str(env_dir / name))
        assert out.returncode == 0, out.stderr
    res = _update_runit_env(env_dir, "FOO=bar")
    assert res.returncode == 0, res.stderr
    assert target.read_text() == "root's\n"
    assert (env_dir / "FOO").read_text() == "bar\n" and not (env_dir / "FOO").is_symlink()


def test_update_runit_env_refuses_a_symlinked_env_dir(sandbox, attackers_env_dir):
    (attackers_env_dir / "FOO").write_text("bar\n")
    link = sandbox / "env-link"
    os.symlink(attackers_env_dir, link)
    res = _update_runit_env(link, "FOO=baz")
    assert res.returncode == 1 and (attackers_env_dir / "FOO").read_text() == "bar\n"


@pytest.fixture
def sized_rundirs(daemon, sandbox, pam_module):
    """A daemon whose runtime dirs are tmpfs mounts of 256k each, on a 1 MB
    tmpfs standing in for /run that holds its state files too."""
    with _tmpfs_run(sandbox, "1m") as run:
        d = daemon(state_dir=str(run / "state"), rundir_path=f"{run}/user/%u",
                   rundir_size="256k")
        yield d
        d.stop()


def test_a_runtime_dir_is_a_private_tmpfs_mount_gone_at_logout(sized_rundirs, test_user):
    d = sized_rundirs
    path = d.rundir(test_user.uid)
    with PamLogin(d.login_service(), test_user.name, d.service_dir) as pam:
        pam.open()
        [mount] = [m for m in mounts() if m[4] == path]
        assert mount[mount.index("-") + 1] == "tmpfs" and "nosuid" in mount[5]
        st = os.stat(path)
        assert st.st_uid == test_user.uid and stat.S_IMODE(st.st_mode) == 0o700
        pam.close()
    wait_for(lambda: not os.path.exists(path), 5)
    assert not [m for m in mounts() if path in m[4]]


def test_a_user_filling_their_runtime_dir_fills_only_their_own(sized_rundirs, test_users):
    """/run keeps its room for everyone else's sessions."""
    d, user, other = sized_rundirs, test_users[0], test_users[1]
    path = d.rundir(user.uid)
    with PamLogin(d.login_service(), user.name, d.service_dir) as pam:
        pam.open()
        fill = as_user(user, "dd", "if=/dev/zero", f"of={path}/fill", "bs=4k")
        assert "No space left" in fill.stderr
        assert os.path.getsize(f"{path}/fill") <= 256 * 1024
        with PamLogin(d.login_service(), other.name, d.service_dir) as pam2:
            pam2.open()
            assert d.session_state(d.session_ids()[-1]) is not None
            pam2.close()
        pam.close()


def test_removing_100k_files_of_a_runtime_dir_stalls_no_one(daemon, test_users, pam_module):
    """A plain runtime dir (rundir_size = 0) left with 100,000 files: its
    removal at logout runs off the loop, and another user's login during it
    takes well under a second."""
    user, other = test_users[0], test_users[1]
    d = daemon(rundir_size="0")
    path = d.rundir(user.uid)
    with PamLogin(d.login_service(), user.name, d.service_dir) as pam:
        pam.open()
        out = as_user(user, "/usr/bin/python3", "-c",
                      "import os, sys\n"
                      "for i in range(100):\n"
                      "    d = os.path.join(sys.argv[1], str(i)); os.mkdir(d)\n"
                      "    for j in range(1000): open(os.path.join(d, str(j)), 'w').close()\n",
                      path, timeout=120)
        assert out.returncode == 0, out.stderr
        pam.close()
    times = []
    t_end = time.monotonic() + 1.0
    while time.monotonic() < t_end:  # logins while the removal runs
        times.append(_login_time(d, other))
    assert max(times) < 0.5, times
    wait_for(lambda: not os.path.exists(path) and not [
        n for n in os.listdir(os.path.dirname(path)) if ".removing." in n], 60)
