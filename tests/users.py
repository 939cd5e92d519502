"""Throwaway real users: made with useradd for a test run, removed with
their homes afterwards, and the only accounts whose processes the tests
may kill."""

from __future__ import annotations

import contextlib
import os
import pwd
import secrets
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TypeVar

import pytest
from helpers import pids_of

T = TypeVar("T", str, int)
USER_PREFIX = "tsdt"
# uids of the users scratch_users made in this run: the only accounts whose
# processes may be killed.
_created_uids: list[int] = []


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


def kill_created_users_processes() -> None:
    """kill_uid_processes for every user scratch_users has made and not yet
    removed."""
    for uid in list(_created_uids):
        kill_uid_processes(uid)


def no_such_account(key: T) -> T:
    """key, a user name or a uid, which must name no account here (else the
    test is skipped)."""
    try:
        pwd.getpwuid(key) if isinstance(key, int) else pwd.getpwnam(key)
    except KeyError:
        return key
    pytest.skip(f"{key!r} is an account here")


def setpriv(user, *argv: str) -> list[str]:
    """argv, to run as user: uid, gid and supplementary groups the user's."""
    return ["setpriv", f"--reuid={user.uid}", f"--regid={user.gid}", "--init-groups", *argv]


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
