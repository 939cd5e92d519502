"""The holder (holder/turnstiled-holder) on its own: the real binary on a
real SOCK_SEQPACKET channel, as root, with real users, the real libpam
and stock PAM modules.

The backend here is a small sh script of each test's own, written into the
sandbox: the holder is backend-agnostic (it only runs `BACKEND run|ready|
stop`), so a script that records what it sees shows the holder's side
exactly; the real backends run on it in test_runit.py and test_dinit.py.
"""

from __future__ import annotations

import os
import random
import select
import shutil
import signal
import socket
import time
from pathlib import Path

import pytest
from build import build_holder
from helpers import (
    cmdline_of,
    fds_of,
    open_files_limit,
    procs_of,
    rss_kb,
    status_of,
    wait_for,
    wait_gone,
)

GONE_TIMEOUT = 15


def write(path: Path, text: str, mode: int = 0o644) -> Path:
    path.write_text(text)
    os.chmod(path, mode)
    return path


class Holder:
    """One holder started as the daemon starts it: channel on fd 3, stdin
    /dev/null, output to a log file."""

    def __init__(self, sandbox: Path, spec: dict[str, object], wrapper: list[str] = ()) -> None:
        self.log_path = sandbox / f"holder-{time.monotonic_ns()}.log"
        self.sock, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        fd = theirs.fileno()
        if fd == 3:
            fd = os.dup(fd)
        log = os.open(self.log_path, os.O_WRONLY | os.O_CREAT, 0o644)
        argv = [*wrapper, str(build_holder())]
        self.pid = os.posix_spawn(argv[0], argv, {"PATH": "/usr/bin:/bin"}, file_actions=[
            (os.POSIX_SPAWN_OPEN, 0, "/dev/null", os.O_RDONLY, 0),
            (os.POSIX_SPAWN_DUP2, log, 1), (os.POSIX_SPAWN_DUP2, log, 2),
            (os.POSIX_SPAWN_DUP2, fd, 3)], setsid=True)
        os.close(log)
        if fd != theirs.fileno():
            os.close(fd)
        theirs.close()
        self.status: int | None = None
        if spec:
            self.send("start", *(f"{k}={v}" for k, v in spec.items()))

    def send(self, *fields: str | bytes) -> None:
        self.sock.send(b"\0".join(f if isinstance(f, bytes) else f.encode() for f in fields))

    def event(self, timeout: float = 10) -> tuple[str, str] | None:
        """The next event, or None at end of channel; fails after timeout."""
        ready, _, _ = select.select([self.sock], [], [], timeout)
        assert ready, f"no event within {timeout} s; log:\n{self.log()}"
        packet = self.sock.recv(65536)
        if not packet:
            return None
        verb, _, arg = packet.decode(errors="replace").partition("\0")
        return verb, arg

    def until(self, verb: str, timeout: float = 10) -> list[tuple[str, str]]:
        """Events up to and including the first `verb`."""
        seen = []
        deadline = time.monotonic() + timeout
        while True:
            ev = self.event(max(0.01, deadline - time.monotonic()))
            assert ev is not None, f"channel closed before {verb}: {seen}\n{self.log()}"
            seen.append(ev)
            if ev[0] == verb:
                return seen

    def wait(self, timeout: float = GONE_TIMEOUT) -> int:
        deadline = time.monotonic() + timeout
        while self.status is None:
            pid, status = os.waitpid(self.pid, os.WNOHANG)
            if pid:
                self.status = os.waitstatus_to_exitcode(status)
            elif time.monotonic() > deadline:
                raise AssertionError(f"holder still running after {timeout} s\n{self.log()}")
            else:
                time.sleep(0.01)
        return self.status

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def kill(self) -> None:
        if self.status is None:
            try:
                os.kill(self.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
            self.wait(5)
        self.sock.close()


@pytest.fixture
def holders():
    started: list[Holder] = []
    yield started
    for h in started:
        h.kill()


BACKEND = """#!/bin/sh
out={out}
case "$1" in
run)
    echo "$@" > "$out/run.args"
    env > "$out/run.env"
    pwd > "$out/run.cwd"
    exec "$out/manager"
    ;;
ready)
    printf '%s' "$2" > "$out/ready.arg"
    exec "$out/ready"
    ;;
stop)
    echo "$2" > "$out/stop.pid"
    env > "$out/stop.env"
    exec kill -TERM "$2"
    ;;
esac
exit 64
"""


class Setup:
    """A sandbox with the fake backend, its out dir (the user's) and a PAM dir."""

    def __init__(self, sandbox: Path, user) -> None:
        self.sandbox, self.user = sandbox, user
        self.out = sandbox / "out"
        self.out.mkdir()
        os.chown(self.out, user.uid, user.gid)
        self.backend = write(sandbox / "backend", BACKEND.format(out=self.out), 0o755)
        self.manager("exec sleep 1000")
        self.ready("echo 'up a'\necho 'up b'\nexit 0")
        self.pam_dir = sandbox / "pam.d"
        self.pam_dir.mkdir()
        self.pam("session required pam_permit.so")

    def manager(self, body: str) -> None:
        write(self.out / "manager", "#!/bin/sh\n" + body + "\n", 0o755)

    def ready(self, body: str) -> None:
        write(self.out / "ready", "#!/bin/sh\n" + body + "\n", 0o755)

    def pam(self, session: str) -> None:
        write(self.pam_dir / "mgr", "auth required pam_permit.so\n"
              "account required pam_permit.so\n" + session + "\n")

    def spec(self, **overrides: object) -> dict[str, object]:
        u = self.user
        spec: dict[str, object] = {
            "uid": u.uid, "gid": u.gid, "groups": f"{u.gid}", "user": u.name, "home": u.home,
            "shell": "/bin/sh", "rundir": f"/run/user/{u.uid}", "backend": self.backend,
            "fifo": self.sandbox / "fifo", "srvdir": self.sandbox / "srv",
            "confdir": self.sandbox / "conf", "pam_service": "mgr", "pam_dir": self.pam_dir,
            "stop_timeout": 2000, "nofile": 1024,
        }
        spec.update(overrides)
        return spec

    def start(self, holders: list[Holder], wrapper: list[str] = (), **overrides) -> Holder:
        h = Holder(self.sandbox, self.spec(**overrides), wrapper)
        holders.append(h)
        return h


def env_of(path: Path) -> dict[str, str]:
    return dict(line.split("=", 1) for line in path.read_text().splitlines() if "=" in line)


def stop_and_wait(h: Holder, user) -> None:
    h.send("stop")
    h.until("gone", GONE_TIMEOUT)
    assert h.wait() == 0
    wait_gone(user.uid, 5)


@pytest.fixture
def setup(sandbox, test_user):
    return Setup(sandbox, test_user)


def test_run_ready_and_stop_as_the_user_in_one_clean_environment(setup, holders, test_user):
    u = test_user
    h = setup.start(holders, groups=f"{u.gid},4242,4243", nofile=777)
    verb, pid = h.event()
    assert verb == "pid", (verb, pid, h.log())
    pid = int(pid)
    wait_for(lambda: (setup.out / "run.env").exists(), 5)
    wait_for(lambda: cmdline_of(pid).startswith("sleep"), 5)
    st = status_of(pid)
    assert st["Uid"].split() == [str(u.uid)] * 4
    assert st["Gid"].split() == [str(u.gid)] * 4
    assert set(map(int, st["Groups"].split())) == {u.gid, 4242, 4243}
    fds = fds_of(pid)
    assert sorted(fds) == [0, 1, 2]
    assert fds[0] == "/dev/null"
    assert os.getsid(pid) == pid, "run is not in a session of its own"
    # The daemon's raised limit is not the user's.
    assert open_files_limit(pid) == 777
    assert (setup.out / "run.cwd").read_text().strip() == u.home
    assert (setup.out / "run.args").read_text().split() == [
        "run", str(setup.sandbox / "fifo"), str(setup.sandbox / "srv"),
        str(setup.sandbox / "conf")]
    env = env_of(setup.out / "run.env")
    # sh adds PWD (and SHLVL, _ in some shells); nothing of the holder's own.
    assert set(env) - {"PWD", "SHLVL", "_", "OLDPWD"} == {
        "HOME", "USER", "LOGNAME", "SHELL", "PATH", "XDG_RUNTIME_DIR"}, env
    assert env["XDG_RUNTIME_DIR"] == f"/run/user/{u.uid}" and env["USER"] == u.name

    h.send("ready", "the string\nready injected")
    events = h.until("ready-exit")
    assert events == [("up", "a"), ("up", "b"), ("ready-exit", "0")]
    # One packet, one argument: a newline inside it is just a character.
    assert (setup.out / "ready.arg").read_text() == "the string\nready injected"

    h.send("stop")
    assert h.until("exit") == [("exit", str(128 + signal.SIGTERM))]
    assert (setup.out / "stop.pid").read_text().strip() == str(pid)
    assert env_of(setup.out / "stop.env")["XDG_RUNTIME_DIR"] == env["XDG_RUNTIME_DIR"]
    assert h.until("gone") == [("gone", "")]
    assert h.wait() == 0
    assert not procs_of(u.uid)


def test_pam_session_lasts_the_managers_life_and_its_environment_wins(setup, holders,
                                                                       test_user, sandbox):
    marks = sandbox / "marks"
    write(sandbox / "mark", f'#!/bin/sh\necho "$PAM_TYPE" >> {marks}\n', 0o755)
    write(sandbox / "env.conf", "XDG_RUNTIME_DIR DEFAULT=/elsewhere\nFROM_PAM DEFAULT=yes\n")
    setup.pam(f"session required pam_env.so conffile={sandbox}/env.conf readenv=0\n"
              f"session optional pam_exec.so {sandbox}/mark\n"
              "session optional pam_keyinit.so force revoke\n"
              "session optional pam_umask.so usergroups umask=022\n"
              "session required pam_limits.so")
    # The manager leaves a grandchild that ignores TERM: the session must
    # stay open until the kill deadline has taken it too.
    setup.manager(f"sh -c 'trap \"\" TERM; touch {setup.out}/trapped; exec sleep 1000' &\n"
                  "exec sleep 1000")
    h = setup.start(holders, stop_timeout=700)
    assert h.event()[0] == "pid"
    wait_for(lambda: (setup.out / "trapped").exists(), 5)
    env = env_of(setup.out / "run.env")
    assert env["XDG_RUNTIME_DIR"] == "/elsewhere" and env["FROM_PAM"] == "yes"
    assert marks.read_text().split() == ["open_session"]
    h.send("stop")
    h.until("exit")
    assert marks.read_text().split() == ["open_session"], "closed while processes remain"
    t0 = time.monotonic()
    h.until("gone")
    assert time.monotonic() - t0 > 0.3  # the grandchild held it until SIGKILL
    assert marks.read_text().split() == ["open_session", "close_session"]
    assert h.wait() == 0
    assert not procs_of(test_user.uid)


def test_what_ignores_sigterm_is_killed_after_the_stop_timeout(setup, holders, test_user):
    setup.manager(f"trap '' TERM\ntouch {setup.out}/trapped\nwhile :; do sleep 0.1; done")
    h = setup.start(holders, stop_timeout=600)
    assert h.event()[0] == "pid"
    wait_for(lambda: (setup.out / "trapped").exists(), 5)
    t0 = time.monotonic()
    h.send("stop")
    assert h.until("exit", 10) == [("exit", str(128 + signal.SIGKILL))]
    waited = time.monotonic() - t0
    assert 0.5 < waited < 5, waited
    h.until("gone")
    assert h.wait() == 0
    assert not procs_of(test_user.uid)


def test_a_daemonised_grandchild_is_gone_when_gone_arrives(setup, holders, test_user):
    setup.manager("setsid sh -c 'trap \"\" TERM HUP; exec sleep 1001' </dev/null "
                  ">/dev/null 2>&1 &\nexec sleep 1000")
    h = setup.start(holders, stop_timeout=500)
    assert h.event()[0] == "pid"
    wait_for(lambda: any("sleep 1001" in c for _, c in procs_of(test_user.uid)), 5)
    h.send("stop")
    h.until("gone")
    assert not procs_of(test_user.uid), procs_of(test_user.uid)
    assert h.wait() == 0


def test_a_manager_that_dies_takes_what_it_left(setup, holders, test_user):
    setup.manager("sleep 1002 &\nsleep 0.3\nexit 3")
    h = setup.start(holders)
    assert h.event()[0] == "pid"
    assert h.until("exit") == [("exit", "3")]
    h.until("gone")
    assert h.wait() == 0
    assert not procs_of(test_user.uid)


def test_up_lines_are_bounded_and_a_flood_does_not_grow_the_holder(setup, holders, test_user):
    setup.ready("i=0\nwhile [ $i -lt 1100 ]; do echo \"up s$i\"; i=$((i+1)); done\n"
                "echo 'up two words'\necho 'not up'\n"
                "head -c 100000 /dev/zero | tr '\\0' x; echo\n"
                "(while :; do echo 'up flood'; done) &\nexit 0")
    h = setup.start(holders)
    assert h.event()[0] == "pid"
    h.send("ready", "x")
    events = h.until("ready-exit", 20)
    ups = [arg for verb, arg in events if verb == "up"]
    assert len(ups) == 1024 and ups[:3] == ["s0", "s1", "s2"]
    assert events[-1] == ("ready-exit", "0")
    # The background writer lost its reader with the report: it is gone,
    # and the holder stayed small.
    wait_for(lambda: not [p for p, c in procs_of(test_user.uid) if "sleep" not in c], 5)
    assert rss_kb(h.pid) < 8000
    h.send("ready", "again")  # once only
    stop_and_wait(h, test_user)
    assert "ready ignored" in h.log()


def test_a_ready_that_prints_more_than_a_pipe_holds_loses_nothing(setup, holders, test_user):
    setup.ready("head -c 300000 /dev/zero | tr '\\0' x || exit 3\necho\necho 'up last'\nexit 0")
    h = setup.start(holders)
    assert h.event()[0] == "pid"
    os.kill(h.pid, signal.SIGSTOP)  # a holder slow to read: the pipe fills
    h.send("ready", "x")
    os.kill(h.pid, signal.SIGCONT)
    time.sleep(0.05)
    os.kill(h.pid, signal.SIGSTOP)
    time.sleep(0.5)
    os.kill(h.pid, signal.SIGCONT)
    assert h.until("ready-exit", 20)[-2:] == [("up", "last"), ("ready-exit", "0")]
    stop_and_wait(h, test_user)


@pytest.mark.parametrize("uid", ["+5", " 5", "5x", "-1", ""])
def test_a_start_with_a_malformed_number_is_refused(sandbox, holders, uid):
    h = Holder(sandbox, {})
    holders.append(h)
    h.send("start", f"uid={uid}", "gid=1", "groups=", "user=u", "home=/", "shell=/bin/sh",
           "rundir=", "backend=/bin/true", "fifo=/f", "srvdir=/s", "confdir=/c",
           "pam_service=", "pam_dir=", "stop_timeout=1", "nofile=0")
    assert h.event() == ("error", "start: bad uid")
    assert h.until("gone") == [("gone", "")]
    assert h.wait() == 1


def test_end_of_channel_stops_the_manager(setup, holders, test_user):
    h = setup.start(holders)
    assert h.event()[0] == "pid"
    h.sock.shutdown(socket.SHUT_RDWR)
    assert h.wait() == 0
    wait_gone(test_user.uid, 5)
    assert "turnstiled is gone" in h.log()


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGHUP])
def test_a_signal_to_the_holder_stops_the_manager(setup, holders, test_user, sig):
    h = setup.start(holders)
    assert h.event()[0] == "pid"
    os.kill(h.pid, sig)
    h.until("gone")
    assert h.wait() == 0
    assert not procs_of(test_user.uid)


