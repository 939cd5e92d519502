"""Logging to stderr and, when a syslog socket exists, to syslog."""

from __future__ import annotations

import logging
import os
import socket
import sys

from .config import Config

LOG_DAEMON = 3 << 3
_SEVERITY = {logging.DEBUG: 7, logging.INFO: 6, logging.WARNING: 4, logging.ERROR: 3,
             logging.CRITICAL: 2}


class SyslogHandler(logging.Handler):
    """One datagram per record to /dev/log, as syslog(3) sends it (the
    standard library's handler would bring pickle and queue along: memory
    the daemon keeps for its whole life)."""

    def __init__(self, path: str = "/dev/log") -> None:
        super().__init__()
        self.path = path
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.setblocking(False)
        self.sock.connect(path)

    def emit(self, record: logging.LogRecord) -> None:
        pri = LOG_DAEMON | _SEVERITY.get(record.levelno, 3)
        try:
            msg = f"<{pri}>{self.format(record)}".encode(errors="replace")
            self.sock.send(msg)
        except OSError:
            pass  # a syslog daemon that is gone or full must not stop logins
        except Exception:
            self.handleError(record)

    def close(self) -> None:
        self.sock.close()
        super().close()


def setup(config: Config) -> None:
    # Every login logs a line: its record need not say which source line,
    # thread or multiprocessing process made it, as no format shows them
    # (finding the caller walks the stack for each record).
    logging._srcfile = None
    logging.logThreads = False
    logging.logMultiprocessing = False
    root = logging.getLogger("turnstiled")
    root.handlers.clear()
    root.setLevel(logging.DEBUG if config.debug else logging.INFO)
    stderr = logging.StreamHandler(sys.stderr)
    stderr.setFormatter(logging.Formatter("turnstiled: %(levelname)s: %(message)s"))
    if not config.debug_stderr and config.debug:
        # Like upstream: debug lines go to stderr only when debug_stderr says so.
        stderr.setLevel(logging.INFO)
    root.addHandler(stderr)
    if os.path.exists("/dev/log"):
        try:
            syslog = SyslogHandler("/dev/log")
        except OSError:
            return
        syslog.setFormatter(logging.Formatter("turnstiled[%(process)d]: %(message)s"))
        root.addHandler(syslog)
