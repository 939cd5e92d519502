"""What survives a daemon restart, and how the next daemon takes it up.

A registry listener keeps, in the fd store (turnstiled/fdstore.py), every
descriptor a next daemon needs with a record beside it:

    session:ID   our end of the PAM connection; the session's facts, leader,
                 start, and whether its client was told the manager is
                 ready (recorded before OK_DONE is sent)
    login:UID    the Login: state, since, runtime dir, restart times, what
                 is left of its stop delay, last readiness and failure
    manager:UID  our end of the holder's channel; Manager.snapshot()
    fifo:UID     the readiness fifo, while its string is awaited

Records are JSON with a version "v"; times are wall-clock seconds. Only what
changed is sent again, and a descriptor only once per object.

At start, `adopt` turns the entries back into Logins, Managers and
Sessions. Whatever happened meanwhile is still in the descriptors: packets
a holder sent queue in its channel, a client that logged out reads as EOF,
a login process that died likewise. What cannot be taken up (a record of
another version, a user no longer in the password database) is ended: its
manager is told to stop, and the holder does, then exits.
"""

from __future__ import annotations

import collections
import json
import logging
import os
import socket
import time
from dataclasses import dataclass, field

from .config import Config
from .fdstore import Entry, FdStore, StoreError
from .loop import current
from .manager import Manager, ReadyReport
from .protocol import Handshake
from .registry import Login, LoginState, Registry, Session, SessionState
from .users import lookup_uid

log = logging.getLogger("turnstiled")

VERSION = 1
# Records are plain dicts, lists and scalars, never a cycle: one encoder
# for them all, without the check for cycles (a login sends one or two).
_encode = json.JSONEncoder(separators=(",", ":"), check_circular=False).encode
# How often a store that died is started afresh, at most.
STORE_RETRY = 10.0


class Handover:
    """The registry listener that keeps the fd store up to date."""

    def __init__(self, store: FdStore, registry: Registry) -> None:
        self.store, self.registry = store, registry
        self._sent: dict[str, bytes] = {}  # name -> the record the store has
        # name -> the record as a dict: a login's is rebuilt at every change
        # of the Login (a session more or less) and mostly the same. A record
        # shares no list with the object it describes, or a change to that
        # list would change the kept copy too and never be sent.
        self._records: dict[str, dict] = {}
        self._fd_of: dict[str, int] = {}  # name -> id() of the object whose fd it has
        self._retry_at = 0.0
        # Sessions kept as not yet answered: kept again once they are.
        self._unanswered: set[str] = set()

    def login_changed(self, login: Login) -> None:
        uid = login.user.uid
        self._keep(f"login:{uid}", _login_record(login, self.registry.failures.get(uid)))
        m = login.manager
        if m is None or m.channel_fd is None:
            self._drop(f"manager:{uid}")
            self._drop(f"fifo:{uid}")
        else:
            self._keep(f"manager:{uid}", {"v": VERSION, **m.snapshot()}, m, m.channel_fd)
            if m.fifo_fd is not None:
                self._keep(f"fifo:{uid}", {"v": VERSION}, m, m.fifo_fd)
            else:
                self._drop(f"fifo:{uid}")
        for sid in [sid for sid in login.sessions if sid in self._unanswered]:
            # Sessions answered since they were kept: before OK_DONE leaves.
            s = login.sessions[sid]
            if s.outcome.done():
                self._unanswered.discard(sid)
                self._keep(f"session:{sid}", _session_record(s), s, s.fd)

    def login_ended(self, login: Login) -> None:
        uid = login.user.uid
        for name in (f"login:{uid}", f"manager:{uid}", f"fifo:{uid}"):
            self._drop(name)

    def session_opened(self, session: Session) -> None:
        if not session.outcome.done():
            self._unanswered.add(session.id)
        self._keep(f"session:{session.id}", _session_record(session), session, session.fd)

    def session_closed(self, session: Session) -> None:
        self._unanswered.discard(session.id)
        self._drop(f"session:{session.id}")

    def session_changed(self, session: Session) -> None:
        # Closing: the connection is over, only the record is kept.
        self._unanswered.discard(session.id)
        self._drop(f"session:{session.id}")
        self._keep(f"session:{session.id}", _session_record(session))

    def seed(self, entries: list[Entry], owners: dict[str, object]) -> None:
        """What the store already has (adopted entries), so it is not sent again."""
        for e in entries:
            self._sent[e.name] = e.data
            owner = owners.get(e.name)
            if owner is not None:
                self._fd_of[e.name] = id(owner)
            if isinstance(owner, Session) and not owner.outcome.done():
                self._unanswered.add(owner.id)

    def _store_up(self) -> bool:
        """Whether the store takes messages. One that died (its copies are
        gone, ours are not) is started afresh and told everything again."""
        if self.store.connected:
            return True
        now = time.monotonic()
        if now < self._retry_at:
            return False
        self._retry_at = now + STORE_RETRY
        try:
            for stray in self.store.open():  # a fresh store has none
                if stray.fd is not None:
                    os.close(stray.fd)
        except (OSError, StoreError) as err:
            log.error("cannot start the fd store again: %s", err)
            return False
        log.warning("fd store started again; handing it every session and manager")
        self._sent.clear()
        self._records.clear()
        self._fd_of.clear()
        for login in self.registry.logins.values():
            for session in login.sessions.values():
                self.session_opened(session)
            self.login_changed(login)
        return True

    def _keep(self, name: str, record: dict, owner: object = None, fd: int = -1) -> None:
        if not self._store_up():
            return
        new_fd = fd >= 0 and self._fd_of.get(name) != id(owner)
        if not new_fd and self._records.get(name) == record:
            return
        data = _encode(record).encode()
        self._records[name] = record
        if not new_fd and self._sent.get(name) == data:
            return
        self.store.keep(name, data, fd if new_fd else None)
        self._sent[name] = data
        if new_fd:
            self._fd_of[name] = id(owner)

    def _drop(self, name: str) -> None:
        self._records.pop(name, None)
        if self._sent.pop(name, None) is not None and self._store_up():
            self._fd_of.pop(name, None)
            self.store.drop(name)


