"""A private system bus for tests: the real dbus-daemon with a config of
the test's own, listening on a socket in the sandbox (never the machine's
bus), and the real loginctl pointed at it inside a private mount
namespace (loginctl refuses to run unless /run/systemd/system exists; a
tmpfs over /run/systemd there leaves the machine's /run as it is)."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
from pathlib import Path

import pytest
from helpers import exited, wait_for


def bus_config(rules: str, extra: str = "") -> str:
    """A system bus's config file on SOCKET (filled in at start): these
    policy rules for everyone, then extra (an <include>, say)."""
    return ("""<!DOCTYPE busconfig PUBLIC "-//freedesktop//DTD D-Bus Bus Configuration 1.0//EN"
 "http://www.freedesktop.org/standards/dbus/1.0/busconfig.dtd">
<busconfig>
  <type>system</type>
  <listen>unix:path={socket}</listen>
  <auth>EXTERNAL</auth>
  <policy context="default">
    <allow user="*"/>
""" + rules + """  </policy>
""" + extra + """</busconfig>
""")


# Everyone may connect, own any name and call anything: the daemon's
# methods check who calls themselves, which is what the tests look at.
# (The shipped policy, data/dbus-1/system.d/, is checked on its own.)
CONFIG = bus_config("""    <allow own="*"/>
    <allow send_destination="*"/>
    <allow send_type="method_call"/>
    <allow send_type="method_return"/>
    <allow send_type="error"/>
    <allow send_type="signal"/>
    <allow receive_type="method_call"/>
    <allow receive_type="method_return"/>
    <allow receive_type="error"/>
    <allow receive_type="signal"/>
""")


class SystemBus:
    def __init__(self, directory: Path) -> None:
        self.dir = directory
        self.socket = directory / "system_bus_socket"
        self.address = f"unix:path={self.socket}"
        self.pid: int | None = None

    def start(self, config: str = CONFIG) -> SystemBus:
        dbus_daemon = shutil.which("dbus-daemon")
        if dbus_daemon is None:
            pytest.skip("dbus-daemon is not installed (Debian: dbus-daemon)")
        conf = self.dir / "bus.conf"
        conf.write_text(config.format(socket=self.socket))
        out = subprocess.run([dbus_daemon, f"--config-file={conf}", "--fork",
                              "--print-pid=1", "--nopidfile"], capture_output=True, text=True,
                             timeout=10, check=True)
        self.pid = int(out.stdout.split()[0])
        wait_for(self.socket.exists, 5, what="the test bus's socket")
        os.chmod(self.socket, 0o777)
        return self

    def stop(self) -> None:
        if self.pid is None:
            return
        try:
            os.kill(self.pid, signal.SIGTERM)
        except ProcessLookupError:
            pass
        wait_for(lambda: exited(self.pid), 5,
                 what="dbus-daemon to exit")
        self.pid = None
        try:
            self.socket.unlink()
        except FileNotFoundError:
            pass

    def env(self) -> dict[str, str]:
        return {**os.environ, "DBUS_SYSTEM_BUS_ADDRESS": self.address}


def loginctl_argv(*args: str, run_as: list[str] | None = None) -> list[str]:
    """loginctl ARGS in a private mount namespace with /run/systemd/system
    there (a tmpfs over /run/systemd, or over /run where that is missing,
    so nothing is made on the machine's /run); run_as: a prefix such as
    setpriv's, applied inside the namespace (making one needs root)."""
    loginctl = shutil.which("loginctl")
    if loginctl is None:
        pytest.skip("loginctl is not installed (Debian: systemd)")
    script = ('if [ -d /run/systemd ]; then mount -t tmpfs tmpfs /run/systemd; '
              'else mount -t tmpfs tmpfs /run; fi && mkdir -p /run/systemd/system && '
              'exec "$@"')
    return ["unshare", "-m", "--propagation", "private", "sh", "-c", script, "sh",
            *(run_as or []), loginctl, "--no-pager", *args]
