"""The daemon's lifecycle: listen, serve, and on SIGTERM/SIGINT end every
Login cleanly and exit 0."""

from __future__ import annotations

import asyncio
import logging
import os
import resource
import signal

from . import __version__, linger
from .admin import MAX_REQUEST, AdminServer
from .children import Children
from .config import Config
from .registry import Registry
from .server import ControlServer, RateLimitedLog, listen_unix
from .statefiles import StateDir, StateFiles

log = logging.getLogger("turnstiled")

# How long shutdown waits for user managers to stop.
SHUTDOWN_TIMEOUT = 20.0
# The descriptor limit the daemon raises itself to, at most.
MAX_NOFILE = 65536


def _raise_fd_limit() -> int:
    """Raises our soft RLIMIT_NOFILE to the hard limit, as daemons do: every
    session holds a descriptor. Returns the soft limit we were started with,
    which the holders give back to the users' managers."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    target = MAX_NOFILE if hard == resource.RLIM_INFINITY else min(hard, MAX_NOFILE)
    if soft != resource.RLIM_INFINITY and target > soft:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
        except (ValueError, OSError) as err:
            log.warning("cannot raise the descriptor limit to %d: %s", target, err)
    return soft


def _quiet_accept_errors(loop: asyncio.AbstractEventLoop) -> None:
    """asyncio reports every failed accept (EMFILE) with a traceback; a user
    able to cause them must not fill the log."""
    limited = RateLimitedLog()

    def handler(loop: asyncio.AbstractEventLoop, context: dict) -> None:
        err = context.get("exception")
        if isinstance(err, OSError) and "accept" in context.get("message", ""):
            limited.note(f"cannot accept a connection: {err.strerror}; retrying")
            return
        loop.default_exception_handler(context)

    loop.set_exception_handler(handler)


async def serve(config: Config) -> None:
    os.umask(0o022)
    user_nofile = _raise_fd_limit()
    _quiet_accept_errors(asyncio.get_running_loop())
    children = Children()
    children.attach(asyncio.get_running_loop())
    state = StateDir(config.state_dir)
    state.prepare()
    registry = Registry(config, children, user_nofile, listeners=[StateFiles(state, config)])
    control = ControlServer(registry)
    admin_server = await asyncio.start_unix_server(
        AdminServer(registry).handle, sock=listen_unix(config.admin_socket_path, 0o666),
        limit=MAX_REQUEST)
    # The control socket last: once it listens, the whole daemon is up.
    server = await asyncio.start_unix_server(
        control.handle, sock=listen_unix(config.socket_path, 0o666))

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
