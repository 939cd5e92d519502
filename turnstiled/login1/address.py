"""D-Bus addresses: which one is the system bus, and whether it answers.

An address is `transport:key=value,...`, several separated by `;`, values
%-escaped. Only unix transports are probed (path= and abstract=); the
probe is a plain connect, so nothing but the standard library is loaded
until a bus is there.
"""

from __future__ import annotations

import os
import re
import socket

STANDARD = "unix:path=/run/dbus/system_bus_socket"


def system_bus_address(configured: str) -> str:
    return configured or os.environ.get("DBUS_SYSTEM_BUS_ADDRESS") or STANDARD


def unix_targets(address: str) -> list[str]:
    """The socket addresses (a path, or "\\0name" for abstract) in address."""
    out = []
    for part in address.split(";"):
        transport, _, params = part.partition(":")
        if transport != "unix":
            continue
        for kv in params.split(","):
            key, _, value = kv.partition("=")
            value = _unescape(value)
            if key == "path":
                out.append(value)
            elif key == "abstract":
                out.append("\0" + value)
    return out


def _unescape(value: str) -> str:
    # D-Bus escapes bytes as %XX (urllib.parse would do, at its cost in
    # memory for a daemon that may wait for a bus all its life).
    return re.sub(r"%([0-9A-Fa-f]{2})", lambda m: chr(int(m.group(1), 16)), value)


def reachable(address: str) -> str | None:
    """None when a bus socket in address accepts a connection, else why not."""
    targets = unix_targets(address)
    if not targets:
        return None  # not ours to probe (tcp:...): let the library try
    why = ""
    for target in targets:
        s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM | socket.SOCK_CLOEXEC)
        s.settimeout(2.0)
        try:
            s.connect(target)
            return None
        except OSError as err:
            why = f"{target.lstrip(chr(0))}: {err.strerror or err}"
        finally:
            s.close()
    return why
