"""The dinit backend (backends/dinit).

End to end: a real `dinit` (not packaged in Debian: found on PATH or named
by $TURNSTILED_TEST_DINIT, with dinitctl and dinit-monitor beside it), real
users, the real libpam loading pam_turnstile.so, the real daemon. Those tests
skip with the reason when there is no dinit.

Without dinit: the script's argument checks, and what `run` writes and execs
and what `ready` does, against stand-ins for dinit, dinit-monitor and
dinitctl (small sh scripts, named stand-ins in each test's docstring).
"""

from __future__ import annotations

import os
import re
import shutil
import signal
import socket
import stat
import subprocess
import time
from pathlib import Path

import pytest
from helpers import procs_of, wait_for
from pamclient import PamFailure, PamLogin

REPO_ROOT = Path(__file__).resolve().parent.parent
BACKEND = REPO_ROOT / "backends" / "dinit"
BACKEND_CONF = REPO_ROOT / "backends" / "dinit.conf"
DINIT_ENV = "TURNSTILED_TEST_DINIT"
# An optional real dinit older than 0.17, for the version error.
DINIT_OLD_ENV = "TURNSTILED_TEST_DINIT_OLD"
PAM_SESSION_ERR = 14
MIN_VERSION = (0, 17, 0)
# The holder's PATH for the backend (DEFAULT_PATH in holder/turnstiled-holder.c).
HOLDER_PATH = "/usr/local/bin:/usr/bin:/bin:/usr/local/sbin:/usr/sbin:/sbin"


def dinits(uid: int) -> list[int]:
    return [pid for pid, cmd in procs_of(uid) if cmd.split()[0].endswith("/dinit")]


def version_of(program: str | os.PathLike) -> tuple[int, ...] | None:
    try:
        out = subprocess.run([str(program), "--version"], capture_output=True, text=True,
                             timeout=10).stdout
    except OSError:
        return None
    m = re.match(r"Dinit version (\d+(?:\.\d+)*)", out)
    return tuple(int(x) for x in m.group(1).split(".")) if m else None


def dotted(version: tuple[int, ...]) -> str:
    return ".".join(map(str, version))


# -- a real dinit


def find_real_dinit() -> tuple[Path | None, str]:
    """The dinit to test with, or None and why not."""
    named = os.environ.get(DINIT_ENV)
    if named:
        path = Path(named)
        if not (path.is_file() and os.access(path, os.X_OK)):
            return None, f"{DINIT_ENV}={named} is not an executable file"
    else:
        found = shutil.which("dinit")
        if found is None:
            return None, (f"no dinit: it is not packaged in Debian; put one on PATH or name it "
                          f"with {DINIT_ENV}=/path/to/dinit (dinitctl beside it)")
        path = Path(found)
    path = path.resolve()
    if not (path.parent / "dinitctl").is_file():
        return None, f"no dinitctl beside {path}"
    version = version_of(path)
    if version is None:
        return None, f"{path} --version printed no 'Dinit version X.Y.Z'"
    if version < MIN_VERSION:
        return None, (f"{path} is dinit {dotted(version)}; the backend needs "
                      f"{dotted(MIN_VERSION)} or later")
    return path, ""


@pytest.fixture(scope="session")
def real_dinit() -> Path:
    path, reason = find_real_dinit()
    if path is None:
        pytest.skip(reason)
    return path


def install_dinit(source: Path, dest: Path, monitor: bool = True) -> Path:
    """Copies dinit, dinitctl (and dinit-monitor) beside source into dest, a
    directory every user can reach; returns dest."""
    dest.mkdir(mode=0o755, parents=True, exist_ok=True)
    names = ["dinit", "dinitctl"] + (["dinit-monitor"] if monitor else [])
    for name in names:
        src = source.parent / name
        if src.is_file():
            shutil.copy2(src, dest / name)
            os.chmod(dest / name, 0o755)
    return dest


def write_backend_conf(conf_dir: Path, *lines: str) -> Path:
    """CONF_DIR/dinit.conf: the shipped file plus lines."""
    conf_dir.mkdir(mode=0o755, parents=True, exist_ok=True)
    conf = conf_dir / "dinit.conf"
    conf.write_text(BACKEND_CONF.read_text() + "".join(line + "\n" for line in lines))
    os.chmod(conf, 0o644)
    return conf


class UserDinit:
    """A test user's ~/.config/dinit.d, written as that user would."""

    def __init__(self, user) -> None:
        self.user = user
        self.home = Path(user.home)
        shutil.rmtree(self.home / ".config", ignore_errors=True)
        shutil.rmtree(self.home / "bin", ignore_errors=True)
        for name in os.listdir(self.home):
            if name.endswith((".out", ".log", ".ok")):
                os.unlink(self.home / name)
        self.dir = self.home / ".config" / "dinit.d"
        self.boot_dir = self.dir / "boot.d"
        self.boot_dir.mkdir(parents=True)
        (self.home / "bin").mkdir()

    def add(self, name: str, *settings: str, boot: bool = False) -> None:
        (self.dir / name).write_text("".join(s + "\n" for s in settings))
        if boot:
            (self.boot_dir / name).symlink_to(f"../{name}")

    def script(self, name: str, body: str) -> str:
        """An executable sh script in ~/bin; returns its path."""
        path = self.home / "bin" / name
        path.write_text("#!/bin/sh\n" + body + "\n")
        os.chmod(path, 0o755)
        return str(path)

    def own(self) -> None:
        for top in (self.home / ".config", self.home / "bin"):
            subprocess.run(["chown", "-R", f"{self.user.uid}:{self.user.gid}", str(top)],
                           check=True, timeout=30)


