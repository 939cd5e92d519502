"""Bursts of logins from forked login programs, and a CPU hog to run beside
them: what a shell server sees after a reboot or on a cron minute."""

from __future__ import annotations

import os
import signal
import struct
import subprocess
import time

from pamclient import PamLogin

# What each child reports through the pipe: one byte.
OK, NO_RUNDIR, FAILED = 0, 2, 3


# A report: the code, and how long pam_open_session took in seconds; one
# write below PIPE_BUF, so reports never interleave.
_REPORT = struct.Struct("=Bd")


def _child(service: str, user: str, confdir: str, report: int, hold: int) -> None:
    """One login program: open a session, report, hold it until told, close."""
    code = FAILED
    try:
        with PamLogin(service, user, confdir) as pam:
            t0 = time.monotonic()
            try:
                env = pam.open()
                code = OK if env.get("XDG_RUNTIME_DIR") else NO_RUNDIR
            except Exception:
                code = FAILED
            os.write(report, _REPORT.pack(code, time.monotonic() - t0))
            os.read(hold, 1)
            if code == OK:
                pam.close()
    finally:
        os._exit(0)


class Burst:
    """len(users) logins at once, one forked child each; `wait()` collects
    one code per login, `release()` logs every child out and reaps it."""

    def __init__(self, service: str, users: list[str], confdir: str) -> None:
        report_r, report_w = os.pipe()
        hold_r, hold_w = os.pipe()
        self.children: list[int] = []
        self.latencies: list[float] = []
        for name in users:
            pid = os.fork()
            if pid == 0:
                os.close(report_r)
                os.close(hold_w)
                _child(service, name, confdir, report_w, hold_r)
            self.children.append(pid)
        os.close(report_w)
        os.close(hold_r)
        self._report, self._hold = report_r, hold_w

    def wait(self, timeout: float) -> bytes:
        """The children's codes, as they arrive, until all or timeout; each
        login's time to pam_open_session's return goes to `latencies`."""
        raw = b""
        want = len(self.children) * _REPORT.size
        deadline = time.monotonic() + timeout
        while len(raw) < want and time.monotonic() < deadline:
            chunk = os.read(self._report, want - len(raw))
            if not chunk:
                break
            raw += chunk
        reports = [_REPORT.unpack_from(raw, i)
                   for i in range(0, len(raw) - _REPORT.size + 1, _REPORT.size)]
        self.latencies = [seconds for _, seconds in reports]
        return bytes(code for code, _ in reports)

    def release(self) -> None:
        os.close(self._hold)  # every child closes its session and exits
        for pid in self.children:
            os.waitpid(pid, 0)
        os.close(self._report)


def tally(codes: bytes) -> dict[str, int]:
    names = {OK: "ok", NO_RUNDIR: "no runtime dir", FAILED: "failed"}
    return {names.get(c, str(c)): codes.count(c) for c in set(codes)}


class CpuHog:
    """A busy loop on every core, stopped by pid."""

    def __init__(self) -> None:
        self.procs = [subprocess.Popen(["sh", "-c", "while :; do :; done"])
                      for _ in range(os.cpu_count() or 1)]

    def stop(self) -> None:
        for proc in self.procs:
            proc.send_signal(signal.SIGKILL)
            proc.wait(5)

    def __enter__(self) -> CpuHog:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()
