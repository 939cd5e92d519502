"""Fixtures for tests on real parts: the built PAM module, a sandbox other
users can reach, throwaway real users, and the real daemon on a real socket.

Every process a fixture starts is stopped by pid at teardown, also when the
test fails; every wait is bounded.
"""

from __future__ import annotations

import contextlib
import os
import pwd
import secrets
import shutil
import signal
import stat
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from helpers import REPO_ROOT, listening, pids_of, read_kv
from pamclient import write_service

MODULE_REL = "pam/pam_turnstile.so"
# Names a prebuilt PAM module to test instead of building pam/pam_turnstile.so.
MODULE_ENV = "TURNSTILED_TEST_PAM_MODULE"
HOLDER_REL = "holder/turnstiled-holder"
HOLDER_ENV = "TURNSTILED_TEST_HOLDER"
USER_PREFIX = "tsdt"
N_TEST_USERS = 4
N_MANY_USERS = 40
# uids of the users test_users made in this run: the only accounts whose
# processes a fixture may kill.
_created_uids: list[int] = []


# -- reports


@pytest.hookimpl(hookwrapper=True, tryfirst=True)
def pytest_runtest_makereport(item, call):
    """Keeps each phase's report on the item (rep_setup, rep_call), so
    fixtures can tell at teardown whether the test failed."""
    outcome = yield
    rep = outcome.get_result()
    setattr(item, f"rep_{rep.when}", rep)


def _test_failed(request: pytest.FixtureRequest) -> bool:
    return any(getattr(getattr(request.node, f"rep_{when}", None), "failed", False)
               for when in ("setup", "call"))


# -- processes


def kill_uid_processes(uid: int, timeout: float = 5.0) -> None:
    """SIGKILLs, by pid, every process whose real uid is uid (a test user's)."""
    if uid == 0:
        raise ValueError("refusing to kill root's processes")
    deadline = time.monotonic() + timeout
    while True:
        pids = pids_of(uid)
        if not pids or time.monotonic() >= deadline:
            return
        for pid in pids:
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        time.sleep(0.05)


# -- the module


_builds: dict[str, dict[str, object]] = {}


def _build(rel: str, src_rel: str, override_env: str) -> Path:
    """REPO_ROOT/rel, built with `make rel` when missing or older than its
    source; $override_env names a prebuilt file to use instead. Skips the
    calling test (with the reason) when it cannot be built; the outcome is
    remembered for the whole run."""
    done = _builds.setdefault(rel, {})
    if "path" in done:
        return done["path"]  # type: ignore[return-value]
    if "skip" in done:
        pytest.skip(str(done["skip"]))
    override = os.environ.get(override_env)
    if override:
        # Built elsewhere (e.g. upstream's module, which speaks the same
        # protocol); used as is, never rebuilt.
        path = Path(override).resolve()
        if not path.is_file():
            pytest.fail(f"{override_env}={override}: no such file")
        done["path"] = path
        return path
    out, src = REPO_ROOT / rel, REPO_ROOT / src_rel
    reason = None
    if not src.exists() and not out.exists():
        reason = f"{src} does not exist"
    elif src.exists() and (not out.exists() or out.stat().st_mtime < src.stat().st_mtime):
        try:
            res = subprocess.run(["make", rel], cwd=REPO_ROOT, capture_output=True,
                                 text=True, timeout=120, check=False)
        except (OSError, subprocess.TimeoutExpired) as err:
            reason = f"cannot run make for {rel}: {err}"
        else:
            if res.returncode != 0 or not out.exists():
                tail = (res.stdout + res.stderr).strip()[-2000:]
                reason = f"`make {rel}` failed (exit {res.returncode}):\n{tail}"
    if reason is not None:
        done["skip"] = reason
        pytest.skip(reason)
    done["path"] = out
    return out


def build_module() -> Path:
    """pam/pam_turnstile.so ($TURNSTILED_TEST_PAM_MODULE names another)."""
    return _build(MODULE_REL, "pam/pam_turnstile.c", MODULE_ENV)


