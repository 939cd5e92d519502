"""Fixtures for tests on real parts: the built PAM module, a sandbox other
users can reach, throwaway real users, and the real daemon on a real socket.
What they are made of lives in c_parts.py, users.py and daemon.py.

Every process a fixture starts is stopped by pid at teardown, also when the
test fails; every wait is bounded.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from c_parts import build_module
from cgroup import CgroupTree, writable_mount
from daemon import Daemon, start_daemon
from dinit import DinitSetup, find_real_dinit, install_dinit
from fake_registry import FakeRundirs
from fakeserver import FakeServer
from fdstore_process import LONG, Store
from helpers import REPO_ROOT
from holder_process import Holder, Setup
from users import ScratchUser, kill_created_users_processes, scratch_users

from turnstiled import registry
from turnstiled.loop import Loop

N_TEST_USERS = 4
N_MANY_USERS = 40
XDG_VARS = ("XDG_SESSION_TYPE", "XDG_SESSION_CLASS", "XDG_SESSION_DESKTOP", "XDG_SEAT",
            "XDG_VTNR")


# -- reports


@pytest.hookimpl(hookwrapper=True, tryfirst=True)
def pytest_runtest_makereport(item, call):
    """Keeps each phase's report on the item (rep_setup, rep_call), so
    fixtures can tell at teardown whether the test failed."""
    outcome = yield
    rep = outcome.get_result()
    setattr(item, f"rep_{rep.when}", rep)


def _test_failed(request: pytest.FixtureRequest) -> bool:
    return any(getattr(getattr(request.node, f"rep_{when}", None), "failed", False)
               for when in ("setup", "call"))


# -- the checkout and the module


@pytest.fixture(scope="session")
def repo_root() -> Path:
    return REPO_ROOT


@pytest.fixture(scope="session")
def pam_module() -> Path:
    """Absolute path of the built pam_turnstile.so (skips if it cannot build)."""
    return build_module()


@pytest.fixture
def no_session_vars(monkeypatch: pytest.MonkeyPatch) -> None:
    """The module reads XDG_SESSION_* from the process environment too; the
    test runner's own session must not leak into the facts."""
    for name in XDG_VARS:
        monkeypatch.delenv(name, raising=False)


# -- sandbox


@pytest.fixture
def sandbox() -> Iterator[Path]:
    """A fresh 0755 directory under /tmp that test users can traverse
    (pytest's tmp_path is 0700 and may sit under root's 0700 home)."""
    path = Path(tempfile.mkdtemp(prefix="turnstiled-test-", dir="/tmp"))
    os.chmod(path, 0o755)
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)


@pytest.fixture
def confdir(sandbox: Path) -> Path:
    """SANDBOX/pam.d, for service files of the test's own."""
    d = sandbox / "pam.d"
    d.mkdir(exist_ok=True)
    return d


@pytest.fixture
def fake_server(sandbox: Path) -> Iterator[Callable[..., FakeServer]]:
    """fake_server(**kw) -> FakeServer on SANDBOX/fakeN.sock; stopped at test end."""
    servers: list[FakeServer] = []

    def make(**kw) -> FakeServer:
        server = FakeServer(str(sandbox / f"fake{len(servers)}.sock"), **kw)
        servers.append(server)
        return server

    yield make
    for server in servers:
        server.close()


# -- users


@pytest.fixture(scope="session")
def test_users() -> Iterator[list[ScratchUser]]:
    """Four throwaway real users (prefix tsdt)."""
    with scratch_users(N_TEST_USERS) as users:
        yield users


@pytest.fixture(scope="session")
def many_users() -> Iterator[list[ScratchUser]]:
    """Forty throwaway real users, for bursts of distinct users' logins."""
    with scratch_users(N_MANY_USERS) as users:
        yield users


@pytest.fixture
def test_user(test_users: list[ScratchUser]) -> ScratchUser:
    return test_users[0]


# -- the daemon


