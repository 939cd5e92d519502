"""The holder binary (holder/turnstiled-holder) started as the daemon starts
it, and a sandbox with a backend that is a small sh script recording what
it sees: the holder is backend-agnostic (it only runs `BACKEND run|ready|
stop`), so the script shows the holder's side exactly.
"""

from __future__ import annotations

import os
import select
import signal
import socket
import time
from pathlib import Path

from c_parts import build_holder
from helpers import wait_for, wait_gone

GONE_TIMEOUT = 15


def write(path: Path, text: str, mode: int = 0o644) -> Path:
    path.write_text(text)
    os.chmod(path, mode)
    return path


class Holder:
    """One holder started as the daemon starts it: channel on fd 3, stdin
    /dev/null, output to a log file."""

    def __init__(self, sandbox: Path, spec: dict[str, object], wrapper: list[str] = (),
                 args: list[str] = ()) -> None:
        self.log_path = sandbox / f"holder-{time.monotonic_ns()}.log"
        self.sock, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        fd = theirs.fileno()
        if fd == 3:
            fd = os.dup(fd)
        log = os.open(self.log_path, os.O_WRONLY | os.O_CREAT, 0o644)
        argv = [*wrapper, str(build_holder()), *args]
        self.pid = os.posix_spawn(argv[0], argv, {"PATH": "/usr/bin:/bin"}, file_actions=[
            (os.POSIX_SPAWN_OPEN, 0, "/dev/null", os.O_RDONLY, 0),
            (os.POSIX_SPAWN_DUP2, log, 1), (os.POSIX_SPAWN_DUP2, log, 2),
            (os.POSIX_SPAWN_DUP2, fd, 3)], setsid=True)
        os.close(log)
        if fd != theirs.fileno():
            os.close(fd)
        theirs.close()
        self.status: int | None = None
        if spec:
            self.send_start(spec)

    def send_start(self, spec: dict[str, object]) -> None:
        self.send("start", *(f"{k}={v}" for k, v in spec.items()))

    def send(self, *fields: str | bytes) -> None:
        self.sock.send(b"\0".join(f if isinstance(f, bytes) else f.encode() for f in fields))

    def event(self, timeout: float = 10) -> tuple[str, str] | None:
        """The next event, or None at end of channel; fails after timeout."""
        ready, _, _ = select.select([self.sock], [], [], timeout)
        assert ready, f"no event within {timeout} s; log:\n{self.log()}"
        packet = self.sock.recv(65536)
        if not packet:
            return None
        verb, _, arg = packet.decode(errors="replace").partition("\0")
        return verb, arg

    def until(self, verb: str, timeout: float = 10) -> list[tuple[str, str]]:
        """Events up to and including the first `verb`."""
        seen = []
        deadline = time.monotonic() + timeout
        while True:
            ev = self.event(max(0.01, deadline - time.monotonic()))
            assert ev is not None, f"channel closed before {verb}: {seen}\n{self.log()}"
            seen.append(ev)
            if ev[0] == verb:
                return seen

    def poll(self) -> int | None:
        """Its exit status once it has exited (reaped then), else None."""
        if self.status is None:
            pid, status = os.waitpid(self.pid, os.WNOHANG)
            if pid:
                self.status = os.waitstatus_to_exitcode(status)
        return self.status

    def wait(self, timeout: float = GONE_TIMEOUT) -> int:
        wait_for(lambda: self.poll() is not None, timeout, what="the holder to exit",
                 detail=self.log, interval=0.01)
        return self.status

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def kill(self) -> None:
        if self.status is None:
            try:
                os.kill(self.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
            self.wait(5)
        self.sock.close()


BACKEND = """#!/bin/sh
out={out}
case "$1" in
run)
    echo "$@" > "$out/run.args"
    env > "$out/run.env"
    pwd > "$out/run.cwd"
    exec "$out/manager"
    ;;
ready)
    printf '%s' "$2" > "$out/ready.arg"
    exec "$out/ready"
    ;;
stop)
    echo "$2" > "$out/stop.pid"
    env > "$out/stop.env"
    exec kill -TERM "$2"
    ;;
esac
exit 64
"""


class Setup:
    """A sandbox with the fake backend, its out dir (the user's) and a PAM dir."""

    def __init__(self, sandbox: Path, user) -> None:
        self.sandbox, self.user = sandbox, user
        self.out = sandbox / "out"
        self.out.mkdir()
        os.chown(self.out, user.uid, user.gid)
        self.backend = write(sandbox / "backend", BACKEND.format(out=self.out), 0o755)
        self.manager("exec sleep 1000")
        self.ready("echo 'up a'\necho 'up b'\nexit 0")
        self.pam_dir = sandbox / "pam.d"
        self.pam_dir.mkdir()
        self.pam("session required pam_permit.so")

    def manager(self, body: str) -> None:
        write(self.out / "manager", "#!/bin/sh\n" + body + "\n", 0o755)

    def ready(self, body: str) -> None:
        write(self.out / "ready", "#!/bin/sh\n" + body + "\n", 0o755)

    def pam(self, session: str) -> None:
        write(self.pam_dir / "mgr", "auth required pam_permit.so\n"
              "account required pam_permit.so\n" + session + "\n")

    def spec(self, **overrides: object) -> dict[str, object]:
        u = self.user
        spec: dict[str, object] = {
            "uid": u.uid, "gid": u.gid, "groups": f"{u.gid}", "user": u.name, "home": u.home,
            "shell": "/bin/sh", "rundir": f"/run/user/{u.uid}", "backend": self.backend,
            "fifo": self.sandbox / "fifo", "srvdir": self.sandbox / "srv",
            "confdir": self.sandbox / "conf", "pam_service": "mgr", "pam_dir": self.pam_dir,
            "stop_timeout": 2000, "nofile": 1024,
        }
        spec.update(overrides)
        return spec

    def start(self, holders: list[Holder], wrapper: list[str] = (), args: list[str] = (),
              **overrides) -> Holder:
        h = Holder(self.sandbox, self.spec(**overrides), wrapper, args)
        holders.append(h)
        return h


def stop_and_wait(h: Holder, user) -> list[tuple[str, str]]:
    """Stops h; it and everything of user's must end. Returns the events up
    to gone."""
    h.send("stop")
    events = h.until("gone", GONE_TIMEOUT)
    assert h.wait() == 0
    wait_gone(user.uid, 5)
    return events
