"""A D-Bus client for the tests, on dbus-fast's own client side: calls to
org.freedesktop.login1 (in-process, or as a command so it can run under a
test user's uid or inside a login), and a recorder of its signals.

As a command (prints one JSON object: {"body": [...]} or {"error": NAME,
"message": TEXT}):

    python busclient.py ADDRESS PATH INTERFACE MEMBER SIGNATURE JSON_ARGS
"""

from __future__ import annotations

import asyncio
import importlib.util
import json
import sys
import threading
from typing import Any

import pytest

# dbus-fast is imported where it is used: without it (no login1 extra) the
# test modules still load, and the tests that need it skip.
needs_dbus_fast = pytest.mark.skipif(importlib.util.find_spec("dbus_fast") is None,
                                     reason="dbus-fast is not installed (the login1 extra)")

NAME = "org.freedesktop.login1"
ROOT = "/org/freedesktop/login1"
MANAGER = "org.freedesktop.login1.Manager"
SESSION = "org.freedesktop.login1.Session"
USER = "org.freedesktop.login1.User"
SEAT = "org.freedesktop.login1.Seat"
PROPERTIES = "org.freedesktop.DBus.Properties"
# A call not answered by then fails the test rather than hanging it.
CALL_TIMEOUT = 15


class CallError(Exception):
    def __init__(self, name: str, message: str) -> None:
        super().__init__(f"{name}: {message}")
        self.name, self.message = name, message


def plain(value: Any) -> Any:
    """Variants unwrapped, tuples as lists: what JSON can carry."""
    from dbus_fast import Variant

    if isinstance(value, Variant):
        return plain(value.value)
    if isinstance(value, (list, tuple)):
        return [plain(v) for v in value]
    if isinstance(value, dict):
        return {k: plain(v) for k, v in value.items()}
    return value


async def _call(address: str, path: str, interface: str, member: str, signature: str = "",
                args: list | None = None) -> list:
    from dbus_fast import BusType, Message, MessageType
    from dbus_fast.aio import MessageBus

    bus = await MessageBus(bus_address=address, bus_type=BusType.SYSTEM).connect()
    try:
        reply = await asyncio.wait_for(bus.call(Message(
            destination=NAME, path=path, interface=interface, member=member,
            signature=signature, body=args or [])), CALL_TIMEOUT)
    finally:
        bus.disconnect()
    if reply.message_type == MessageType.ERROR:
        raise CallError(reply.error_name, reply.body[0] if reply.body else "")
    return plain(reply.body)


def call(address: str, path: str, interface: str, member: str, signature: str = "",
         args: list | None = None) -> list:
    """One call on a connection of its own; the reply's body, or CallError."""
    return asyncio.run(_call(address, path, interface, member, signature, args))


def get_all(address: str, path: str, interface: str = "") -> dict:
    return call(address, path, PROPERTIES, "GetAll", "s", [interface])[0]


def get(address: str, path: str, interface: str, prop: str) -> Any:
    return call(address, path, PROPERTIES, "Get", "ss", [interface, prop])[0]


class SignalRecorder:
    """Records every signal org.freedesktop.login1's owner sends, on a
    connection of its own in a thread, from start() to stop()."""

    def __init__(self, address: str) -> None:
        self.address = address
        self.signals: list[tuple[str, str, str, list]] = []  # (path, iface, member, body)
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, daemon=True)
        self._bus: Any = None

    def start(self) -> SignalRecorder:
        self._thread.start()
        asyncio.run_coroutine_threadsafe(self._connect(), self._loop).result(10)
        return self

    async def _connect(self) -> None:
        from dbus_fast import BusType, Message
        from dbus_fast.aio import MessageBus

        bus = await MessageBus(bus_address=self.address, bus_type=BusType.SYSTEM).connect()
        bus.add_message_handler(self._on_message)
        await bus.call(Message(destination="org.freedesktop.DBus", path="/org/freedesktop/DBus",
                               interface="org.freedesktop.DBus", member="AddMatch",
                               signature="s", body=[f"type='signal',path_namespace='{ROOT}'"]))
        self._bus = bus

    def _on_message(self, msg: Any) -> None:
        from dbus_fast import MessageType

        if msg.message_type == MessageType.SIGNAL and msg.path.startswith(ROOT):
            self.signals.append((msg.path, msg.interface, msg.member, plain(msg.body)))

    def named(self, member: str, path: str | None = None) -> list[list]:
        return [body for p, _, m, body in list(self.signals)
                if m == member and (path is None or p == path)]

    def changes(self, path: str) -> list[dict]:
        """The changed-properties dicts of PropertiesChanged on path."""
        return [body[1] for body in self.named("PropertiesChanged", path)]

    def stop(self) -> None:
        if self._bus is not None:
            self._loop.call_soon_threadsafe(self._bus.disconnect)
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(5)

    def __enter__(self) -> SignalRecorder:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


def main(argv: list[str]) -> int:
    address, path, interface, member, signature, args = argv
    try:
        body = call(address, path, interface, member, signature, json.loads(args))
    except CallError as err:
        print(json.dumps({"error": err.name, "message": err.message}))
        return 1
    print(json.dumps({"body": body}))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
