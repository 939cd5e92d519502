"""The manager supervisor: starts, readies and stops one user's service
manager through its holder process (turnstiled.holder), and owns the login
timeout. It reports to its owner, the registry, through ManagerEvents.

Every wait is an event on the loop: the readiness fifo is a reader, the
holder's stdout a stream, the timeout a timer.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import shutil
import sys
import time
from dataclasses import dataclass, field
from typing import Protocol

from .config import Config
from .users import User

log = logging.getLogger("turnstiled")

# How long the backend's `stop` may take before the holder kills what is left.
STOP_TIMEOUT = 10.0
# Longest readiness string accepted from the fifo (a path, as upstream).
MAX_READY = 4096


@dataclass
class ReadyReport:
    """How long a start waited, and for which core services."""
    waited_ms: float
    services: list[tuple[str, float]] = field(default_factory=list)


class ManagerEvents(Protocol):
    def manager_ready(self, manager: Manager, report: ReadyReport) -> None: ...
    def manager_failed(self, manager: Manager, reason: str) -> None: ...
    def manager_gone(self, manager: Manager, status: int | None) -> None: ...


class Manager:
    """One run of one user's service manager, from start to gone."""

    def __init__(self, config: Config, user: User, rundir: str,
                 events: ManagerEvents) -> None:
        self.config, self.user, self.rundir, self.events = config, user, rundir, events
        self.backend = os.path.join(config.backend_dir, config.backend)
        self.pid: int | None = None
        self.since = time.time()
        self.phase = "starting"  # starting, ready, stopping, gone
        self._t0 = time.monotonic()
        self._services: list[tuple[str, float]] = []
        self._holder: asyncio.subprocess.Process | None = None
        # Commands issued before the holder's channel exists, in order.
        self._queued: list[str] = []
        self._fifo_fd: int | None = None
        self._ready_buf = b""
        self._timer: asyncio.TimerHandle | None = None
        self._task: asyncio.Task | None = None
        self._dir = os.path.join(config.state_dir, "managers", str(user.uid))

    # -- public

    def start(self) -> None:
        self._task = asyncio.get_running_loop().create_task(self._run())
        if self.config.login_timeout > 0:
            self._timer = asyncio.get_running_loop().call_later(
                self.config.login_timeout, self._timed_out)

    def stop(self) -> None:
        """Asks the manager to stop; `manager_gone` follows once nothing remains."""
        if self.phase in ("stopping", "gone"):
            return
        self.phase = "stopping"
        self._cancel_timer()
        self._close_fifo()
        self._send("stop")

    # -- the run

    async def _run(self) -> None:
        status: int | None = None
        try:
            fifo, srvdir = self._prepare()
            spec = {
                "uid": self.user.uid, "gid": self.user.gid, "groups": list(self.user.groups),
                "user": self.user.name, "home": self.user.home, "shell": self.user.shell,
                "rundir": self.rundir, "backend": self.backend, "fifo": fifo,
                "srvdir": srvdir, "confdir": self.config.backend_conf_dir,
                "pam_service": self.config.pam_service, "pam_dir": self.config.pam_dir,
                "stop_timeout": STOP_TIMEOUT,
            }
            self._holder = await asyncio.create_subprocess_exec(
                sys.executable, "-m", "turnstiled.holder", json.dumps(spec),
                stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE,
                cwd="/", env=_holder_env())
            for line in self._queued:
                self._send(line)
            self._queued.clear()
            assert self._holder.stdout is not None
            async for raw in self._holder.stdout:
                status = self._on_event(raw.decode(errors="replace").split(" ", 1), status)
            await self._holder.wait()
        except OSError as err:
            self._fail(f"cannot start the manager: {err}")
        except Exception:  # a bug here must not leave logins hanging
            log.exception("manager of %s: unexpected error", self.user.name)
            self._fail("internal error (see the log)")
        finally:
            self._cancel_timer()
            self._close_fifo()
            shutil.rmtree(self._dir, ignore_errors=True)
            self.phase = "gone"
            self.events.manager_gone(self, status)

    def _prepare(self) -> tuple[str, str]:
        """The fifo (written by the user's side) and the backend's srvdir."""
        u = self.user
        os.makedirs(os.path.dirname(self._dir), mode=0o755, exist_ok=True)
        shutil.rmtree(self._dir, ignore_errors=True)
        os.mkdir(self._dir, 0o755)
        fifo = os.path.join(self._dir, "ready")
        os.mkfifo(fifo, 0o600)
        os.chown(fifo, u.uid, u.gid)
        srvdir = os.path.join(self._dir, "srv")
        os.mkdir(srvdir, 0o700)
        os.chown(srvdir, u.uid, u.gid)
        # Non-blocking read end: no EOF is reported before a writer has
        # opened it, so the loop sleeps until the backend writes.
        self._fifo_fd = os.open(fifo, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC)
        asyncio.get_running_loop().add_reader(self._fifo_fd, self._on_fifo)
        return fifo, srvdir

    def _on_event(self, words: list[str], status: int | None) -> int | None:
        kind, arg = words[0].strip(), (words[1].strip() if len(words) > 1 else "")
        if kind == "pid":
            self.pid = int(arg)
            log.debug("manager of %s: pid %d", self.user.name, self.pid)
        elif kind == "up":
            self._services.append((arg, self._elapsed_ms()))
        elif kind == "ready-exit":
            self._on_ready_exit(int(arg))
        elif kind == "exit":
            status = int(arg)
            self.pid = None
            if self.phase == "starting":
                self._fail(f"the manager exited with status {status} before it was ready")
            elif self.phase == "ready":
                log.warning("manager of %s exited with status %d", self.user.name, status)
        elif kind == "error":
            self._fail(arg)
        return status

    def _on_fifo(self) -> None:
        assert self._fifo_fd is not None
        try:
            data = os.read(self._fifo_fd, MAX_READY)
        except BlockingIOError:
            return
        self._ready_buf += data
        # The string ends at a NUL (dinit) or when the writer closes (runit).
        done = not data or b"\0" in self._ready_buf or len(self._ready_buf) >= MAX_READY
        if not done:
            return
        text = self._ready_buf.split(b"\0", 1)[0].decode(errors="replace").strip()
        self._close_fifo()
        os.unlink(os.path.join(self._dir, "ready"))
        log.debug("manager of %s: accepts commands (%r)", self.user.name, text)
        self._send(f"ready {text}")

    def _on_ready_exit(self, code: int) -> None:
        if self.phase != "starting":
            return
        if code != 0:
            self._fail(f"the backend's ready exited with status {code}")
            return
        self.phase = "ready"
        self._cancel_timer()
        report = ReadyReport(self._elapsed_ms(), self._services)
        self.events.manager_ready(self, report)

    def _timed_out(self) -> None:
        self._timer = None
        if self.phase == "starting":
            waited = ", ".join(n for n, _ in self._services) or "nothing yet"
            self._fail(f"not ready after login_timeout ({self.config.login_timeout:g} s; "
                       f"up so far: {waited})")

    def _fail(self, reason: str) -> None:
        if self.phase not in ("starting", "ready"):
            log.debug("manager of %s: %s (while %s)", self.user.name, reason, self.phase)
            return
        log.error("manager of %s failed: %s", self.user.name, reason)
        self.events.manager_failed(self, reason)
        self.stop()

    # -- plumbing

    def _send(self, line: str) -> None:
        holder = self._holder
        if holder is None:
            # The fifo can be written before the holder's start returns on a
            # busy loop: keep the command for it rather than lose it.
            self._queued.append(line)
            return
        if holder.stdin is None or holder.stdin.is_closing():
            log.error("manager of %s: cannot send %r, the holder's channel is closed",
                      self.user.name, line)
            self._fail("the holder's channel closed during the start")
            return
        holder.stdin.write(line.encode() + b"\n")

    def _elapsed_ms(self) -> float:
        return round((time.monotonic() - self._t0) * 1000, 1)

    def _cancel_timer(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None

    def _close_fifo(self) -> None:
        if self._fifo_fd is not None:
            asyncio.get_running_loop().remove_reader(self._fifo_fd)
            os.close(self._fifo_fd)
            self._fifo_fd = None


def _holder_env() -> dict[str, str]:
    """The holder's own environment: enough to import this very package."""
    package_parent = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    return {"PATH": "/usr/sbin:/usr/bin:/sbin:/bin", "PYTHONPATH": package_parent}
