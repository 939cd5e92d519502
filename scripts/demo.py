"""make demo: a real login through PAM into a running user manager.

Everything lives under one temporary directory (the daemon's sockets, state,
runtime dirs and PAM service files); the system's /etc/pam.d is not touched.
The daemon runs on the default configuration with only its paths moved into
that directory. A demo user is created and removed again, unless
DEMO_USER=name names an existing account to use as it is.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(REPO, "tests"))

from pamclient import PamLogin  # noqa: E402  (the real libpam, service files of ours)

MODULE = os.path.join(REPO, "pam", "pam_turnstile.so")
VENV_BIN = os.path.dirname(sys.executable)
DEMO_NAME = "turnstiled-demo"


def say(text: str) -> None:
    print(f"\n\033[1m== {text}\033[0m" if sys.stdout.isatty() else f"\n== {text}", flush=True)


def run(*argv: str, **kw) -> subprocess.CompletedProcess:
    print("$ " + " ".join(argv), flush=True)
    out = subprocess.run(argv, text=True, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                         timeout=60, **kw)
    print(out.stdout.rstrip(), flush=True)
    return out


def write(path: str, text: str, mode: int = 0o644) -> None:
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "w") as f:
        f.write(text)
    os.chmod(path, mode)


def make_user() -> tuple[str, bool]:
    name = os.environ.get("DEMO_USER")
    if name:
        return name, False
    if subprocess.run(["id", DEMO_NAME], capture_output=True).returncode != 0:
        subprocess.run(["useradd", "-m", "-s", "/bin/sh", DEMO_NAME], check=True)
    home = os.path.expanduser(f"~{DEMO_NAME}")
    # A core service (the login waits for it) and an ordinary one.
    svc = os.path.join(home, ".config", "service")
    write(f"{svc}/hello/run", "#!/bin/sh\necho \"hello from $USER's runit, "
          "XDG_RUNTIME_DIR=$XDG_RUNTIME_DIR\" > \"$XDG_RUNTIME_DIR/hello\"\n"
          "exec sleep infinity\n", 0o755)
    write(f"{svc}/hello/check", "#!/bin/sh\n[ -s \"$XDG_RUNTIME_DIR/hello\" ]\n", 0o755)
    write(f"{svc}/idle/run", "#!/bin/sh\nexec sleep infinity\n", 0o755)
    write(f"{svc}/turnstile-ready/conf", 'core_services="hello"\n')
    subprocess.run(["chown", "-R", f"{DEMO_NAME}:", os.path.join(home, ".config")], check=True)
    return DEMO_NAME, True


def main() -> int:
    if os.geteuid() != 0:
        print("make demo needs root (it starts turnstiled and creates a demo user)")
        return 1
    top = tempfile.mkdtemp(prefix="turnstiled-demo.")
    os.chmod(top, 0o755)
    user, created = make_user()
    daemon = None
    try:
        conf = f"{top}/etc/turnstiled.conf"
        write(conf, f"""# the default configuration, paths moved into {top}
backend_dir = {top}/backends
holder_path = {REPO}/holder/turnstiled-holder
fdstore_path = {REPO}/holder/turnstiled-fdstore
socket_path = {top}/control.sock
admin_socket_path = {top}/admin.sock
state_dir = {top}/state
linger_dir = {top}/linger
rundir_path = {top}/user/%u
pam_dir = {top}/pam.d
# cgroups = auto, as by default: sessions get groups under a name of the
# demo's own, beside any real turnstiled's.
cgroup_path = {os.path.basename(top)}
# login1 = auto would take org.freedesktop.login1 on this machine's system
# bus, where nobody owns it: not the demo's to claim.
login1 = no
""")
        shutil.copytree(os.path.join(REPO, "backends"), f"{top}/backends")
        os.makedirs(f"{top}/etc/backend")
        shutil.copy(os.path.join(REPO, "backends", "runit.conf"), f"{top}/etc/backend/")
        subprocess.run(["chmod", "-R", "a+rX", top], check=True)
        with open(os.path.join(REPO, "data", "pam.d", "turnstiled")) as f:
            write(f"{top}/pam.d/turnstiled", f.read().replace("pam_turnstile.so", MODULE))
        ctl = [os.path.join(VENV_BIN, "turnstilectl"), "--admin-socket", f"{top}/admin.sock"]
        show = f"{top}/show-session"
        write(show, f"""#!/bin/sh
