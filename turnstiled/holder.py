"""The holder: one small root process per running user manager.

The daemon never forks itself; for each manager it starts
`python -m turnstiled.holder`, which

- opens the manager's PAM session (limits, umask, pam_env apply) and keeps
  it open for the manager's whole life, closing it after the manager exits;
- runs the backend's `run`, `ready` and `stop` as the user (uid, gid,
  supplementary groups, a clean environment, no stray fds);
- is a child subreaper, so every process the manager leaves behind (a runsv
  whose runsvdir died, a daemonised service) is re-parented to it and can be
  stopped: when the holder reports `gone`, nothing of the manager remains.

It speaks lines on its stdin/stdout with the daemon (turnstiled.holderlink):
commands `ready STRING`, `stop`, `kill`; events `pid N`, `up NAME`,
`ready-exit STATUS`, `exit STATUS`, `error MESSAGE`, `gone`.
End of stdin means the daemon is gone: the holder stops the manager itself.
"""

from __future__ import annotations

import ctypes
import json
import os
import selectors
import signal
import subprocess
import sys
import time

from .pamsession import PamError, PamSession

PR_SET_CHILD_SUBREAPER = 36
DEFAULT_PATH = "/usr/local/bin:/usr/bin:/bin:/usr/local/sbin:/usr/sbin:/sbin"


def _set_subreaper() -> None:
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.prctl(PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0) != 0:
        raise OSError(ctypes.get_errno(), "prctl(PR_SET_CHILD_SUBREAPER)")


def descendants(root: int) -> list[int]:
    """Every live process below root, from /proc."""
    children: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat", "rb") as f:
                stat = f.read()
        except OSError:
            continue
        # Fields after the parenthesised command name: state ppid ...
        fields = stat[stat.rfind(b")") + 2:].split()
        children.setdefault(int(fields[1]), []).append(int(entry))
    found, todo = [], [root]
    while todo:
        for child in children.get(todo.pop(), []):
            found.append(child)
            todo.append(child)
    return found


def wait_status(status: int) -> int:
    """A shell-style exit status: the exit code, or 128 + the signal."""
    code = os.waitstatus_to_exitcode(status)
    return code if code >= 0 else 128 - code