def _login_record(login: Login, failure: tuple[float, str] | None) -> dict:
    """Times the loop keeps on the monotonic clock are recorded as wall-clock
    times, rounded to a millisecond so that an unchanged Login makes an
    unchanged record. failure: the registry's last one of the user."""
    now_wall, now_mono = time.time(), time.monotonic()
    stop_at = None
    if login.stop_timer is not None:
        stop_at = round(now_wall + login.stop_timer.when() - current().time(),
                        3)
    ready = login.last_ready
    return {
        "v": VERSION, "uid": login.user.uid, "state": login.state.value,
        "since": login.since, "rundir": login.rundir, "rundir_managed": login.rundir_managed,
        "rundir_problem": login.rundir_problem, "start_again": login.start_again,
        "restarts": [round(now_wall - (now_mono - t), 3) for t in login.restarts],
        "stop_at": stop_at,
        "last_ready": None if ready is None else [ready.waited_ms, list(ready.services)],
        "failure": None if failure is None else list(failure),
    }


def _session_record(s: Session) -> dict:
    answered = s.outcome.done() and s.outcome.result() is True
    return {"v": VERSION, "id": s.id, "uid": s.user.uid, "facts": dict(vars(s.facts)),
            "leader": s.leader, "since": s.since, "answered": answered,
            "state": s.state.value, "grouped": s.group is not None,
            "leader_origin": s.group.leader_origin if s.group is not None else ""}


@dataclass
class Adopted:
    """What a start took up, for the server and the log."""
    sessions: list[tuple[Session, socket.socket, bool]] = field(default_factory=list)
    logins: int = 0
    managers: int = 0
    ended: list[str] = field(default_factory=list)


def adopt(entries: list[Entry], registry: Registry, handover: Handover) -> Adopted:
    """Takes up what a previous daemon left in the store. The caller resumes
    each session's connection (server.ControlServer.resume)."""
    config, out = registry.config, Adopted()
    by_kind: dict[str, dict[str, Entry]] = collections.defaultdict(dict)
    for e in entries:
        kind, _, key = e.name.partition(":")
        by_kind[kind][key] = e
    # Ids a previous daemon gave out are never given out again, even with
    # the file that reserves them lost.
    registry.ids.pass_over(by_kind["session"])
    sessions_of = _sessions_by_uid(by_kind["session"], out)
    owners: dict[str, object] = {}
    taken: set[str] = set()
    for key, e in by_kind["login"].items():
        try:
            login = _take_login(config, registry, e, by_kind, sessions_of, owners, out)
        except (ValueError, KeyError, TypeError, OSError) as err:
            out.ended.append(f"login {key}: {err}")
            continue
        taken |= {f"login:{key}", f"manager:{key}", f"fifo:{key}"}
        taken |= {f"session:{sid}" for sid in login.sessions}
    # What no Login took up is ended: managers stopped, connections closed.
    dropped = [e for e in entries if e.name not in taken]
    for e in dropped:
        if e.name.startswith("manager:") and e.fd is not None:
            _stop_unadoptable(e)
        elif e.fd is not None:
            os.close(e.fd)
        handover.store.drop(e.name)
    if dropped:
        out.ended.append(f"{len(dropped)} entries nobody could take up: "
                         + ", ".join(e.name for e in dropped[:10]))
    handover.seed([e for e in entries if e.name in taken], owners)
    return out


