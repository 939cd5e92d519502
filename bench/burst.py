"""Many cold logins at once: a shell server after a reboot, or on a cron minute.

    bench/burst.py [--users 40] [--logins 1000] [--load]

N distinct users, one trivial core service each, login_timeout = 60. First
one login per user, all at once; then, once everyone has logged out and
every manager is gone, --logins logins spread over the same users, all at
once. Each burst prints its wall time, outcomes and the distribution of the
time each login took (pam_open_session, measured in its own process), and
the root side's PSS (daemon and holders) while all of them are open.
--load runs a busy loop on every core during the bursts. Run as root; it
creates and removes the users.
"""

from __future__ import annotations

import argparse
import os
import sys
import time

from common import (
    OK,
    Burst,
    CpuHog,
    Sandbox,
    distribution,
    root_side,
    tally,
    throwaway_users,
    uid_processes,
)


def burst(sb: Sandbox, names: list[str], users, idle_kb: int) -> None:
    t0 = time.monotonic()
    b = Burst("login", names, sb.confdir)
    try:
        codes = b.wait(120)
        wall = time.monotonic() - t0
        print(f"{len(names)} logins of {len(users)} users: wall {wall:.2f} s, "
              f"{codes.count(OK)} ok, outcomes {tally(codes)}", flush=True)
        distribution("  per login", b.latencies)
        # Every session still open: the root side at its fullest.
        assert sb.daemon is not None
        held = root_side(sb.daemon.pid)
        print(f"  root side with all {len(names)} sessions open: "
              f"{sum(held.values()) / 1024:.1f} MB, {len(held) - 1} holders, "
              f"per user {(sum(held.values()) - idle_kb) / len(users):.0f} kB", flush=True)
    finally:
        b.release()
    for u in users:
        sb.wait_state(u.pw_uid, None, 60)
    deadline = time.monotonic() + 30
    while any(uid_processes(u.pw_uid) for u in users) and time.monotonic() < deadline:
        time.sleep(0.01)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[1])
    parser.add_argument("--users", type=int, default=40)
    parser.add_argument("--logins", type=int, default=1000)
    parser.add_argument("--load", action="store_true", help="a busy loop on every core")
    args = parser.parse_args()
    if os.geteuid() != 0:
        print("bench/burst.py needs root")
        return 1
    sb = Sandbox("runit", config="login_timeout = 60\n")
    hog = None
    try:
        with throwaway_users(args.users) as users:
            sb.start_for(users)
            print(f"runit, {os.cpu_count()} cpus{', both busy' if args.load else ''}",
                  flush=True)
            if args.load:
                hog = CpuHog()
            assert sb.daemon is not None
            idle_kb = sum(root_side(sb.daemon.pid).values())
            print(f"root side idle: {idle_kb / 1024:.1f} MB", flush=True)
            names = [u.pw_name for u in users]
            burst(sb, names, users, idle_kb)
            burst(sb, [names[i % len(names)] for i in range(args.logins)], users, idle_kb)
        return 0
    finally:
        if hog is not None:
            hog.stop()
        sb.remove()


if __name__ == "__main__":
    sys.exit(main())
