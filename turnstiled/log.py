"""Logging to stderr and, when a syslog socket exists, to syslog."""

from __future__ import annotations

import logging
import logging.handlers
import os
import sys

from .config import Config


def setup(config: Config) -> None:
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
            syslog = logging.handlers.SysLogHandler(
                "/dev/log", facility=logging.handlers.SysLogHandler.LOG_DAEMON)
        except OSError:
            return
        syslog.setFormatter(logging.Formatter("turnstiled[%(process)d]: %(message)s"))
        root.addHandler(syslog)
