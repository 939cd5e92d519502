"""Login latency through the real libpam against a real daemon.

    bench/login.py [--backend runit|dinit|none] [--runs 20] [--cycles 200]

Prints, for the backend:
- warm: open+close cycles of a session while another keeps the manager up;
- cold: pam_open_session from no manager to ready (0 and 3 core services);
- logout-to-gone: pam_close_session of the last session until the daemon
  reports the Login ended (manager and every process of it gone).
Run as root on an otherwise idle machine; it creates and removes a user.
"""

from __future__ import annotations

import argparse
import os
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO)

from turnstiled.pamsession import PamSession  # noqa: E402

USER = "tsdbench"
MODULE = os.path.join(REPO, "pam", "pam_turnstile.so")


def write(path: str, text: str, mode: int = 0o644) -> None:
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "w") as f:
        f.write(text)
    os.chmod(path, mode)


def figures(name: str, samples: list[float]) -> None:
    ms = [s * 1000 for s in samples]
    print(f"{name:<38} median {statistics.median(ms):7.1f} ms   max {max(ms):7.1f} ms"
          f"   (n={len(ms)})", flush=True)


class Bench:
    def __init__(self, backend: str, top: str, home: str, uid: int, dinit_path: str) -> None:
        self.backend, self.top, self.home, self.uid = backend, top, home, uid
        self.dinit_path = dinit_path
        self.daemon: subprocess.Popen | None = None

    def setup(self) -> None:
        top = self.top
        write(f"{top}/etc/turnstiled.conf", f"""backend = {self.backend}
backend_dir = {top}/backends
socket_path = {top}/control.sock
admin_socket_path = {top}/admin.sock
state_dir = {top}/state
linger_dir = {top}/linger
rundir_path = {top}/user/%u
pam_dir = {top}/pam.d
user_stop_delay = 0
""")
        shutil.copytree(os.path.join(REPO, "backends"), f"{top}/backends")
        os.makedirs(f"{top}/etc/backend")
        for conf in ("runit.conf", "dinit.conf"):
            src = os.path.join(REPO, "backends", conf)
            if os.path.exists(src):
                shutil.copy(src, f"{top}/etc/backend/")
        if self.dinit_path:
            with open(f"{top}/etc/backend/dinit.conf", "a") as f:
                f.write(f'dinit_path="{self.dinit_path}"\n')
        write(f"{top}/pam.d/turnstiled", "auth required pam_permit.so\n"
              "account required pam_permit.so\nsession required pam_permit.so\n")
        write(f"{top}/pam.d/login", "auth required pam_permit.so\n"
              "account required pam_permit.so\n"
              f"session required {MODULE} socket={top}/control.sock\n"
              "session required pam_permit.so\n")
        subprocess.run(["chmod", "-R", "a+rX", top], check=True)
        log = open(f"{top}/daemon.log", "w")
        self.daemon = subprocess.Popen(
            [sys.executable, "-m", "turnstiled", "-c", f"{top}/etc/turnstiled.conf"],
            cwd=REPO, stdout=log, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            s = socket.socket(socket.AF_UNIX)
            try:
                s.connect(f"{top}/control.sock")
                return
            except OSError:
                time.sleep(0.05)
            finally:
                s.close()
        raise SystemExit("the daemon did not start")

    def services(self, core: int) -> None:
        """core services s1..sN (plus the backend's own), as the user owns them."""
        if self.backend == "runit":
            svc = os.path.join(self.home, ".config", "service")
            shutil.rmtree(svc, ignore_errors=True)
            for i in range(1, core + 1):
                write(f"{svc}/s{i}/run", "#!/bin/sh\nexec sleep infinity\n", 0o755)
            write(f"{svc}/turnstile-ready/conf",
                  f'core_services="{" ".join(f"s{i}" for i in range(1, core + 1))}"\n')
        elif self.backend == "dinit":
            d = os.path.join(self.home, ".config", "dinit.d")
            shutil.rmtree(d, ignore_errors=True)
            os.makedirs(f"{d}/boot.d")
            for i in range(1, core + 1):
                write(f"{d}/s{i}", "type = process\ncommand = /bin/sleep infinity\n")
                os.symlink(f"../s{i}", f"{d}/boot.d/s{i}")
        subprocess.run(["chown", "-R", f"{self.uid}:{self.uid}",
                        os.path.join(self.home, ".config")], check=False)
        # runsvdir does not scan a directory changed within the last second
        # (it rescans a second later): measure logins, not that edit.
        time.sleep(1.1)

    def login(self) -> PamSession:
        s = PamSession("login", USER, f"{self.top}/pam.d")
        s.open()
        return s

    def logged_out(self) -> bool:
        return not os.path.exists(f"{self.top}/state/users/{self.uid}")

    def wait_gone(self, timeout: float = 30) -> None:
        deadline = time.monotonic() + timeout
        while not self.logged_out():
            if time.monotonic() > deadline:
                raise SystemExit("the manager did not go away")
            time.sleep(0.002)

    def cold(self, runs: int) -> tuple[list[float], list[float]]:
        opens, gones = [], []
        for _ in range(runs):
            self.wait_gone()
            t0 = time.perf_counter()
            s = self.login()
            opens.append(time.perf_counter() - t0)
            t1 = time.perf_counter()
            s.close()
            self.wait_gone()
            gones.append(time.perf_counter() - t1)
        return opens, gones

    def warm(self, runs: int) -> list[float]:
        keep = self.login()
        samples = []
        for _ in range(runs):
            t0 = time.perf_counter()
            s = self.login()
            s.close()
            samples.append(time.perf_counter() - t0)
        keep.close()
        self.wait_gone()
        return samples

    def stop(self) -> None:
        if self.daemon is not None:
            self.daemon.send_signal(signal.SIGTERM)
            try:
                self.daemon.wait(30)
            except subprocess.TimeoutExpired:
                self.daemon.kill()


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
    if not os.path.exists(MODULE):
        print("build the PAM module first: make")
        return 1
    created = subprocess.run(["id", USER], capture_output=True).returncode != 0
    if created:
        subprocess.run(["useradd", "-m", "-s", "/bin/sh", USER], check=True)
    home = os.path.expanduser(f"~{USER}")
    uid = int(subprocess.run(["id", "-u", USER], capture_output=True, text=True).stdout)
    top = tempfile.mkdtemp(prefix="turnstiled-bench.")
    os.chmod(top, 0o755)
    bench = Bench(args.backend, top, home, uid, args.dinit_path)
    try:
        bench.setup()
        print(f"backend {args.backend}, python-pam in-process, {os.cpu_count()} cpus")
        bench.services(0)
        figures(f"warm open+close x{args.cycles}", bench.warm(args.cycles))
        for core in ((0, 3) if args.backend != "none" else (0,)):
            bench.services(core)
            opens, gones = bench.cold(args.runs)
            figures(f"cold login, {core} core services", opens)
            figures(f"warm login, {core} core services", bench.warm(args.runs))
            figures(f"logout to manager gone, {core} core", gones)
        return 0
    finally:
        bench.stop()
        if created:
            subprocess.run(["pkill", "-KILL", "-u", USER], capture_output=True)
            subprocess.run(["userdel", "-r", USER], capture_output=True)
        shutil.rmtree(top, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