class DinitSetup:
    """Starts the daemon with the dinit backend and a dinit in the sandbox."""

    def __init__(self, daemon, sandbox: Path, dinit_dir: Path) -> None:
        self.daemon_factory, self.sandbox, self.dinit_dir = daemon, sandbox, dinit_dir
        self.d = None

    def start(self, *conf_lines: str, **overrides):
        overrides.setdefault("backend", "dinit")
        self.d = self.daemon_factory(**overrides)
        # The backend reads it at each manager start: `backend/` beside the
        # daemon's config file.
        write_backend_conf(Path(self.d.config_path).parent / "backend",
                           f"dinit_path={self.dinit_dir}", *conf_lines)
        return self.d

    def ctl(self, user, *args: str, timeout: float = 10) -> subprocess.CompletedProcess:
        """dinitctl as the user, finding the socket where users' tools do."""
        env = {"HOME": user.home, "PATH": "/usr/bin:/bin",
               "XDG_RUNTIME_DIR": self.d.rundir(user.uid)}
        return subprocess.run(
            ["setpriv", f"--reuid={user.uid}", f"--regid={user.gid}", "--init-groups",
             "env", "-i", *(f"{k}={v}" for k, v in env.items()),
             str(self.dinit_dir / "dinitctl"), *args],
            capture_output=True, text=True, timeout=timeout)

    def state(self, user, service: str) -> str:
        out = self.ctl(user, "status", service).stdout
        m = re.search(r"^\s*State:\s*(.*)$", out, re.M)
        return m.group(1) if m else ""


@pytest.fixture
def dinit_setup(daemon, sandbox, real_dinit, pam_module) -> DinitSetup:
    return DinitSetup(daemon, sandbox, install_dinit(real_dinit, sandbox / "dinit-bin"))


# -- end to end, real dinit


def login(pam: PamLogin, d) -> dict[str, str]:
    """pam.open(), failing with the daemon's log when the login fails."""
    try:
        return pam.open()
    except PamFailure as err:
        pytest.fail(f"{err}; daemon log:\n{d.log_tail(60)}")


def test_login_waits_for_boot_services(dinit_setup, test_user):
    u = UserDinit(test_user)
    u.add("a", "type = process", "command = /bin/sleep 1000", boot=True)
    # b is up 0.5 s after it starts; the login waits for it
    b = u.script("b", 'sleep 0.5; : > "$HOME/b.ok"')
    u.add("b", "type = scripted", f"command = {b}", boot=True)
    envdump = u.script("envdump", 'env > "$HOME/env.out"')
    u.add("envdump", "type = scripted", f"command = {envdump}", boot=True)
    # not in boot.d: not started
    u.add("c", "type = process", "command = /bin/sleep 1000")
    u.own()
    d = dinit_setup.start()
    t0 = time.monotonic()
    with PamLogin(d.login_service(), test_user.name, d.service_dir) as pam:
        env = login(pam, d)
        waited = time.monotonic() - t0
        assert (u.home / "b.ok").exists()
        assert 0.5 <= waited < 5, waited
        for name in ("a", "b", "envdump", "boot", "login.target", "system"):
            assert dinit_setup.state(test_user, name) == "STARTED", name
        assert dinit_setup.state(test_user, "c") != "STARTED"  # not even loaded
        assert env["XDG_RUNTIME_DIR"] == d.rundir(test_user.uid)
        # dinit's socket is where the user's own dinitctl looks
        assert stat.S_ISSOCK(os.stat(os.path.join(env["XDG_RUNTIME_DIR"], "dinitctl")).st_mode)
        [manager] = dinits(test_user.uid)
        state = d.user_state(test_user.uid)
        assert state["STATE"] == "ready" and int(state["MANAGER_PID"]) == manager
        # the daemon got `up NAME` for each boot.d service
        line = next(ln for ln in d.log().splitlines() if "ready after" in ln)
        assert re.search(r"core services: (?=.*\ba \d)(?=.*\bb \d)(?=.*\benvdump \d)", line), line
        svc_env = dict(ln.split("=", 1) for ln in (u.home / "env.out").read_text().splitlines()
                       if "=" in ln)
        assert svc_env["HOME"] == test_user.home and svc_env["USER"] == test_user.name
        assert svc_env["XDG_RUNTIME_DIR"] == d.rundir(test_user.uid)
        assert svc_env["PATH"].split(":")[0] == str(dinit_setup.dinit_dir)
        pam.close()
    assert wait_for(lambda: not procs_of(test_user.uid), 10), procs_of(test_user.uid)


def test_second_login_reuses_the_manager(dinit_setup, test_users):
    user = test_users[1]
    u = UserDinit(user)
    u.add("a", "type = process", "command = /bin/sleep 1000", boot=True)
    u.own()
    d = dinit_setup.start()
    service = d.login_service()
    with PamLogin(service, user.name, d.service_dir) as first:
        login(first, d)
        [manager] = dinits(user.uid)
        ids = {k: v for k, v in (ln.split(":\t", 1) for ln in
                                 open(f"/proc/{manager}/status").read().splitlines()
                                 if ":\t" in ln)}
        assert ids["Uid"].split() == [str(user.uid)] * 4
        assert ids["Gid"].split() == [str(user.gid)] * 4
        t0 = time.monotonic()
        with PamLogin(service, user.name, d.service_dir) as second:
            login(second, d)
            assert time.monotonic() - t0 < 0.5
            assert dinits(user.uid) == [manager]
            second.close()
        assert dinits(user.uid) == [manager]  # one session remains
        assert dinit_setup.state(user, "a") == "STARTED"
        first.close()
    assert wait_for(lambda: not procs_of(user.uid), 10), procs_of(user.uid)


