"""The dinit backend's `ready` alone: what it asks dinitctl, what it prints
and how it fails, against a stand-in dinitctl (Ready). `ready` looks
nothing up on PATH: it runs the dinitctl run named in its string.
"""

from __future__ import annotations

import socket
import subprocess
from pathlib import Path

import pytest
from dinit import BACKEND, write_script


class Ready:
    """`backends/dinit ready STRING`, STRING as run writes it (dinitctl, the
    boot dirs, the socket), against a stand-in dinitctl: a sh script that
    logs its arguments, exits with START_RC for `start` and prints the
    states file for `list` (fails like a lost connection with LIST_FAILS)."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.home = root / "home"
        self.home.mkdir()
        self.bindir = root / "bin"
        self.bindir.mkdir()
        self.log = root / "dinitctl.log"
        self.states = root / "states"
        self.states.write_text("")
        write_script(self.bindir / "dinitctl", f"""\
echo "$*" >> {self.log}
case " $* " in
    *" start "*) exit "${{START_RC:-0}}" ;;
    *" list "*)
        if [ -n "$LIST_FAILS" ]; then
            echo "dinitctl: connecting to socket: Connection refused" >&2
            exit 1
        fi
        cat {self.states}
        ;;
esac""")
        sockdir = root / "rt"
        sockdir.mkdir()
        self.sock_path = str(sockdir / "dinitctl")
        self.listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.listener.bind(self.sock_path)
        self.listener.listen()
        self.boot = root / "boot.d"
        self.system_boot = root / "system boot.d"
        for p in (self.boot, self.system_boot):
            p.mkdir()

    def close(self) -> None:
        self.listener.close()

    def services(self, directory: Path | None, **states: str) -> None:
        """Links in directory (None: loaded only), and their `list` lines:
        a state is the 8 state columns, then details."""
        if directory is not None:
            for name in states:
                (directory / name).symlink_to(f"../{name}")
        with open(self.states, "a") as f:
            f.writelines(f"[{s[:8]}] {n}{s[8:]}\n" for n, s in states.items())

    def __call__(self, sock: str | None = None, start_rc: int = 0, string: str | None = None,
                 list_fails: bool = False) -> subprocess.CompletedProcess:
        env = {"HOME": str(self.home), "PATH": "/usr/bin:/bin", "START_RC": str(start_rc),
               "LIST_FAILS": "1" if list_fails else ""}
        if string is None:
            string = (f"{self.bindir}/dinitctl\n{self.boot}\n{self.system_boot}\n"
                      f"{sock or self.sock_path}")
        return subprocess.run([str(BACKEND), "ready", string], env=env,
                              cwd=self.home, capture_output=True, text=True, timeout=30)

    def calls(self) -> list[str]:
        return self.log.read_text().splitlines() if self.log.exists() else []


@pytest.fixture
def ready(tmp_path):
    r = Ready(tmp_path)
    yield r
    r.close()


# `dinitctl list` state columns (dinitctl(8))
STARTED, SKIPPED, STARTING, FAILED = "{+}     ", "{s}     ", "{ }<<   ", "     {X}"


def test_ready_starts_boot_and_reports_each_boot_service(ready):
    ready.services(ready.system_boot, sysd=STARTED)
    ready.services(ready.boot, a=STARTED + " (pid: 12)", b=SKIPPED)
    ready.services(None, boot=STARTED, ab=FAILED)  # loaded, not in a boot dir
    (ready.boot / ".hidden").write_text("")  # dinit skips dot names
    res = ready()
    assert res.returncode == 0, res.stderr
    assert res.stdout.splitlines() == ["up sysd", "up a", "up b"]
    assert ready.calls() == [f"--quiet --socket-path {ready.sock_path} start boot",
                             f"--socket-path {ready.sock_path} list"]


def test_ready_with_empty_boot_dirs_asks_for_no_list(ready):
    (ready.boot / ".hidden").write_text("")  # dinit skips dot names
    res = ready()
    assert res.returncode == 0, res.stderr
    assert res.stdout == "" and res.stderr == ""
    assert ready.calls() == [f"--quiet --socket-path {ready.sock_path} start boot"]


def test_ready_fails_when_a_boot_service_did_not_start(ready):
    ready.services(ready.boot, a=STARTED, bad=FAILED + " (exit status: 1)", slow=STARTING)
    res = ready()
    assert res.returncode == 1
    assert res.stdout.splitlines() == ["up a"]
    assert "boot service 'bad' is not started: STOPPED (failed)" in res.stderr
    assert "boot service 'slow' is not started: STARTING" in res.stderr
    assert "did not start: bad slow" in res.stderr


def test_ready_ignores_entries_that_are_not_services(ready):
    ready.services(ready.boot, a=STARTED)
    (ready.boot / "gone").symlink_to("../gone")  # not loaded: dinit ignored it as well
    res = ready()
    assert res.returncode == 0, res.stderr
    assert res.stdout.splitlines() == ["up a"]
    assert "gone: no such service; ignored" in res.stderr


def test_ready_fails_when_it_cannot_tell_a_state(ready):
    ready.services(ready.boot, a=STARTED)
    res = ready(list_fails=True)
    assert res.returncode == 1
    assert res.stdout == ""
    assert "cannot tell the state of the boot services" in res.stderr
    assert "dinitctl: connecting" in res.stderr


def test_ready_fails_when_boot_does_not_start(ready):
    ready.services(ready.boot, a="STARTED")
    res = ready(start_rc=3)
    assert res.returncode == 3  # dinitctl's
    assert res.stdout == ""
    assert "could not start boot (dinitctl exited with 3" in res.stderr


def test_ready_needs_a_control_socket(ready):
    res = ready(sock=str(ready.root / "no-socket"))
    assert res.returncode == 69 and "no control socket" in res.stderr
    assert ready.calls() == []


def test_ready_needs_the_lines_run_writes(ready):
    # a socket path alone is not what run writes
    res = ready(string=ready.sock_path)
    assert res.returncode == 69 and "no control socket at ''" in res.stderr
    assert ready.calls() == []