def build_holder() -> Path:
    """holder/turnstiled-holder ($TURNSTILED_TEST_HOLDER names another)."""
    return _build(HOLDER_REL, "holder/turnstiled-holder.c", HOLDER_ENV)


@pytest.fixture(scope="session")
def repo_root() -> Path:
    return REPO_ROOT


@pytest.fixture(scope="session")
def pam_module() -> Path:
    """Absolute path of the built pam_turnstile.so (skips if it cannot build)."""
    return build_module()


# -- sandbox


@pytest.fixture
def sandbox() -> Iterator[Path]:
    """A fresh 0755 directory under /tmp that test users can traverse
    (pytest's tmp_path is 0700 and may sit under root's 0700 home)."""
    path = Path(tempfile.mkdtemp(prefix="turnstiled-test-", dir="/tmp"))
    os.chmod(path, 0o755)
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)


# -- users


@dataclass(frozen=True)
class ScratchUser:
    name: str
    uid: int
    gid: int
    home: str

    @property
    def service_dir(self) -> Path:
        return Path(self.home) / ".config" / "service"


@contextlib.contextmanager
def scratch_users(count: int, prefix: str = USER_PREFIX) -> Iterator[list[ScratchUser]]:
    """count throwaway real users (prefix + a random tag + index), removed with
    their homes afterwards, also when tests fail. Only the accounts made here
    are touched."""
    if os.geteuid() != 0:
        pytest.skip("needs root to create throwaway users (useradd)")
    if shutil.which("useradd") is None or shutil.which("userdel") is None:
        pytest.skip("useradd/userdel not found")
    tag = secrets.token_hex(3)
    made: list[ScratchUser] = []
    try:
        for i in range(count):
            name = f"{prefix}{tag}{i}"
            try:
                pwd.getpwnam(name)
            except KeyError:
                pass
            else:
                pytest.fail(f"user {name} already exists; refusing to reuse it")
            if os.path.lexists(f"/home/{name}"):
                pytest.fail(f"/home/{name} already exists; refusing to reuse it")
            res = subprocess.run(["useradd", "-m", "-s", "/bin/sh", name], capture_output=True,
                                 text=True, timeout=30, check=False)
            if res.returncode != 0:
                pytest.fail(f"useradd {name} failed: {res.stderr.strip()}")
            pw = pwd.getpwnam(name)
            made.append(ScratchUser(name, pw.pw_uid, pw.pw_gid, pw.pw_dir))
            _created_uids.append(pw.pw_uid)
        yield made
    finally:
        problems = []
        for user in made:
            _created_uids.remove(user.uid)
            kill_uid_processes(user.uid)
            res = subprocess.run(["userdel", "-r", user.name], capture_output=True, text=True,
                                 timeout=30, check=False)
            # 12: the home could not be removed; try ourselves.
            if os.path.isdir(user.home) and user.home.startswith("/home/"):
                shutil.rmtree(user.home, ignore_errors=True)
            if res.returncode not in (0, 12):
                problems.append(f"userdel -r {user.name}: exit {res.returncode} "
                                f"{res.stderr.strip()}")
        if problems:
            print("\n".join(problems), file=sys.stderr)


@pytest.fixture(scope="session")
def test_users() -> Iterator[list[ScratchUser]]:
    """Four throwaway real users (prefix tsdt)."""
    with scratch_users(N_TEST_USERS) as users:
        yield users


@pytest.fixture(scope="session")
def many_users() -> Iterator[list[ScratchUser]]:
    """Forty throwaway real users, for bursts of distinct users' logins."""
    with scratch_users(N_MANY_USERS) as users:
        yield users


@pytest.fixture
def test_user(test_users: list[ScratchUser]) -> ScratchUser:
    return test_users[0]


# -- the daemon