def test_exec_failure_is_an_error_and_nothing_runs(setup, holders, test_user):
    os.chmod(setup.backend, 0o644)
    h = setup.start(holders)
    verb, msg = h.event()
    assert verb == "error" and "Permission denied" in msg, (verb, msg)
    assert h.until("gone") == [("gone", "")]
    assert h.wait() == 1
    assert not procs_of(test_user.uid)


def test_pam_refusal_is_an_error_and_nothing_runs(setup, holders, test_user):
    setup.pam("session requisite pam_deny.so")
    h = setup.start(holders)
    verb, msg = h.event()
    assert verb == "error" and "pam_open_session(mgr)" in msg, (verb, msg)
    assert h.until("gone") == [("gone", "")]
    assert h.wait() == 1
    assert not (setup.out / "run.env").exists()


@pytest.mark.parametrize("fields", [
    [], ["uid=abc"], ["uid=1", "gid=1"], ["bogus"],
])
def test_a_bad_start_is_an_error_and_nothing_runs(sandbox, holders, fields):
    h = Holder(sandbox, {})
    holders.append(h)
    h.send("start", *fields)
    verb, msg = h.event()
    assert verb == "error" and "start" in msg, (verb, msg)
    assert h.until("gone") == [("gone", "")]
    assert h.wait() == 1


