"""The holder's part in cgroup tracking, on the real holder and the real
cgroup2 mount: what it starts as the user starts in the group it is
given, before it drops root, and nothing starts when it cannot enter it.
The holder itself stays where it is. (Which group, and when it is ended,
is the daemon's: test_cgroups.py.)"""

from __future__ import annotations

from cgroup import group_of, procs
from helpers import cmdline_of, procs_of, wait_for
from holder_process import stop_and_wait


def test_run_and_ready_start_in_the_group_and_the_holder_does_not(setup, holders, cgroup_tree,
                                                                  test_user):
    group = cgroup_tree.manager(test_user.uid)
    group.mkdir(parents=True)
    setup.ready(f"cat /proc/self/cgroup > {setup.out}/ready.cgroup\necho 'up a'\nexit 0")
    h = setup.start(holders, cgroup=str(group))
    verb, pid = h.event()
    assert verb == "pid", (verb, pid, h.log())
    wait_for(lambda: cmdline_of(int(pid)).startswith("sleep"), 5, what="run to exec")
    assert group_of(int(pid)) == cgroup_tree.rel(group)
    assert group_of(h.pid) != cgroup_tree.rel(group)
    h.send("ready", "x")
    h.until("ready-exit")
    assert f"0::{cgroup_tree.rel(group)}" in (setup.out / "ready.cgroup").read_text()
    stop_and_wait(h, test_user)
    assert procs(group) == []


def test_a_group_it_cannot_enter_is_an_error_and_nothing_runs(setup, holders, cgroup_tree,
                                                              test_user):
    h = setup.start(holders, cgroup=str(cgroup_tree.root / "missing"))
    verb, msg = h.event()
    assert verb == "error" and "No such file" in msg, (verb, msg)
    assert h.until("gone") == [("gone", "")]
    assert h.wait() == 1
    assert not procs_of(test_user.uid)
    assert not (setup.out / "run.args").exists()


def test_a_relative_group_is_a_bad_start(setup, holders, test_user):
    h = setup.start(holders, cgroup="relative/group")
    assert h.event() == ("error", "start: cgroup is not an absolute path")
    assert h.until("gone") == [("gone", "")]
