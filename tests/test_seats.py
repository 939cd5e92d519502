"""Seats and the active VT (turnstiled/seats.py), which session a process
belongs to (turnstiled/sessionof.py), and seats appearing and going on the
bus.

What this machine allows: /sys/class/tty/tty0/active exists and is
followed for real (never switched: a switch would move this machine's
console); there is no udev database and no /dev/dri, so the devices of
extra seats are written down by hand (DeviceFacts, what udev would
report), and the daemon's own enumeration is run on the real, empty
database."""

from __future__ import annotations

import asyncio
import functools
import os
import subprocess
from types import SimpleNamespace

import pytest
from busclient import MANAGER, ROOT, SEAT, SignalRecorder, call, get_all, needs_dbus_fast
from helpers import children_pids, wait_for
from sysbus import SystemBus

from turnstiled.children import Children
from turnstiled.config import Config
from turnstiled.protocol import Handshake
from turnstiled.registry import Registry, Session
from turnstiled.seats import DeviceFacts, Seats, SwitchError, read_active_vt, seats_from
from turnstiled.sessionof import session_of_pid
from turnstiled.users import lookup_uid

REAL_VT = "/sys/class/tty/tty0/active"


def dev(subsystem, name, tags, seat=""):
    return DeviceFacts(subsystem, name, f"/sys/devices/x/{name}", frozenset(tags), seat)


# -- which seats udev's devices make


def test_seat0_always_and_more_seats_from_master_of_seat_devices():
    """Hand-written udev facts (this machine has no udev database)."""
    found = seats_from([
        dev("drm", "card0", {"seat", "master-of-seat"}),
        dev("drm", "card1", {"seat", "master-of-seat"}, "seat1"),
        dev("input", "event3", {"seat"}, "seat1"),
        dev("graphics", "fb2", {"seat", "master-of-seat"}, "seat2"),
        dev("input", "event9", {"seat"}, "seat7"),  # no master: no seat7
    ])
    assert sorted(found) == ["seat0", "seat1", "seat2"]
    assert found["seat1"].can_graphical and found["seat2"].can_graphical
    assert found["seat0"].can_graphical  # card0 has no ID_SEAT: seat0's
    assert found["seat1"].devices == ["/sys/devices/x/card1", "/sys/devices/x/event3"]
    assert seats_from([]).keys() == {"seat0"}
    assert not seats_from([dev("input", "event0", {"seat"})])["seat0"].can_graphical


def test_the_real_udev_enumeration_here(loop):
    pyudev = pytest.importorskip("pyudev")
    masters = list(pyudev.Context().list_devices(tag="master-of-seat"))
    seats = Seats("/nonexistent", "/nonexistent", lambda: [])
    seats.start_udev(loop)
    seats.close()
    expected = {d.properties.get("ID_SEAT") or "seat0" for d in masters} | {"seat0"}
    assert set(seats.seats) == expected


# -- the active VT


def test_the_real_active_vt_is_read_and_followed_with_poll(loop):
    """Read-only: the kernel's file is polled, never written."""
    if not os.path.exists(REAL_VT):
        pytest.skip(f"{REAL_VT} does not exist here")
    seats = Seats(REAL_VT, "/nonexistent", lambda: [])
    woken = []

    seats.follow_vt(loop)
    original = seats._vt_event
    seats._vt_event = lambda: (woken.append(1), original())
    loop.remove_reader(seats._epoll.fileno())
    loop.add_reader(seats._epoll.fileno(), seats._vt_event)
    loop.run(timeout=0.3)
    seats.close()
    assert seats._polled, "sysfs's file takes a POLLPRI registration"
    assert seats.active_vt == read_active_vt(REAL_VT) > 0
    assert seats.seats["seat0"].can_tty
    assert woken == [], "no wake-up without a VT switch (no busy loop)"


def test_a_vt_switch_goes_to_the_console_device(tmp_path):
    """A regular file as the console: VT_ACTIVATE fails (ENOTTY) instead
    of switching this machine's VT."""
    console = tmp_path / "tty0"
    console.write_text("")
    seats = Seats(str(tmp_path / "active"), str(console), lambda: [])
    with pytest.raises(SwitchError, match="cannot switch to VT 4 on .*tty0"):
        seats.switch_vt(4)
    with pytest.raises(SwitchError, match="no VT 99"):
        seats.switch_vt(99)
    with pytest.raises(SwitchError, match="cannot open"):
        Seats("/x", str(tmp_path / "missing"), lambda: []).switch_vt(2)


def _session(sid: str, seat: str = "", vtnr: int = 0) -> Session:
    user = lookup_uid(0)
    facts = Handshake(0, vtnr, False, "login", "tty", "user", seat=seat,
                      tty=f"tty{vtnr}" if vtnr else "")
    return Session(sid, user, facts, leader=1)


