"""org.freedesktop.login1 on the system bus: turnstiled's sessions, users
and seats under the names and interfaces logind gives them, for loginctl
and desktop components.

The contract:
- `login1 = no`: nothing here runs and nothing is imported beyond this
  module. `auto`: the name is taken when a system bus is reachable and
  nobody owns the name; someone else owning it (elogind) is logged once
  and left alone. `yes`: as auto, but not getting the name is an error
  (log, `turnstilectl status`) and the name is taken once it is free.
- The bus may come later or go and come back: bus.BusLink connects when
  its socket answers and again after a loss. dbus-fast is imported only
  once a bus answers, so an idle daemon without a bus stays small.
- Reading is everyone's; changing goes through turnstiled.users.may_act_for,
  the admin socket's policy, with the caller's uid from the bus.
- Out of scope: device brokering (TakeControl/TakeDevice: seatd),
  power and inhibitors (elogind or a power daemon).

Layout: paths (object paths), address (bus addresses, reachability),
bus (the connection's lifecycle), service (dispatch of calls,
properties, introspection), manager/session/user/seat (one interface
each), objects (what a call is about, and who calls), signals (registry
and seat events as D-Bus signals).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

TYPE_CHECKING = False  # not typing's (see turnstiled/__init__.py)
if TYPE_CHECKING:
    from ..config import Config
    from ..registry import Registry
    from ..seats import Seats

log = logging.getLogger("turnstiled")

BUS_NAME = "org.freedesktop.login1"


@dataclass
class Status:
    """What `turnstilectl status` shows: state is off, waiting (for a bus),
    active (the name is ours), standing-by (someone else owns it) or
    failed; error marks a state `login1 = yes` did not want."""
    state: str = "off"
    detail: str = ""
    error: bool = False

    def as_dict(self) -> dict[str, object]:
        return {"state": self.state, "detail": self.detail, "error": self.error}


class Login1:
    """The D-Bus API's handle in the daemon: its status, and close()."""

    def __init__(self, status: Status, link: object | None = None) -> None:
        self.status = status
        self._link = link

    def close(self) -> None:
        if self._link is not None:
            self._link.close()  # type: ignore[attr-defined]


def start(config: Config, registry: Registry, seats: Seats) -> Login1:
    """Starts the API as config says (see the module's contract)."""
    status = Status()
    if config.login1 == "no":
        status.detail = "login1 = no"
        return Login1(status)
    # Whether it is there, without importing it (that waits for a bus).
    import importlib.util
    try:
        found = importlib.util.find_spec("dbus_fast") is not None
    except (ImportError, ValueError):  # a broken or blocked install
        found = False
    if not found:
        return _unavailable(config, status, "the Python package dbus-fast is not installed "
                            "(pip install 'turnstiled[login1]')")
    from .address import system_bus_address
    from .bus import BusLink
    address = system_bus_address(config.system_bus_address)
    link = BusLink(address, config.login1 == "yes", registry, seats, status)
    link.start()
    return Login1(status, link)


def _unavailable(config: Config, status: Status, why: str) -> Login1:
    status.state, status.detail = "off", why
    if config.login1 == "yes":
        status.state, status.error = "failed", True
        log.error("login1: %s; org.freedesktop.login1 is not served (login1 = yes)", why)
    else:
        log.info("login1: %s; org.freedesktop.login1 is not served", why)
    return Login1(status)