def test_last_logout_stops_dinit_and_services_in_order(dinit_setup, test_user):
    u = UserDinit(test_user)
    # late depends on early, so dinit stops late first; late takes 0.3 s to
    # stop, so stopping both at once would log early first.
    for name, delay in (("early", "0"), ("late", "0.3")):
        run = u.script(name, f"trap 'sleep {delay}; echo {name} >> \"$HOME/stop.log\"; exit 0' "
                       "TERM\nwhile :; do sleep 0.05; done")
        u.add(name, "type = process", f"command = {run}",
              *(["depends-on = early"] if name == "late" else []))
    (u.boot_dir / "late").symlink_to("../late")
    u.own()
    d = dinit_setup.start()
    with PamLogin(d.login_service(), test_user.name, d.service_dir) as pam:
        login(pam, d)
        assert dinit_setup.state(test_user, "early") == "STARTED"
        assert len(procs_of(test_user.uid)) >= 3  # dinit, early, late
        pam.close()
    t0 = time.monotonic()
    assert wait_for(lambda: not procs_of(test_user.uid), 10), procs_of(test_user.uid)
    assert time.monotonic() - t0 < 10
    assert (u.home / "stop.log").read_text().split() == ["late", "early"]
    assert wait_for(lambda: not os.path.exists(d.rundir(test_user.uid)), 5)
    assert wait_for(lambda: d.user_state(test_user.uid) is None, 5)
    assert wait_for(lambda: f"login of {test_user.name} ended" in d.log(), 5)


def test_boot_service_that_fails_fails_the_login(dinit_setup, test_user):
    u = UserDinit(test_user)
    u.add("a", "type = process", "command = /bin/sleep 1000", boot=True)
    u.add("bad", "type = scripted", "command = /bin/false", boot=True)
    u.own()
    d = dinit_setup.start(login_timeout=20)
    t0 = time.monotonic()
    with PamLogin(d.login_service(), test_user.name, d.service_dir) as pam:
        with pytest.raises(PamFailure):
            pam.open()
        assert pam.code == PAM_SESSION_ERR
    assert time.monotonic() - t0 < 5  # fails fast, not at login_timeout
    assert "boot service 'bad' is not started: STOPPED" in d.log()
    assert "the backend's ready exited with status 1" in d.log()
    assert wait_for(lambda: not procs_of(test_user.uid), 10), procs_of(test_user.uid)


def test_boot_service_with_a_broken_description_fails_the_login(dinit_setup, test_user):
    u = UserDinit(test_user)
    u.add("a", "type = process", "command = /bin/sleep 1000", boot=True)
    u.add("broken", "type = no-such-type", boot=True)
    u.own()
    d = dinit_setup.start(login_timeout=20)
    t0 = time.monotonic()
    with PamLogin(d.login_service(), test_user.name, d.service_dir) as pam:
        with pytest.raises(PamFailure):
            pam.open()
        assert pam.code == PAM_SESSION_ERR
    assert time.monotonic() - t0 < 5
    assert "could not start boot" in d.log()
    assert wait_for(lambda: not procs_of(test_user.uid), 10), procs_of(test_user.uid)


def test_boot_service_that_never_starts_times_out_the_login(dinit_setup, test_user):
    u = UserDinit(test_user)
    u.add("a", "type = process", "command = /bin/sleep 1000", boot=True)
    u.add("never", "type = scripted", "command = /bin/sleep 1000", "start-timeout = 0",
          boot=True)
    u.own()
    d = dinit_setup.start(login_timeout=2)
    t0 = time.monotonic()
    with PamLogin(d.login_service(), test_user.name, d.service_dir) as pam:
        with pytest.raises(PamFailure):
            pam.open()
        assert pam.code == PAM_SESSION_ERR
    assert 2 <= time.monotonic() - t0 < 4
    assert "not ready after login_timeout" in d.log()
    assert wait_for(lambda: not procs_of(test_user.uid), 15), procs_of(test_user.uid)


def test_configured_boot_dirs_with_blanks(dinit_setup, sandbox, test_user):
    """boot_dir and system_boot_dir from dinit.conf, quoted for dinit."""
    system_services = sandbox / "system services"
    system_boot = sandbox / "system boot.d"
    for p in (system_services, system_boot):
        p.mkdir(mode=0o755)
    (system_services / "sysd").write_text("type = process\ncommand = /bin/sleep 1000\n")
    (system_boot / "sysd").symlink_to(system_services / "sysd")
    u = UserDinit(test_user)
    u.add("a", "type = process", "command = /bin/sleep 1000")
    u.own()
    my_boot = u.home / ".config" / "my boot.d"
    d = dinit_setup.start('boot_dir="$HOME/.config/my boot.d"',
                          f"system_boot_dir='{system_boot}'",
                          f"services_dir5='{system_services}'")
    with PamLogin(d.login_service(), test_user.name, d.service_dir) as pam:
        # made by run, as the user; empty for this first login
        login(pam, d)
        assert my_boot.is_dir() and my_boot.stat().st_uid == test_user.uid
        assert dinit_setup.state(test_user, "sysd") == "STARTED"
        assert dinit_setup.state(test_user, "a") != "STARTED"
        pam.close()
    assert wait_for(lambda: not procs_of(test_user.uid), 10), procs_of(test_user.uid)
    (my_boot / "a").symlink_to("../dinit.d/a")
    with PamLogin(d.login_service(), test_user.name, d.service_dir) as pam:
        login(pam, d)
        assert dinit_setup.state(test_user, "a") == "STARTED"
        pam.close()
    line = [ln for ln in d.log().splitlines() if "ready after" in ln][-1]
    assert re.search(r"core services: sysd [\d.]+ ms, a [\d.]+ ms\)", line), line
    assert wait_for(lambda: not procs_of(test_user.uid), 10), procs_of(test_user.uid)


