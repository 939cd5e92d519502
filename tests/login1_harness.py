"""The D-Bus API under test: a private system bus, the real daemon on it
with login1 = yes, logins made by real login processes (loginshell.py),
and clients: in-process as root (busclient), as a test user's process,
from inside a login, and the real loginctl.

The VT files are the sandbox's own (a regular file stands for sysfs's
tty0/active; a regular file for /dev/tty0, so a VT switch fails with
ENOTTY instead of switching this machine's console)."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path

import busclient
from daemon import Daemon
from helpers import TESTS_DIR, wait_for
from pamclient import environ_without_pam_wrapper
from sysbus import SystemBus, loginctl_argv
from users import setpriv

# The venv's interpreter (dbus-fast is there), reachable by test users.
VENV_PYTHON = sys.executable


def session_path(sid: str) -> str:
    """A numeric session id's object path, as logind's escaping makes it:
    a leading digit becomes _3N, later digits stay (session 12: _312)."""
    return f"/org/freedesktop/login1/session/_3{sid[0]}{sid[1:]}"


def user_path(uid: int) -> str:
    return f"/org/freedesktop/login1/user/_{uid}"


class LoginShell:
    """A running login (see loginshell.py): its leader's pid, its PAM env."""

    def __init__(self, setup: Login1Setup, user, tty: str = "") -> None:
        self.user = user
        self.proc = subprocess.Popen(
            [sys.executable, str(TESTS_DIR / "loginshell.py"), str(setup.daemon.service_dir),
             setup.service, user.name, tty], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
            text=True, env=environ_without_pam_wrapper())
        first = json.loads(self._line())
        if "error" in first:
            self.close()
            raise AssertionError(f"login of {user.name} failed: {first['error']}")
        self.env: dict[str, str] = first["env"]
        self.id = self.env["XDG_SESSION_ID"]
        self.path = session_path(self.id)

    @property
    def pid(self) -> int:
        return self.proc.pid

    def _line(self) -> str:
        line = self.proc.stdout.readline()
        if not line:
            raise AssertionError("the login process ended early")
        return line

    def run(self, argv: list[str], env: dict[str, str] | None = None) -> dict:
        """argv as a child of the login's leader: {"rc", "stdout", "stderr"}."""
        self.proc.stdin.write(json.dumps({"argv": argv, "env": env or {}}) + "\n")
        self.proc.stdin.flush()
        return json.loads(self._line())

    def spawn(self, argv: list[str]) -> int:
        self.proc.stdin.write(json.dumps({"spawn": argv}) + "\n")
        self.proc.stdin.flush()
        return json.loads(self._line())["pid"]

    def close(self) -> None:
        if self.proc.poll() is None:
            self.proc.stdin.close()
            try:
                self.proc.wait(15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)


@dataclass
class Login1Setup:
    daemon: Daemon
    bus: SystemBus
    sandbox: Path
    service: str
    shells: list[LoginShell] = field(default_factory=list)

    @property
    def address(self) -> str:
        return self.bus.address

    @property
    def vt_file(self) -> Path:
        return Path(self.daemon.config["vt_active_path"])

    def set_vt(self, n: int) -> None:
        """What the kernel would write into tty0/active on a switch."""
        self.vt_file.write_text(f"tty{n}\n")

    def login(self, user, tty: str = "") -> LoginShell:
        shell = LoginShell(self, user, tty)
        self.shells.append(shell)
        return shell

    def call(self, path: str, interface: str, member: str, signature: str = "",
             args: list | None = None) -> list:
        return busclient.call(self.address, path, interface, member, signature, args)

    def props(self, path: str, interface: str = "") -> dict:
        return busclient.get_all(self.address, path, interface)

    def client_argv(self, path: str, interface: str, member: str, signature: str = "",
                    args: list | None = None) -> list[str]:
        return [VENV_PYTHON, str(self.sandbox / "busclient.py"), self.address, path, interface,
                member, signature, json.dumps(args or [])]

    def call_as(self, user, path: str, interface: str, member: str, signature: str = "",
                args: list | None = None) -> dict:
        """The call from a process of user's (uid, gid, groups): the reply
        as busclient's command prints it."""
        res = subprocess.run(setpriv(user, *self.client_argv(path, interface, member,
                                                              signature, args)),
                             capture_output=True, text=True, timeout=30)
        assert res.stdout, res.stderr
        return json.loads(res.stdout)

    def loginctl(self, *args: str, user=None, shell: LoginShell | None = None
                 ) -> subprocess.CompletedProcess | dict:
        """The real loginctl against the daemon: as root, or as user, or
        (shell) from inside that login as its user."""
        run_as = setpriv(user, "env", f"DBUS_SYSTEM_BUS_ADDRESS={self.address}") \
            if user is not None else None
        argv = loginctl_argv(*args, run_as=run_as)
        if shell is not None:
            return shell.run(argv, {"DBUS_SYSTEM_BUS_ADDRESS": self.address})
        return subprocess.run(argv, capture_output=True, text=True, timeout=30,
                              env=self.bus.env())

    def close(self) -> None:
        for shell in self.shells:
            shell.close()


def start(daemon_factory, sandbox: Path, **overrides: object) -> Login1Setup:
    """A private bus, then the daemon on it (login1 = yes unless overridden)."""
    bus_dir = sandbox / "bus"
    bus_dir.mkdir(mode=0o755, exist_ok=True)
    bus = SystemBus(bus_dir).start()
    shutil.copy(TESTS_DIR / "busclient.py", sandbox / "busclient.py")
    os.chmod(sandbox / "busclient.py", 0o644)
    (sandbox / "vt_active").write_text("tty1\n")
    (sandbox / "tty0").write_text("")
    config = {"login1": "yes", "system_bus_address": bus.address,
              "vt_active_path": str(sandbox / "vt_active"),
              "vt_console_path": str(sandbox / "tty0"), **overrides}
    try:
        d = daemon_factory(**config)
    except BaseException:
        bus.stop()
        raise
    setup = Login1Setup(d, bus, sandbox, d.login_service())
    if config["login1"] == "yes":
        wait_for(lambda: "login1: serving" in d.log(), 10, what="the daemon to take the name",
                 detail=d.log_tail)
    return setup
