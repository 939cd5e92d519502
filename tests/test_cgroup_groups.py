"""turnstiled's groups on the real cgroup2 mount, without a daemon: the
watch of `populated`, ending a group with cgroup.kill and without it (the
kernel's cgroup.kill is set aside to drive the TERM-then-KILL path), and
the mode chosen from mountinfo. Real processes in a group tree of the
test's own."""

from __future__ import annotations

import subprocess
import time

import pytest
from cgroup import CgroupTree, group_of
from helpers import wait_for

from turnstiled import tracking
from turnstiled.cgroups import Hierarchy, Place, find_mount, parse_signal, place_of
from turnstiled.config import Config
from turnstiled.loop import Loop

# A leader that moves itself into GROUP before it starts anything, then
# starts two processes ignoring SIGTERM (or not) and waits.
STUBBORN = "trap '' TERM; sleep 300 & sleep 301 & wait"
OBEDIENT = "sleep 300 & sleep 301 & wait"


def spawn_in(group, script: str) -> subprocess.Popen:
    group.mkdir(parents=True, exist_ok=True)
    return subprocess.Popen(["sh", "-c", f"echo 0 > {group}/cgroup.procs && exec sh -c \"$0\"",
                             script], start_new_session=True)


def wait_members(group, count: int) -> None:
    def members() -> list[str]:
        return (group / "cgroup.procs").read_text().split()

    wait_for(lambda: len(members()) >= count, 5, what=f"{group} to hold {count} processes",
             detail=members, interval=0.01)


def groups_of(t: CgroupTree, **kw) -> tracking.CgroupTracking:
    return tracking.CgroupTracking(Hierarchy(str(t.mount), t.name), "test", **kw)


def end_and_wait(loop: Loop, group: tracking.Group, timeout: float) -> bool:
    """Ends the group, running the loop until it is; whether it emptied."""
    said: list[bool] = []
    group.end(timeout, said.append)
    loop.run(until=lambda: bool(said), timeout=timeout + 1)
    return said == [True]


@pytest.mark.parametrize("use_kill_file", [True, False])
def test_ending_a_group_kills_what_ignores_sigterm_within_the_bound(cgroup_tree, use_kill_file,
                                                                   loop):
    group_path = cgroup_tree.session(0, "1")
    proc = spawn_in(group_path, STUBBORN)
    wait_members(group_path, 3)

    groups = groups_of(cgroup_tree, use_kill_file=use_kill_file, term_bound=0.5)
    group = groups.session_group(0, "1")
    t0 = time.monotonic()
    assert end_and_wait(loop, group, 5)
    took = time.monotonic() - t0
    assert not group.populated()
    group.release()
    groups.close()
    assert proc.wait(5) == -9
    assert not group_path.exists() and not group_path.parent.exists()
    if use_kill_file:
        assert took < 0.5  # cgroup.kill: no SIGTERM round at all
    else:
        assert 0.5 <= took < 3  # TERM ignored: KILL after the bound


def test_without_cgroup_kill_a_group_that_obeys_sigterm_ends_before_the_bound(cgroup_tree, loop):
    group_path = cgroup_tree.session(0, "2")
    proc = spawn_in(group_path, OBEDIENT)
    wait_members(group_path, 3)

    groups = groups_of(cgroup_tree, use_kill_file=False, term_bound=5)
    t0 = time.monotonic()
    assert end_and_wait(loop, groups.session_group(0, "2"), 10)
    groups.close()
    assert time.monotonic() - t0 < 2
    assert proc.wait(5) == -15