def test_graphical_target_starts_when_a_display_appears(dinit_setup, test_user):
    monitor = dinit_setup.dinit_dir / "dinit-monitor"
    if not monitor.exists() or "--env" not in subprocess.run(
            [monitor, "--help"], capture_output=True, text=True, timeout=10).stdout:
        pytest.skip("needs dinit-monitor with -E (dinit 0.19.1 or later) beside dinit")
    u = UserDinit(test_user)
    u.add("a", "type = process", "command = /bin/sleep 1000", boot=True)
    u.own()
    d = dinit_setup.start()
    with PamLogin(d.login_service(), test_user.name, d.service_dir) as pam:
        login(pam, d)  # does not wait for a display
        assert dinit_setup.state(test_user, "graphical.monitor") == "STARTED"
        assert dinit_setup.state(test_user, "graphical.target").startswith("STARTING")
        res = dinit_setup.ctl(test_user, "setenv", "WAYLAND_DISPLAY=wayland-7")
        assert res.returncode == 0, res.stderr
        assert wait_for(lambda: dinit_setup.state(test_user, "graphical.target") == "STARTED",
                        5), dinit_setup.state(test_user, "graphical.target")
        pam.close()
    assert wait_for(lambda: not procs_of(test_user.uid), 10), procs_of(test_user.uid)


def test_without_dinit_monitor_the_login_works(daemon, sandbox, real_dinit, pam_module,
                                               test_user):
    if shutil.which("dinit-monitor", path=HOLDER_PATH) is not None:
        pytest.skip("a dinit-monitor is on the default PATH; cannot test without one")
    setup = DinitSetup(daemon, sandbox,
                       install_dinit(real_dinit, sandbox / "dinit-bin", monitor=False))
    u = UserDinit(test_user)
    u.add("a", "type = process", "command = /bin/sleep 1000", boot=True)
    u.own()
    d = setup.start()
    with PamLogin(d.login_service(), test_user.name, d.service_dir) as pam:
        login(pam, d)
        assert setup.state(test_user, "a") == "STARTED"
        srvdir = Path(d.state_dir) / "managers" / str(test_user.uid) / "srv"
        assert not (srvdir / "graphical.target").exists()
        pam.close()
    assert wait_for(lambda: not procs_of(test_user.uid), 10), procs_of(test_user.uid)


def _assert_version_error(d, user, found: str) -> None:
    t0 = time.monotonic()
    with PamLogin(d.login_service(), user.name, d.service_dir) as pam:
        with pytest.raises(PamFailure):
            pam.open()
        assert pam.code == PAM_SESSION_ERR
    assert time.monotonic() - t0 < 5  # fails fast, not at login_timeout
    log = d.log()
    assert f"is dinit {found}; turnstiled's dinit backend needs dinit 0.17.0 or later" in log
    assert "the manager exited with status 69 before it was ready" in log
    assert wait_for(lambda: not procs_of(user.uid), 10), procs_of(user.uid)


def test_dinit_older_than_needed_is_reported_stand_in(daemon, sandbox, pam_module, test_user):
    """A stand-in for an old dinit: a sh script named dinit that prints
    `Dinit version 0.16.1.` (a real one: see the next test). No real dinit
    is needed: the backend stops at the version check."""
    fake = sandbox / "old-dinit"
    fake.mkdir(mode=0o755)
    write_script(fake / "dinit", 'echo "Dinit version 0.16.1."\necho "Supported features: x"')
    write_script(fake / "dinitctl", "exit 1")
    UserDinit(test_user).own()
    setup = DinitSetup(daemon, sandbox, fake)
    _assert_version_error(setup.start(login_timeout=20), test_user, "0.16.1")


def test_real_old_dinit_is_reported(daemon, sandbox, pam_module, test_user):
    named = os.environ.get(DINIT_OLD_ENV)
    if not named:
        pytest.skip(f"no old dinit: name one older than 0.17 with {DINIT_OLD_ENV}")
    old = Path(named).resolve()
    version = version_of(old)
    if version is None or version >= MIN_VERSION:
        pytest.skip(f"{DINIT_OLD_ENV}={named} is not a dinit older than 0.17 ({version})")
    UserDinit(test_user).own()
    setup = DinitSetup(daemon, sandbox, install_dinit(old, sandbox / "old-dinit"))
    _assert_version_error(setup.start(login_timeout=20), test_user, dotted(version))


# -- the script alone, with stand-ins


def write_script(path: Path, body: str) -> Path:
    path.write_text("#!/bin/sh\n" + body + "\n")
    os.chmod(path, 0o755)
    return path


def fake_dinit(bindir: Path, out: Path, version: str = "0.22.1",
               monitor: str | None = "env") -> Path:
    """Stand-ins: `dinit` prints `version`, or records its pid, argv and env
    in `out` and writes its --socket-path and a NUL into fd 3 as the real one
    does; `dinitctl` does nothing; `dinit-monitor` (unless None) prints a
    --help with -E/--env (monitor="env", as 0.19.1 and later) or without it
    (monitor="old")."""
    bindir.mkdir(parents=True, exist_ok=True)
    write_script(bindir / "dinit", f"""\
[ "$1" = --version ] && {{ echo "Dinit version {version}."; exit 0; }}
echo $$ > {out}/pid
for a in "$@"; do printf '%s\\n' "$a"; done > {out}/argv
env > {out}/env
while [ $# -gt 0 ] && [ "$1" != --socket-path ]; do shift; done
printf '%s\\0' "$2" >&3""")
    write_script(bindir / "dinitctl", "exit 0")
    if monitor is not None:
        env_line = "  -E, --env        : monitor activation environment changes\n" \
            if monitor == "env" else ""
        write_script(bindir / "dinit-monitor", f"""\
[ "$1" = --help ] || exit 1
printf 'Options:\\n  -e, --exit       : exit after the first issued command\\n{env_line}'
printf '  -i, --initial    : also execute command for initial service state\\n'
exit 1""")
    return bindir


