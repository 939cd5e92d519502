"""The daemon's lifecycle: take up what a previous daemon left, listen,
serve, and exit 0 on a signal:

- SIGTERM (what `sv restart`, `sv down` and init send): a restart. The
  sessions and managers are left as they are, kept by the fd store, for the
  next daemon to take up within adopt_timeout; the control socket's file
  stays, so logins in the gap wait for that daemon.
- SIGINT (`sv interrupt turnstiled`, Ctrl-C): a full stop. Every session is
  ended, every manager stopped, the fd store told to quit.
"""

from __future__ import annotations

import fcntl
import logging
import os
import resource
import signal

from . import __version__, holderlink, libc, linger, tracking
from .admin import AdminServer
from .children import Children
from .config import Config
from .fdstore import FdStore, StoreError
from .handover import Handover, adopt
from .loop import Loop
from .registry import Registry
from .seats import Seats
from .server import ControlServer, listen_unix
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


def _lock(state_dir: str) -> int:
    """One daemon per state dir: a second one would take up, and fight
    over, the first one's sessions."""
    os.makedirs(state_dir, mode=0o755, exist_ok=True)
    fd = os.open(os.path.join(state_dir, "lock"), os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        raise SystemExit(f"turnstiled: another turnstiled runs on {state_dir}") from None
    return fd


def _take_up(config: Config, registry: Registry, control: ControlServer,
             children: Children) -> FdStore | None:
    """Connects to (or starts) the fd store and takes up what a previous
    daemon left in it; None when restarts are not to be survived."""
    if config.adopt_timeout <= 0:
        return None
    store = FdStore(os.path.join(config.state_dir, "fdstore.sock"), config.fdstore_path,
                    config.adopt_timeout, children)
    try:
        entries = store.open()
    except (OSError, StoreError) as err:
        log.error("no fd store (%s): a restart of turnstiled will stop every manager", err)
        return None
    handover = Handover(store, registry)
    adopted = adopt(entries, registry, handover)
    registry.listeners.append(handover)
    for session, sock, answered in adopted.sessions:
        control.resume(session, sock, answered)
    for problem in adopted.ended:
        log.warning("not taken up: %s", problem)
    if entries:
        log.info("took up %d logins, %d managers and %d sessions from the previous daemon",
                 adopted.logins, adopted.managers, len(adopted.sessions))
    return store


def serve(config: Config) -> None:
    loop = Loop().install()
    try:
        _serve(config, loop)
    finally:
        loop.close()


def _serve(config: Config, loop: Loop) -> None:
    os.umask(0o022)
    _lock(config.state_dir)
    user_nofile = _raise_fd_limit()
    children = Children()
    children.attach(loop)
    state = StateDir(config.state_dir)
    # What a previous run made, read before its files are dropped.
    left_rundirs = state.managed_rundirs()
    state.prepare()
    groups = tracking.choose(config)
    log.info("session tracking: %s (%s)", groups.mode, groups.reason)
    registry = Registry(config, children, user_nofile, groups=groups)
    seats = Seats(config.vt_active_path, config.vt_console_path,
                  lambda: registry.sessions.values())
    state_files = StateFiles(state, config, seats)
    # Seats first: who is active is settled before the others describe it.
    registry.listeners += [seats, state_files]
    seats.listeners.append(state_files)
    seats.follow_vt(loop)
    control = ControlServer(registry)
    store = _take_up(config, registry, control, children)
    # Before anyone can log in and make theirs afresh.
    registry.remove_left_rundirs(left_rundirs)
    # Groups no taken-up session or manager holds are a previous run's.
    groups.leftovers(_groups_in_use(registry))
    api = _start_login1(config, registry, seats)
    admin_server = AdminServer(registry, seats, api.status)
    admin_server.listen(listen_unix(config.admin_socket_path, 0o666))
    if config.spare_holder and config.backend != "none":
        # The first cold login takes it (turnstiled/children.py).
        children.keep_spare(config.holder_path, holderlink.command_args(config),
                            lambda: holderlink.spare_stamp(config))
    # The control socket last: once it listens, the whole daemon is up.
    control.listen(listen_unix(config.socket_path, 0o666))

    signalled, full_stop = False, False

    def on_signal(sig: int) -> None:
        # Only the first ends the loop's run: later ones would cut short
        # the runs that wait for the managers to stop.
        nonlocal signalled, full_stop
        full_stop = full_stop or (sig == signal.SIGINT and not signalled)
        if not signalled:
            signalled = True
            loop.stop()

    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, on_signal, sig)
    log.info("turnstiled %s listening on %s (backend %s)", __version__, config.socket_path,
             config.backend)
    if config.backend != "none" and not os.access(config.holder_path, os.X_OK):
        log.error("holder_path %s is not an executable: no user manager can start "
                  "(install turnstiled-holder there, or set holder_path)", config.holder_path)
    reason = linger.disabled_reason(config)
    if reason and config.linger != "no":
        log.warning("lingering is off: %s", reason)
    registry.start_lingering()
    # Started: what loading and setting up freed is given back now, or it
    # would count as the daemon's memory for its whole life.
    libc.release_free_heap()

    loop.run()
    children.drop_spare()
    control.close()
    admin_server.close()
    api.close()
    seats.close()
    _unlink(config.admin_socket_path)
    if store is not None and store.connected and not full_stop:
        log.info("exiting; the next turnstiled takes up every session and manager "
                 "(within adopt_timeout, %g s)", config.adopt_timeout)
        # The socket's file stays: a login in the gap gets ECONNREFUSED and
        # waits for the next daemon.
        store.close()
        registry.let_go(SHUTDOWN_TIMEOUT)
        return
    log.info("shutting down: ending every session, stopping every manager")
    _unlink(config.socket_path)
    registry.shutdown(SHUTDOWN_TIMEOUT)
    groups.close()
    if store is not None:
        store.quit()


def _groups_in_use(registry: Registry) -> set[str]:
    paths = {s.group.path for s in registry.sessions.values() if s.group is not None}
    for login in registry.logins.values():
        if login.manager is not None and login.manager.group is not None:
            paths.add(login.manager.group.path)
    return paths


def _start_login1(config: Config, registry: Registry, seats: Seats):
    """The D-Bus API (turnstiled/login1/); it brings udev's seats in once it
    serves. With login1 = no, neither dbus-fast nor pyudev is imported."""
    from . import login1
    return login1.start(config, registry, seats)


def _unlink(path: str) -> None:
    try:
        os.unlink(path)
    except FileNotFoundError:
        pass
