"""The system bus connection's lifecycle: wait for the bus, connect, take
the name, serve until the bus goes, start over.

- No bus (its socket does not answer): probed with a plain connect every
  RETRY_MAX seconds at most, on the daemon's loop, with neither dbus-fast
  nor asyncio imported.
- A bus answers: the daemon's loop becomes asyncio's guest
  (turnstiled.loop) and the connection runs as an asyncio task.
- The name is someone else's (elogind): with login1 = auto, logged once
  and left alone while this connection lasts; with yes, an error, and the
  name is taken the moment its owner lets it go (NameOwnerChanged).
- The bus goes (restart, crash): the service goes with it and the wait
  starts again; no daemon restart is needed.
"""

from __future__ import annotations

import logging

from ..loop import current
from . import BUS_NAME, Status
from .address import reachable

TYPE_CHECKING = False  # not typing's (see turnstiled/__init__.py)
if TYPE_CHECKING:
    import asyncio

    from ..loop import Timer
    from ..registry import Registry
    from ..seats import Seats

log = logging.getLogger("turnstiled")

RETRY_FIRST = 0.25
RETRY_MAX = 5.0


class BusLink:
    def __init__(self, address: str, required: bool, registry: Registry, seats: Seats,
                 status: Status) -> None:
        self.address = address
        self.required = required
        self.registry = registry
        self.seats = seats
        self.status = status
        self.loop = current()
        self._task: asyncio.Task | None = None
        self._retry: Timer | None = None
        self._delay = RETRY_FIRST
        self._bus = None
        self._service = None
        self._said = ""  # the last wait reason logged, so it is logged once
        # Sessions' idle and locked hints outlive a connection.
        self.hints: dict = {}

    def start(self) -> None:
        self._probe()

    def close(self) -> None:
        """Ends the connection (running asyncio's loop until its task has)."""
        if self._retry is not None:
            self._retry.cancel()
            self._retry = None
        task, self._task = self._task, None
        if task is not None and not task.done():
            import asyncio
            task.cancel()
            try:
                task.get_loop().run_until_complete(task)
            except asyncio.CancelledError:
                pass
        self._drop()

    def _set(self, state: str, detail: str, error: bool = False) -> None:
        self.status.state, self.status.detail, self.status.error = state, detail, error

    def _wait_note(self, why: str) -> None:
        self._set("waiting", f"no system bus at {self.address}: {why}", self.required)
        if why != self._said:
            self._said = why
            (log.error if self.required else log.info)(
                "login1: no system bus at %s (%s); connecting when it appears",
                self.address, why)

    def _probe(self) -> None:
        """Connects if the bus answers, else tries again later."""
        self._retry = None
        why = reachable(self.address)
        if why is None:
            self._task = self.loop.asyncio().create_task(self._connection())
        else:
            self._wait_for_bus(why)

    def _wait_for_bus(self, why: str) -> None:
        self._wait_note(why)
        self._retry = self.loop.call_later(self._delay, self._probe)
        self._delay = min(self._delay * 2, RETRY_MAX)

    async def _connection(self) -> None:
        """One connection, from connect to its loss; then the next probe."""
        try:
            await self._session()
        except (OSError, EOFError) as err:
            why = str(err) or type(err).__name__
        except Exception as err:  # the library's own errors (auth, protocol)
            why = f"{type(err).__name__}: {err}"
        else:
            self._delay = RETRY_FIRST
            why = ""
        finally:
            self._drop()
        if why:
            self._wait_for_bus(why)
        else:
            self.loop.call_soon(self._probe)

    async def _session(self) -> None:
        """One connection, from connect to its loss."""
        from dbus_fast import BusType
        from dbus_fast.aio import MessageBus

        from .service import Service

        bus = await MessageBus(bus_address=self.address, bus_type=BusType.SYSTEM).connect()
        self._bus = bus
        self._said = ""
        service = Service(bus, self.registry, self.seats, self.hints)
        self._service = service
        if await self._take_name(bus):
            self._serve(service)
            log.info("login1: serving %s on %s", BUS_NAME, self.address)
        try:
            await bus.wait_for_disconnect()
        except (OSError, EOFError) as err:  # how a bus that died ends the wait
            log.debug("login1: the connection ended: %r", err)
        log.warning("login1: the system bus went away; %s is served again once it is back",
                    BUS_NAME)

    def _serve(self, service) -> None:
        # udev's seats are read once there is someone to tell.
        self.seats.start_udev(self.loop)
        service.attach()
        self._set("active", f"{BUS_NAME} on {self.address}")

    async def _take_name(self, bus) -> bool:
        from dbus_fast import NameFlag, RequestNameReply
        reply = await bus.request_name(BUS_NAME, NameFlag.DO_NOT_QUEUE)
        if reply in (RequestNameReply.PRIMARY_OWNER, RequestNameReply.ALREADY_OWNER):
            return True
        owner = await self._describe_owner(bus)
        if not self.required:
            self._set("standing-by", f"{BUS_NAME} is owned by {owner}")
            log.info("login1: %s is owned by %s (elogind?); leaving it alone", BUS_NAME, owner)
            return False
        self._set("failed", f"{BUS_NAME} is owned by {owner}; taken when it is released",
                  True)
        log.error("login1: %s is owned by %s (login1 = yes); taking it when it is released",
                  BUS_NAME, owner)
        self._service.on_name_released(lambda: self.loop.asyncio().create_task(self._retake(bus)))
        return False

    async def _retake(self, bus) -> None:
        if self._bus is bus and await self._take_name(bus):
            self._serve(self._service)
            log.info("login1: %s released by its owner; serving it now", BUS_NAME)

    async def _describe_owner(self, bus) -> str:
        from .objects import bus_call
        try:
            [unique] = await bus_call(bus, "GetNameOwner", "s", [BUS_NAME])
            [pid] = await bus_call(bus, "GetConnectionUnixProcessID", "s", [unique])
        except Exception:
            return "another program"
        try:
            with open(f"/proc/{pid}/comm") as f:
                comm = f.read().strip()
        except OSError:
            comm = "?"
        return f"pid {pid} ({comm})"

    def _drop(self) -> None:
        if self._service is not None:
            self._service.detach()
            self._service = None
        if self._bus is not None:
            try:
                self._bus.disconnect()
            except Exception:
                pass
            self._bus = None