class Holder:
    def __init__(self, spec: dict) -> None:
        self.spec = spec
        self.pam: PamSession | None = None
        self.env: dict[str, str] = {}
        self.manager_pid: int | None = None
        self.ready_pid: int | None = None
        self.ready_out: int | None = None
        self.ready_buf = b""
        self.kill_at: float | None = None
        self.stop_requested = False
        self.sel = selectors.DefaultSelector()
        self.commands = b""
        self.children: dict[int, subprocess.Popen] = {}

    # -- talking to the daemon

    def emit(self, *words: object) -> None:
        line = " ".join(str(w) for w in words).replace("\n", " ") + "\n"
        try:
            os.write(1, line.encode())
        except BrokenPipeError:
            pass

    # -- running things as the user

    def user_env(self, base: dict[str, str]) -> dict[str, str]:
        s = self.spec
        env = dict(base)
        defaults = {"HOME": s["home"], "USER": s["user"], "LOGNAME": s["user"],
                    "SHELL": s["shell"], "PATH": DEFAULT_PATH}
        if s.get("rundir"):
            defaults["XDG_RUNTIME_DIR"] = s["rundir"]
        for key, value in defaults.items():
            env.setdefault(key, value)
        return env

    def spawn(self, argv: list[str], env: dict[str, str], new_session: bool = False,
              stdout: int = 2) -> int:
        s = self.spec
        cwd = s["home"] if os.path.isdir(s["home"]) else "/"
        proc = subprocess.Popen(
            argv, env=env, cwd=cwd, stdin=subprocess.DEVNULL, stdout=stdout, stderr=2,
            user=s["uid"], group=s["gid"], extra_groups=s["groups"],
            start_new_session=new_session, close_fds=True)
        # Keep the Popen: a dropped one reaps its child behind our back
        # (__del__, subprocess's cleanup), and reap() would miss that exit.
        self.children[proc.pid] = proc
        return proc.pid

    def start_manager(self) -> bool:
        s = self.spec
        if s["pam_service"]:
            self.pam = PamSession(s["pam_service"], s["user"], s["pam_dir"])
            try:
                pam_env = self.pam.open()
            except PamError as err:
                self.pam = None
                self.emit("error", err)
                return False
        else:
            pam_env = {}
        # The manager's PAM session comes first: values it sets win.
        self.env = self.user_env(pam_env)
        argv = [s["backend"], "run", s["fifo"], s["srvdir"], s["confdir"]]
        try:
            self.manager_pid = self.spawn(argv, self.env, new_session=True)
        except OSError as err:
            self.emit("error", f"cannot run {s['backend']}: {err.strerror}")
            return False
        self.emit("pid", self.manager_pid)
        return True

    def run_ready(self, arg: str) -> None:
        r, w = os.pipe2(os.O_CLOEXEC)
        try:
            # run, ready and stop share one environment: the PAM session's.
            pid = self.spawn([self.spec["backend"], "ready", arg], self.env, stdout=w)
        except OSError as err:
            os.close(r)
            self.emit("ready-exit", 127)
            self.emit("error", f"cannot run {self.spec['backend']} ready: {err.strerror}")
            return
        finally:
            os.close(w)
        self.ready_pid, self.ready_out = pid, r
        self.sel.register(r, selectors.EVENT_READ, self.on_ready_output)

    def on_ready_output(self) -> None:
        assert self.ready_out is not None
        data = os.read(self.ready_out, 4096)
        if not data:
            self.sel.unregister(self.ready_out)
            os.close(self.ready_out)
            self.ready_out = None
            return
        self.ready_buf += data
        *lines, self.ready_buf = self.ready_buf.split(b"\n")
        # The user's own config runs in there: a line without end is dropped.
        self.ready_buf = self.ready_buf[-4096:]
        for line in lines:
            words = line.decode(errors="replace").split()
            # The backend's ready prints `up NAME` as each core service comes up.
            if len(words) == 2 and words[0] == "up":
                self.emit("up", words[1])

    def stop(self) -> None:
        if self.stop_requested:
            return
        self.stop_requested = True
        self.kill_at = time.monotonic() + float(self.spec["stop_timeout"])
        if self.manager_pid is None:
            return
        try:
            self.spawn([self.spec["backend"], "stop", str(self.manager_pid)], self.env)
        except OSError as err:
            self.emit("error", f"cannot run {self.spec['backend']} stop: {err.strerror}")
            self.kill_all(signal.SIGTERM)

    def kill_all(self, sig: int) -> None:
        for pid in descendants(os.getpid()):
            try:
                os.kill(pid, sig)
            except ProcessLookupError:
                pass

    # -- the loop

    def on_command(self) -> None:
        data = os.read(0, 4096)
        if not data:
            # The daemon is gone; nobody will ask us to stop, so do it now.
            self.sel.unregister(0)
            self.stop()
            return
        self.commands += data
        *lines, self.commands = self.commands.split(b"\n")
        for line in lines:
            cmd, _, arg = line.decode(errors="replace").partition(" ")
            if cmd == "ready":
                self.run_ready(arg)
            elif cmd == "stop":
                self.stop()
            elif cmd == "kill":
                self.kill_all(signal.SIGKILL)

    def reap(self) -> bool:
        """Reaps exited children; False once none is left."""
        while True:
            try:
                pid, status = os.waitpid(-1, os.WNOHANG)
            except ChildProcessError:
                return False
            if pid == 0:
                return True
            proc = self.children.pop(pid, None)
            if proc is not None:
                proc.returncode = wait_status(status)
            if pid == self.manager_pid:
                self.manager_pid = None
                self.emit("exit", wait_status(status))
                # What the manager leaves behind goes with it (re-parented
                # to us); the kill deadline covers whatever ignores TERM.
                self.kill_all(signal.SIGTERM)
                if self.kill_at is None:
                    self.kill_at = time.monotonic() + float(self.spec["stop_timeout"])
            elif pid == self.ready_pid:
                self.ready_pid = None
                self.emit("ready-exit", wait_status(status))

    def run(self) -> int:
        if not self.start_manager():
            return 1
        sig_r, sig_w = os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)
        signal.set_wakeup_fd(sig_w)
        signal.signal(signal.SIGCHLD, lambda *_: None)
        for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
            signal.signal(sig, lambda *_: self.stop())
        self.sel.register(sig_r, selectors.EVENT_READ, lambda: os.read(sig_r, 4096))
        self.sel.register(0, selectors.EVENT_READ, self.on_command)
        while True:
            if not self.reap() and self.manager_pid is None:
                break
            timeout = None
            if self.kill_at is not None:
                timeout = max(0.0, self.kill_at - time.monotonic())
                if timeout == 0:
                    self.kill_all(signal.SIGKILL)
                    timeout = 0.1
            for key, _ in self.sel.select(timeout):
                key.data()
        self.finish()
        return 0

    def finish(self) -> None:
        if self.pam is not None:
            self.pam.close()
        self.emit("gone")


def main() -> int:
    # argv[1] is the JSON spec from turnstiled.manager; stdout is the event
    # channel, so everything else (ours, the backend's) goes to stderr.
    spec = json.loads(sys.argv[1])
    _set_subreaper()
    return Holder(spec).run()


if __name__ == "__main__":
    sys.exit(main())