class Run:
    """One `backends/dinit run` in a scratch home, fifo, srvdir and confdir."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.home = root / "home"
        self.rundir = root / "run"
        self.srvdir = root / "srv"
        self.confdir = root / "conf"
        self.out = root / "out"
        self.fifo = root / "ready"
        for p in (self.home, self.rundir, self.srvdir, self.confdir, self.out):
            p.mkdir()
        os.mkfifo(self.fifo)
        self.conf_lines: list[str] = []

    def conf(self, *lines: str) -> None:
        self.conf_lines += lines

    def __call__(self, *args: str, path: str = "/usr/bin:/bin", env: dict | None = None,
                 ) -> tuple[subprocess.CompletedProcess, bytes]:
        (self.confdir / "dinit.conf").write_text(
            BACKEND_CONF.read_text() + "".join(ln + "\n" for ln in self.conf_lines))
        argv = list(args) or ["run", str(self.fifo), str(self.srvdir), str(self.confdir)]
        full_env = {"HOME": str(self.home), "PATH": path, "XDG_RUNTIME_DIR": str(self.rundir),
                    "USER": "nobody", "LOGNAME": "nobody", "SHELL": "/bin/sh"}
        full_env.update(env or {})
        # The daemon's side: a non-blocking reader, open before the backend runs.
        fd = os.open(self.fifo, os.O_RDONLY | os.O_NONBLOCK)
        try:
            proc = subprocess.Popen([str(BACKEND), *argv], env=full_env, cwd=self.home,
                                    stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
            try:
                out, err = proc.communicate(timeout=30)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.communicate(timeout=5)
                raise
            self.pid = proc.pid
            res = subprocess.CompletedProcess(proc.args, proc.returncode, out, err)
            try:
                data = os.read(fd, 4096)
            except BlockingIOError:
                data = b""
        finally:
            os.close(fd)
        return res, data

    def argv(self) -> list[str]:
        return (self.out / "argv").read_text().splitlines()

    def service(self, name: str) -> list[str]:
        return [ln for ln in (self.srvdir / name).read_text().splitlines()
                if ln and not ln.startswith("#")]


@pytest.fixture
def run(tmp_path) -> Run:
    return Run(tmp_path)


def test_run_writes_the_login_services_and_execs_dinit(run):
    """Stand-ins for dinit, dinitctl and dinit-monitor (fake_dinit)."""
    bindir = fake_dinit(run.root / "bin", run.out)
    system_boot = run.root / "system boot.d"
    system_boot.mkdir()
    run.conf(f"dinit_path={bindir}", f"system_boot_dir='{system_boot}'")
    res, ready = run()
    assert res.returncode == 0, res.stderr
    assert res.stderr == ""
    # run execs dinit: same process
    assert int((run.out / "pid").read_text()) == run.pid
    sock = f"{run.rundir}/dinitctl"
    boot_d = f"{run.home}/.config/dinit.d/boot.d"
    # what ready gets: run's lines, then the socket path and NUL dinit wrote
    assert ready == f"{bindir}/dinitctl\n{boot_d}\n{system_boot}\n{sock}\0".encode()
    assert os.path.isdir(boot_d)
    assert run.argv() == [
        "--user", "--ready-fd", "3", "--socket-path", sock,
        "--services-dir", str(run.srvdir),
        "--services-dir", f"{run.home}/.config/dinit.d",
        "--services-dir", "/etc/dinit.d/user",
        "--services-dir", "/usr/local/lib/dinit.d/user",
        "--services-dir", "/usr/lib/dinit.d/user",
        "login.target", "graphical.target"]
    assert run.service("boot") == ["type = internal", "depends-on = system",
                                   "depends-on = login.target", f'waits-for.d = "{boot_d}"']
    assert run.service("system") == ["type = internal", f'waits-for.d = "{system_boot}"']
    assert run.service("login.target") == ["type = internal"]
    assert run.service("graphical.target") == ["type = triggered", "depends-on = login.target",
                                               "waits-for = graphical.monitor"]
    assert run.service("graphical.monitor") == [
        "type = process", "depends-on = login.target",
        f'command = "{bindir}/dinit-monitor" -E -i --socket-path "{sock}" '
        f'-c "/bin/sh {run.srvdir}/.graphical-notify %s" WAYLAND_DISPLAY DISPLAY']
    notify = (run.srvdir / ".graphical-notify").read_text()
    assert f"'{bindir}/dinitctl' --quiet --socket-path '{sock}' trigger graphical.target" in notify
    # dinit's environment: dinit_path first on PATH
    dinit_env = dict(ln.split("=", 1) for ln in (run.out / "env").read_text().splitlines()
                     if "=" in ln)
    assert dinit_env["PATH"].split(":")[0] == str(bindir)
    assert dinit_env["XDG_RUNTIME_DIR"] == str(run.rundir)


def test_run_without_a_runtime_dir_uses_the_home_socket(run):
    """Stand-in dinit (fake_dinit)."""
    bindir = fake_dinit(run.root / "bin", run.out)
    run.conf(f"dinit_path={bindir}")
    res, ready = run(env={"XDG_RUNTIME_DIR": ""})
    assert res.returncode == 0, res.stderr
    assert ready.endswith(f"\n{run.home}/.dinitctl\0".encode())


def test_run_finds_dinit_on_the_login_path(run):
    """Stand-in dinit (fake_dinit). /etc/profile may reset PATH; the login's
    PATH is searched too."""
    bindir = fake_dinit(run.root / "bin", run.out)
    res, ready = run(path=f"{bindir}:/usr/bin:/bin")
    assert res.returncode == 0, res.stderr
    assert ready.startswith(f"{bindir}/dinitctl\n".encode())


def test_run_reports_a_missing_dinit(run):
    if shutil.which("dinit", path=HOLDER_PATH):
        pytest.skip("a dinit is on the default PATH")
    res, ready = run()
    assert res.returncode == 69
    assert "dinit not found" in res.stderr and "dinit_path" in res.stderr
    assert ready == b""


@pytest.mark.parametrize("version", ["0.16.1", "0.9.0", "0.16"])
def test_run_refuses_dinit_older_than_0_17(run, version):
    """Stand-in: a dinit that prints an old version (fake_dinit)."""
    bindir = fake_dinit(run.root / "bin", run.out, version=version)
    run.conf(f"dinit_path={bindir}")
    res, ready = run()
    assert res.returncode == 69
    assert (f"{bindir}/dinit is dinit {version}; turnstiled's dinit backend needs dinit "
            "0.17.0 or later") in res.stderr
    assert not (run.out / "argv").exists() and ready == b""


@pytest.mark.parametrize("version", ["0.17.0", "0.17", "0.19.1", "1.0.0", "0.100.2"])
def test_run_accepts_dinit_0_17_and_later(run, version):
    """Stand-in: a dinit that prints the version (fake_dinit)."""
    bindir = fake_dinit(run.root / "bin", run.out, version=version, monitor=None)
    run.conf(f"dinit_path={bindir}")
    res, _ = run()
    assert res.returncode == 0, res.stderr


def test_run_keeps_what_dinit_and_dinit_monitor_said(run):
    """Stand-ins (fake_dinit), asked for their version and -E at the first
    run only: the answers are kept while the programs' mtimes stay."""
    bindir = fake_dinit(run.root / "bin", run.out)
    run.conf(f"dinit_path={bindir}")
    res, _ = run()
    assert res.returncode == 0 and res.stderr == ""
    kept = run.home / ".cache" / "turnstiled"
    assert (kept / "dinit").read_text() == f"{bindir}/dinit\n0.22.1\n"
    assert (kept / "dinit-monitor").read_text() == f"{bindir}/dinit-monitor\n-E\n"
    # other answers, same mtimes: not asked
    mtimes = {n: os.stat(bindir / n).st_mtime_ns for n in ("dinit", "dinit-monitor")}
    fake_dinit(bindir, run.out, version="0.9.0", monitor="old")
    for name, ns in mtimes.items():
        os.utime(bindir / name, ns=(ns, ns))
    res, _ = run()
    assert res.returncode == 0 and res.stderr == ""
    assert run.argv()[-1] == "graphical.target"
    # a new mtime, even an older one: asked again
    for name, ns in mtimes.items():
        os.utime(bindir / name, ns=(ns, ns - 10**9))
    res, _ = run()
    assert res.returncode == 69 and "is dinit 0.9.0" in res.stderr


