"""What test_dinit.py imports from here, until it takes them from helpers.py."""

from __future__ import annotations

import time

from helpers import procs_of

__all__ = ["procs_of", "wait_for"]


def wait_for(predicate, timeout, interval=0.02):
    """Polls predicate until it is true or timeout passes; returns its last value."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(interval)
    return predicate()
