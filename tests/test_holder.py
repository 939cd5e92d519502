"""The holder (holder/turnstiled-holder) on its own: the real binary on a
real SOCK_SEQPACKET channel, as root, with real users, the real libpam
and stock PAM modules.

The backend here is a small sh script of each test's own (holder_process.py);
the real backends run on the holder in test_runit.py and test_dinit.py.
"""

from __future__ import annotations

import os
import random
import select
import shutil
import signal
import socket
import time

import pytest
from helpers import (
    cmdline_of,
    fds_of,
    open_files_limit,
    procs_of,
    read_kv,
    rss_kb,
    status_of,
    wait_for,
    wait_gone,
)
from holder_process import Holder, stop_and_wait, write


def _manager_execd(h: Holder) -> int:
    """Waits for the pid event and for the backend's run to have exec'd the
    default manager (sleep), so that what run wrote is complete; its pid."""
    verb, pid = h.event()
    assert verb == "pid", (verb, pid, h.log())
    wait_for(lambda: cmdline_of(int(pid)).startswith("sleep"), 5)
    return int(pid)


@pytest.fixture
def running(setup, holders, test_user):
    """A holder started with two extra groups and an open-files limit of
    777, its manager (sleep) running: (holder, the manager's pid). Stopped
    at teardown unless the test did."""
    u = test_user
    h = setup.start(holders, groups=f"{u.gid},4242,4243", nofile=777)
    pid = _manager_execd(h)
    yield h, pid
    if h.status is None:
        stop_and_wait(h, test_user)


def test_run_runs_as_the_user_with_their_groups(running, test_user):
    _, pid = running
    st = status_of(pid)
    assert st["Uid"].split() == [str(test_user.uid)] * 4
    assert st["Gid"].split() == [str(test_user.gid)] * 4
    assert set(map(int, st["Groups"].split())) == {test_user.gid, 4242, 4243}


def test_run_has_only_stdio_and_a_session_of_its_own(running):
    _, pid = running
    fds = fds_of(pid)
    assert sorted(fds) == [0, 1, 2]
    assert fds[0] == "/dev/null"
    assert os.getsid(pid) == pid, "run is not in a session of its own"


def test_run_starts_with_no_signal_blocked_ignored_or_caught(running):
    # The holder blocks the signals it reads from its signalfd; the child
    # it starts run in blocks everything until its handlers are reset.
    # Signals 32 and 33 are glibc's own, which its sigaction refuses to
    # change (its posix_spawn, that started the holder, ignores them).
    _, pid = running
    st = status_of(pid)
    glibcs = 1 << 31 | 1 << 32
    for field in ("SigBlk", "SigIgn", "SigCgt"):
        assert int(st[field], 16) & ~glibcs == 0, (field, st[field])


def test_run_has_the_open_files_limit_it_was_given(running):
    _, pid = running
    # The daemon's raised limit is not the user's.
    assert open_files_limit(pid) == 777


def test_run_starts_in_home_with_the_paths_as_arguments(running, setup, test_user):
    assert (setup.out / "run.cwd").read_text().strip() == test_user.home
    assert (setup.out / "run.args").read_text().split() == [
        "run", str(setup.sandbox / "fifo"), str(setup.sandbox / "srv"),
        str(setup.sandbox / "conf")]


def test_run_has_a_clean_environment_of_the_users(running, setup, test_user):
    env = read_kv(setup.out / "run.env")
    # sh adds PWD (and SHLVL, _ in some shells); nothing of the holder's own.
    assert set(env) - {"PWD", "SHLVL", "_", "OLDPWD"} == {
        "HOME", "USER", "LOGNAME", "SHELL", "PATH", "XDG_RUNTIME_DIR"}, env
    assert env["XDG_RUNTIME_DIR"] == f"/run/user/{test_user.uid}"
    assert env["USER"] == test_user.name