def test_the_watch_hears_the_last_process_go_and_not_before(cgroup_tree, loop):
    group_path = cgroup_tree.session(0, "3")
    first = spawn_in(group_path, "exec sleep 300")
    wait_members(group_path, 1)
    second = subprocess.Popen(["sleep", "300"])
    (group_path / "cgroup.procs").write_text(str(second.pid))

    groups = groups_of(cgroup_tree)
    group = groups.session_group(0, "3")
    heard = []
    group.on_empty(lambda: heard.append(True))
    loop.run(timeout=0.1)
    assert not heard
    first.kill()
    loop.run(timeout=0.1)
    assert not heard  # one is left
    second.kill()
    loop.run(until=lambda: bool(heard), timeout=5)
    assert heard
    group.release()
    groups.close()
    first.wait(5)
    second.wait(5)
    assert not group_path.exists()


def test_a_session_leader_is_moved_in_named_and_handed_back(cgroup_tree, loop):
    origin = cgroup_tree.root / "origin"
    leader = spawn_in(origin, "exec sleep 300")
    wait_members(origin, 1)
    try:
        groups = groups_of(cgroup_tree)
        group = groups.enter_session(1234, "7", leader.pid)
        session_group = cgroup_tree.session(1234, "7")
        assert group is not None and group_of(leader.pid) == cgroup_tree.rel(session_group)
        assert groups.place_of(leader.pid) == Place(1234, "7")
        assert group.leader_origin == str(origin)
        group.let_leader_go()
        assert group_of(leader.pid) == cgroup_tree.rel(origin) and not group.populated()
        group.let_leader_go()  # once only
        # A next daemon knows the leader again while it is in the group.
        again = groups.enter_session(1234, "9", leader.pid)
        found = groups.session_group(1234, "9", leader.pid, again.leader_origin)
        assert found.leader_origin == str(origin)
        again.release()
        found.let_leader_go()
        assert group_of(leader.pid) == cgroup_tree.rel(origin)
        # A leader already gone leaves an empty group, not an error.
        gone = subprocess.Popen(["true"])
        gone.wait()
        assert groups.enter_session(1234, "8", gone.pid).populated() is False
        groups.close()
    finally:
        leader.kill()
        leader.wait(5)


def test_choose_says_which_mode_and_why(cgroup_tree):
    on = tracking.choose(Config(cgroups="auto", cgroup_path=cgroup_tree.name))
    assert on.mode == "cgroup" and str(cgroup_tree.root) in on.reason
    off = tracking.choose(Config(cgroups="no", cgroup_path=cgroup_tree.name))
    assert off.mode == "none" and "cgroups = no" in off.reason
    missing = tracking.choose(Config(cgroups="yes", cgroup_path=cgroup_tree.name),
                              mountinfo="22 1 0:21 / /proc rw - proc proc rw\n")
    assert missing.mode == "none" and "no cgroup2 hierarchy" in missing.reason


def test_find_mount_reads_mountinfo():
    hybrid = ("31 23 0:28 / /sys/fs/cgroup rw,relatime - tmpfs tmpfs rw,mode=755\n"
              "32 31 0:29 / /sys/fs/cgroup/cpu rw,relatime - cgroup cgroup rw,cpu\n"
              "41 31 0:38 / /sys/fs/cgroup/unified rw,relatime - cgroup2 cgroup2 rw\n")
    assert find_mount(hybrid) == "/sys/fs/cgroup/unified"
    assert find_mount("50 1 0:40 / /a\\040b rw shared:1 - cgroup2 none rw\n") == "/a b"
    assert find_mount(hybrid.splitlines()[0]) is None


@pytest.mark.parametrize(("path", "place"), [
    ("user-1000/session-12", Place(1000, "12")),
    ("user-1000/session-12/", Place(1000, "12")),
    ("user-1000/manager", Place(1000, None)),
    ("user-1000/manager/below", Place(1000, None)),
    ("user-1000", None), ("user-x/manager", None), ("user-1000/session-", None),
    ("other/session-1", None), ("", None)])
def test_place_of_a_group(path, place):
    assert place_of(path) == place


def test_signals_by_name_and_number():
    assert parse_signal("TERM") == parse_signal("sigterm") == parse_signal("15") == 15
    for bad in ("NOPE", "0", "999", ""):
        with pytest.raises(ValueError):
            parse_signal(bad)
