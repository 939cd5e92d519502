"""What pam_turnstile.so in the real libpam tells the daemon about a session
(the facts of its handshake) and what it makes of the environment the
daemon sends back, seen by a small real server of the tests' own
(fakeserver.py).
"""

from __future__ import annotations

import struct

import pytest
from fakeserver import module_service, open_and_capture
from helpers import PAM_RHOST, PAM_RUSER, PAM_TTY, PAM_XDISPLAY, read_kv
from pamclient import pamtester
from wire import MSG_OK_DONE, MSG_REQ_ENV, MSG_START, Facts

pytestmark = pytest.mark.usefixtures("no_session_vars")


# -- what the module sends, seen by a real server


def test_plain_session_facts(fake_server, confdir, pam_module, test_user):
    facts, _ = open_and_capture(fake_server(), confdir, pam_module, test_user.name,
                                name="plainsvc")
    assert facts == Facts(uid=test_user.uid, vtnr=0, remote=False, service="plainsvc",
                          type="unspecified", klass="background")


def test_the_servers_environment_is_the_sessions(fake_server, confdir, pam_module,
                                                 test_user):
    _, env = open_and_capture(fake_server(env={"XDG_RUNTIME_DIR": "/x", "FOO": "bar"}),
                              confdir, pam_module, test_user.name)
    assert env["XDG_RUNTIME_DIR"] == "/x"
    assert env["FOO"] == "bar"


def test_root_session_facts(fake_server, confdir, pam_module):
    server = fake_server()
    facts, env = open_and_capture(server, confdir, pam_module, "root",
                                  items={PAM_TTY: "tty1"})
    assert (facts.uid, facts.tty, facts.vtnr, facts.klass) == (0, "tty1", 1, "user")
    assert env["XDG_RUNTIME_DIR"] == "/x"


def test_handshake_bytes_are_native_layout(fake_server, confdir, pam_module, test_user):
    """Byte for byte: START, uid (unsigned int), vtnr (unsigned long), remote
    (bool), nine size_t-prefixed strings, and then only REQ_ENV."""
    server = fake_server()
    open_and_capture(server, confdir, pam_module, test_user.name,
                     items={PAM_TTY: "tty7", PAM_RHOST: "example.org"}, name="bytes")
    raw = server.conns[0].raw
    expected = (bytes([MSG_START]) + struct.pack("@I", test_user.uid) + struct.pack("@L", 7)
                + struct.pack("@?", True))
    for s in (b"bytes", b"tty", b"user", b"", b"seat0", b"tty7", b"", b"", b"example.org"):
        expected += struct.pack("@N", len(s)) + s
    assert raw == expected + bytes([MSG_REQ_ENV])


def test_ok_done_without_wait_and_empty_env(fake_server, confdir, pam_module, test_user):
    server = fake_server(replies=(MSG_OK_DONE,), env={})
    facts, env = open_and_capture(server, confdir, pam_module, test_user.name)
    assert facts.uid == test_user.uid
    assert "XDG_RUNTIME_DIR" not in env and "FOO" not in env


FACT_CASES = {
    "args": ({}, "class=greeter type=wayland desktop=GNOME",
             {"klass": "greeter", "type": "wayland", "desktop": "GNOME", "tty": "",
              "display": "", "vtnr": 0, "seat": ""}),
    "tty3": ({PAM_TTY: "tty3"}, "",
             {"tty": "tty3", "vtnr": 3, "seat": "seat0", "type": "tty", "klass": "user",
              "display": "", "remote": False}),
    "dev-tty5": ({PAM_TTY: "/dev/tty5"}, "",
                 {"tty": "tty5", "vtnr": 5, "seat": "seat0", "type": "tty"}),
    "pts": ({PAM_TTY: "/dev/pts/4"}, "",
            {"tty": "pts/4", "vtnr": 0, "seat": "", "type": "tty", "klass": "user"}),
    "rhost": ({PAM_RHOST: "example.org", PAM_RUSER: "alice"}, "",
              {"remote": True, "remote_host": "example.org", "remote_user": "alice"}),
    "localhost": ({PAM_RHOST: "localhost"}, "",
                  {"remote": False, "remote_host": "localhost"}),
    "localhost.localdomain": ({PAM_RHOST: "localhost.localdomain"}, "", {"remote": False}),
    "x.localhost": ({PAM_RHOST: "box.localhost"}, "", {"remote": False}),
    "not-localhost": ({PAM_RHOST: "localhost.example.org"}, "", {"remote": True}),
    "cron": ({PAM_TTY: "cron"}, "",
             {"klass": "background", "type": "unspecified", "tty": ""}),
    "ssh": ({PAM_TTY: "ssh", PAM_RHOST: "example.org"}, "",
            {"type": "tty", "klass": "user", "remote": True, "tty": ""}),
    "display-in-tty": ({PAM_TTY: ":0"}, "",
                       {"display": ":0", "tty": "", "type": "x11", "klass": "user"}),
    "xdisplay": ({PAM_XDISPLAY: ":1"}, "", {"display": ":1", "type": "x11"}),
    "args-override-defaults": ({PAM_TTY: "tty2"}, "type=wayland class=greeter",
                               {"type": "wayland", "klass": "greeter", "vtnr": 2}),
}