def test_run_refuses_a_dinit_of_unknown_version(run):
    """Stand-in: a dinit whose --version prints something else."""
    bindir = fake_dinit(run.root / "bin", run.out)
    write_script(bindir / "dinit", "echo 'something else'")
    run.conf(f"dinit_path={bindir}")
    res, _ = run()
    assert res.returncode == 69
    assert "cannot tell the version" in res.stderr


def test_run_without_dinit_monitor_leaves_graphical_out(run):
    """Stand-in dinit without a dinit-monitor (fake_dinit)."""
    if shutil.which("dinit-monitor", path=HOLDER_PATH):
        pytest.skip("a dinit-monitor is on the default PATH")
    bindir = fake_dinit(run.root / "bin", run.out, monitor=None)
    run.conf(f"dinit_path={bindir}")
    res, _ = run()
    assert res.returncode == 0, res.stderr
    assert res.stderr == ""
    assert run.argv()[-1] == "login.target"
    assert not (run.srvdir / "graphical.target").exists()
    assert not (run.srvdir / "graphical.monitor").exists()
    assert "graphical" not in " ".join(run.service("boot"))


@pytest.mark.parametrize("dinit_version,monitor,message", [
    ("0.22.1", "old", "dinit-monitor has no -E (--env); it needs dinit-monitor 0.19.1"),
    ("0.18.0", "env", "is dinit 0.18.0; dinit-monitor -E needs dinit 0.19.1 or later"),
])
def test_run_with_an_old_dinit_monitor_leaves_graphical_out(run, dinit_version, monitor,
                                                            message):
    """Stand-ins: dinit printing the version, dinit-monitor with or without
    -E in its --help (fake_dinit). The real 0.19.1 calls itself 0.19.0."""
    bindir = fake_dinit(run.root / "bin", run.out, version=dinit_version, monitor=monitor)
    run.conf(f"dinit_path={bindir}")
    res, _ = run()
    assert res.returncode == 0, res.stderr
    assert "graphical.target left out" in res.stderr and message in res.stderr
    assert run.argv()[-1] == "login.target"
    assert not (run.srvdir / "graphical.target").exists()


def test_run_with_a_conf_whose_last_command_fails(run):
    """Stand-in dinit (fake_dinit). A sourced file's status is its last
    command's; it is not an error."""
    bindir = fake_dinit(run.root / "bin", run.out)
    run.conf(f"dinit_path={bindir}", "[ -e /nonexistent ] && dinit_args=--quiet")
    res, ready = run()
    assert res.returncode == 0, res.stderr
    assert ready.endswith(b"/run/dinitctl\0")


