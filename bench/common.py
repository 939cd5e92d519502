"""What the benchmarks share: a sandboxed daemon on the real libpam and the
real module, throwaway users with runit services, and figures."""

from __future__ import annotations

import compileall
import contextlib
import os
import pwd
import secrets
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(REPO, "tests"))

# The tests' login client (the real libpam, service files of ours) and bursts.
from burst import OK, Burst, CpuHog, tally  # noqa: E402,F401
from pamclient import PamLogin  # noqa: E402,F401

MODULE = os.path.join(REPO, "pam", "pam_turnstile.so")
HOLDER = os.path.join(REPO, "holder", "turnstiled-holder")
FDSTORE = os.path.join(REPO, "holder", "turnstiled-fdstore")
# The manager's own session loads what a distribution's does.
MANAGER_PAM = """auth sufficient pam_rootok.so
account required pam_permit.so
session optional pam_keyinit.so force revoke
session optional pam_umask.so usergroups umask=022
session required pam_limits.so
"""


def write(path: str, text: str, mode: int = 0o644) -> None:
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "w") as f:
        f.write(text)
    os.chmod(path, mode)


def figures(name: str, samples: list[float]) -> None:
    """median and max of samples in seconds, printed in ms."""
    ms = [s * 1000 for s in samples]
    print(f"{name:<38} median {statistics.median(ms):7.2f} ms   max {max(ms):7.2f} ms"
          f"   (n={len(ms)})", flush=True)


def distribution(name: str, samples: list[float]) -> None:
    """min, median, p90, p99 and max of samples in seconds, printed in ms."""
    ms = sorted(s * 1000 for s in samples)
    if not ms:
        print(f"{name}: no samples", flush=True)
        return

    def pct(p: float) -> float:
        return ms[min(len(ms) - 1, int(p * len(ms)))]

    print(f"{name:<30} min {ms[0]:7.1f}  median {statistics.median(ms):7.1f}  "
          f"p90 {pct(0.9):7.1f}  p99 {pct(0.99):7.1f}  max {ms[-1]:7.1f} ms  (n={len(ms)})",
          flush=True)


def pss_kb(pid: int) -> int:
    try:
        with open(f"/proc/{pid}/smaps_rollup") as f:
            for line in f:
                if line.startswith("Pss:"):
                    return int(line.split()[1])
    except OSError:
        pass
    return 0


def root_side(daemon_pid: int) -> dict[int, int]:
    """pid -> PSS kB of the daemon and of every root process below it."""
    children: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat", "rb") as f:
                stat = f.read()
            uid = os.stat(f"/proc/{entry}").st_uid
        except OSError:
            continue
        if uid == 0:
            ppid = int(stat[stat.rfind(b")") + 2:].split()[1])
            children.setdefault(ppid, []).append(int(entry))
    found, todo = [daemon_pid], [daemon_pid]
    while todo:
        for child in children.get(todo.pop(), []):
            found.append(child)
            todo.append(child)
    return {pid: pss_kb(pid) for pid in found}