def _facts_as_expected(server, confdir, pam_module, user, expected: dict[str, object], **kw):
    """Opens a session of user's against server (open_and_capture's keywords);
    the facts sent must have the expected values. Returns (facts, env)."""
    facts, env = open_and_capture(server, confdir, pam_module, user.name, **kw)
    assert {key: getattr(facts, key) for key in expected} == expected, facts
    return facts, env


@pytest.mark.parametrize("case", list(FACT_CASES))
def test_session_facts(case, fake_server, confdir, pam_module, test_user):
    items, args, expected = FACT_CASES[case]
    facts, env = _facts_as_expected(fake_server(), confdir, pam_module, test_user, expected,
                                    items=items, args=args)
    assert facts.uid == test_user.uid
    assert facts.service == "tstest"
    assert env["FOO"] == "bar"


ENV_CASES = {
    # XDG_* in the PAM environment (a greeter sets them before the session).
    "seat1-has-no-vt": ({"XDG_SEAT": "seat1"}, {PAM_TTY: "tty3"},
                        {"seat": "seat1", "vtnr": 0, "tty": "tty3"}),
    "vtnr-from-env": ({"XDG_VTNR": "7", "XDG_SEAT": "seat0"}, {PAM_XDISPLAY: ":0"},
                      {"vtnr": 7, "seat": "seat0", "display": ":0", "type": "x11"}),
    "type-from-env": ({"XDG_SESSION_TYPE": "wayland", "XDG_SESSION_DESKTOP": "sway"},
                      {PAM_TTY: "tty4"},
                      {"type": "wayland", "desktop": "sway", "klass": "user", "vtnr": 4}),
}


@pytest.mark.parametrize("case", list(ENV_CASES))
def test_session_facts_from_pam_env(case, fake_server, confdir, pam_module, test_user):
    pam_env, items, expected = ENV_CASES[case]
    _facts_as_expected(fake_server(), confdir, pam_module, test_user, expected, items=items,
                       env=pam_env)


def test_pam_env_beats_process_env_beats_args(fake_server, confdir, pam_module, test_user):
    """XDG_SESSION_* come from the PAM environment, then the process
    environment, then module arguments (pamtester: -E is the PAM env)."""
    server = fake_server()
    service = module_service(confdir, pam_module, server.path,
                             "type=x11 class=greeter desktop=GNOME")
    res = pamtester(service, test_user.name, confdir, "open_session", "close_session",
                    env={"XDG_SESSION_TYPE": "wayland", "XDG_SESSION_CLASS": "lock-screen"},
                    items={"tty": "tty4"},
                    extra_environ={"XDG_SESSION_DESKTOP": "KDE",
                                   "XDG_SESSION_CLASS": "user"},
                    timeout=20)
    assert res.returncode == 0, res.stdout + res.stderr
    facts = server.wait_conn().wait_handshake()
    assert (facts.type, facts.klass, facts.desktop) == ("wayland", "lock-screen", "KDE")
    assert (facts.tty, facts.vtnr, facts.seat) == ("tty4", 4, "seat0")
    assert server.conns[0].eof.wait(5)


def test_env_reaches_a_login_program(fake_server, confdir, pam_module, test_user, sandbox):
    """pamtester under pam_wrapper: the environment the server sent is in the
    PAM environment of the modules after ours (pam_exec dumps it)."""
    server = fake_server()
    dump = sandbox / "env.txt"
    script = sandbox / "dump.sh"
    script.write_text(f'#!/bin/sh\n[ "$PAM_TYPE" = open_session ] || exit 0\nenv > {dump}\n')
    script.chmod(0o755)
    (confdir / "dumpenv").write_text(
        "auth required pam_permit.so\n"
        "account required pam_permit.so\n"
        f"session required {pam_module} socket={server.path}\n"
        f"session required pam_exec.so {script}\n"
        "session required pam_permit.so\n")
    res = pamtester("dumpenv", test_user.name, confdir, "open_session", "close_session",
                    timeout=20)
    assert res.returncode == 0, res.stdout + res.stderr
    assert "successfully opened a session" in res.stderr + res.stdout
    env = read_kv(dump)
    assert env["XDG_RUNTIME_DIR"] == "/x" and env["FOO"] == "bar"
    facts = server.wait_conn().wait_handshake()
    assert (facts.service, facts.uid) == ("dumpenv", test_user.uid)
    assert server.conns[0].eof.wait(5)
