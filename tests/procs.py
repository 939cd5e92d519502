"""Looking at a test user's processes, and waiting without hanging."""

from __future__ import annotations

import os
import time


def wait_for(predicate, timeout, interval=0.02):
    """Polls predicate until it is true or timeout passes; returns its last value."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(interval)
    return predicate()


def procs_of(uid: int) -> list[tuple[int, str]]:
    """(pid, command line) of every process owned by uid."""
    out = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            if os.stat(f"/proc/{entry}").st_uid != uid:
                continue
            with open(f"/proc/{entry}/cmdline", "rb") as f:
                cmd = f.read().replace(b"\0", b" ").decode().strip()
        except OSError:
            continue
        if cmd:
            out.append((int(entry), cmd))
    return out