def _sessions_by_uid(entries: dict[str, Entry],
                     out: Adopted) -> dict[int, list[tuple[Entry, dict]]]:
    found: dict[int, list[tuple[Entry, dict]]] = collections.defaultdict(list)
    for sid, e in entries.items():
        try:
            rec = _record(e)
            if e.fd is None and rec.get("state") != SessionState.CLOSING:
                raise ValueError("no connection")
            found[int(rec["uid"])].append((e, rec))
        except (ValueError, KeyError, TypeError) as err:
            out.ended.append(f"session {sid}: {err}")
    return found


def _take_login(config: Config, registry: Registry, e: Entry,
                by_kind: dict[str, dict[str, Entry]],
                sessions_of: dict[int, list[tuple[Entry, dict]]], owners: dict[str, object],
                out: Adopted) -> Login:
    rec = _record(e)
    uid = int(rec["uid"])
    user = lookup_uid(uid)
    if user is None:
        raise ValueError(f"uid {uid} is no longer in the password database")
    login = Login(user, str(rec["rundir"]), bool(rec["rundir_managed"]),
                  state=LoginState(rec["state"]), since=float(rec["since"]))
    login.rundir_problem = str(rec["rundir_problem"])
    login.start_again = bool(rec["start_again"])
    now_wall, now_mono = time.time(), time.monotonic()
    login.restarts = collections.deque(now_mono - (now_wall - float(t)) for t in rec["restarts"])
    if rec["last_ready"] is not None:
        waited, services = rec["last_ready"]
        login.last_ready = ReadyReport(float(waited), [(str(n), float(ms)) for n, ms in services])
    if rec.get("failure") is not None:
        when, reason = rec["failure"]
        registry.failures[uid] = (float(when), str(reason))
    m_entry = by_kind["manager"].get(str(uid))
    if m_entry is not None:
        if m_entry.fd is None:
            raise ValueError("its manager record has no channel")
        fifo = by_kind["fifo"].get(str(uid))
        snap = _record(m_entry)
        login.manager = Manager.adopt(config, user, login.rundir, registry, registry.children,
                                      snap, m_entry.fd, fifo.fd if fifo else None)
        # Its holder put it in its group, if it has one.
        login.manager.group = registry.groups.manager_group(uid, make=False)
        owners[m_entry.name] = login.manager
        if fifo is not None and login.manager.fifo_fd is not None:
            owners[fifo.name] = login.manager
        out.managers += 1
    for s_entry, srec in sessions_of.get(uid, []):
        try:
            facts = Handshake(**srec["facts"])
            fd = s_entry.fd if s_entry.fd is not None else -1  # closing: none
            session = Session(str(srec["id"]), user, facts, int(srec["leader"]),
                              since=float(srec["since"]), fd=fd,
                              state=SessionState(srec.get("state", "open")))
        except (ValueError, KeyError, TypeError) as err:
            out.ended.append(f"{s_entry.name}: {err}")
            continue
        if srec.get("grouped"):
            # Found again where it was made; None if it is gone meanwhile.
            session.group = registry.groups.session_group(
                uid, session.id, session.leader, str(srec.get("leader_origin", "")))
        login.sessions[session.id] = session
        owners[s_entry.name] = session
        if session.state is SessionState.CLOSING:
            session.resolve(False)
            continue
        answered = bool(srec["answered"])
        if answered or login.state is LoginState.READY:
            session.resolve(True)
        sock = socket.socket(fileno=s_entry.fd)
        out.sessions.append((session, sock, answered))
    stop_in = None
    if rec["stop_at"] is not None:
        stop_in = max(0.0, float(rec["stop_at"]) - now_wall)
    registry.adopt(login, stop_in)
    out.logins += 1
    return login


def _record(e: Entry) -> dict:
    try:
        rec = json.loads(e.data)
    except ValueError as err:
        raise ValueError(f"{e.name}: not JSON ({err})") from None
    if not isinstance(rec, dict) or rec.get("v") != VERSION:
        raise ValueError(f"{e.name}: a record of another version ({str(rec)[:40]})")
    return rec


def _stop_unadoptable(e: Entry) -> None:
    """A holder we cannot take up: told to stop; our end closes once the
    store drops its copy too, and end of channel means stop as well."""
    assert e.fd is not None
    with socket.socket(fileno=e.fd) as channel:
        try:
            channel.send(b"stop")
        except OSError:
            pass
