"""Attacks by local users, played as an unprivileged test user with real
processes against the real daemon, while another user logs in."""

from __future__ import annotations

import os
import stat
import subprocess
import sys
import time

from pamclient import PamFailure, PamLogin
from procs import procs_of, wait_for
from test_runit import Services


def as_user(user, *argv: str, timeout: float = 30) -> subprocess.CompletedProcess:
    return subprocess.run(["setpriv", f"--reuid={user.uid}", f"--regid={user.gid}",
                           "--init-groups", *argv], capture_output=True, text=True,
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
    assert wait_for(lambda: [n for n in os.listdir(shared)] == [], 5), os.listdir(shared)


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
    assert wait_for(lambda: not procs_of(user.uid), 15), procs_of(user.uid)
    assert wait_for(lambda: d.user_state(user.uid) is None, 5)
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
        with open(f"/proc/{d.pid}/status") as f:
            rss = int(next(line for line in f if line.startswith("VmRSS")).split()[1])
        assert rss < 100_000, f"daemon RSS {rss} kB"
        status = subprocess.run([sys.executable, "-m", "turnstiled.ctl", "--admin-socket",
                                 d.admin_socket_path, "--json", "user-status", user.name],
                                capture_output=True, text=True, timeout=30).stdout
        assert len(status) < 64_000
        pam.close()
    assert wait_for(lambda: not procs_of(user.uid), 15), procs_of(user.uid)
    assert len(d.log()) < 1_000_000
