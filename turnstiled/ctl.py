"""turnstilectl: see and steer turnstiled's logins and user managers.

Talks to the daemon's admin socket (JSON lines). Exit codes: 0 ok, 1 not
found or refused (or the daemon is unreachable), 2 usage.
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import sys
import time
from collections.abc import Callable

from . import ADMIN_PROTOCOL
from .config import Config
from .text import escape

DEFAULT_ADMIN_SOCKET = Config.admin_socket_path


class CtlError(Exception):
    pass


def request(path: str, cmd: str, args: dict | None = None, timeout: float = 30.0) -> dict:
    """One request to the admin socket; returns the reply object."""
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    sock.settimeout(timeout)
    try:
        sock.connect(path)
    except OSError as err:
        raise CtlError(f"cannot reach turnstiled at {path} ({err.strerror}); is it running? "
                       "Start it with `sv up turnstiled` (runit) or run `turnstiled`") from None
    with sock:
        line = json.dumps({"v": ADMIN_PROTOCOL, "cmd": cmd, "args": args or {}})
        sock.sendall(line.encode() + b"\n")
        data = b""
        while not data.endswith(b"\n"):
            chunk = sock.recv(65536)
            if not chunk:
                raise CtlError("turnstiled closed the connection without answering")
            data += chunk
    return json.loads(data)


# -- output

def _when(ts: float | None) -> str:
    if not ts:
        return "-"
    return time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(ts))


def _cell(value: object) -> str:
    if value is None or value == "" or value == []:
        return "-"
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, list):
        return ",".join(str(v) for v in value)
    return str(value)


def table(rows: list[dict], columns: list[tuple[str, str]], legend: bool) -> str:
    head = [title for title, _ in columns]
    body = [[_cell(row.get(key)) for _, key in columns] for row in rows]
    widths = [max(len(c) for c in col) for col in zip(head, *body, strict=False)]
    lines = [head] if legend else []
    lines += body
    out = ["  ".join(c.ljust(w) for c, w in zip(line, widths, strict=True)).rstrip()
           for line in lines]
    if legend:
        out.append(f"\n{len(rows)} {'entry' if len(rows) == 1 else 'entries'} listed.")
    return "\n".join(out)


def properties(data: dict) -> str:
    """KEY=VALUE lines, as `loginctl show-*` prints them."""
    lines = []
    for key, value in data.items():
        if key in ("since", "manager_since") and value:
            value = _when(value)
        if value is None:
            value = ""
        elif isinstance(value, list):
            value = " ".join(str(v) for v in value)
        elif isinstance(value, bool):
            value = "yes" if value else "no"
        lines.append(f"{key.upper()}={value}")
    return "\n".join(lines)


USER_COLUMNS = [("UID", "uid"), ("USER", "user"), ("STATE", "state"),
                ("SESSIONS", "session_count"), ("MANAGER PID", "manager_pid"),
                ("BACKEND", "backend"), ("LINGER", "linger")]
SESSION_COLUMNS = [("ID", "id"), ("UID", "uid"), ("USER", "user"), ("SEAT", "seat"),
                   ("TTY", "tty"), ("ACTIVE", "active"), ("CLASS", "class"), ("TYPE", "type"),
                   ("SERVICE", "service"), ("REMOTE", "remote"), ("LEADER", "leader"),
                   ("STATE", "state"), ("SINCE", "since_text")]


SEAT_COLUMNS = [("SEAT", "id"), ("ACTIVE SESSION", "active_session"),
                ("SESSIONS", "session_count"), ("VT", "active_vt"), ("TTY", "can_tty"),
                ("GRAPHICAL", "can_graphical")]


def _session_line(s: dict) -> str:
    where = s["tty"] or s["display"] or "-"
    seat = f" on {s['seat']}" + (f" vt{s['vtnr']}" if s.get("vtnr") else "") if s["seat"] else ""
    remote = f" from {s['remote_host']}" if s["remote"] else ""
    state = ", closing" if s.get("state") == "closing" else ", active" if s.get("active") else ""
    return (f"{s['id']}: {s['service']} on {where}{seat}{remote} ({s['class']}/{s['type']}"
            f"{state}), leader {s['leader']}, since {_when(s['since'])}")


def render_seat_status(d: dict) -> str:
    lines = [d["id"]]
    if d.get("active_vt"):
        lines.append(f"  Active VT: {d['active_vt']}")
    lines.append(f"  Active session: {d.get('active_session') or '-'}")
    lines.append(f"  Can TTY: {'yes' if d['can_tty'] else 'no'}; can graphical: "
                 f"{'yes' if d['can_graphical'] else 'no'}")
    sessions = d.get("session_details") or []
    lines.append(f"  Sessions: {len(sessions)}")
    lines += [f"    {_session_line(s)}" for s in sessions]
    devices = d.get("devices") or []
    if devices:
        lines.append("  Devices:")
        lines += [f"    {dev}" for dev in devices]
    return "\n".join(lines)


def render_user_status(d: dict) -> str:
    lines = [f"{d['user']} ({d['uid']})", f"  State: {d['state']}"]
    if d.get("manager_pid"):
        lines.append(f"  Manager: {d['backend']}, pid {d['manager_pid']}, "
                     f"since {_when(d.get('manager_since'))}")
    elif "backend" in d:
        lines.append(f"  Manager: {d['backend']}, not running")
    if "linger" in d:
        lines.append(f"  Linger: {'yes' if d['linger'] else 'no'}")
    if d.get("runtime_dir"):
        owner = "" if d.get("runtime_dir_managed", True) else " (not managed by turnstiled)"
        lines.append(f"  Runtime dir: {d['runtime_dir']}{owner}")
        if d.get("runtime_dir_problem"):
            lines.append(f"    {d['runtime_dir_problem']}")
    sessions = d.get("session_details") or []
    lines.append(f"  Sessions: {len(sessions)}")
    lines += [f"    {_session_line(s)}" for s in sessions]
    ready = d.get("last_ready")
    if ready:
        lines.append(f"  Last start: ready after {ready['waited_ms']:g} ms")
        services = ready["services"]
        if services:
            lines.append("    core services: " + ", ".join(
                f"{s['name']} ({s['ms']:g} ms)" for s in services))
        else:
            lines.append("    core services: none")
    failure = d.get("last_failure")
    if failure:
        lines.append(f"  Last failure: {_when(failure['time'])}: {failure['reason']}")
    if d.get("restarts"):
        lines.append(f"  Restarts in the last minute: {d['restarts']}")
    return "\n".join(lines)


def render_status(d: dict) -> str:
    up = int(d["uptime"])
    lines = [f"turnstiled {d['version']} (pid {d['pid']})",
             f"  Up since: {_when(d['since'])} ({up // 3600}h {up % 3600 // 60}m {up % 60}s)",
             f"  Config: {d['config']}", f"  Backend: {d['backend']}",
             f"  Users: {d['users']}", f"  Sessions: {d['sessions']}",
             f"  Linger: {d['linger']}"]
    if d.get("linger_disabled"):
        lines.append(f"  Lingering is off: {d['linger_disabled']}")
    if "tracking" in d:
        mode = "cgroup v2" if d["tracking"] == "cgroup" else "connections only"
        lines.append(f"  Session tracking: {mode} ({d['tracking_reason']})")
        if d["tracking"] == "cgroup":
            kill = "killed" if d.get("kill_user_processes") else "kept"
            lines.append(f"  Processes left at logout: {kill}")
    login1 = d.get("login1")
    if login1:
        mark = "error: " if login1["error"] else ""
        detail = f" ({login1['detail']})" if login1["detail"] else ""
        lines.append(f"  login1: {mark}{login1['state']}{detail}")
    return "\n".join(lines)


# -- commands

def _run(args: argparse.Namespace, cmd: str, req: dict,
         render: Callable[[object], str]) -> int:
    reply = request(args.admin_socket, cmd, req)
    if not reply.get("ok"):
        print(f"turnstilectl: {escape(str(reply.get('error')))}", file=sys.stderr)
        return 1
    data = reply["data"]
    if args.json:
        print(json.dumps(data, indent=2))
    else:
        text = render(data)
        if text:
            # Names, hosts and reasons come from users: no terminal controls.
            print("\n".join(escape(line) for line in text.split("\n")))
    return 0


def main(argv: list[str] | None = None) -> int:
    # The options work before and after the command, as with loginctl.
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--json", action="store_true", default=argparse.SUPPRESS,
                        help="print JSON")
    common.add_argument("--no-legend", action="store_true", default=argparse.SUPPRESS,
                        help="no column headers or footer in tables")
    common.add_argument("--admin-socket", metavar="PATH", default=argparse.SUPPRESS,
                        help=f"the daemon's admin socket (default {DEFAULT_ADMIN_SOCKET}, "
                        "or $TURNSTILED_ADMIN_SOCKET)")
    parser = argparse.ArgumentParser(prog="turnstilectl", parents=[common],
                                     description="Inspect and control turnstiled.")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    add = sub.add_parser

    def command(name: str, help: str) -> argparse.ArgumentParser:
        return add(name, help=help, parents=[common])

    command("status", "the daemon: version, uptime, config, counts")
    command("list-users", "users with a login or a running manager")
    command("list-sessions", "open sessions")
    command("show-user", "every property of a user").add_argument("user")
    command("show-session", "every property of a session").add_argument("id")
    command("user-status", "a user's manager, sessions and last start (default: yourself)") \
        .add_argument("user", nargs="?")
    for name, what in (("enable-linger", "keep"), ("disable-linger", "stop keeping")):
        command(name, f"{what} users' managers without a login (default: yourself)") \
            .add_argument("users", nargs="*")
    command("list-seats", "seats, their active session and VT")
    command("seat-status", "a seat's sessions and devices (default: seat0)") \
        .add_argument("seat", nargs="?")
    command("terminate-user", "end all of a user's sessions and their manager") \
        .add_argument("user")
    command("terminate-session", "end one session").add_argument("id")
    kill = command("kill-session", "send a signal to every process of a session")
    kill.add_argument("id")
    kill.add_argument("signal")
    kill = command("kill-user", "send a signal to every process of a user's sessions "
                   "and manager")
    kill.add_argument("user")
    kill.add_argument("signal")
    command("session-of", "the session a process belongs to").add_argument("pid", type=int)
    args = parser.parse_args(argv)
    # Defaults here, not in the parsers: the options' actions are shared
    # between the main parser and the commands'.
    args.json = getattr(args, "json", False)
    args.admin_socket = getattr(args, "admin_socket", None) or os.environ.get(
        "TURNSTILED_ADMIN_SOCKET", DEFAULT_ADMIN_SOCKET)
    legend = not getattr(args, "no_legend", False)

    def sessions_table(rows):
        for r in rows:
            r["since_text"] = _when(r["since"])
        return table(rows, SESSION_COLUMNS, legend)

    def users_table(rows):
        for r in rows:
            r["session_count"] = len(r["sessions"])
        return table(rows, USER_COLUMNS, legend)

    def linger_note(d):
        return f"warning: {d['warning']}" if d.get("warning") else ""

    def seats_table(rows):
        for r in rows:
            r["session_count"] = len(r["sessions"])
        return table(rows, SEAT_COLUMNS, legend)

    commands = {
        "status": ({}, render_status),
        "list-seats": ({}, seats_table),
        "seat-status": ({"seat": getattr(args, "seat", None)}, render_seat_status),
        "list-users": ({}, users_table),
        "list-sessions": ({}, sessions_table),
        "show-user": ({"user": getattr(args, "user", None)}, properties),
        "show-session": ({"id": getattr(args, "id", None)}, properties),
        "user-status": ({"user": getattr(args, "user", None)}, render_user_status),
        "enable-linger": ({"users": getattr(args, "users", [])}, linger_note),
        "disable-linger": ({"users": getattr(args, "users", [])}, linger_note),
        "terminate-user": ({"user": getattr(args, "user", None)}, lambda d: ""),
        "terminate-session": ({"id": getattr(args, "id", None)}, lambda d: ""),
        "kill-session": ({"id": getattr(args, "id", None), "signal": getattr(args, "signal", None)},
                         lambda d: ""),
        "kill-user": ({"user": getattr(args, "user", None),
                       "signal": getattr(args, "signal", None)}, lambda d: ""),
        "session-of": ({"pid": getattr(args, "pid", None)},
                       lambda d: f"{d['id']} {d['user']}"),
    }
    req, render = commands[args.command]
    try:
        return _run(args, args.command, req, render)
    except CtlError as err:
        print(f"turnstilectl: {err}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