def test_who_is_active(tmp_path):
    active = tmp_path / "active"
    active.write_text("tty2\n")

    sessions: list[Session] = []
    seats = Seats(str(active), "/nonexistent", lambda: sessions)
    seats.seats["seat1"] = seats_from([dev("drm", "card1", {"seat", "master-of-seat"},
                                           "seat1")])["seat1"]
    heard = []
    seats.listeners.append(SimpleNamespace(
        active_changed=lambda seat, b, a: heard.append((seat, b and b.id, a and a.id))))
    on2, on3 = _session("1", "seat0", 2), _session("2", "seat0", 3)
    nowhere = _session("3")
    g1, g2 = _session("4", "seat1"), _session("5", "seat1")
    sessions += [on2, on3, nowhere, g1]
    seats.sessions_changed()
    assert [seats.is_active(s) for s in (on2, on3, nowhere, g1)] == [True, False, True,
                                                                      True]
    active.write_text("tty3\n")
    assert seats.active_session("seat0") is on3 and not seats.is_active(on2)
    assert ("seat0", "1", "2") in heard
    # Without VTs: the newest, until another is activated.
    sessions.append(g2)
    seats.sessions_changed()
    assert seats.active_session("seat1") is g2
    seats.activate(g1)
    assert seats.active_session("seat1") is g1 and ("seat1", "5", "4") in heard
    seats.switch_relative("seat1", 1)
    assert seats.active_session("seat1") is g2
    seats.switch_relative("seat1", -1)
    assert seats.active_session("seat1") is g1


# -- seats appearing on the bus


@needs_dbus_fast
def test_seats_come_and_go_on_the_bus(tmp_path, loop):
    """The daemon's Service and Seats in this process, on a real private
    bus; the hotplug is hand-written udev facts given to Seats.apply (what
    its udev monitor calls with the facts it reads)."""
    os.chmod(tmp_path, 0o755)
    bus = SystemBus(tmp_path).start()
    try:
        asyncio.run(_seats_on_bus(tmp_path, bus.address))
    finally:
        bus.stop()


async def _seats_on_bus(tmp_path, address):
    from dbus_fast import BusType, NameFlag
    from dbus_fast.aio import MessageBus

    from turnstiled.login1.service import Service

    registry = Registry(Config(state_dir=str(tmp_path / "state")), Children())
    seats = Seats("/nonexistent", "/nonexistent", lambda: registry.sessions.values())
    conn = await MessageBus(bus_address=address, bus_type=BusType.SYSTEM).connect()
    await conn.request_name("org.freedesktop.login1", NameFlag.DO_NOT_QUEUE)
    service = Service(conn, registry, seats, {})
    service.attach()
    loop = asyncio.get_running_loop()
    try:
        rec = await loop.run_in_executor(None, SignalRecorder(address).start)
        with_seat1 = seats_from([dev("drm", "card1", {"seat", "master-of-seat"}, "seat1")])
        seats.apply(with_seat1)
        listed = await loop.run_in_executor(None, call, address, ROOT, MANAGER, "ListSeats")
        assert listed == [[["seat0", "/org/freedesktop/login1/seat/seat0"],
                           ["seat1", "/org/freedesktop/login1/seat/seat1"]]]
        props = await loop.run_in_executor(None, get_all, address,
                                           "/org/freedesktop/login1/seat/seat1", SEAT)
        assert props["CanGraphical"] is True and props["CanTTY"] is False
        seats.apply(seats_from([]))
        # Waited for off the loop: the signal leaves the bus connection on it.
        await loop.run_in_executor(None, functools.partial(
            wait_for, lambda: rec.named("SeatRemoved"), 5, what="SeatRemoved"))
        assert rec.named("SeatNew") == [["seat1", "/org/freedesktop/login1/seat/seat1"]]
        assert rec.named("SeatRemoved") == [["seat1", "/org/freedesktop/login1/seat/seat1"]]
        rec.stop()
    finally:
        service.detach()
        conn.disconnect()


# -- which session a process belongs to


def test_a_process_belongs_to_its_nearest_leaders_session():
    outer = subprocess.Popen(["sh", "-c", "sleep 30 & sh -c 'sleep 30; :' & wait"])
    tree: list[int] = []
    try:
        def started() -> list[int] | None:
            kids = children_pids(outer.pid)
            return kids if len(kids) == 2 and any(map(children_pids, kids)) else None

        kids = wait_for(started, 5, what="the shells and sleeps started")
        inner = next(k for k in kids if children_pids(k))  # the sh running a sleep
        grandkids = children_pids(inner)
        tree = kids + grandkids
        sessions = [SimpleNamespace(id="1", leader=outer.pid),
                    SimpleNamespace(id="2", leader=inner),
                    SimpleNamespace(id="3", leader=outer.pid)]
        sleeper = next(k for k in kids if k != inner)
        assert session_of_pid(sessions, sleeper).id == "3", "same leader: the newest"
        assert session_of_pid(sessions, grandkids[0]).id == "2", "the nearest leader"
        assert session_of_pid(sessions, inner).id == "2"
        assert session_of_pid(sessions, os.getpid()) is None
        assert session_of_pid(sessions, 0) is None and session_of_pid([], outer.pid) is None
    finally:
        for pid in tree:
            try:
                os.kill(pid, 9)
            except ProcessLookupError:
                pass
        outer.kill()
        outer.wait()
