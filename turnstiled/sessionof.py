"""Which session a process belongs to, guessed from the process tree.

Registry.session_of_pid answers the question for everyone (turnstilectl
session-of, the D-Bus API's GetSessionByPID, `self` and `auto`): exactly
from the process's cgroup where sessions have groups, and with this guess
where they have none: the session whose leader is the process's nearest
ancestor (or the process itself). When several sessions share that leader
(one program opening more than one PAM session), the newest wins. A
process that left its session's tree (a daemonised child re-parented to
init) is found in none.
"""

from __future__ import annotations

from collections.abc import Iterable

from .children import parent_of

TYPE_CHECKING = False  # not typing's (see turnstiled/__init__.py)
if TYPE_CHECKING:
    from .registry import Session

# Deeper trees than this are not walked (a loop cannot happen in /proc,
# but a bound costs nothing).
MAX_DEPTH = 4096


def session_of_pid(sessions: Iterable[Session], pid: int) -> Session | None:
    by_leader: dict[int, Session] = {}
    for s in sessions:
        best = by_leader.get(s.leader)
        if best is None or int(s.id) > int(best.id):
            by_leader[s.leader] = s
    if not by_leader or pid <= 0:
        return None
    current: int | None = pid
    for _ in range(MAX_DEPTH):
        if current is None or current <= 0:
            return None
        found = by_leader.get(current)
        if found is not None:
            return found
        if current == 1:
            return None
        current = parent_of(current)
    return None
