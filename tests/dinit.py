"""The dinit backend (backends/dinit) under test: where it is, stand-ins
for dinit and its tools (small sh scripts), the backend's `run` against
them (Run), and a real dinit for a test user's logins.

A real dinit (not packaged in Debian) is the one named by
$TURNSTILED_TEST_DINIT, else the one on the test runner's PATH, with
dinitctl (and dinit-monitor) beside it.
"""

from __future__ import annotations

import functools
import os
import re
import shutil
import subprocess
import tempfile
from pathlib import Path

import pytest
from helpers import REPO_ROOT, parse_kv, procs_of
from users import setpriv

BACKEND = REPO_ROOT / "backends" / "dinit"
BACKEND_CONF = REPO_ROOT / "backends" / "dinit.conf"
DINIT_ENV = "TURNSTILED_TEST_DINIT"
# An optional real dinit older than 0.17, for the version error.
DINIT_OLD_ENV = "TURNSTILED_TEST_DINIT_OLD"
MIN_VERSION = (0, 17, 0)


def write_script(path: Path, body: str) -> Path:
    """An executable sh script at path; returns path."""
    path.write_text("#!/bin/sh\n" + body + "\n")
    os.chmod(path, 0o755)
    return path


# -- stand-ins


def fake_monitor(bindir: Path, env: bool = True) -> Path:
    """A stand-in dinit-monitor in bindir: it prints a --help with -E/--env
    (env=True, as 0.19.1 and later) or without it, and runs nothing."""
    env_line = "  -E, --env        : monitor activation environment changes\n" if env else ""
    return write_script(bindir / "dinit-monitor", f"""\
[ "$1" = --help ] || exit 1
printf 'Options:\\n  -e, --exit       : exit after the first issued command\\n{env_line}'
printf '  -i, --initial    : also execute command for initial service state\\n'
exit 1""")


def fake_dinit(bindir: Path, out: Path, version: str = "0.22.1",
               monitor: str | None = "env") -> Path:
    """Stand-ins in bindir (made if missing), returned: `dinit` prints
    `version` as the real one does, or records its pid, argv and env in
    `out` and writes its --socket-path and a NUL into fd 3 as the real one
    does; `dinitctl` does nothing; `dinit-monitor` (unless None) is
    fake_monitor's, with -E (monitor="env") or without it (monitor="old")."""
    bindir.mkdir(parents=True, exist_ok=True)
    write_script(bindir / "dinit", f"""\
if [ "$1" = --version ]; then
    echo "Dinit version {version}."
    echo "Supported features: utmp"
    exit 0
fi
echo $$ > {out}/pid
for a in "$@"; do printf '%s\\n' "$a"; done > {out}/argv
env > {out}/env
while [ $# -gt 0 ] && [ "$1" != --socket-path ]; do shift; done
printf '%s\\0' "$2" >&3""")
    write_script(bindir / "dinitctl", "exit 0")
    if monitor is not None:
        fake_monitor(bindir, env=monitor == "env")
    return bindir


# -- the backend's `run` with stand-ins, under an /etc/profile of its own


# The programs the backend's `run` and the stand-ins call by name (all else
# they use is built into sh): the only ones on a run's PATH.
TOOLS = ("env", "mkdir", "touch")


def in_own_profile(profile: Path, argv: list[str]) -> list[str]:
    """argv, run in a new mount namespace where profile is /etc/profile (as
    root; otherwise in a new user namespace too, as its root)."""
    unshare, mount = shutil.which("unshare"), shutil.which("mount")
    if unshare is None or mount is None:
        pytest.skip("needs unshare and mount (util-linux) to give the backend an /etc/profile")
    user = [] if os.geteuid() == 0 else ["--map-root-user"]
    return [unshare, "--mount", "--propagation", "private", *user, "/bin/sh", "-c",
            '"$1" --bind "$2" /etc/profile && shift 2 && exec "$@"', "sh", mount, str(profile),
            *argv]


@functools.cache
def own_profile_problem() -> str:
    """Why in_own_profile cannot work here ("" when it can)."""
    with tempfile.NamedTemporaryFile("w", suffix=".profile") as profile:
        profile.write("PROFILE=ours\n")
        profile.flush()
        try:
            res = subprocess.run(in_own_profile(Path(profile.name), [
                "/bin/sh", "-c", '. /etc/profile && [ "$PROFILE" = ours ]']),
                capture_output=True, text=True, timeout=30)
        except OSError as err:
            return str(err)
    return "" if res.returncode == 0 else res.stderr.strip() or f"exit {res.returncode}"


