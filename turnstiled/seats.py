"""Seats and the active VT: which session is in front on each seat.

- seat0 always exists. More seats come from udev: a device tagged
  `master-of-seat` with ID_SEAT=seatN makes seatN; hotplug adds and removes
  them (pyudev, a netlink Monitor on the loop). A seat can do graphics when
  a device tagged `seat` for it is a DRM card or a framebuffer.
- seat0 has VTs when vt_active_path (sysfs: /sys/class/tty/tty0/active)
  can be read. The kernel signals a VT switch on that file with POLLPRI;
  we wait for it on an epoll set of our own, whose fd sits on the loop.
  A file that cannot be polled (a regular file: a sandbox's stand-in) is
  read again whenever someone asks, so changes are still seen, only later.
- Which session is active (as logind): a session without a seat always
  is; on a seat with VTs, the session on the active VT; on a seat without
  VTs, the one last activated there (the newest one opened, until someone
  activates another).
- ActivateSession/SwitchTo switch VTs with VT_ACTIVATE on vt_console_path.

udev (pyudev) is only looked at once start_udev() is called: the daemon
does so when the D-Bus API runs, so an idle daemon without it imports
nothing more.
"""

from __future__ import annotations

import fcntl
import logging
import os
import select
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field

TYPE_CHECKING = False  # not typing's (see turnstiled/__init__.py)
if TYPE_CHECKING:
    from typing import Any, Protocol

    from .loop import Loop
    from .registry import Session

log = logging.getLogger("turnstiled")

SEAT0 = "seat0"
VT_ACTIVATE = 0x5606
# The highest VT number the kernel has (MAX_NR_CONSOLES).
MAX_VT = 63


@dataclass
class Seat:
    id: str
    can_tty: bool = False
    can_graphical: bool = False
    # The syspaths of udev devices assigned to it (for seat-status).
    devices: list[str] = field(default_factory=list)


@dataclass(frozen=True)
class DeviceFacts:
    """What seat assignment needs of one udev device."""
    subsystem: str
    sys_name: str
    sys_path: str
    tags: frozenset[str]
    seat: str  # ID_SEAT, empty for seat0


def seats_from(devices: Iterable[DeviceFacts]) -> dict[str, Seat]:
    """The seats udev's devices make (seat0 always, not yet with VT facts)."""
    seats = {SEAT0: Seat(SEAT0)}
    devices = list(devices)
    for dev in devices:
        if "master-of-seat" in dev.tags:
            seats.setdefault(dev.seat or SEAT0, Seat(dev.seat or SEAT0))
    for dev in devices:
        seat = seats.get(dev.seat or SEAT0)
        if seat is None or "seat" not in dev.tags:
            continue  # a device for a seat without a master is nobody's yet
        seat.devices.append(dev.sys_path)
        if (dev.subsystem == "drm" and dev.sys_name.startswith("card")) or \
                dev.subsystem == "graphics":
            seat.can_graphical = True
    return seats


def read_active_vt(path: str) -> int:
    """The active VT's number from a file holding `ttyN`; 0 when none."""
    try:
        with open(path, "rb") as f:
            text = f.read(64).decode("ascii", "replace").strip()
    except OSError:
        return 0
    return _vt_number(text)


def _vt_number(text: str) -> int:
    if text.startswith("tty") and text[3:].isdigit():
        n = int(text[3:])
        return n if 0 < n <= MAX_VT else 0
    return 0


if TYPE_CHECKING:
    class SeatListener(Protocol):
        def seat_added(self, seat: Seat) -> None: ...
        def seat_removed(self, seat: Seat) -> None: ...
        def active_changed(self, seat_id: str, before: Session | None,
                           after: Session | None) -> None: ...


class SwitchError(Exception):
    """A VT switch or an activation that cannot happen (the reason says why)."""


