"""A test user's runit services and the runsvdir managing them, for the
tests of the runit backend and of everything that runs on it."""

from __future__ import annotations

import os
import shutil
import subprocess

from helpers import procs_of
from pamclient import PamLogin


def runsvdirs(uid: int) -> list[int]:
    return [pid for pid, cmd in procs_of(uid) if cmd.startswith("runsvdir ")]


class Services:
    """A test user's ~/.config/service, written as that user would."""

    def __init__(self, user) -> None:
        self.user = user
        self.dir = os.path.join(user.home, ".config", "service")
        shutil.rmtree(os.path.join(user.home, ".config"), ignore_errors=True)
        os.makedirs(self.dir)

    def add(self, name: str, run: str, check: str | None = None, down: bool = False) -> str:
        d = os.path.join(self.dir, name)
        os.makedirs(d, exist_ok=True)
        for fname, body in (("run", run), ("check", check)):
            if body is not None:
                path = os.path.join(d, fname)
                with open(path, "w") as f:
                    f.write("#!/bin/sh\n" + body + "\n")
                os.chmod(path, 0o755)
        if down:
            open(os.path.join(d, "down"), "w").close()
        return d

    def core(self, *names: str) -> None:
        d = os.path.join(self.dir, "turnstile-ready")
        os.makedirs(d, exist_ok=True)
        with open(os.path.join(d, "conf"), "w") as f:
            f.write(f'core_services="{" ".join(names)}"\n')

    def own(self) -> None:
        subprocess.run(["chown", "-R", f"{self.user.uid}:{self.user.gid}",
                        os.path.join(self.user.home, ".config")], check=True)

    def sv_status(self, name: str) -> str:
        return subprocess.run(["sv", "status", os.path.join(self.dir, name)],
                              capture_output=True, text=True, timeout=10).stdout


def one_core_service(user) -> Services:
    """user's services: a, a core service that only sleeps."""
    sv = Services(user)
    sv.add("a", "exec sleep infinity")
    sv.core("a")
    sv.own()
    return sv


def log_in_and_out(d, user) -> int:
    """One login and logout of user's; returns the pid of the manager it had."""
    with PamLogin(d.login_service(), user.name, d.service_dir) as pam:
        pam.open()
        [manager] = runsvdirs(user.uid)
        pam.close()
    return manager
