"""A login as a login program makes one: this process opens a PAM session
(the real libpam, our module, the daemon under test) and so becomes the
session's leader, then runs commands as its children, the way a shell
would, until its stdin closes; then it closes the session and exits.

Protocol, one JSON object per line: it prints {"env": {...}} (the PAM
environment) once the session is open, or {"error": "..."}; then for each
line {"argv": [...], "env": {...}} it reads, it runs argv (env added to
its own environment) and prints {"rc", "stdout", "stderr", "pid"}; a line
{"spawn": [...]} starts argv in the background and prints {"pid"}.

    python loginshell.py CONFDIR SERVICE USER [TTY]
"""

from __future__ import annotations

import json
import os
import subprocess
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from helpers import PAM_TTY  # noqa: E402
from pamclient import PamLogin  # noqa: E402


def main() -> int:
    confdir, service, user = sys.argv[1:4]
    tty = sys.argv[4] if len(sys.argv) > 4 else ""
    out = sys.stdout
    background: list[subprocess.Popen] = []
    with PamLogin(service, user, confdir) as pam:
        try:
            env = pam.open(items={PAM_TTY: tty} if tty else None)
        except Exception as err:
            print(json.dumps({"error": str(err)}), file=out, flush=True)
            return 1
        print(json.dumps({"env": env}), file=out, flush=True)
        for line in sys.stdin:
            req = json.loads(line)
            if "spawn" in req:
                proc = subprocess.Popen(req["spawn"], stdin=subprocess.DEVNULL,
                                        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
                background.append(proc)
                print(json.dumps({"pid": proc.pid}), file=out, flush=True)
                continue
            res = subprocess.run(req["argv"], capture_output=True, text=True, timeout=60,
                                 env={**os.environ, **req.get("env", {})})
            print(json.dumps({"rc": res.returncode, "stdout": res.stdout,
                              "stderr": res.stderr}), file=out, flush=True)
        for proc in background:
            if proc.poll() is None:
                proc.kill()
            proc.wait()
    return 0


if __name__ == "__main__":
    sys.exit(main())