class Seats:
    def __init__(self, vt_active_path: str, vt_console_path: str,
                 sessions: Callable[[], Iterable[Session]]) -> None:
        self.vt_active_path = vt_active_path
        self.vt_console_path = vt_console_path
        self._sessions = sessions
        self.seats: dict[str, Seat] = {SEAT0: Seat(SEAT0)}
        self.listeners: list[SeatListener] = []
        self._vt = read_active_vt(vt_active_path)
        self.seats[SEAT0].can_tty = self._vt > 0
        # On seats without VTs: the session last activated.
        self._chosen: dict[str, str] = {}
        # What active_session() said last, per seat, to tell changes.
        self._front: dict[str, str | None] = {}
        self._epoll: select.epoll | None = None
        self._vt_fd = -1
        self._polled = False
        self._loop: Loop | None = None
        self._udev: Any = None  # (pyudev context, monitor)
        self._udev_tried = False

    # -- the active VT

    def follow_vt(self, loop: Loop) -> None:
        """Follows VT switches: the kernel raises POLLPRI on the sysfs file."""
        self._loop = loop
        try:
            fd = os.open(self.vt_active_path, os.O_RDONLY | os.O_CLOEXEC)
        except OSError as err:
            log.debug("no VTs to follow (%s: %s)", self.vt_active_path, err.strerror)
            return
        ep = select.epoll(1)
        try:
            ep.register(fd, select.EPOLLPRI | select.EPOLLERR)
        except OSError:
            # A regular file cannot be polled: read it whenever asked.
            ep.close()
            os.close(fd)
            log.debug("%s cannot be polled; it is read whenever the active VT is asked for",
                      self.vt_active_path)
            return
        self._epoll, self._vt_fd, self._polled = ep, fd, True
        self._vt = self._reread_vt_fd()
        loop.add_reader(ep.fileno(), self._vt_event)
        log.debug("following the active VT in %s (VT %d now)", self.vt_active_path, self._vt)

    def _reread_vt_fd(self) -> int:
        # Reading the file from its start is what re-arms POLLPRI.
        try:
            data = os.pread(self._vt_fd, 64, 0)
        except OSError:
            return self._vt
        return _vt_number(data.decode("ascii", "replace").strip())

    def _vt_event(self) -> None:
        assert self._epoll is not None
        self._epoll.poll(0)
        self._set_vt(self._reread_vt_fd())

    @property
    def active_vt(self) -> int:
        if not self._polled and self.seats[SEAT0].can_tty:
            self._set_vt(read_active_vt(self.vt_active_path))
        return self._vt

    def _set_vt(self, vt: int) -> None:
        if vt and vt != self._vt:
            log.debug("active VT: %d -> %d", self._vt, vt)
            self._vt = vt
            self.sessions_changed()

    # -- which session is in front

    def sessions_on(self, seat_id: str) -> list[Session]:
        return sorted((s for s in self._sessions() if s.facts.seat == seat_id),
                      key=lambda s: int(s.id))

    def _uses_vt(self, session: Session) -> bool:
        seat = self.seats.get(session.facts.seat)
        return seat is not None and seat.can_tty and session.facts.vtnr > 0

    def active_session(self, seat_id: str) -> Session | None:
        # One pass, no sorting: this runs at every login (state files).
        seat = self.seats.get(seat_id)
        vt = self.active_vt if seat is not None and seat.can_tty else None
        chosen = self._chosen.get(seat_id)
        newest: Session | None = None
        for s in self._sessions():
            if s.facts.seat != seat_id or (vt is not None and s.facts.vtnr != vt):
                continue
            if vt is None and s.id == chosen:
                return s
            if newest is None or int(s.id) > int(newest.id):
                newest = s
        return newest

    def is_active(self, session: Session) -> bool:
        if not session.facts.seat:
            return True
        front = self.active_session(session.facts.seat)
        return front is not None and front.id == session.id

    def sessions_changed(self, seat_id: str | None = None) -> None:
        """Sessions opened or closed on seat_id (None: on any seat, or the
        VT changed): tells the listeners of every seat whose active session
        is another one now. A session without a seat changes no seat."""
        if seat_id == "":
            return
        if seat_id is not None:
            seat_ids = {seat_id}
        else:
            seat_ids = set(self.seats) | set(self._front) | {
                s.facts.seat for s in self._sessions() if s.facts.seat}
        for sid in sorted(seat_ids):
            after = self.active_session(sid)
            before_id = self._front.get(sid)
            after_id = after.id if after is not None else None
            if before_id == after_id:
                continue
            if after_id is None:
                self._front.pop(sid, None)
            else:
                self._front[sid] = after_id
            before = next((s for s in self._sessions() if s.id == before_id), None)
            for listener in self.listeners:
                try:
                    listener.active_changed(sid, before, after)
                except Exception:
                    log.exception("%s: active_changed failed", type(listener).__name__)

    # -- turnstiled.registry.Listener: sessions come and go

    def session_opened(self, session: Session) -> None:
        self.sessions_changed(session.facts.seat)

    def session_closed(self, session: Session) -> None:
        if self._chosen.get(session.facts.seat) == session.id:
            del self._chosen[session.facts.seat]
        self.sessions_changed(session.facts.seat)

    def login_changed(self, login: object) -> None:
        pass

    def login_ended(self, login: object) -> None:
        pass

    # -- switching

    def activate(self, session: Session) -> None:
        """Brings session to the front of its seat: its VT, or (without VTs)
        the seat's choice. Raises SwitchError."""
        if not session.facts.seat:
            return  # always active
        if self._uses_vt(session):
            self.switch_vt(session.facts.vtnr)
            return
        self._chosen[session.facts.seat] = session.id
        self.sessions_changed(session.facts.seat)

    def switch_vt(self, vt: int) -> None:
        if not 0 < vt <= MAX_VT:
            raise SwitchError(f"no VT {vt}")
        try:
            fd = os.open(self.vt_console_path, os.O_RDWR | os.O_NOCTTY | os.O_CLOEXEC)
        except OSError as err:
            raise SwitchError(f"cannot open {self.vt_console_path}: {err.strerror}") from None
        try:
            fcntl.ioctl(fd, VT_ACTIVATE, vt)
        except OSError as err:
            raise SwitchError(f"cannot switch to VT {vt} on {self.vt_console_path}: "
                              f"{err.strerror}") from None
        finally:
            os.close(fd)
        log.info("switched to VT %d", vt)

    def switch_relative(self, seat_id: str, step: int) -> None:
        """SwitchToNext (+1) / SwitchToPrevious (-1): the next session's VT
        (or session, without VTs) on the seat, around the end."""
        seat = self.seats.get(seat_id)
        on_seat = self.sessions_on(seat_id)
        if seat is not None and seat.can_tty:
            vts = sorted({s.facts.vtnr for s in on_seat if s.facts.vtnr > 0})
            if not vts:
                raise SwitchError(f"no session on a VT of {seat_id}")
            cur = self.active_vt
            later = [v for v in vts if (v > cur if step > 0 else v < cur)]
            target = (later[0] if step > 0 else later[-1]) if later else \
                (vts[0] if step > 0 else vts[-1])
            self.switch_vt(target)
            return
        if not on_seat:
            raise SwitchError(f"no session on {seat_id}")
        front = self.active_session(seat_id)
        i = on_seat.index(front) if front in on_seat else -1
        self.activate(on_seat[(i + step) % len(on_seat)])

    # -- udev

    def start_udev(self, loop: Loop) -> None:
        """Finds seats in udev's database and follows hotplug. Without pyudev
        or udev, seat0 stays the only seat (logged once). Once is enough."""
        if self._udev_tried:
            return
        self._udev_tried = True
        try:
            import pyudev
        except ImportError:
            log.info("pyudev is not installed: seat0 is the only seat")
            return
        self._loop = loop
        try:
            context = pyudev.Context()
            monitor = pyudev.Monitor.from_netlink(context)
            monitor.filter_by_tag("seat")
            monitor.start()
        except Exception as err:  # no netlink here, no udev: seat0 still works
            log.info("no udev hotplug (%s): seats are read once", err)
            monitor = None
            try:
                context = pyudev.Context()
            except Exception as err2:
                log.info("no udev (%s): seat0 is the only seat", err2)
                return
        self._udev = (context, monitor)
        if monitor is not None:
            loop.add_reader(monitor.fileno(), self._udev_event)
        self.rescan()

    def _udev_event(self) -> None:
        _, monitor = self._udev
        while monitor.poll(timeout=0) is not None:
            pass  # any seat device's event: the whole picture is read again
        self.rescan()

    def rescan(self) -> None:
        context, _ = self._udev
        try:
            devices = [_facts(d) for d in context.list_devices(tag="seat")]
        except Exception as err:
            log.warning("cannot read udev's devices: %s", err)
            return
        self.apply(seats_from(devices))

    def apply(self, found: dict[str, Seat]) -> None:
        """Makes found the seats (seat0 keeps its VTs), telling listeners."""
        found[SEAT0].can_tty = self.seats[SEAT0].can_tty
        gone = [s for sid, s in self.seats.items() if sid not in found]
        new = [s for sid, s in found.items() if sid not in self.seats]
        for sid, seat in found.items():
            if sid in self.seats:
                old = self.seats[sid]
                old.can_graphical, old.devices = seat.can_graphical, seat.devices
            else:
                self.seats[sid] = seat
        for seat in gone:
            del self.seats[seat.id]
            self._chosen.pop(seat.id, None)
        for name, seats in (("seat_removed", gone), ("seat_added", new)):
            for seat in seats:
                log.info("seat %s %s", seat.id, "gone" if name == "seat_removed" else "found")
                for listener in self.listeners:
                    try:
                        getattr(listener, name)(seat)
                    except Exception:
                        log.exception("%s: %s failed", type(listener).__name__, name)
        if gone or new:
            self.sessions_changed()

    def close(self) -> None:
        if self._loop is not None and self._epoll is not None:
            self._loop.remove_reader(self._epoll.fileno())
            self._epoll.close()
            os.close(self._vt_fd)
            self._epoll = None
        if self._udev is not None and self._udev[1] is not None and self._loop is not None:
            self._loop.remove_reader(self._udev[1].fileno())


def _facts(device: Any) -> DeviceFacts:
    return DeviceFacts(device.subsystem or "", device.sys_name, device.sys_path,
                       frozenset(device.tags), device.properties.get("ID_SEAT", ""))