DAEMON_START_TIMEOUT = 10.0


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
        self.service_dir = sandbox / "pam.d"

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

    def session_state(self, sid: str | int) -> dict[str, str] | None:
        return read_kv(self.state_dir / "sessions" / str(sid))

    def session_ids(self) -> list[str]:
        try:
            names = os.listdir(self.state_dir / "sessions")
        except FileNotFoundError:
            return []
        return sorted(n for n in names if not n.startswith("."))

    def user_ids(self) -> list[str]:
        try:
            names = os.listdir(self.state_dir / "users")
        except FileNotFoundError:
            return []
        return sorted(n for n in names if not n.startswith("."))

    def running(self) -> bool:
        return self.proc.poll() is None

    def stop(self, timeout: float = 15) -> int:
        """SIGTERM, wait up to timeout, then SIGKILL; returns the exit code."""
        if self.proc.poll() is None:
            try:
                self.proc.send_signal(signal.SIGTERM)
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
        "pam_service": "turnstiled",
        "pam_dir": str(sandbox / "pam.d"),
        "login_timeout": "10",
        "user_stop_delay": "0",
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


def _clean_environ() -> dict[str, str]:
    """os.environ without pam_wrapper's variables (never for the daemon)."""
    return {k: v for k, v in os.environ.items()
            if not k.startswith("PAM_WRAPPER") and k != "LD_PRELOAD"}


@pytest.fixture
def daemon(sandbox: Path, request: pytest.FixtureRequest) -> Iterator[Callable[..., Daemon]]:
    """daemon(**overrides) -> Daemon: writes SANDBOX/turnstiled.conf (the
    defaults of daemon_defaults, overrides replacing or adding keys; True/False
    become yes/no, None removes a key) and starts `python -m turnstiled -c
    CONF` from the checkout, output to SANDBOX/daemon.log. Returns once the
    control socket listens; fails with the log's tail if the daemon exits or
    does not listen within 10 s.

    At teardown, also when the test failed: every daemon started is stopped
    (SIGTERM, then SIGKILL), and every process left owned by a test user is
    killed. When the test failed, each daemon's log tail is printed (pytest
    shows it under "Captured stdout teardown").
    """
    started: list[Daemon] = []

    def start(**overrides: object) -> Daemon:
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
        conf_path.write_text("# written by tests/conftest.py\n" +
                             "".join(f"{k} = {v}\n" for k, v in config.items()))
        log_path = sandbox / "daemon.log"
        with open(log_path, "ab") as log:
            proc = subprocess.Popen(
                [sys.executable, "-m", "turnstiled", "-c", str(conf_path)],
                cwd=REPO_ROOT, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
                env=_clean_environ())
        d = Daemon(sandbox, config, conf_path, proc, log_path)
        started.append(d)
        # Readiness is the socket in the listening state (/proc/net/unix):
        # a probing connect() would show up in the daemon's log as a client
        # that never finished its handshake (a WARNING).
        deadline = time.monotonic() + DAEMON_START_TIMEOUT
        while True:
            if proc.poll() is not None:
                pytest.fail(f"turnstiled exited with {proc.returncode} at start; log:\n"
                            f"{d.log_tail()}")
            if d.socket_path and listening(d.socket_path):
                return d
            if time.monotonic() >= deadline:
                pytest.fail(f"turnstiled did not listen on {d.socket_path} within "
                            f"{DAEMON_START_TIMEOUT:g} s; log:\n{d.log_tail()}")
            time.sleep(0.02)

    try:
        yield start
    finally:
        errors = []
        for d in started:
            try:
                d.stop()
            except Exception as err:  # stop the others anyway
                errors.append(err)
        if started and _test_failed(request):
            for d in started:
                print(f"--- turnstiled pid {d.pid} ({d.config_path}), exit "
                      f"{d.proc.returncode}, log tail:\n{d.log_tail(60)}")
        for uid in list(_created_uids):
            kill_uid_processes(uid)
        if errors:
            raise errors[0]
