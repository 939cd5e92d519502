"""Login latency through the real libpam against a real daemon.

    bench/login.py [--backend runit|dinit|none] [--runs 20] [--cycles 200]

Prints, for the backend:
- warm: open+close cycles of a session while another keeps the manager up,
  and pam_open_session alone (with and without the test client's worker
  thread);
- cold: pam_open_session from no manager to ready (0 and 3 core services);
- logout-to-gone: pam_close_session of the last session until the daemon
  reports the Login ended (manager and every process of it gone);
- runit floor: what no login of this backend can beat on this host, the
  same user's /bin/sh sourcing /etc/profile and exec'ing runsvdir on the
  same services, until runsv reports all of them running (no PAM, no
  daemon, no readiness protocol). Cold minus floor (the difference of the
  medians, printed too) is what turnstiled adds.
- dinit floor, likewise: the shell sourcing /etc/profile and exec'ing
  `dinit --user --quiet` (a floor need not print the status lines a
  login's dinit does) on the same services, named on its command line,
  until each has exec'd (what makes dinit call a process service started).
Run as root on an otherwise idle machine; it creates and removes a user.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import shutil
import signal
import statistics
import subprocess
import sys
import time
from collections.abc import Callable

from common import (
    PamLogin,
    Sandbox,
    figures,
    runit_services,
    throwaway_users,
    uid_processes,
    write,
)


def running(stat: str) -> bool:
    try:
        with open(stat) as f:
            return f.read().startswith("run")
    except OSError:
        return False


def services_execd(pid: int, program: str, count: int) -> bool:
    """Whether pid has count children, each of them running program."""
    try:
        with open(f"/proc/{pid}/task/{pid}/children") as f:
            children = f.read().split()
        if len(children) != count:
            return False
        for child in children:
            with open(f"/proc/{child}/comm") as f:
                if f.read().strip() != program:
                    return False
    except OSError:
        return False
    return True


def floor_waits(proc: subprocess.Popen, since: float, manager: str) -> None:
    """A moment of a floor's wait; ends the bench if its manager exited or
    its services are not up after 10 s."""
    if proc.poll() is not None:
        raise SystemExit(f"the floor's {manager} exited with status {proc.returncode}")
    if time.perf_counter() - since > 10:
        proc.kill()
        raise SystemExit(f"the floor's services were not up after 10 s under {manager}")
    time.sleep(0.0002)


def dinit_program(dinit_path: str) -> str:
    """dinit as the backend finds it: in dinit_path (a directory, or the
    program itself), else on PATH."""
    if os.path.isfile(dinit_path):
        return dinit_path
    found = shutil.which("dinit", path=dinit_path or None)
    if found is None:
        raise SystemExit("no dinit: name its directory with --dinit-path")
    return found


class Bench:
    def __init__(self, sandbox: Sandbox, user) -> None:
        self.sb, self.user = sandbox, user

    def services(self, core: int) -> None:
        """core services s1..sN (plus the backend's own), as the user owns them."""
        u = self.user
        if self.sb.backend == "runit":
            runit_services(u.pw_dir, u.pw_uid, u.pw_gid, core)
        elif self.sb.backend == "dinit":
            d = os.path.join(u.pw_dir, ".config", "dinit.d")
            shutil.rmtree(d, ignore_errors=True)
            os.makedirs(f"{d}/boot.d")
            for i in range(1, core + 1):
                write(f"{d}/s{i}", "type = process\ncommand = /bin/sleep infinity\n")
                os.symlink(f"../s{i}", f"{d}/boot.d/s{i}")
            os.system(f"chown -R {u.pw_uid}:{u.pw_gid} {u.pw_dir}/.config")
        # runsvdir does not scan a directory changed within the last second
        # (it rescans a second later): measure logins, not that edit.
        time.sleep(1.1)

    def login(self) -> PamLogin:
        s = PamLogin("login", self.user.pw_name, self.sb.confdir)
        s.open()
        return s

    def cold(self, runs: int) -> tuple[list[float], list[float]]:
        opens, gones = [], []
        for _ in range(runs):
            self.sb.wait_state(self.user.pw_uid, None)
            t0 = time.perf_counter()
            s = self.login()
            opens.append(time.perf_counter() - t0)
            t1 = time.perf_counter()
            s.close()
            self.sb.wait_state(self.user.pw_uid, None)
            gones.append(time.perf_counter() - t1)
        return opens, gones

    def floor_runit(self, runs: int) -> list[float]:
        svdir = os.path.join(self.user.pw_dir, ".config", "service")
        names = [n for n in os.listdir(svdir) if os.path.isfile(f"{svdir}/{n}/run")]

        def fresh() -> None:  # no status of a run before counts
            for n in names:
                with contextlib.suppress(FileNotFoundError):
                    os.unlink(f"{svdir}/{n}/supervise/stat")

        return self._floor(runs, ["runsvdir", "-P", svdir], signal.SIGHUP, fresh,
                           lambda proc: all(running(f"{svdir}/{n}/supervise/stat")
                                            for n in names))

    def floor_dinit(self, runs: int, dinit: str) -> list[float]:
        d = os.path.join(self.user.pw_dir, ".config", "dinit.d")
        names = sorted(n for n in os.listdir(d) if os.path.isfile(f"{d}/{n}"))
        sock = os.path.join(self.user.pw_dir, ".floor-dinitctl")  # the user's to make
        return self._floor(runs, [dinit, "--user", "--services-dir", d, "--socket-path", sock,
                                  "--quiet", *names], signal.SIGTERM, lambda: None,
                           lambda proc: services_execd(proc.pid, "sleep", len(names)))

    def _floor(self, runs: int, manager: list[str], stop: signal.Signals,
               before: Callable[[], None], up: Callable[[subprocess.Popen], bool]
               ) -> list[float]:
        """Each run: before(), then the user's shell sources /etc/profile and
        execs manager, timed until up(its process); then stop ends it."""
        u = self.user
        samples = []
        for _ in range(runs):
            before()
            t0 = time.perf_counter()
            proc = subprocess.Popen(
                ["/bin/sh", "-c", '. /etc/profile; exec "$0" "$@"', *manager],
                user=u.pw_uid, group=u.pw_gid, extra_groups=[], cwd=u.pw_dir,
                env={"HOME": u.pw_dir, "PATH": "/usr/bin:/bin"},
                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
            while not up(proc):
                floor_waits(proc, t0, os.path.basename(manager[0]))
            samples.append(time.perf_counter() - t0)
            proc.send_signal(stop)
            proc.wait()
            while uid_processes(u.pw_uid):
                time.sleep(0.01)
        return samples

    def warm(self, runs: int) -> list[float]:
        keep = self.login()
        samples = []
        for _ in range(runs):
            t0 = time.perf_counter()
            s = self.login()
            s.close()
            samples.append(time.perf_counter() - t0)
        keep.close()
        self.sb.wait_state(self.user.pw_uid, None)
        return samples

    def warm_open(self, runs: int, thread: bool = True) -> list[float]:
        """pam_open_session alone, for a user whose manager is up. The test
        client runs PAM calls in a worker thread (so a hung call can time
        out), which adds its start to every figure; thread=False leaves it
        out and measures the login alone."""
        keep = self.login()
        samples = []
        for _ in range(runs):
            s = PamLogin("login", self.user.pw_name, self.sb.confdir)
            t0 = time.perf_counter()
            s.open(timeout=120.0 if thread else None)
            samples.append(time.perf_counter() - t0)
            s.close()
        keep.close()
        self.sb.wait_state(self.user.pw_uid, None)
        return samples


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[1])
    parser.add_argument("--backend", default="runit", choices=["runit", "dinit", "none"])
    parser.add_argument("--runs", type=int, default=20, help="cold and warm logins each")
    parser.add_argument("--cycles", type=int, default=200, help="warm open/close cycles")
    parser.add_argument("--dinit-path", default="",
                        help="directory of dinit and dinitctl, when not on PATH")
    args = parser.parse_args()
    if os.geteuid() != 0:
        print("bench/login.py needs root")
        return 1
    sb = Sandbox(args.backend, dinit_path=args.dinit_path)
    try:
        with throwaway_users(1) as [user]:
            sb.start()
            bench = Bench(sb, user)
            print(f"backend {args.backend}, python-pam in-process, {os.cpu_count()} cpus")
            bench.services(0)
            figures(f"warm open+close x{args.cycles}", bench.warm(args.cycles))
            figures(f"warm pam_open_session x{args.cycles}", bench.warm_open(args.cycles))
            figures("  the same, no client thread", bench.warm_open(args.cycles, thread=False))
            opens_by_core = {}
            for core in ((0, 3) if args.backend != "none" else (0,)):
                bench.services(core)
                opens, gones = bench.cold(args.runs)
                opens_by_core[core] = opens
                figures(f"cold login, {core} core services", opens)
                figures(f"logout to manager gone, {core} core", gones)
            floor = None
            if args.backend == "runit":
                floor = bench.floor_runit(args.runs)
                figures("runit floor, 3 core services", floor)
            elif args.backend == "dinit":
                dinit = dinit_program(args.dinit_path)
                floor = bench.floor_dinit(args.runs, dinit)
                figures("dinit floor, 3 core services", floor)
            if floor is not None:
                # What turnstiled adds, a figure that travels between hosts
                # better than either of the two it comes from.
                added = statistics.median(opens_by_core[3]) - statistics.median(floor)
                print(f"  cold (3 core) minus floor, medians {added * 1000:7.2f} ms", flush=True)
        return 0
    finally:
        sb.remove()


if __name__ == "__main__":
    sys.exit(main())
