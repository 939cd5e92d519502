"""What the spare holder takes off a cold login.

    bench/spare.py [--pairs 40] [--core 3]

Starts two sandboxed daemons side by side, one with `spare_holder = yes`
(the default) and one with `no`, gives each its own user with N trivial
core services (runit), and makes cold logins alternating between them, so
that whatever else the host does falls on both alike. Prints both and the
median of the paired differences. Run as root on an otherwise idle
machine; it creates and removes the users.
"""

from __future__ import annotations

import argparse
import os
import statistics

from common import Sandbox, figures, throwaway_users
from login import Bench


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[1])
    parser.add_argument("--pairs", type=int, default=40)
    parser.add_argument("--core", type=int, default=3, help="core services per user")
    args = parser.parse_args()
    if os.geteuid() != 0:
        print("bench/spare.py needs root")
        return 1
    with throwaway_users(2, "tssp") as users:
        boxes = [Sandbox("runit", config="spare_holder = yes\n"),
                 Sandbox("runit", config="spare_holder = no\n")]
        try:
            benches = []
            for sb, user in zip(boxes, users, strict=True):
                sb.start()
                bench = Bench(sb, user)
                bench.services(args.core)
                bench.cold(2)  # the first logins of a daemon are not the rest
                benches.append(bench)
            spare, none = [], []
            for i in range(args.pairs):
                for bench in (benches if i % 2 == 0 else benches[::-1]):
                    opens, _ = bench.cold(1)
                    (spare if bench is benches[0] else none).extend(opens)
            print(f"runit, {args.core} core services, {args.pairs} pairs, alternating")
            figures("cold login, spare_holder = yes", spare)
            figures("cold login, spare_holder = no", none)
            diff = statistics.median(a - b for a, b in zip(spare, none, strict=True))
            print(f"  paired difference, median          {diff * 1000:+8.2f} ms")
        finally:
            for sb in boxes:
                sb.remove()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
