"""How long a restarted daemon takes to take up everyone.

    bench/restart.py [--users 40] [--runs 5]

N distinct users logged in (one session each, one trivial core service
each), then, --runs times: kill -9 of the daemon, a new one started, and the
time from its start until its control socket listens (it takes everything up
before it listens), checked against the sessions and manager pids from
before. Run as root; it creates and removes the users.
"""

from __future__ import annotations

import argparse
import os
import sys
import time

from common import Sandbox, figures, throwaway_users


def snapshot(sb: Sandbox) -> tuple[list[str], dict[str, str]]:
    sessions = sorted(os.listdir(f"{sb.run}/state/sessions"))
    managers = {}
    for uid in os.listdir(f"{sb.run}/state/users"):
        with open(f"{sb.run}/state/users/{uid}") as f:
            fields = dict(line.rstrip("\n").split("=", 1) for line in f)
        managers[uid] = fields["MANAGER_PID"]
    return sessions, managers


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[1])
    parser.add_argument("--users", type=int, default=40)
    parser.add_argument("--runs", type=int, default=5)
    args = parser.parse_args()
    if os.geteuid() != 0:
        print("bench/restart.py needs root")
        return 1
    sb = Sandbox("runit", config="login_timeout = 60\n")
    try:
        with throwaway_users(args.users) as users:
            sb.start_for(users)
            sessions = []
            try:
                sessions = sb.log_in(users)
                before = snapshot(sb)
                samples = []
                for _ in range(args.runs):
                    assert sb.daemon is not None
                    sb.daemon.kill()
                    sb.daemon.wait()
                    t0 = time.perf_counter()
                    sb.start()
                    samples.append(time.perf_counter() - t0)
                    after = snapshot(sb)
                    if after != before:
                        print("MISMATCH after a restart:", before, after)
                        return 1
                print(f"{args.users} users, {len(before[0])} sessions, runit; every session "
                      "and manager pid the same after each restart")
                figures("restart to all taken up and listening", samples)
            finally:
                for pam in sessions:
                    pam.close()
            for u in users:
                sb.wait_state(u.pw_uid, None, 60)
        return 0
    finally:
        sb.remove()


if __name__ == "__main__":
    sys.exit(main())
