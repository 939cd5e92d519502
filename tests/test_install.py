"""`make install` and `make uninstall` as a packager runs them, what they
install, the man pages, and the installed runit service run by real runsv."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest
from helpers import REPO_ROOT, wait_for

PYTHON = sys.executable


def make(*args: str, **env: str) -> subprocess.CompletedProcess:
    res = subprocess.run(["make", "-s", "-C", str(REPO_ROOT), *args, f"PYTHON={PYTHON}"],
                         capture_output=True, text=True, timeout=300,
                         env={**os.environ, **env})
    assert res.returncode == 0, res.stdout + res.stderr
    return res


def files_under(root: Path) -> set[str]:
    return {str(p.relative_to(root)) for p in root.rglob("*") if not p.is_dir()}


def site_packages(root: Path) -> Path:
    (pkg,) = root.rglob("site-packages/turnstiled/__init__.py")
    return pkg.parent.parent


@pytest.fixture(scope="module")
def staged(tmp_path_factory) -> Path:
    dest = tmp_path_factory.mktemp("destdir")
    make("install", f"DESTDIR={dest}", "PREFIX=/usr")
    return dest


PAMDIR = subprocess.run(["sh", str(REPO_ROOT / "scripts" / "pamdir.sh"), "gcc"],
                        capture_output=True, text=True).stdout.strip().lstrip("/")
WANTED = [
    "usr/bin/turnstiled", "usr/bin/turnstilectl", "usr/bin/turnstile-update-runit-env",
    f"{PAMDIR}/pam_turnstile.so",
    "usr/libexec/turnstiled/turnstiled-holder", "usr/libexec/turnstiled/turnstiled-fdstore",
    "usr/libexec/turnstiled/runit", "usr/libexec/turnstiled/dinit",
    "etc/turnstile/turnstiled.conf", "etc/turnstile/backend/runit.conf",
    "etc/turnstile/backend/dinit.conf", "etc/pam.d/turnstiled",
    "etc/sv/turnstiled/run", "etc/sv/turnstiled/log/run", "etc/dinit.d/turnstiled",
    "usr/share/man/man8/turnstiled.8", "usr/share/man/man5/turnstiled.conf.5",
    "usr/share/man/man1/turnstilectl.1", "usr/share/man/man8/pam_turnstile.8",
    "usr/share/man/man1/turnstile-update-runit-env.1",
    "usr/share/dbus-1/system.d/org.freedesktop.login1.conf",
]


def test_install_puts_every_part_in_its_place(staged):
    assert PAMDIR.endswith("/security")
    missing = [f for f in WANTED if not (staged / f).is_file()]
    assert not missing, sorted(files_under(staged))
    for prog in ("usr/bin/turnstiled", "usr/libexec/turnstiled/turnstiled-holder",
                 "etc/sv/turnstiled/run"):
        assert os.access(staged / prog, os.X_OK), prog


def test_the_installed_config_and_services_name_the_installed_paths(staged):
    conf = (staged / "etc/turnstile/turnstiled.conf").read_text()
    assert "holder_path = /usr/libexec/turnstiled/turnstiled-holder" in conf
    run = (staged / "etc/sv/turnstiled/run").read_text()
    assert "exec /usr/bin/turnstiled -c /etc/turnstile/turnstiled.conf" in run
    assert "@" not in run + (staged / "etc/dinit.d/turnstiled").read_text()


def test_the_installed_programs_run(staged):
    env = {**os.environ, "PYTHONPATH": str(site_packages(staged))}
    check = subprocess.run([staged / "usr/bin/turnstiled", "--check-config", "-c",
                            staged / "etc/turnstile/turnstiled.conf"],
                           capture_output=True, text=True, env=env)
    assert check.returncode == 0, check.stdout + check.stderr
    ctl = subprocess.run([staged / "usr/bin/turnstilectl", "--help"], capture_output=True,
                         text=True, env=env)
    assert ctl.returncode == 0 and "list-sessions" in ctl.stdout
    version = subprocess.run([staged / "usr/bin/turnstiled", "--version"],
                             capture_output=True, text=True, env=env)
    assert version.stdout.strip().endswith("0.1.0")
    # The package imported is the installed one, not the checkout's.
    where = subprocess.run([PYTHON, "-c", "import turnstiled; print(turnstiled.__file__)"],
                           capture_output=True, text=True, env=env, cwd="/")
    assert where.stdout.startswith(str(staged))


def test_uninstall_leaves_only_what_was_there(tmp_path):
    (tmp_path / "etc" / "ours").mkdir(parents=True)
    (tmp_path / "etc" / "ours" / "file").write_text("not theirs\n")
    make("install", f"DESTDIR={tmp_path}", "PREFIX=/usr")
    make("uninstall", f"DESTDIR={tmp_path}", "PREFIX=/usr")
    left = sorted(str(p.relative_to(tmp_path)) for p in tmp_path.rglob("*"))
    assert left == ["etc", "etc/ours", "etc/ours/file"]


def test_a_changed_config_is_never_replaced(tmp_path):
    make("install", f"DESTDIR={tmp_path}", "PREFIX=/usr")
    conf = tmp_path / "etc/turnstile/turnstiled.conf"
    conf.write_text(conf.read_text() + "backend = dinit\n")
    res = make("install", f"DESTDIR={tmp_path}", "PREFIX=/usr")
    assert "backend = dinit" in conf.read_text()
    assert (tmp_path / "etc/turnstile/turnstiled.conf.new").is_file()
    assert "kept the changed" in res.stdout
    make("uninstall", f"DESTDIR={tmp_path}", "PREFIX=/usr")
    assert conf.is_file()  # the admin's, kept


# -- man pages


MAN = REPO_ROOT / "man"


@pytest.mark.parametrize("page", sorted(p.name[:-4] for p in MAN.glob("*.scd")))
def test_every_man_page_renders_and_lints_clean(page, staged):
    section = page.rsplit(".", 1)[1]
    built = staged / f"usr/share/man/man{section}/{page}"
    lint = subprocess.run(["mandoc", "-T", "lint", "-W", "warning", built],
                          capture_output=True, text=True)
    assert lint.returncode == 0 and not lint.stdout.strip(), lint.stdout + lint.stderr
    shown = subprocess.run(["man", "-l", built], capture_output=True, text=True,
                           env={**os.environ, "MANPAGER": "cat", "MANWIDTH": "80"})
    assert shown.returncode == 0 and "NAME" in shown.stdout, shown.stderr


def test_every_config_key_is_in_the_man_page():
    source = (REPO_ROOT / "turnstiled" / "config.py").read_text()
    keys = re.findall(r'^    "([a-z_]+)": _', source, re.M)
    page = (MAN / "turnstiled.conf.5.scd").read_text()
    assert len(keys) > 20
    assert [k for k in keys if f"*{k}*" not in page] == []


def test_every_turnstilectl_command_is_in_the_man_page():
    out = subprocess.run([PYTHON, "-m", "turnstiled.ctl", "--help"], capture_output=True,
                         text=True, cwd=REPO_ROOT).stdout
    # The commands' lines: two spaces, the name, its help.
    commands = re.findall(r"^    ([a-z]+(?:-[a-z]+)*)  ", out, re.M)
    page = (MAN / "turnstilectl.1.scd").read_text()
    assert len(commands) >= 10
    assert [c for c in commands if f"*{c}*" not in page] == []


# -- the runit service


def test_the_installed_runit_service_runs_the_daemon(tmp_path):
    """Installed on the live layout under tmp_path (no DESTDIR), so the run
    file names real paths; runsv runs it as runit would."""
    prefix, etc = tmp_path / "usr", tmp_path / "etc"
    make("install", f"PREFIX={prefix}", f"SYSCONFDIR={etc}", f"PAMDIR={tmp_path / 'pam'}")
    conf = etc / "turnstile" / "turnstiled.conf"
    state = tmp_path / "run"
    conf.write_text(conf.read_text() + f"socket_path = {state}/control.sock\n"
                    f"admin_socket_path = {state}/admin.sock\nstate_dir = {state}\n"
                    "backend = none\nadopt_timeout = 1\n"
                    # The machine's own cgroup tree is not the test's to change.
                    "cgroups = no\n")
    # The installed run alone: its log/run would write to /var/log.
    service = tmp_path / "service"
    service.mkdir()
    shutil.copy2(etc / "sv" / "turnstiled" / "run", service / "run")
    runsv = subprocess.Popen(["runsv", str(service)], stdout=subprocess.DEVNULL,
                             stderr=subprocess.DEVNULL,
                             env={**os.environ, "PYTHONPATH": str(site_packages(prefix))})
    try:
        assert wait_for(lambda: (state / "control.sock").exists(), 15)
        down = subprocess.run(["sv", "down", str(service)], capture_output=True, text=True,
                              timeout=30)
        assert down.returncode == 0, down.stdout + down.stderr
        assert wait_for(lambda: "down" in subprocess.run(
            ["sv", "status", str(service)], capture_output=True, text=True).stdout, 15)
    finally:
        subprocess.run(["sv", "exit", str(service)], capture_output=True)
        runsv.wait(15)
        time.sleep(0.1)
