"""What the root side costs per logged-in user.

    bench/scale.py [--users 40] [--backend runit|none]

Starts a sandboxed daemon, measures the root side idle (PSS summed over the
daemon and every root process below it: the fd store, the holders, the
spare holder a backend with managers keeps), logs in N distinct
users with one session each (one trivial core service each) and measures
again. The users' own managers and services are not counted: they are the
users'. Per-process cost is Pss from /proc/PID/smaps_rollup. Run as root;
it creates and removes the users.
"""

from __future__ import annotations

import argparse
import os
import sys
import time

from common import Sandbox, root_side, throwaway_users, uid_processes


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[1])
    parser.add_argument("--users", type=int, default=40)
    parser.add_argument("--backend", default="runit", choices=["runit", "none"])
    args = parser.parse_args()
    if os.geteuid() != 0:
        print("bench/scale.py needs root")
        return 1
    n = args.users
    sb = Sandbox(args.backend, config="login_timeout = 60\n")
    try:
        with throwaway_users(n) as users:
            sb.start_for(users)
            assert sb.daemon is not None
            idle = root_side(sb.daemon.pid)
            idle_total = sum(idle.values())
            sessions = []
            try:
                sessions = sb.log_in(users)
                for u in users:
                    sb.wait_state(u.pw_uid, "ready", 30)
                time.sleep(1)
                held = root_side(sb.daemon.pid)
                total = sum(held.values())
                holders = {p: kb for p, kb in held.items() if p != sb.daemon.pid}
                print(f"backend {args.backend}, {n} users, one session each "
                      f"({len(sessions)} logged in)")
                print(f"root side idle (daemon, fd store, spare holder) "
                      f"{idle_total / 1024:8.2f} MB")
                print(f"root side at {n} users             {total / 1024:8.2f} MB")
                print(f"  daemon                            {held[sb.daemon.pid] / 1024:8.2f} MB")
                if holders:
                    print(f"  holders (the spare too) and fd store: {len(holders)}, each "
                          f"{sum(holders.values()) / len(holders):8.0f} kB")
                print(f"per user ((total - idle) / {n})      "
                      f"{(total - idle_total) / n:8.0f} kB")
            finally:
                for pam in sessions:
                    pam.close()
            t0 = time.monotonic()
            for u in users:
                sb.wait_state(u.pw_uid, None, 60)
            deadline = time.monotonic() + 30
            while any(uid_processes(u.pw_uid) for u in users) and time.monotonic() < deadline:
                time.sleep(0.01)
            left = sum(len(uid_processes(u.pw_uid)) for u in users)
            print(f"all logged out: every manager gone after {time.monotonic() - t0:.2f} s"
                  f" ({left} user processes left)")
        return 0
    finally:
        sb.remove()


if __name__ == "__main__":
    sys.exit(main())