def test_ready_reports_each_up_line_and_takes_one_argument(running, setup):
    h, _ = running
    h.send("ready", "the string\nready injected")
    events = h.until("ready-exit")
    assert events == [("up", "a"), ("up", "b"), ("ready-exit", "0")]
    # One packet, one argument: a newline inside it is just a character.
    assert (setup.out / "ready.arg").read_text() == "the string\nready injected"


def test_stop_terminates_the_manager_and_gone_comes_last(running, setup, test_user):
    h, pid = running
    h.send("stop")
    assert h.until("exit") == [("exit", str(128 + signal.SIGTERM))]
    assert (setup.out / "stop.pid").read_text().strip() == str(pid)
    assert read_kv(setup.out / "stop.env")["XDG_RUNTIME_DIR"] == \
        read_kv(setup.out / "run.env")["XDG_RUNTIME_DIR"]
    assert h.until("gone") == [("gone", "")]
    assert h.wait() == 0
    assert not procs_of(test_user.uid)


# The stock modules of a distribution's session stack, after those a test adds.
STOCK_SESSION = ("session optional pam_keyinit.so force revoke\n"
                 "session optional pam_umask.so usergroups umask=022\n"
                 "session required pam_limits.so")


def test_the_environment_of_the_managers_pam_session_wins(setup, holders, test_user,
                                                         sandbox):
    write(sandbox / "env.conf", "XDG_RUNTIME_DIR DEFAULT=/elsewhere\nFROM_PAM DEFAULT=yes\n")
    setup.pam(f"session required pam_env.so conffile={sandbox}/env.conf readenv=0\n"
              + STOCK_SESSION)
    h = setup.start(holders)
    _manager_execd(h)
    env = read_kv(setup.out / "run.env")
    assert env["XDG_RUNTIME_DIR"] == "/elsewhere" and env["FROM_PAM"] == "yes"
    stop_and_wait(h, test_user)


def _maps(pid: int) -> str:
    try:
        with open(f"/proc/{pid}/maps") as f:
            return f.read()
    except OSError:
        return ""


def test_the_stack_named_on_the_command_line_is_loaded_before_start(setup, holders,
                                                                    test_user, sandbox):
    # Loaded before start: an edit made after it is not seen (which is why
    # the daemon lets a spare loaded before an edit go).
    write(sandbox / "env.conf", "FROM_PAM DEFAULT=loaded\n")
    setup.pam(f"session required pam_env.so conffile={sandbox}/env.conf readenv=0\n"
              + STOCK_SESSION)
    h = Holder(setup.sandbox, {}, args=["mgr", str(setup.pam_dir)])
    holders.append(h)
    wait_for(lambda: "pam_env.so" in _maps(h.pid), 5, what="the stack to be loaded")
    setup.pam("session required pam_deny.so")
    h.send_start(setup.spec())
    _manager_execd(h)
    assert read_kv(setup.out / "run.env")["FROM_PAM"] == "loaded"
    stop_and_wait(h, test_user)


def test_a_start_naming_another_stack_loads_that_one(setup, holders, test_user, sandbox):
    write(setup.pam_dir / "other", "auth required pam_deny.so\naccount required pam_deny.so\n"
          "session required pam_deny.so\n")
    write(sandbox / "env.conf", "FROM_PAM DEFAULT=mgr\n")
    setup.pam(f"session required pam_env.so conffile={sandbox}/env.conf readenv=0\n"
              + STOCK_SESSION)
    h = setup.start(holders, args=["other", str(setup.pam_dir)])
    _manager_execd(h)
    assert read_kv(setup.out / "run.env")["FROM_PAM"] == "mgr"
    stop_and_wait(h, test_user)
    # And the other way round: the start's stack refuses.
    h = setup.start(holders, args=["mgr", str(setup.pam_dir)], pam_service="other")
    verb, msg = h.event()
    assert verb == "error" and "(other)" in msg, (verb, msg)
    assert h.until("gone") == [("gone", "")]


