"""Session ids that never repeat across daemon restarts.

Ids are decimal numbers counted up from 1, as logind's. A restarted daemon
must not hand out an id an adopted or just-ended session had, so ids are
reserved in blocks in a file under the state dir (on /run: the count starts
afresh at boot, as logind's does): the file always names the first id no
daemon has reserved yet, and a new daemon starts there. A file lost or
unreadable would start the count at 1 again: the sessions a daemon takes
up move it past their ids (pass_over), so those at least are never reused.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Iterable

log = logging.getLogger("turnstiled")

# Ids reserved per write: one small write every BLOCK logins.
BLOCK = 256


class SessionIds:
    def __init__(self, path: str) -> None:
        self.path = path
        self._next = max(self._read(), 1)
        self._reserved = self._next
        self._reserve()

    def take(self) -> str:
        if self._next >= self._reserved:
            self._reserve()
        sid = self._next
        self._next += 1
        return str(sid)

    def pass_over(self, ids: Iterable[str]) -> None:
        """Moves the count past every id in ids (those of sessions a previous
        daemon left), and reserves from there at once."""
        highest = max((int(i) for i in ids if i.isascii() and i.isdigit()), default=0)
        if highest < self._next:
            return
        log.warning("session ids up to %d are taken; counting on from %d",
                    highest, highest + 1)
        self._next = highest + 1
        self._reserve()

    def _read(self) -> int:
        try:
            with open(self.path) as f:
                text = f.read(32).strip()
        except FileNotFoundError:
            return 1
        except OSError as err:
            log.error("cannot read %s: %s; session ids may repeat those of an earlier run",
                      self.path, err.strerror)
            return 1
        if not (text.isascii() and text.isdigit()):
            log.error("%s holds %r, not a number; session ids may repeat", self.path, text)
            return 1
        return int(text)

    def _reserve(self) -> None:
        self._reserved = self._next + BLOCK
        tmp = self.path + ".tmp"
        try:
            with open(tmp, "w") as f:
                f.write(f"{self._reserved}\n")
            os.rename(tmp, self.path)
        except OSError as err:
            # Not worth failing a login over: only a restart could then
            # hand out an id again.
            log.error("cannot reserve session ids in %s: %s", self.path, err.strerror)