def test_run_takes_the_dinit_program_as_dinit_path(run):
    """Stand-in dinit (fake_dinit)."""
    bindir = fake_dinit(run.root / "bin", run.out)
    run.conf(f"dinit_path={bindir}/dinit")
    res, ready = run()
    assert res.returncode == 0, res.stderr
    assert ready.endswith(b"/run/dinitctl\0")
    assert run.argv()[-1] == "graphical.target"


def test_run_uses_the_configured_dirs(run):
    """Stand-in dinit (fake_dinit)."""
    bindir = fake_dinit(run.root / "bin", run.out, monitor=None)
    run.conf(f"dinit_path={bindir}", 'boot_dir="$HOME/my boot.d"', "system_boot_dir=",
             "services_dir1=/one", "services_dir2='/two and a half'", "services_dir3=",
             "services_dir4=/four", "dinit_args='--quiet  --log-file /x/*'")
    res, _ = run()
    assert res.returncode == 0, res.stderr
    argv = run.argv()
    assert argv[-4:] == ["--quiet", "--log-file", "/x/*", "login.target"]
    dirs = [argv[i + 1] for i, a in enumerate(argv) if a == "--services-dir"]
    # the numbering stops at the first unset or empty one
    assert dirs == [str(run.srvdir), "/one", "/two and a half"]
    assert (run.home / "my boot.d").is_dir()
    assert run.service("boot")[-1] == f'waits-for.d = "{run.home}/my boot.d"'
    assert run.service("system") == ["type = internal"]


def test_run_with_an_empty_boot_dir_waits_for_nothing(run):
    """Stand-in dinit (fake_dinit)."""
    bindir = fake_dinit(run.root / "bin", run.out, monitor=None)
    run.conf(f"dinit_path={bindir}", "boot_dir=")
    res, _ = run()
    assert res.returncode == 0, res.stderr
    assert run.service("boot") == ["type = internal", "depends-on = system",
                                   "depends-on = login.target"]
    assert not (run.home / ".config").exists()


def test_run_quotes_paths_for_dinit_and_sh(run):
    """Stand-ins for dinit and dinit-monitor (fake_dinit), in a directory
    whose name has a quote and a blank; dinitctl records its arguments."""
    bindir = fake_dinit(run.root / "it's bin", run.out)
    write_script(bindir / "dinitctl", f'printf "%s\\n" "$@" > {run.out}/ctl')
    run.conf(f"dinit_path='{run.root}/it'\\''s bin'",
             r"""boot_dir="$HOME/it's a \"q\" \\dir" """)
    res, ready = run()
    assert res.returncode == 0, res.stderr
    boot_dir = f"{run.home}/it's a \"q\" \\dir"
    assert os.path.isdir(boot_dir)
    assert run.service("boot")[-1] == \
        f'waits-for.d = "{run.home}/it\'s a \\"q\\" \\\\dir"'
    assert f"\n{boot_dir}\n".encode() in ready
    assert f'command = "{bindir}/dinit-monitor" -E' in run.service("graphical.monitor")[-1]
    # what dinit-monitor runs when a display appears
    notify = subprocess.run(["sh", str(run.srvdir / ".graphical-notify"), "set"],
                            capture_output=True, text=True, timeout=10)
    assert notify.returncode == 0, notify.stderr
    assert (run.out / "ctl").read_text().splitlines() == [
        "--quiet", "--socket-path", f"{run.rundir}/dinitctl", "trigger", "graphical.target"]


def test_run_refuses_paths_dinit_would_misread(run):
    """Stand-in dinit (fake_dinit)."""
    bindir = fake_dinit(run.root / "bin", run.out)
    run.conf(f"dinit_path={bindir}", "boot_dir='/tmp/$NOPE'")
    res, ready = run()
    assert res.returncode == 69
    assert "/tmp/$NOPE" in res.stderr and "dinit would misread" in res.stderr
    assert ready == b""


def test_run_argument_checks(run):
    bindir = fake_dinit(run.root / "bin", run.out)
    run.conf(f"dinit_path={bindir}")
    fifo, srv, conf = str(run.fifo), str(run.srvdir), str(run.confdir)
    plain = run.root / "plain"
    plain.write_text("")
    for args, code, message in [
        (["run", str(plain), srv, conf], 69, "is not a fifo"),
        (["run", fifo, str(run.root / "missing"), conf], 69, "is not a writable directory"),
        (["run", fifo, "relative/srv", conf], 69, "is not an absolute path"),
    ]:
        res, _ = run(*args)
        assert res.returncode == code, (args, res.stderr)
        assert message in res.stderr
    res, _ = run("run", fifo, srv, conf, env={"HOME": str(run.root / "nohome")})
    assert res.returncode == 70 and "home directory" in res.stderr
    assert not (run.out / "argv").exists()


def test_usage(run):
    for args in (["bogus"], ["graphical-notify"]):
        res, _ = run(*args)
        assert res.returncode == 64 and "usage:" in res.stderr
    res = subprocess.run([str(BACKEND)], capture_output=True, text=True, timeout=10, env={})
    assert res.returncode == 64 and "usage:" in res.stderr


def test_stop_sends_term(run):
    victim = subprocess.Popen(["sleep", "30"])
    try:
        res, _ = run("stop", str(victim.pid))
        assert res.returncode == 0, res.stderr
        assert victim.wait(5) == -signal.SIGTERM
    finally:
        if victim.poll() is None:
            victim.kill()
            victim.wait(5)
    for bad in ("", "12x", "-1"):
        res, _ = run("stop", bad)
        assert res.returncode == 64 and "not a process id" in res.stderr