@pytest.mark.parametrize("how", ["end of channel", "SIGTERM"])
def test_a_holder_let_go_before_start_exits_quietly(setup, holders, how):
    h = Holder(setup.sandbox, {}, args=["mgr", str(setup.pam_dir)])
    holders.append(h)
    wait_for(lambda: "pam_permit.so" in _maps(h.pid), 5, what="the stack to be loaded")
    if how == "SIGTERM":
        os.kill(h.pid, signal.SIGTERM)
    else:
        h.sock.close()
    assert h.wait() == 0
    assert h.log() == ""


def test_the_managers_pam_session_lasts_until_its_last_process(setup, holders, test_user,
                                                              sandbox):
    marks = sandbox / "marks"
    write(sandbox / "mark", f'#!/bin/sh\necho "$PAM_TYPE" >> {marks}\n', 0o755)
    setup.pam(f"session optional pam_exec.so {sandbox}/mark\n" + STOCK_SESSION)
    # The manager leaves a grandchild that ignores TERM: the session must
    # stay open until the kill deadline has taken it too.
    setup.manager(f"sh -c 'trap \"\" TERM; touch {setup.out}/trapped; exec sleep 1000' &\n"
                  "exec sleep 1000")
    h = setup.start(holders, stop_timeout=700)
    assert h.event()[0] == "pid"
    wait_for(lambda: (setup.out / "trapped").exists(), 5)
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


def test_a_leftover_that_execs_after_its_sigterm_is_sent_another(setup, holders, test_user):
    """A process between fork and exec when its manager goes (a runsvdir's
    child about to become a runsv) can take the SIGTERM into the old
    program's handler; the new program it execs is sent one again, long
    before the stop timeout's SIGKILL."""
    setup.manager(f"sh -c 'trap true TERM; touch {setup.out}/forked; sleep 0.5; "
                  f"exec sleep 1003' &\n"
                  f"while [ ! -e {setup.out}/forked ]; do sleep 0.01; done\nexit 0")
    h = setup.start(holders, stop_timeout=30000)
    assert h.event()[0] == "pid"
    assert h.until("exit") == [("exit", "0")]
    t0 = time.monotonic()
    h.until("gone", 10)
    assert time.monotonic() - t0 < 5
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
    stop_and_wait(h, test_user)


def test_a_second_ready_is_ignored(setup, holders, test_user):
    h = setup.start(holders)
    assert h.event()[0] == "pid"
    h.send("ready", "x")
    assert h.until("ready-exit")[-1] == ("ready-exit", "0")
    h.send("ready", "again")
    events = stop_and_wait(h, test_user)
    assert not [ev for ev in events if ev[0] in ("up", "ready-exit")], events
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
@pytest.mark.parametrize("preloaded", ["none", "the start's", "another"])
def test_a_whole_run_is_valgrind_clean(setup, holders, test_user, sandbox, preloaded):
    setup.pam(STOCK_SESSION)
    write(setup.pam_dir / "other", "session required pam_permit.so\n")
    args = {"none": [], "the start's": ["mgr", str(setup.pam_dir)],
            "another": ["other", str(setup.pam_dir)]}[preloaded]
    vlog = sandbox / "valgrind.log"
    h = setup.start(holders, args=args, wrapper=[
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


@pytest.mark.skipif(shutil.which("valgrind") is None, reason="valgrind is not installed")
def test_exec_failure_is_reported_when_the_child_is_a_fork(setup, holders, test_user,
                                                           sandbox):
    # valgrind runs the holder's memory-sharing clone as a plain fork: the
    # report of the exec's failure has to reach the holder all the same.
    os.chmod(setup.backend, 0o644)
    h = setup.start(holders, wrapper=[
        shutil.which("valgrind"), "--error-exitcode=99", "--child-silent-after-fork=yes",
        f"--log-file={sandbox / 'valgrind.log'}"])
    verb, msg = h.event(30)
    assert verb == "error" and "Permission denied" in msg, (verb, msg)
    assert h.until("gone", 30) == [("gone", "")]
    assert h.wait(30) == 1
    assert not procs_of(test_user.uid)
