"""What every test module may need, each in one place: where the checkout
is, PAM's numbers, one way to wait, how to read a state file, and the one
reader of /proc.

Nothing here depends on turnstiled's own code: a bug shared by the daemon
and these helpers would otherwise go unseen.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from pathlib import Path
from typing import TypeVar

REPO_ROOT = Path(__file__).resolve().parent.parent
TESTS_DIR = REPO_ROOT / "tests"

# -- PAM's numbers (security/_pam_types.h)

# Return codes.
PAM_SUCCESS = 0
PAM_BUF_ERR = 5
PAM_PERM_DENIED = 6
PAM_SESSION_ERR = 14

# pam_set_item item types.
PAM_SERVICE = 1
PAM_USER = 2
PAM_TTY = 3
PAM_RHOST = 4
PAM_CONV = 5
PAM_RUSER = 8
PAM_XDISPLAY = 11

# Conversation message styles.
PAM_ERROR_MSG = 3
PAM_TEXT_INFO = 4


# -- waiting

T = TypeVar("T")
# Bound on one pam_open_session in the tests' own process: a hung module
# fails the test instead of hanging the run.
OPEN_TIMEOUT = 10


def wait_for(predicate: Callable[[], T], timeout: float, what: str = "condition",
             detail: Callable[[], object] | None = None, interval: float = 0.02) -> T:
    """Polls predicate until it returns something true, and returns that.

    After timeout seconds it fails the test (AssertionError) saying what it
    waited for, and the value of detail() then, if given. A caller cannot
    forget to check the outcome: there is none to check.
    """
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() >= deadline:
            message = f"timed out after {timeout:g} s waiting for {what}"
            if detail is not None:
                message += f": {detail()!r}"
            raise AssertionError(message)
        time.sleep(interval)


def wait_gone(uid: int, timeout: float) -> None:
    """Waits until no process of uid is left; fails listing those left."""
    wait_for(lambda: not procs_of(uid), timeout, what=f"every process of uid {uid} to end",
             detail=lambda: procs_of(uid))


# -- state files


def parse_kv(text: str) -> dict[str, str]:
    """KEY=VALUE lines (a state file, an env dump, show-user's output) as a
    dict; lines without = are left out."""
    out = {}
    for line in text.splitlines():
        key, sep, value = line.partition("=")
        if sep:
            out[key] = value
    return out


def read_kv(path: str | os.PathLike) -> dict[str, str] | None:
    """The KEY=VALUE file at path as a dict; None when it does not exist."""
    try:
        return parse_kv(Path(path).read_text())
    except FileNotFoundError:
        return None


# -- /proc: every look at processes, descriptors, limits and mounts


def _read(path: str) -> bytes:
    with open(path, "rb") as f:
        return f.read()


def status_of(pid: int | str = "self") -> dict[str, str]:
    """/proc/PID/status as a dict (Uid, Gid, Groups, VmRSS, State ...)."""
    text = _read(f"/proc/{pid}/status").decode(errors="replace")
    return dict(line.split(":\t", 1) for line in text.splitlines() if ":\t" in line)


def rss_kb(pid: int | str = "self") -> int:
    return int(status_of(pid)["VmRSS"].split()[0])


def cmdline_of(pid: int | str) -> str:
    """The command line, arguments joined by spaces; "" for a zombie, a
    kernel thread or a process that is gone (it may end while it is read)."""
    try:
        cmdline = _read(f"/proc/{pid}/cmdline")
    except OSError:
        return ""
    return cmdline.replace(b"\0", b" ").decode(errors="replace").strip()


def _stat_fields(pid: int | str) -> tuple[str, list[bytes]]:
    """/proc/PID/stat as (comm, the fields after it: state, ppid ...)."""
    stat = _read(f"/proc/{pid}/stat")
    # comm may hold spaces and parentheses: it ends at the last ")".
    end = stat.rfind(b")")
    return stat[stat.index(b"(") + 1:end].decode(errors="replace"), stat[end + 2:].split()


def proc_state(pid: int | str) -> str | None:
    """pid's one-letter state (R, S, T, Z ...); None: no such process."""
    try:
        return _stat_fields(pid)[1][0].decode()
    except OSError:
        return None


def exited(pid: int | str) -> bool:
    """Whether pid has exited: no such process, or a zombie not yet reaped."""
    return proc_state(pid) in (None, "Z")


def children_pids(pid: int) -> list[int]:
    """The pids of pid's children (those its main thread started)."""
    try:
        return [int(p) for p in _read(f"/proc/{pid}/task/{pid}/children").split()]
    except OSError:
        return []


def _pids() -> list[int]:
    return [int(entry) for entry in os.listdir("/proc") if entry.isdigit()]


def real_uid(pid: int | str) -> int:
    # Parsed in place, not through status_of: pids_of reads every process's
    # status, and tests poll it.
    status = _read(f"/proc/{pid}/status")
    at = status.index(b"\nUid:") + len(b"\nUid:")
    return int(status[at:status.index(b"\n", at)].split()[0])


def pids_of(uid: int) -> list[int]:
    """Every process whose real uid is uid, zombies too."""
    found = []
    for pid in _pids():
        try:
            if real_uid(pid) == uid:
                found.append(pid)
        except OSError:
            continue  # gone meanwhile
    return found


def procs_of(uid: int) -> list[tuple[int, str]]:
    """(pid, command line) of every live process whose real uid is uid
    (zombies, which have no command line, are left out)."""
    out = []
    for pid in pids_of(uid):
        cmd = cmdline_of(pid)
        if cmd:
            out.append((pid, cmd))
    return out


def children_of(ppid: int) -> list[tuple[int, str]]:
    """(pid, comm) of every process whose parent is ppid (children_pids is
    quicker where the parent's threads do not matter)."""
    out = []
    for pid in _pids():
        try:
            comm, fields = _stat_fields(pid)
        except OSError:
            continue
        if int(fields[1]) == ppid:
            out.append((pid, comm))
    return out


def holders_of(daemon_pid: int, managing: bool | None = None) -> list[int]:
    """The daemon's holders (children named for turnstiled-holder); with
    managing, only those that run a manager (True) or that run nothing yet,
    as the spare does (False)."""
    return [pid for pid, comm in children_of(daemon_pid)
            if comm.startswith("turnstiled-hold")
            and (managing is None or bool(children_of(pid)) == managing)]


def open_files_limit(pid: int | str = "self") -> int:
    """The soft RLIMIT_NOFILE of pid, from /proc/PID/limits."""
    for line in _read(f"/proc/{pid}/limits").decode().splitlines():
        if line.startswith("Max open files"):
            return int(line.split()[3])
    raise AssertionError(f"no 'Max open files' in /proc/{pid}/limits")


def fds_of(pid: int | str = "self") -> dict[int, str]:
    """fd -> what it points at (a path, "socket:[inode]", "pipe:[inode]" ...)."""
    out = {}
    for name in os.listdir(f"/proc/{pid}/fd"):
        try:
            out[int(name)] = os.readlink(f"/proc/{pid}/fd/{name}")
        except OSError:
            continue  # closed since listed (such as the one listdir used)
    return out


def fd_flags(fd: int, pid: int | str = "self") -> int:
    """The open flags of pid's fd (O_CLOEXEC among them), from fdinfo."""
    for line in _read(f"/proc/{pid}/fdinfo/{fd}").decode().splitlines():
        if line.startswith("flags:"):
            return int(line.split()[1], 8)
    raise AssertionError(f"no flags in /proc/{pid}/fdinfo/{fd}")


def mounts() -> list[list[str]]:
    """/proc/self/mountinfo, one list of fields a mount."""
    return [line.split() for line in _read("/proc/self/mountinfo").decode().splitlines()]


def listening(path: str) -> bool:
    """Whether a Unix socket bound at path is listening, seen in
    /proc/net/unix: probing with connect() would show up in the daemon's log
    as a client that never finished its handshake."""
    try:
        lines = _read("/proc/net/unix").decode(errors="replace").splitlines()[1:]
    except OSError:
        return False
    for line in lines:
        fields = line.split(None, 7)
        # Flags 00010000 is __SO_ACCEPTCON: listen() was called.
        if len(fields) == 8 and fields[7] == path and int(fields[3], 16) & 0x10000:
            return True
    return False
