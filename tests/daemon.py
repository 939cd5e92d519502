"""The real turnstiled under test: started from the checkout with a config
whose every path lies in a sandbox directory, and looked at through its
state files and log."""

from __future__ import annotations

import os
import pwd
import shutil
import signal
import stat
import subprocess
import sys
import time
from pathlib import Path

import pytest
from c_parts import build_fdstore, build_holder, build_module
from helpers import REPO_ROOT, listening, read_kv, wait_for
from pamclient import environ_without_pam_wrapper, write_service
from users import setpriv

START_TIMEOUT = 10.0
# turnstilectl: as root from the checkout, as a user the installed script
# (the checkout may sit where users cannot read it).
CTL = [sys.executable, "-m", "turnstiled.ctl"]
USER_CTL = os.path.join(os.path.dirname(sys.executable), "turnstilectl")


class Daemon:
    """A running turnstiled under test, with its sandboxed paths."""

    def __init__(self, sandbox: Path, config: dict[str, str], config_path: Path,
                 proc: subprocess.Popen, log_path: Path) -> None:
        self.sandbox = sandbox
        self.config = config
        self.config_path = config_path
        self.proc = proc
        self.log_path = log_path
        self.socket_path = config.get("socket_path", "")
        self.admin_socket_path = config.get("admin_socket_path", "")
        self.state_dir = Path(config.get("state_dir", "/run/turnstiled"))
        # The login services the tests write, apart from the manager's
        # stack (pam.d): a file added there would make the spare holder
        # stale (turnstiled/children.py), as an edit of /etc/pam.d does.
        self.service_dir = sandbox / "login.pam.d"
        self.service_dir.mkdir(mode=0o755, exist_ok=True)

    @property
    def pid(self) -> int:
        return self.proc.pid

    def rundir(self, uid: int) -> str:
        """rundir_path expanded for uid (as turnstiled.config.Config.rundir_for)."""
        pattern = self.config.get("rundir_path", "/run/user/%u")
        gid = ""
        if "%g" in pattern:
            try:
                gid = str(pwd.getpwuid(uid).pw_gid)
            except KeyError:
                gid = "%g"
        out, chars = [], iter(pattern)
        for ch in chars:
            if ch != "%":
                out.append(ch)
                continue
            nxt = next(chars, "")
            out.append({"u": str(uid), "g": gid, "%": "%"}.get(nxt, "%" + nxt))
        return "".join(out)

    def log(self) -> str:
        try:
            return self.log_path.read_text(errors="replace")
        except FileNotFoundError:
            return ""

    def log_tail(self, lines: int = 40) -> str:
        return "\n".join(self.log().splitlines()[-lines:])

    def login_service(self, name: str = "login", args: str = "") -> str:
        """Writes a PAM service in service_dir running our module against this
        daemon's socket (plus args); returns the service name."""
        module = build_module()
        write_service(self.service_dir, name, module,
                      f"socket={self.socket_path} {args}".strip())
        return name

    def user_state(self, uid: int) -> dict[str, str] | None:
        return read_kv(self.state_dir / "users" / str(uid))

    def state_of(self, uid: int) -> str | None:
        """uid's STATE (starting, ready, lingering ...); None without a user file."""
        return (self.user_state(uid) or {}).get("STATE")

    def session_state(self, sid: str | int) -> dict[str, str] | None:
        return read_kv(self.state_dir / "sessions" / str(sid))

    def _state_files(self, kind: str) -> list[str]:
        """The names of the state files of a kind, sorted (dot files are
        being written)."""
        try:
            names = os.listdir(self.state_dir / kind)
        except FileNotFoundError:
            return []
        return sorted(n for n in names if not n.startswith("."))

    def session_ids(self) -> list[str]:
        return self._state_files("sessions")

    def user_ids(self) -> list[str]:
        return self._state_files("users")

    def sessions_of(self, uid: int) -> list[str]:
        return [sid for sid in self.session_ids()
                if (self.session_state(sid) or {}).get("UID") == str(uid)]

    def left_of(self, uid: int) -> list[str]:
        """What is left of uid's login: its user file, session files, runtime dir."""
        left = [f"session {sid}" for sid in self.sessions_of(uid)]
        if self.user_state(uid) is not None:
            left.append("user file")
        if os.path.lexists(self.rundir(uid)):
            left.append(f"runtime dir {self.rundir(uid)}")
        return left

    def wait_logged_out(self, uid: int, timeout: float = 5) -> None:
        """Waits until nothing is left of uid's login; fails saying what is."""
        wait_for(lambda: not self.left_of(uid), timeout, what=f"the login of uid {uid} to end",
                 detail=lambda: self.left_of(uid))

    def ctl(self, *args: str, user=None) -> subprocess.CompletedProcess:
        """turnstilectl against this daemon, as root or (user=) as that user."""
        if user is None:
            argv = [*CTL, "--admin-socket", self.admin_socket_path, *args]
        else:
            argv = setpriv(user, USER_CTL, "--admin-socket", self.admin_socket_path, *args)
        return subprocess.run(argv, capture_output=True, text=True, timeout=30)

    def running(self) -> bool:
        return self.proc.poll() is None

    def stop(self, timeout: float = 15) -> int:
        """A full stop (SIGINT: SIGTERM would leave every manager to a next
        daemon), wait up to timeout, then SIGKILL; returns the exit code."""
        if self.proc.poll() is None:
            try:
                self.proc.send_signal(signal.SIGINT)
            except ProcessLookupError:
                pass
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)
        return self.proc.returncode


