"""The bus connection's lifecycle: someone else owning
org.freedesktop.login1 (as elogind would), a bus that starts late, dies
and comes back, login1 = no and a missing dbus-fast, and what an idle
daemon without the API has loaded."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap

import pytest
from busclient import MANAGER, ROOT, CallError, call, needs_dbus_fast
from helpers import REPO_ROOT, wait_for
from sysbus import SystemBus, bus_config

# A second program that owns the name first, as elogind would.
OWNER = textwrap.dedent("""
    import asyncio, sys
    from dbus_fast import BusType
    from dbus_fast.aio import MessageBus
    async def main():
        bus = await MessageBus(bus_address=sys.argv[1], bus_type=BusType.SYSTEM).connect()
        await bus.request_name("org.freedesktop.login1")
        print("owned", flush=True)
        await bus.wait_for_disconnect()
    asyncio.run(main())
""")


@pytest.fixture
def other_owner(sandbox):
    procs: list[subprocess.Popen] = []

    def start(address: str) -> subprocess.Popen:
        proc = subprocess.Popen([sys.executable, "-c", OWNER, address], stdin=subprocess.PIPE,
                                stdout=subprocess.PIPE, text=True)
        procs.append(proc)
        assert proc.stdout.readline().strip() == "owned"
        return proc

    yield start
    for proc in procs:
        proc.kill()
        proc.wait(5)


def _maps(pid: int) -> str:
    with open(f"/proc/{pid}/maps") as f:
        return f.read()


@needs_dbus_fast
def test_auto_leaves_a_name_someone_else_owns(daemon, sandbox, other_owner):
    (sandbox / "bus0").mkdir()
    bus = SystemBus(sandbox / "bus0").start()
    try:
        owner = other_owner(bus.address)
        d = daemon(login1="auto", system_bus_address=bus.address)
        wait_for(lambda: "leaving it alone" in d.log(), 10, what="the log line",
                 detail=d.log_tail)
        assert f"org.freedesktop.login1 is owned by pid {owner.pid} (python" in d.log()
        assert d.log().count("leaving it alone") == 1
        status = d.ctl("status").stdout
        assert "login1: standing-by (org.freedesktop.login1 is owned by pid" in status
        assert "error" not in status
        # Calls still go to the owner, not to us: it answers nothing of ours.
        with pytest.raises(CallError) as err:
            call(bus.address, ROOT, MANAGER, "ListSessions")
        assert err.value.name == "org.freedesktop.DBus.Error.UnknownMethod"
    finally:
        bus.stop()


@needs_dbus_fast
def test_yes_makes_a_taken_name_an_error_and_takes_it_when_free(daemon, sandbox,
                                                                 other_owner):
    bus_dir = sandbox / "bus0"
    bus_dir.mkdir()
    bus = SystemBus(bus_dir).start()
    try:
        owner = other_owner(bus.address)
        d = daemon(login1="yes", system_bus_address=bus.address)
        wait_for(lambda: "taking it when it is released" in d.log(), 10, what="the error",
                 detail=d.log_tail)
        assert "ERROR: login1: org.freedesktop.login1 is owned by pid" in d.log()
        assert "login1: error: failed (org.freedesktop.login1 is owned by pid" in \
            d.ctl("status").stdout
        owner.kill()
        owner.wait(5)
        wait_for(lambda: "released by its owner; serving it now" in d.log(), 10,
                 what="the name taken", detail=d.log_tail)
        assert call(bus.address, ROOT, MANAGER, "ListSeats") == \
            [[["seat0", "/org/freedesktop/login1/seat/seat0"]]]
        assert "login1: active" in d.ctl("status").stdout
    finally:
        bus.stop()


@needs_dbus_fast
def test_the_service_comes_back_with_the_bus(daemon, sandbox, test_users):
    """The bus is not there when the daemon starts, appears, dies and comes
    back: the daemon serves whenever there is a bus, without a restart."""
    bus_dir = sandbox / "bus0"
    bus_dir.mkdir()
    bus = SystemBus(bus_dir)
    d = daemon(login1="auto", system_bus_address=bus.address)
    try:
        wait_for(lambda: "connecting when it appears" in d.log(), 10, what="the wait",
                 detail=d.log_tail)
        assert "login1: waiting (no system bus at" in d.ctl("status").stdout
        assert "dbus_fast" not in _maps(d.pid), "dbus-fast loaded before any bus"
        for n in (1, 2):
            bus.start()
            wait_for(lambda n=n: d.log().count("login1: serving") == n, 15,
                     what=f"serving on bus number {n}", detail=d.log_tail)
            assert call(bus.address, ROOT, MANAGER, "ListSeats") == \
                [[["seat0", "/org/freedesktop/login1/seat/seat0"]]]
            bus.stop()
            wait_for(lambda n=n: d.log().count("the system bus went away") == n, 10,
                     what="the loss noticed", detail=d.log_tail)
        assert d.running()
    finally:
        bus.stop()


def test_login1_no_loads_nothing_of_it(daemon, sandbox):
    d = daemon(login1="no")
    assert "login1" not in d.log().replace("login1 = no", "")
    maps = _maps(d.pid)
    assert "dbus_fast" not in maps and "libudev" not in maps
    assert "login1: off (login1 = no)" in d.ctl("status").stdout


def test_without_dbus_fast_the_daemon_starts_and_says_why(sandbox, daemon):
    """dbus-fast is installed here: the daemon is started with the module
    blocked (sys.modules["dbus_fast"] = None), which is what Python sees
    when it is missing."""
    wrapper = sandbox / "no_dbus_fast.py"
    wrapper.write_text("import sys\nsys.modules['dbus_fast'] = None\n"
                       "from turnstiled.__main__ import main\nsys.exit(main())\n")
    d = daemon(login1="auto")
    d.stop()
    log = sandbox / "nodbus.log"
    with open(log, "wb") as out:
        proc = subprocess.Popen([sys.executable, str(wrapper), "-c", str(d.config_path)],
                                cwd=REPO_ROOT, stdout=out, stderr=subprocess.STDOUT,
                                env={**os.environ, "PYTHONPATH": str(REPO_ROOT)})
    try:
        wait_for(lambda: "listening on" in log.read_text(), 10, what="the daemon up",
                 detail=log.read_text)
        text = log.read_text()
        assert "login1: the Python package dbus-fast is not installed" in text
        assert "INFO: login1:" in text
    finally:
        proc.send_signal(signal.SIGINT)
        proc.wait(15)


# The rules of Debian's /usr/share/dbus-1/system.conf that matter here
# (nobody owns names, method calls are denied unless a policy allows
# them), plus the policy `make install` ships.
STRICT_BUS = bus_config("""    <deny own="*"/>
    <deny send_type="method_call"/>
    <allow send_type="signal"/>
    <allow send_requested_reply="true" send_type="method_return"/>
    <allow send_requested_reply="true" send_type="error"/>
    <allow receive_type="method_call"/>
    <allow receive_type="method_return"/>
    <allow receive_type="error"/>
    <allow receive_type="signal"/>
    <allow send_destination="org.freedesktop.DBus" send_interface="org.freedesktop.DBus"/>