@pytest.fixture
def daemon(sandbox: Path, request: pytest.FixtureRequest) -> Iterator[Callable[..., Daemon]]:
    """daemon(**overrides) -> Daemon: daemon.start_daemon in the sandbox
    (the config's keys, True/False as yes/no, None to remove a key);
    returns once the control socket listens.

    At teardown, also when the test failed: every daemon started is stopped
    (SIGTERM, then SIGKILL), and every process left owned by a test user is
    killed. When the test failed, each daemon's log tail is printed (pytest
    shows it under "Captured stdout teardown").
    """
    started: list[Daemon] = []

    def start(**overrides: object) -> Daemon:
        d = start_daemon(sandbox, **overrides)
        started.append(d)
        return d

    try:
        yield start
    finally:
        errors = []
        for d in started:
            try:
                d.stop()
            except Exception as err:  # stop the others anyway
                errors.append(err)
        if started and _test_failed(request):
            for d in started:
                print(f"--- turnstiled pid {d.pid} ({d.config_path}), exit "
                      f"{d.proc.returncode}, log tail:\n{d.log_tail(60)}")
        kill_created_users_processes()
        if errors:
            raise errors[0]


# -- the registry on its own


@pytest.fixture
def loop() -> Iterator[Loop]:
    """The daemon's event loop, installed; nothing runs it but the test."""
    loop = Loop().install()
    yield loop
    loop.close()


@pytest.fixture
def rundir_stand_in(monkeypatch: pytest.MonkeyPatch) -> FakeRundirs:
    """The registry makes runtime dirs through a stand-in that needs no
    root (fake_registry.FakeRundirs says why that is enough)."""
    stand_in = FakeRundirs()
    monkeypatch.setattr(registry, "rundir", stand_in)
    return stand_in


# -- the D-Bus API on a private system bus


@pytest.fixture
def login1(daemon, sandbox: Path, pam_module) -> Iterator[Callable[..., object]]:
    """login1(**overrides) -> login1_harness.Login1Setup: a private system
    bus (the real dbus-daemon) and the real daemon serving
    org.freedesktop.login1 on it (login1_harness.start). Logins, the daemon
    and the bus are stopped at teardown, also when the test failed. Skips
    without dbus-fast (the tests' D-Bus client)."""
    pytest.importorskip("dbus_fast", reason="dbus-fast is not installed (the login1 extra)")
    from login1_harness import start as start_login1
    setups: list = []

    def start(**overrides: object):
        setup = start_login1(daemon, sandbox, **overrides)
        setups.append(setup)
        return setup

    try:
        yield start
    finally:
        for setup in setups:
            setup.close()
            setup.daemon.stop()
            setup.bus.stop()


# -- the fd store


@pytest.fixture
def stores(sandbox: Path) -> Iterator[Callable[..., Store]]:
    """stores(timeout_ms, **kw) -> fdstore_process.Store in the sandbox
    (timeout_ms its ADOPT_TIMEOUT_MS argument); every store is killed at
    teardown."""
    started: list[Store] = []

    def start(timeout_ms: int | str = LONG, **kw) -> Store:
        store = Store(sandbox, [str(timeout_ms)], **kw)
        started.append(store)
        return store

    yield start
    for store in started:
        store.kill()


# -- a real dinit (skips without one)


@pytest.fixture(scope="session")
def real_dinit() -> Path:
    path, reason = find_real_dinit()
    if path is None:
        pytest.skip(reason)
    return path


@pytest.fixture
def dinit_setup(daemon, sandbox, real_dinit, pam_module) -> DinitSetup:
    """Starts daemons with the dinit backend on a copy of the real dinit."""
    return DinitSetup(daemon, install_dinit(real_dinit, sandbox / "dinit-bin"))


@pytest.fixture
def cgroup_tree():
    """A group tree of the test's own on the real cgroup2 mount (skips
    without a writable one); what is left in it (a test that ends with a
    session open) is killed and the tree removed at the end."""
    tree = CgroupTree(writable_mount())
    yield tree
    tree.clean()
    assert not tree.root.exists(), f"cannot remove {tree.root}: {tree.tree(tree.root)}"


@pytest.fixture
def holders() -> Iterator[list[Holder]]:
    """The holders a test starts (holder_process.Holder), killed at its end
    with whatever of the test users' they left (a failed test's manager,
    say, which would otherwise fail the tests after it)."""
    started: list[Holder] = []
    yield started
    for h in started:
        h.kill()
    kill_created_users_processes()


@pytest.fixture
def setup(sandbox: Path, test_user: ScratchUser) -> Setup:
    """A holder's sandbox: the fake backend, its out dir, a PAM dir."""
    return Setup(sandbox, test_user)