def _chmod_readable(root: Path) -> None:
    """chmod -R a+rX."""
    for dirpath, dirnames, filenames in os.walk(root):
        for name in [*dirnames, *filenames]:
            p = os.path.join(dirpath, name)
            st = os.lstat(p)
            if stat.S_ISLNK(st.st_mode):
                continue
            extra = 0o444 | (0o111 if stat.S_ISDIR(st.st_mode) or st.st_mode & 0o111 else 0)
            os.chmod(p, stat.S_IMODE(st.st_mode) | extra)
    os.chmod(root, stat.S_IMODE(os.stat(root).st_mode) | 0o555)


def daemon_defaults(sandbox: Path) -> dict[str, str]:
    """The config every test daemon starts from; everything lives in sandbox.

    user_stop_delay = 0 (the daemon's default is 10 s): a logout ends the
    login at once, so tests need not wait; a test about the delay sets it.

    cgroups = no (the daemon's default is auto): most tests log in through
    libpam inside the test process itself, which is then the session's
    leader, and the daemon would move the test runner into the session's
    group. Tests of tracking (test_cgroups*.py) turn it on, with a group
    path of their own, and log in from a separate login process.

    login1 = no (the daemon's default is auto): a test daemon never asks the
    machine's own system bus for org.freedesktop.login1; the D-Bus tests
    (test_login1*.py) turn it on against a private bus.
    """
    return {
        "backend": "none",
        "socket_path": str(sandbox / "control.sock"),
        "admin_socket_path": str(sandbox / "admin.sock"),
        "state_dir": str(sandbox / "state"),
        "linger_dir": str(sandbox / "linger"),
        "rundir_path": str(sandbox / "user" / "%u"),
        "manage_rundir": "yes",
        "backend_dir": str(sandbox / "backends"),
        "holder_path": str(build_holder()),
        "fdstore_path": str(build_fdstore()),
        "pam_service": "turnstiled",
        "pam_dir": str(sandbox / "pam.d"),
        "login_timeout": "10",
        "user_stop_delay": "0",
        "cgroups": "no",
        "login1": "no",
        "debug": "yes",
        "debug_stderr": "yes",
    }


def _prepare_sandbox(sandbox: Path) -> None:
    """What a daemon in sandbox needs besides its config file."""
    backends = sandbox / "backends"
    if not backends.exists():
        if (REPO_ROOT / "backends").is_dir():
            shutil.copytree(REPO_ROOT / "backends", backends)
            _chmod_readable(backends)
        else:
            backends.mkdir(mode=0o755)
    # Backends read their own config from `backend/` beside turnstiled.conf.
    backend_conf = sandbox / "backend"
    backend_conf.mkdir(mode=0o755, exist_ok=True)
    for conf in (REPO_ROOT / "backends").glob("*.conf"):
        dest = backend_conf / conf.name
        if not dest.exists():
            shutil.copy(conf, dest)
            os.chmod(dest, 0o644)
    user_dir = sandbox / "user"
    user_dir.mkdir(mode=0o755, exist_ok=True)
    os.chmod(user_dir, 0o755)
    pam_dir = sandbox / "pam.d"
    pam_dir.mkdir(mode=0o755, exist_ok=True)
    (pam_dir / "turnstiled").write_text(
        "auth required pam_permit.so\n"
        "account required pam_permit.so\n"
        "session required pam_permit.so\n")


def start_daemon(sandbox: Path, **overrides: object) -> Daemon:
    """Writes SANDBOX/turnstiled.conf (the defaults of daemon_defaults,
    overrides replacing or adding keys; True/False become yes/no, None
    removes a key) and starts `python -m turnstiled -c CONF` from the
    checkout, output to SANDBOX/daemon.log. Returns once the control socket
    listens; fails the test with the log's tail if the daemon exits or does
    not listen within START_TIMEOUT. Stopping it is the caller's.
    """
    _prepare_sandbox(sandbox)
    config = daemon_defaults(sandbox)
    for key, value in overrides.items():
        if value is None:
            config.pop(key, None)
        elif isinstance(value, bool):
            config[key] = "yes" if value else "no"
        else:
            config[key] = str(value)
    conf_path = sandbox / "turnstiled.conf"
    conf_path.write_text("# written by tests/daemon.py\n" +
                         "".join(f"{k} = {v}\n" for k, v in config.items()))
    log_path = sandbox / "daemon.log"
    with open(log_path, "ab") as log:
        proc = subprocess.Popen(
            [sys.executable, "-m", "turnstiled", "-c", str(conf_path)],
            cwd=REPO_ROOT, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
            env=environ_without_pam_wrapper())
    d = Daemon(sandbox, config, conf_path, proc, log_path)
    # Readiness is the socket in the listening state (/proc/net/unix):
    # a probing connect() would show up in the daemon's log as a client
    # that never finished its handshake (a WARNING).
    deadline = time.monotonic() + START_TIMEOUT
    while True:
        if proc.poll() is not None:
            pytest.fail(f"turnstiled exited with {proc.returncode} at start; log:\n"
                        f"{d.log_tail()}")
        if d.socket_path and listening(d.socket_path):
            return d
        if time.monotonic() >= deadline:
            d.stop()
            pytest.fail(f"turnstiled did not listen on {d.socket_path} within "
                        f"{START_TIMEOUT:g} s; log:\n{d.log_tail()}")
        time.sleep(0.02)
