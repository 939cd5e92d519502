"""What the restart tests (test_restart*.py) share: users' runit services,
looks at sessions, managers, holders and the fd store, and ending a daemon
the ways a restart does."""

from __future__ import annotations

import json
import signal
import socket
import time

from helpers import holders_of, procs_of
from runit import Services


def runit_services(user, delay: int = 0) -> None:
    """One core service s1; with a delay, its check passes only `delay`
    seconds after it started."""
    sv = Services(user)
    check = f"read t < started && [ $(($(date +%s) - t)) -ge {delay} ]" if delay else None
    sv.add("s1", "date +%s > started\nexec sleep infinity", check)
    sv.core("s1")
    sv.own()
    time.sleep(1.1)  # runsvdir's one-second guard on a freshly edited dir


def start_runit(daemon, **overrides):
    """A daemon (the conftest fixture's start) with the runit backend."""
    overrides.setdefault("backend", "runit")
    return daemon(**overrides)


def sessions(d) -> dict[str, tuple[str, str]]:
    """id -> (uid, leader) from the state files."""
    out = {}
    for sid in d.session_ids():
        st = d.session_state(sid)
        if st is not None:
            out[sid] = (st["UID"], st["LEADER"])
    return out


def listed_sessions(d) -> list[tuple]:
    """What `turnstilectl list-sessions` says: id, user, leader, since."""
    return [(s["id"], s["user"], s["leader"], s["since"]) for s in listing(d)]


def listing(d) -> list[dict]:
    """`turnstilectl --json list-sessions`, whole."""
    out = d.ctl("--json", "list-sessions")
    assert out.returncode == 0, out.stderr
    return json.loads(out.stdout)


def user_status(d, user) -> dict:
    """`turnstilectl --json user-status USER`, whole."""
    out = d.ctl("--json", "user-status", user.name)
    assert out.returncode == 0, out.stderr
    return json.loads(out.stdout)


def managers(d, users) -> dict[int, str]:
    return {u.uid: (d.user_state(u.uid) or {}).get("MANAGER_PID", "") for u in users}


def user_processes(users) -> dict[int, set[int]]:
    return {u.uid: {pid for pid, _ in procs_of(u.uid)} for u in users}


def runsvdirs(user) -> list[tuple[int, str]]:
    return [(pid, cmd) for pid, cmd in procs_of(user.uid) if cmd.startswith("runsvdir")]


def kill9(d) -> None:
    d.proc.kill()
    d.proc.wait(5)


def end(d, how: str) -> None:
    """Ends d as a restart does: kill -9 ("kill") or SIGTERM ("term")."""
    if how == "kill":
        d.proc.kill()
    else:
        d.proc.send_signal(signal.SIGTERM)
    d.proc.wait(15)
    assert d.proc.returncode in (0, -signal.SIGKILL), d.log_tail()


# -- holders: the daemon's children, until it dies


def _start_time(pid: int) -> str | None:
    """The process's start time, None when it is gone or a zombie."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            fields = f.read().rpartition(")")[2].split()
    except OSError:
        return None
    return None if fields[0] in ("Z", "X") else fields[19]


def holders(d) -> set[tuple[int, str]]:
    """(pid, start time) of each holder d started for a manager: while d
    runs, its children named for the holder that have a child (the spare
    runs nothing, and ends with its daemon)."""
    found = set()
    for pid in holders_of(d.pid, managing=True):
        start = _start_time(pid)
        if start is not None:
            found.add((pid, start))
    return found


def alive(procs: set[tuple[int, str]]) -> set[tuple[int, str]]:
    """Those of procs (holders()) that still run: same pid, same start."""
    return {(pid, start) for pid, start in procs if _start_time(pid) == start}


# -- the fd store, while no daemon is connected to it


def _store(d) -> socket.socket:
    s = socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    s.settimeout(5)
    s.connect(str(d.state_dir / "fdstore.sock"))
    return s


def store_records(d) -> dict[str, bytes]:
    """name -> record of every entry the store keeps. Connecting makes us
    its daemon until we let go (its copies of the fds stay with it)."""
    out = {}
    with _store(d) as s:
        while True:
            verb, _, rest = s.recv(65536).partition(b"\0")
            if verb == b"end":
                return out
            name, _, data = rest.partition(b"\0")
            out[name.decode()] = data


def store_keep(d, name: str, data: bytes) -> None:
    """Gives entry name a new record; its fd stays as it was."""
    with _store(d) as s:
        while not s.recv(65536).startswith(b"end"):
            pass
        s.send(b"keep\0" + name.encode() + b"\0" + data)


def store_answers(d) -> bool:
    try:
        _store(d).close()
        return True
    except OSError:
        return False


def wait_alive_gone(procs, timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while alive(procs):
        if time.monotonic() > deadline:
            return False
        time.sleep(0.05)
    return True