""", "  <include>{policy}</include>\n")


@needs_dbus_fast
def test_the_shipped_bus_policy(daemon, sandbox, test_users):
    """On a bus as strict as Debian's, with data/dbus-1/system.d's file:
    root's daemon owns the name, a user may call it (and is refused by
    the daemon, not the bus, where the call is not theirs to make), and a
    user may not take the name."""
    bus_dir = sandbox / "bus0"
    bus_dir.mkdir()
    policy = REPO_ROOT / "data" / "dbus-1" / "system.d" / "org.freedesktop.login1.conf"
    bus = SystemBus(bus_dir).start(STRICT_BUS.replace("{policy}", str(policy)))
    try:
        d = daemon(login1="yes", system_bus_address=bus.address)
        wait_for(lambda: "login1: serving" in d.log(), 10, what="the name", detail=d.log_tail)
        client = sandbox / "busclient.py"
        client.write_text((REPO_ROOT / "tests" / "busclient.py").read_text())
        user = test_users[0]

        def as_user(*argv: str) -> subprocess.CompletedProcess:
            return subprocess.run(["setpriv", f"--reuid={user.uid}", f"--regid={user.gid}",
                                   "--init-groups", sys.executable, *argv],
                                  capture_output=True, text=True, timeout=30)

        listed = as_user(str(client), bus.address, ROOT, MANAGER, "ListSeats", "", "[]")
        assert '"body": [[["seat0"' in listed.stdout, listed.stdout + listed.stderr
        refused = as_user(str(client), bus.address, ROOT, MANAGER, "TerminateSeat", "s",
                          '["seat0"]')
        assert f"uid {user.uid} may not terminate the sessions of seat0" in refused.stdout
        take = as_user("-c", textwrap.dedent("""
            import asyncio, sys
            from dbus_fast import BusType
            from dbus_fast.aio import MessageBus
            async def main():
                bus = await MessageBus(bus_address=sys.argv[1],
                                       bus_type=BusType.SYSTEM).connect()
                try:
                    await bus.request_name("org.freedesktop.login1")
                except Exception as err:
                    print(type(err).__name__, err)
            asyncio.run(main())
        """), bus.address)
        assert "not allowed to own the service" in take.stdout, take.stdout + take.stderr
    finally:
        bus.stop()