def test_fuzzed_commands_never_break_the_holder(setup, holders, test_user):
    """20,000 malformed or ill-timed packets from a seeded generator, with a
    real manager running; the holder still stops it cleanly after."""
    rng = random.Random(20261125)
    h = setup.start(holders)
    assert h.event()[0] == "pid"
    verbs = [b"start", b"ready", b"stop", b"kill", b"pid", b"gone", b"", b"\xff", b"up"]
    sent = 0
    while sent < 20000:
        kind = rng.randrange(4)
        if kind == 0:
            packet = rng.randbytes(rng.randrange(0, 64))
        elif kind == 1:
            packet = rng.choice(verbs) + b"\0" + b"\0".join(
                rng.randbytes(rng.randrange(0, 16)) for _ in range(rng.randrange(1, 5)))
        elif kind == 2:
            packet = b"start\0uid=0\0gid=0\0backend=/bin/sh"
        else:
            packet = rng.choice(verbs) * rng.randrange(1, 3000)
        if packet in (b"stop",) or packet.startswith(b"ready\0") and packet.count(b"\0") == 1:
            continue  # the two well-formed commands; sent on purpose below
        try:
            h.sock.send(packet)
        except BlockingIOError:
            time.sleep(0.01)
            continue
        sent += 1
        while select.select([h.sock], [], [], 0)[0]:
            ev = h.event(1)
            assert ev is not None and ev[0] not in ("exit", "gone"), ev
    h.sock.send(b"x" * 20000)  # over the packet bound
    assert status_of(h.pid)["State"][0] in "SR"
    h.send("ready", "after the storm")
    assert h.until("ready-exit")[-1] == ("ready-exit", "0")
    stop_and_wait(h, test_user)
    assert "dropped" in h.log()


@pytest.mark.skipif(shutil.which("valgrind") is None, reason="valgrind is not installed")
def test_a_whole_run_is_valgrind_clean(setup, holders, test_user, sandbox):
    setup.pam("session optional pam_keyinit.so force revoke\n"
              "session optional pam_umask.so usergroups umask=022\n"
              "session required pam_limits.so")
    vlog = sandbox / "valgrind.log"
    h = setup.start(holders, wrapper=[
        shutil.which("valgrind"), "--error-exitcode=99", "--leak-check=full",
        "--errors-for-leak-kinds=definite", "--child-silent-after-fork=yes",
        f"--log-file={vlog}"])
    assert h.event(30)[0] == "pid"
    h.send("ready", "x")
    h.until("ready-exit", 30)
    h.send("stop")
    h.until("gone", 30)
    status = h.wait(30)
    report = vlog.read_text()
    assert status == 0, report
    assert "ERROR SUMMARY: 0 errors" in report, report
    assert "definitely lost: 0 bytes" in report or "All heap blocks were freed" in report, report