class Sandbox:
    """A daemon whose sockets, state, runtime dirs and PAM files all live in
    a temporary directory; /etc/pam.d is never touched."""

    def __init__(self, backend: str, config: str = "", dinit_path: str = "") -> None:
        self.backend = backend
        self.top = top = tempfile.mkdtemp(prefix="turnstiled-bench.")
        os.chmod(top, 0o755)
        self.daemon: subprocess.Popen | None = None
        # Sockets, state and runtime dirs on a tmpfs, as /run is on a real
        # system (a disk file system's renames would dominate the figures).
        self.run = run = f"{top}/run"
        os.mkdir(run, 0o755)
        subprocess.run(["mount", "-t", "tmpfs", "-o", "mode=0755,size=256m", "tmpfs", run],
                       check=True)
        write(f"{top}/etc/turnstiled.conf", f"""backend = {backend}
backend_dir = {top}/backends
holder_path = {HOLDER}
fdstore_path = {FDSTORE}
socket_path = {run}/control.sock
admin_socket_path = {run}/admin.sock
state_dir = {run}/state
linger_dir = {top}/linger
rundir_path = {run}/user/%u
pam_dir = {top}/pam.d
user_stop_delay = 0
# The logins are made in this process, their leader: with cgroups it
# would be moved into each session's group in turn.
cgroups = no
{config}""")
        shutil.copytree(os.path.join(REPO, "backends"), f"{top}/backends")
        os.makedirs(f"{top}/etc/backend")
        for conf in ("runit.conf", "dinit.conf"):
            shutil.copy(os.path.join(REPO, "backends", conf), f"{top}/etc/backend/")
        if dinit_path:
            with open(f"{top}/etc/backend/dinit.conf", "a") as f:
                f.write(f'dinit_path="{dinit_path}"\n')
        write(f"{top}/pam.d/turnstiled", MANAGER_PAM)
        write(f"{top}/pam.d/login", "auth required pam_permit.so\n"
              "account required pam_permit.so\n"
              f"session required {MODULE} socket={run}/control.sock\n"
              "session required pam_permit.so\n")
        subprocess.run(["chmod", "-R", "a+rX", top], check=True)

    @property
    def confdir(self) -> str:
        return f"{self.top}/pam.d"

    def start(self) -> None:
        """Starts a daemon; returns once it listens (a restarted one: once it
        has taken up everything, as it listens only then)."""
        # Installed, the daemon runs byte-compiled (distributions compile at
        # install, and root's first start writes the cache). Compiled from
        # source at each start, as PYTHONDONTWRITEBYTECODE would have it
        # here, it would keep about 1.8 MB more heap than users see.
        compileall.compile_dir(os.path.join(REPO, "turnstiled"), quiet=1)
        log_path = f"{self.top}/daemon.log"
        seen = os.path.getsize(log_path) if os.path.exists(log_path) else 0
        with open(log_path, "a") as log:
            self.daemon = subprocess.Popen(
                [sys.executable, "-m", "turnstiled", "-c", f"{self.top}/etc/turnstiled.conf"],
                cwd=REPO, stdout=log, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + 10
        while True:
            with open(log_path, "rb") as f:
                f.seek(seen)
                if b" listening on " in f.read():
                    return
            if time.monotonic() > deadline or self.daemon.poll() is not None:
                raise SystemExit("the daemon did not start; see " + log_path)
            time.sleep(0.001)

    def start_for(self, users: list[pwd.struct_passwd], core: int = 1) -> None:
        """Gives each user `core` trivial core services, then starts."""
        for u in users:
            runit_services(u.pw_dir, u.pw_uid, u.pw_gid, core)
        self.start()
        time.sleep(1.5)  # runsvdir's one-second edit guard

    def log_in(self, users: list[pwd.struct_passwd]) -> list[PamLogin]:
        """One session per user, held in this process: forked clients would
        share pages with the daemon and shrink its PSS."""
        sessions = []
        for u in users:
            pam = PamLogin("login", u.pw_name, self.confdir)
            pam.open()
            sessions.append(pam)
        return sessions

    def state(self, uid: int) -> str | None:
        """The STATE of a user's published state, None when there is none."""
        try:
            with open(f"{self.run}/state/users/{uid}") as f:
                for line in f:
                    if line.startswith("STATE="):
                        return line[6:].strip()
        except FileNotFoundError:
            return None
        return ""

    def wait_state(self, uid: int, want: str | None, timeout: float = 30) -> None:
        deadline = time.monotonic() + timeout
        while self.state(uid) != want:
            if time.monotonic() > deadline:
                raise SystemExit(f"uid {uid}: state {self.state(uid)!r}, wanted {want!r}")
            time.sleep(0.002)

    def stop(self) -> None:
        """A full stop (SIGINT): every manager stopped, the fd store gone."""
        if self.daemon is not None and self.daemon.poll() is None:
            self.daemon.send_signal(signal.SIGINT)
            try:
                self.daemon.wait(30)
            except subprocess.TimeoutExpired:
                self.daemon.kill()
                self.daemon.wait(5)

    def remove(self) -> None:
        self.stop()
        subprocess.run(["umount", "-l", self.run], check=False)
        shutil.rmtree(self.top, ignore_errors=True)


def uid_processes(uid: int) -> list[int]:
    pids = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                if os.stat(f"/proc/{entry}").st_uid == uid:
                    pids.append(int(entry))
            except OSError:
                pass
    return pids


def runit_services(home: str, uid: int, gid: int, core: int) -> None:
    """core trivial core services s1..sN in home's ~/.config/service."""
    svc = os.path.join(home, ".config", "service")
    shutil.rmtree(svc, ignore_errors=True)
    for i in range(1, core + 1):
        write(f"{svc}/s{i}/run", "#!/bin/sh\nexec sleep infinity\n", 0o755)
    write(f"{svc}/turnstile-ready/conf",
          f'core_services="{" ".join(f"s{i}" for i in range(1, core + 1))}"\n')
    subprocess.run(["chown", "-R", f"{uid}:{gid}", os.path.join(home, ".config")], check=True)


@contextlib.contextmanager
def throwaway_users(count: int, prefix: str = "tsdb") -> Iterator[list[pwd.struct_passwd]]:
    """count new users, removed with their homes and processes afterwards."""
    tag = secrets.token_hex(3)
    made: list[pwd.struct_passwd] = []
    try:
        for i in range(count):
            name = f"{prefix}{tag}{i}"
            subprocess.run(["useradd", "-m", "-s", "/bin/sh", name], check=True)
            made.append(pwd.getpwnam(name))
        yield made
    finally:
        for pw in made:
            for _ in range(50):
                pids = uid_processes(pw.pw_uid)
                if not pids:
                    break
                for pid in pids:
                    with contextlib.suppress(ProcessLookupError):
                        os.kill(pid, signal.SIGKILL)
                time.sleep(0.05)
            subprocess.run(["userdel", "-r", pw.pw_name], capture_output=True)