class Run:
    """One `backends/dinit run` in a scratch home, fifo, srvdir and confdir,
    under an /etc/profile of its own (in_own_profile) that sets PATH to
    tools, a directory holding TOOLS alone."""

    def __init__(self, root: Path) -> None:
        problem = own_profile_problem()
        if problem:
            pytest.skip(f"cannot give the backend an /etc/profile of the test's own: {problem}")
        self.root = root
        self.home = root / "home"
        self.rundir = root / "run"
        self.srvdir = root / "srv"
        self.confdir = root / "conf"
        self.out = root / "out"
        self.tools = root / "tools"
        self.fifo = root / "ready"
        for p in (self.home, self.rundir, self.srvdir, self.confdir, self.out, self.tools):
            p.mkdir()
        for tool in TOOLS:
            found = shutil.which(tool)
            assert found is not None, f"no {tool} on the test runner's PATH"
            (self.tools / tool).symlink_to(found)
        self.profile = root / "profile"
        self.profile.write_text(f"PATH={self.tools}\nexport PATH\n")
        os.mkfifo(self.fifo)
        self.conf_lines: list[str] = []

    def conf(self, *lines: str) -> None:
        self.conf_lines += lines

    def __call__(self, *args: str, path: str | None = None, env: dict | None = None,
                 ) -> tuple[subprocess.CompletedProcess, bytes]:
        """The backend with args (by default `run FIFO SRVDIR CONFDIR`), the
        login's PATH path (by default tools): its outcome and what the fifo
        got."""
        (self.confdir / "dinit.conf").write_text(
            BACKEND_CONF.read_text() + "".join(ln + "\n" for ln in self.conf_lines))
        argv = list(args) or ["run", str(self.fifo), str(self.srvdir), str(self.confdir)]
        full_env = {"HOME": str(self.home), "PATH": path or str(self.tools),
                    "XDG_RUNTIME_DIR": str(self.rundir), "USER": "nobody", "LOGNAME": "nobody",
                    "SHELL": "/bin/sh"}
        full_env.update(env or {})
        # The daemon's side: a non-blocking reader, open before the backend runs.
        fd = os.open(self.fifo, os.O_RDONLY | os.O_NONBLOCK)
        try:
            proc = subprocess.Popen(in_own_profile(self.profile, [str(BACKEND), *argv]),
                                    env=full_env, cwd=self.home, stdout=subprocess.PIPE,
                                    stderr=subprocess.PIPE, text=True)
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
        """The arguments the stand-in dinit was run with."""
        return (self.out / "argv").read_text().splitlines()

    def env(self) -> dict[str, str]:
        """The environment the stand-in dinit was run with."""
        return parse_kv((self.out / "env").read_text())

    def service(self, name: str) -> list[str]:
        return [ln for ln in (self.srvdir / name).read_text().splitlines()
                if ln and not ln.startswith("#")]


# -- a real dinit


def dinits(uid: int) -> list[int]:
    """The pids of uid's dinit processes."""
    return [pid for pid, cmd in procs_of(uid) if cmd.split()[0].endswith("/dinit")]


def version_of(program: str | os.PathLike) -> tuple[int, ...] | None:
    """The version `program --version` prints, None if it prints none."""
    try:
        out = subprocess.run([str(program), "--version"], capture_output=True, text=True,
                             timeout=10).stdout
    except OSError:
        return None
    m = re.match(r"Dinit version (\d+(?:\.\d+)*)", out)
    return tuple(int(x) for x in m.group(1).split(".")) if m else None


def dotted(version: tuple[int, ...]) -> str:
    return ".".join(map(str, version))


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
        return str(write_script(self.home / "bin" / name, body))

    def own(self) -> None:
        for top in (self.home / ".config", self.home / "bin"):
            subprocess.run(["chown", "-R", f"{self.user.uid}:{self.user.gid}", str(top)],
                           check=True, timeout=30)


class DinitSetup:
    """Starts the daemon with the dinit backend and the dinit in dinit_dir
    (the backend config's dinit_path)."""

    def __init__(self, daemon, dinit_dir: Path) -> None:
        self.daemon_factory, self.dinit_dir = daemon, dinit_dir
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
            setpriv(user, "env", "-i", *(f"{k}={v}" for k, v in env.items()),
                    str(self.dinit_dir / "dinitctl"), *args),
            capture_output=True, text=True, timeout=timeout)

    def state(self, user, service: str) -> str:
        out = self.ctl(user, "status", service).stdout
        m = re.search(r"^\s*State:\s*(.*)$", out, re.M)
        return m.group(1) if m else ""
