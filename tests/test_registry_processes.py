"""The registry on real processes, where no cgroups track sessions: which
session a process is in is the nearest ancestor leading one, and killing a
session signals its leader's process tree. The real Registry with a fake
manager (tests/fake_registry.py); no root needed."""

from __future__ import annotations

import os
import signal
import subprocess

import pytest
from fake_registry import Harness
from helpers import children_pids, wait_for

pytestmark = pytest.mark.usefixtures("rundir_stand_in")


def test_pid_to_session_without_groups_is_the_nearest_leaders(tmp_path, loop):
    h = Harness(tmp_path)
    s = h.open(leader=os.getppid())
    assert h.reg.session_of_pid(os.getpid()) is s
    assert h.reg.login_of_pid(os.getpid()) is h.login()


def test_kill_session_without_a_group_signals_its_leaders_tree(tmp_path, loop):
    # A real leader with a child: both are signalled (SIGCONT harms neither).
    leader = subprocess.Popen(["sh", "-c", "sleep 30 & wait"])
    try:
        wait_for(lambda: children_pids(leader.pid), 5, what="the leader's child")

        h = Harness(tmp_path)
        s = h.open(leader=leader.pid)
        assert h.reg.kill_session(s, signal.SIGCONT) == 2
        assert h.reg.kill_session(s, signal.SIGCONT, leader_only=True) == 1
    finally:
        for pid in children_pids(leader.pid) + [leader.pid]:
            os.kill(pid, signal.SIGKILL)
        leader.wait(5)