# Run by pam_exec inside the login, after pam_turnstile.so has returned.
unset LD_PRELOAD PAM_WRAPPER PAM_WRAPPER_SERVICE_DIR
echo "-- inside the session of $PAM_USER: XDG_RUNTIME_DIR=$XDG_RUNTIME_DIR"
echo "-- its cgroup (turnstilectl status, below, says whether sessions get groups):"
grep '^0::' /proc/self/cgroup
ls -ld "$XDG_RUNTIME_DIR"; cat "$XDG_RUNTIME_DIR/hello" 2>/dev/null
home=$(getent passwd "$PAM_USER" | cut -d: -f6)
echo "-- the user's services:"; sv status "$home"/.config/service/* 2>&1
echo "-- published state ({top}/state):"
for f in {top}/state/users/* {top}/state/sessions/*; do echo "$f:"; sed 's/^/    /' "$f"; done
echo "-- turnstilectl list-sessions:"; {' '.join(ctl)} list-sessions
""", 0o755)
        # libpam reads "other" too (the fallback for any service without a
        # file); a distribution's denies everything.
        write(f"{top}/pam.d/other", "auth required pam_deny.so\naccount required pam_deny.so\n"
              "password required pam_deny.so\nsession required pam_deny.so\n")
        write(f"{top}/pam.d/login", f"""auth required pam_permit.so
account required pam_permit.so
session optional {MODULE} socket={top}/control.sock
session required pam_permit.so
session optional pam_exec.so stdout type=open_session {show}
""")

        say(f"starting turnstiled (backend runit) in {top}")
        log = open(f"{top}/daemon.log", "w")
        daemon = subprocess.Popen([sys.executable, "-m", "turnstiled", "-c", conf],
                                  cwd=REPO, stdout=log, stderr=subprocess.STDOUT)
        wait_socket(f"{top}/control.sock", daemon)
        print(f"turnstiled pid {daemon.pid}, config {conf}")

        say(f"logging in as {user} through PAM (pamtester, service 'login')")
        env = dict(os.environ, LD_PRELOAD="libpam_wrapper.so", PAM_WRAPPER="1",
                   PAM_WRAPPER_SERVICE_DIR=f"{top}/pam.d")
        t0 = time.monotonic()
        out = run("pamtester", "-v", "-I", "tty=tty3", "login", user, "open_session",
                  "close_session", env=env)
        print(f"(open and close took {time.monotonic() - t0:.2f} s)")
        if out.returncode != 0:
            raise SystemExit("the login failed; daemon log:\n" + open(f"{top}/daemon.log").read())

        say("after logout and user_stop_delay (10 s by default): the manager and the "
            "runtime dir are gone")
        uid = int(subprocess.run(["id", "-u", user], capture_output=True, text=True).stdout)
        # The delay, then the stop: runsv waits a second after a service that
        # ran for less than one (this one ran for a tenth) before it exits.
        deadline = time.monotonic() + 25
        while os.path.exists(f"{top}/state/users/{uid}"):
            if time.monotonic() > deadline:
                print("(the manager is still there 25 s after the logout: see the daemon log)")
                break
            time.sleep(0.1)
        else:
            print(f"(gone {time.monotonic() - t0:.1f} s after the login)")
        run("ps", "-o", "pid,user,cmd", "-u", str(uid))
        run("ls", "-la", f"{top}/user", f"{top}/state/users", f"{top}/state/sessions")

        say("a login that stays open: the admin's view")
        session = PamLogin("login", user, f"{top}/pam.d")
        got = session.open()
        print(f"session open, XDG_RUNTIME_DIR={got.get('XDG_RUNTIME_DIR')}")
        run(*ctl, "status")
        run(*ctl, "list-users")
        run(*ctl, "user-status", user)
        session.close()
        return 0
    finally:
        if daemon is not None:
            say("stopping turnstiled (SIGINT: a full stop; SIGTERM would leave every "
                "session and manager to the next turnstiled)")
            daemon.send_signal(signal.SIGINT)
            try:
                print(f"turnstiled exited with status {daemon.wait(30)}")
            except subprocess.TimeoutExpired:
                daemon.kill()
            print("daemon log:")
            print(open(f"{top}/daemon.log").read().rstrip())
        if created:
            subprocess.run(["pkill", "-KILL", "-u", user], capture_output=True)
            subprocess.run(["userdel", "-r", user], capture_output=True)
        shutil.rmtree(top, ignore_errors=True)


def wait_socket(path: str, proc: subprocess.Popen) -> None:
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise SystemExit(f"turnstiled exited with status {proc.returncode}")
        s = socket.socket(socket.AF_UNIX)
        try:
            s.connect(path)
            return
        except OSError:
            time.sleep(0.05)
        finally:
            s.close()
    raise SystemExit("turnstiled did not start listening within 10 s")


if __name__ == "__main__":
    sys.exit(main())
