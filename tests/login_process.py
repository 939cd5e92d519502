"""A login program of its own process, as login(1) or sshd's session
process are: opens a session through the real libpam (pamclient.PamLogin),
starts the user's "shell" (a command) as the user in a session of its own,
waits for it to exit, closes the PAM session and exits.

Being a separate process matters where the daemon acts on the session's
leader (the process that called pam_open_session): with cgroups it moves
the leader into the session's group, which must not be the test runner.

Run: python login_process.py CONFDIR SERVICE USER COMMAND
Prints one JSON line once the session is open and the shell started:
{"pid": its own pid, "shell": the shell's pid, "env": the PAM environment},
or {"error": ...} if the open failed. Exits with the shell's status.

Tests start it through LoginProcess, below.
"""

from __future__ import annotations

import json
import os
import pwd
import select
import signal
import subprocess
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from pamclient import PamFailure, PamLogin, environ_without_pam_wrapper  # noqa: E402

OPEN_TIMEOUT = 30.0


class LoginProcess:
    """One login by a login process of its own (this file run as a
    program): pid is the login process (the session's leader), shell the
    user's shell. `logout()` ends the shell, and with it the login."""

    def __init__(self, service: str, user: str, confdir: str | os.PathLike,
                 command: str) -> None:
        self.proc = subprocess.Popen(
            [sys.executable, os.path.abspath(__file__), str(confdir), service, user, command],
            stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, env=environ_without_pam_wrapper())
        ready, _, _ = select.select([self.proc.stdout], [], [], OPEN_TIMEOUT)
        line = self.proc.stdout.readline() if ready else b""
        if not line:
            self.kill()
            raise AssertionError(f"the login process said nothing within {OPEN_TIMEOUT:g} s")
        said = json.loads(line)
        if "error" in said:
            self.kill()
            raise AssertionError(f"the login failed: {said['error']}")
        self.pid: int = said["pid"]
        self.shell: int = said["shell"]
        self.env: dict[str, str] = said["env"]

    def logout(self, timeout: float = 10.0) -> int:
        """Kills the shell (as a hangup would) and waits for the login
        process to close its session and exit; returns its status."""
        try:
            os.kill(self.shell, signal.SIGKILL)
        except ProcessLookupError:
            pass
        return self.wait(timeout)

    def wait(self, timeout: float = 10.0) -> int:
        """Waits for the login process to exit (its shell ended)."""
        status = self.proc.wait(timeout)
        self.proc.stdout.close()
        return status

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(5)
        if self.proc.stdout and not self.proc.stdout.closed:
            self.proc.stdout.close()


def main() -> int:
    confdir, service, user, command = sys.argv[1:5]
    pw = pwd.getpwnam(user)
    login = PamLogin(service, user, confdir)
    try:
        env = login.open(timeout=30)
    except PamFailure as err:
        print(json.dumps({"error": str(err)}), flush=True)
        return 1
    shell_env = {"HOME": pw.pw_dir, "USER": user, "LOGNAME": user, "SHELL": "/bin/sh",
                 "PATH": "/usr/bin:/bin", **env}
    shell = subprocess.Popen(["/bin/sh", "-c", command], user=pw.pw_uid, group=pw.pw_gid,
                             extra_groups=os.getgrouplist(user, pw.pw_gid), env=shell_env,
                             cwd="/", start_new_session=True, stdin=subprocess.DEVNULL,
                             stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    print(json.dumps({"pid": os.getpid(), "shell": shell.pid, "env": env}), flush=True)
    status = shell.wait()
    login.close()
    return status


if __name__ == "__main__":
    sys.exit(main())
