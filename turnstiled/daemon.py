"""The daemon's lifecycle: listen, serve, and on SIGTERM/SIGINT end every
Login cleanly and exit 0."""

from __future__ import annotations

import asyncio
import logging
import os
import signal

from . import __version__, linger
from .admin import MAX_REQUEST, AdminServer
from .children import Children
from .config import Config
from .registry import Registry
from .server import ControlServer, listen_unix
from .statefiles import StateDir

log = logging.getLogger("turnstiled")

# How long shutdown waits for user managers to stop.
SHUTDOWN_TIMEOUT = 20.0


async def serve(config: Config) -> None:
    os.umask(0o022)
    children = Children()
    children.attach(asyncio.get_running_loop())
    state = StateDir(config.state_dir)
    state.prepare()
    registry = Registry(config, state, children)
    control = ControlServer(registry)
    server = await asyncio.start_unix_server(
        control.handle, sock=listen_unix(config.socket_path, 0o666))
    admin_server = await asyncio.start_unix_server(
        AdminServer(registry).handle, sock=listen_unix(config.admin_socket_path, 0o666),
        limit=MAX_REQUEST)

    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    log.info("turnstiled %s listening on %s (backend %s)", __version__, config.socket_path,
             config.backend)
    if config.backend != "none" and not os.access(config.holder_path, os.X_OK):
        log.error("holder_path %s is not an executable: no user manager can start "
                  "(install turnstiled-holder there, or set holder_path)", config.holder_path)
    reason = linger.disabled_reason(config)
    if reason and config.linger != "no":
        log.warning("lingering is off: %s", reason)
    registry.start_lingering()

    await stop.wait()
    log.info("shutting down")
    server.close()
    admin_server.close()
    _unlink(config.socket_path)
    _unlink(config.admin_socket_path)
    await registry.shutdown(SHUTDOWN_TIMEOUT)


def _unlink(path: str) -> None:
    try:
        os.unlink(path)
    except FileNotFoundError:
        pass