class Ready:
    """`backends/dinit ready STRING`, STRING as run writes it (dinitctl, the
    boot dirs, the socket), against a stand-in dinitctl: a sh script that
    logs its arguments, exits with START_RC for `start` and prints the
    states file for `list` (fails like a lost connection with LIST_FAILS)."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.home = root / "home"
        self.home.mkdir()
        self.bindir = root / "bin"
        self.bindir.mkdir()
        self.log = root / "dinitctl.log"
        self.states = root / "states"
        self.states.write_text("")
        write_script(self.bindir / "dinitctl", f"""\
echo "$*" >> {self.log}
case " $* " in
    *" start "*) exit "${{START_RC:-0}}" ;;
    *" list "*)
        if [ -n "$LIST_FAILS" ]; then
            echo "dinitctl: connecting to socket: Connection refused" >&2
            exit 1
        fi
        cat {self.states}
        ;;
esac""")
        sockdir = root / "rt"
        sockdir.mkdir()
        self.sock_path = str(sockdir / "dinitctl")
        self.listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.listener.bind(self.sock_path)
        self.listener.listen()
        self.boot = root / "boot.d"
        self.system_boot = root / "system boot.d"
        for p in (self.boot, self.system_boot):
            p.mkdir()

    def close(self) -> None:
        self.listener.close()

    def services(self, directory: Path | None, **states: str) -> None:
        """Links in directory (None: loaded only), and their `list` lines:
        a state is the 8 state columns, then details."""
        if directory is not None:
            for name in states:
                (directory / name).symlink_to(f"../{name}")
        with open(self.states, "a") as f:
            f.writelines(f"[{s[:8]}] {n}{s[8:]}\n" for n, s in states.items())

    def __call__(self, sock: str | None = None, start_rc: int = 0, string: str | None = None,
                 list_fails: bool = False) -> subprocess.CompletedProcess:
        env = {"HOME": str(self.home), "PATH": "/usr/bin:/bin", "START_RC": str(start_rc),
               "LIST_FAILS": "1" if list_fails else ""}
        if string is None:
            string = (f"{self.bindir}/dinitctl\n{self.boot}\n{self.system_boot}\n"
                      f"{sock or self.sock_path}")
        return subprocess.run([str(BACKEND), "ready", string], env=env,
                              cwd=self.home, capture_output=True, text=True, timeout=30)

    def calls(self) -> list[str]:
        return self.log.read_text().splitlines() if self.log.exists() else []


@pytest.fixture
def ready(tmp_path):
    r = Ready(tmp_path)
    yield r
    r.close()


# `dinitctl list` state columns (dinitctl(8))
STARTED, SKIPPED, STARTING, FAILED = "{+}     ", "{s}     ", "{ }<<   ", "     {X}"


def test_ready_starts_boot_and_reports_each_boot_service(ready):
    ready.services(ready.system_boot, sysd=STARTED)
    ready.services(ready.boot, a=STARTED + " (pid: 12)", b=SKIPPED)
    ready.services(None, boot=STARTED, ab=FAILED)  # loaded, not in a boot dir
    (ready.boot / ".hidden").write_text("")  # dinit skips dot names
    res = ready()
    assert res.returncode == 0, res.stderr
    assert res.stdout.splitlines() == ["up sysd", "up a", "up b"]
    assert ready.calls() == [f"--quiet --socket-path {ready.sock_path} start boot",
                             f"--socket-path {ready.sock_path} list"]


def test_ready_fails_when_a_boot_service_did_not_start(ready):
    ready.services(ready.boot, a=STARTED, bad=FAILED + " (exit status: 1)", slow=STARTING)
    res = ready()
    assert res.returncode == 1
    assert res.stdout.splitlines() == ["up a"]
    assert "boot service 'bad' is not started: STOPPED (failed)" in res.stderr
    assert "boot service 'slow' is not started: STARTING" in res.stderr
    assert "did not start: bad slow" in res.stderr


def test_ready_ignores_entries_that_are_not_services(ready):
    ready.services(ready.boot, a=STARTED)
    (ready.boot / "gone").symlink_to("../gone")  # not loaded: dinit ignored it as well
    res = ready()
    assert res.returncode == 0, res.stderr
    assert res.stdout.splitlines() == ["up a"]
    assert "gone: no such service; ignored" in res.stderr


def test_ready_fails_when_it_cannot_tell_a_state(ready):
    ready.services(ready.boot, a=STARTED)
    res = ready(list_fails=True)
    assert res.returncode == 1
    assert res.stdout == ""
    assert "cannot tell the state of the boot services" in res.stderr
    assert "dinitctl: connecting" in res.stderr


def test_ready_fails_when_boot_does_not_start(ready):
    ready.services(ready.boot, a="STARTED")
    res = ready(start_rc=3)
    assert res.returncode == 3  # dinitctl's
    assert res.stdout == ""
    assert "could not start boot (dinitctl exited with 3" in res.stderr


def test_ready_checks_its_string(ready):
    res = ready(sock=str(ready.root / "no-socket"))
    assert res.returncode == 69 and "no control socket" in res.stderr
    # a socket path alone is not what run writes
    res = ready(string=ready.sock_path)
    assert res.returncode == 69 and "no control socket at ''" in res.stderr
    assert ready.calls() == []


def test_scripts_are_posix_sh():
    for shell in ("sh", "dash"):
        if shutil.which(shell) is None:
            continue
        res = subprocess.run([shell, "-n", str(BACKEND)], capture_output=True, text=True,
                             timeout=10)
        assert res.returncode == 0, res.stderr
    conf = subprocess.run(["sh", "-n", str(BACKEND_CONF)], capture_output=True, text=True,
                          timeout=10)
    assert conf.returncode == 0, conf.stderr

