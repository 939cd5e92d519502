"""The D-Bus API over cgroup tracking: a login that has ended but left a
daemonised process is a closing session on the bus too, that process is
found in it by its group, and KillSession reaches it. The real daemon on
the real cgroup2 mount (skipped without a writable one) and a private
system bus, a login process of its own."""

from __future__ import annotations

import signal

from busclient import MANAGER, ROOT, SESSION, USER, CallError
from cgroup import procs
from helpers import wait_for
from login1_harness import user_path


def test_a_closing_session_on_the_bus_and_killing_what_it_left(login1, cgroup_tree, test_user):
    setup = login1(cgroups="yes", cgroup_path=cgroup_tree.name)
    a = setup.login(test_user, "tty3")
    # Daemonised: its parent exits, so it is in no session's process tree.
    out = a.run(["sh", "-c", "setsid sleep 300 </dev/null >/dev/null 2>&1 & echo $!"])
    left = int(out["stdout"])
    group = cgroup_tree.session(test_user.uid, a.id)
    assert left in procs(group)
    assert setup.call(ROOT, MANAGER, "GetSessionByPID", "u", [left]) == [a.path]

    a.close()  # the logout: the login process ends, the sleep goes on
    wait_for(lambda: setup.props(a.path, SESSION)["State"] == "closing", 10,
             what="the session closing on the bus")
    props = setup.props(a.path, SESSION)
    assert props["Active"] is False
    assert setup.props(user_path(test_user.uid), USER)["State"] == "closing"
    assert setup.call(ROOT, MANAGER, "GetSessionByPID", "u", [left]) == [a.path]

    setup.call(ROOT, MANAGER, "KillSession", "ssi", [a.id, "all", int(signal.SIGKILL)])

    def gone() -> bool:
        try:
            setup.call(ROOT, MANAGER, "GetSession", "s", [a.id])
        except CallError as err:
            return err.name == "org.freedesktop.login1.NoSuchSession"
        return False
    wait_for(gone, 10, what="the session to end once its group is empty")
    assert not group.exists()
