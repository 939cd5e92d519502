"""turnstiled.conf parsing: every key, every kind of bad value, line numbers."""

import subprocess
import sys

import pytest

from turnstiled import config
from turnstiled.config import Config, parse

ALL_KEYS = """
debug = yes
debug_stderr = yes
backend = none
linger = yes
rundir_path = /srv/run/%u-%g
manage_rundir = no
export_dbus_address = no
login_timeout = 2.5
root_session = yes
user_stop_delay = 0
socket_path = /x/control.sock
admin_socket_path = /x/admin.sock
state_dir = /x/state
linger_dir = /x/linger
backend_dir = /x/backends
pam_service =
pam_dir = /x/pam.d
spare_holder = no
"""


def test_every_key_is_read():
    cfg, problems = parse(ALL_KEYS, "t.conf")
    assert problems == []
    assert cfg == Config(
        debug=True, debug_stderr=True, backend="none", linger="yes",
        rundir_path="/srv/run/%u-%g", manage_rundir=False, export_dbus_address=False,
        login_timeout=2.5, root_session=True, user_stop_delay=0.0,
        socket_path="/x/control.sock", admin_socket_path="/x/admin.sock",
        state_dir="/x/state", linger_dir="/x/linger", backend_dir="/x/backends",
        pam_service="", pam_dir="/x/pam.d", spare_holder=False, path="t.conf")


def test_defaults_match_upstream():
    cfg, _ = parse("", "t.conf")
    assert (cfg.backend, cfg.linger, cfg.login_timeout, cfg.root_session) == \
        ("runit", "maybe", 60.0, False)
    assert cfg.export_dbus_address and cfg.manage_rundir and not cfg.debug
    assert cfg.socket_path == "/run/turnstiled/control.sock"


def test_missing_file_means_defaults(tmp_path):
    cfg, problems = config.load(str(tmp_path / "absent.conf"))
    assert problems == [] and cfg.backend == Config().backend


@pytest.mark.parametrize("line, message", [
    ("debug = maybe", "debug: expected yes or no"),
    ("manage_rundir = 1", "manage_rundir: expected yes or no"),
    ("linger = always", "linger: expected yes, no or maybe"),
    ("login_timeout = soon", "login_timeout: expected a number"),
    ("login_timeout = -1", "non-negative"),
    ("login_timeout = nan", "non-negative"),
    ("user_stop_delay = inf", "non-negative"),
    ("rundir_path = run/%u", "absolute path"),
    ("rundir_path = /run/user", "must contain %u"),
    ("socket_path = control.sock", "absolute path"),
    ("backend = ../../bin/sh", "backend name"),
    ("backend = ", "backend name"),
    ("pam_service = ../evil", "PAM service name"),
    ("pam_dir = pam.d", "absolute path"),
    ("colour = blue", "unknown key 'colour'"),
    ("just words", "expected 'key = value'"),
    ("= yes", "expected 'key = value'"),
])
def test_bad_lines_are_reported_and_default_kept(line, message):
    cfg, problems = parse(f"# comment\n\n{line}\nbackend = none\n", "/etc/t.conf")
    assert len(problems) == 1
    assert problems[0].line == 3 and problems[0].path == "/etc/t.conf"
    assert message in problems[0].message
    assert str(problems[0]).startswith("/etc/t.conf:3: ")
    # the default stays, and the lines around the bad one still count
    assert cfg.backend == "none"
    assert cfg.login_timeout == 60.0 and cfg.debug is False and cfg.linger == "maybe"


def test_rundir_expansion():
    cfg = Config(rundir_path="/run/u/%u/%g/%%u/%x")
    assert cfg.rundir_for(1000, 100) == "/run/u/1000/100/%u/%x"


def test_backend_conf_dir_is_beside_the_config():
    assert Config(path="/etc/turnstile/turnstiled.conf").backend_conf_dir == \
        "/etc/turnstile/backend"


def _check(path):
    return subprocess.run([sys.executable, "-m", "turnstiled", "--check-config", "-c", path],
                          capture_output=True, text=True, timeout=30)


def test_check_config_exit_codes(tmp_path):
    good = tmp_path / "good.conf"
    good.write_text("backend = none\nlogin_timeout = 5\n")
    out = _check(str(good))
    assert out.returncode == 0, out.stderr
    bad = tmp_path / "bad.conf"
    bad.write_text("backend = none\nlogin_timeout = five\nfoo = bar\n")
    out = _check(str(bad))
    assert out.returncode == 1
    assert f"{bad}:2: login_timeout" in out.stderr
    assert f"{bad}:3: unknown key 'foo'" in out.stderr
