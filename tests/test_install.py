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


def make(*args: str, python: str = PYTHON, ok: bool = True,
         **env: str) -> subprocess.CompletedProcess:
    res = subprocess.run(["make", "-s", "-C", str(REPO_ROOT), *args, f"PYTHON={python}"],
                         capture_output=True, text=True, timeout=300,
                         env={**os.environ, **env})
    if ok:
        assert res.returncode == 0, res.stdout + res.stderr
    return res


def files_under(root: Path) -> set[str]:
    return {str(p.relative_to(root)) for p in root.rglob("*") if not p.is_dir()}


def site_packages(root: Path) -> Path:
    (pkg,) = root.rglob("*-packages/turnstiled/__init__.py")
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


def test_the_staged_tree_names_no_build_or_staging_path(staged):
    assert not list(staged.rglob("*.pyc")) and not list(staged.rglob("direct_url.json"))
    (record,) = staged.rglob("turnstiled-*.dist-info/RECORD")
    assert "direct_url.json" not in record.read_text()


def tree(root: Path) -> list[str]:
    return sorted(str(p.relative_to(root)) for p in root.rglob("*"))


# Directories a system has before turnstiled comes, empty ones included
# (and install writes into the last three).
THERE_BEFORE = ["etc/ours", "etc/keepme", "usr/share/doc", "usr/bin", "etc/pam.d", PAMDIR]


def test_uninstall_leaves_only_what_was_there(tmp_path):
    for d in THERE_BEFORE:
        (tmp_path / d).mkdir(parents=True, exist_ok=True)
    (tmp_path / "etc" / "ours" / "file").write_text("not theirs\n")
    before = tree(tmp_path)
    make("install", f"DESTDIR={tmp_path}", "PREFIX=/usr")
    # A second install (an upgrade) keeps the first one's list of what it made.
    make("install", f"DESTDIR={tmp_path}", "PREFIX=/usr")
    make("uninstall", f"DESTDIR={tmp_path}", "PREFIX=/usr")
    assert tree(tmp_path) == before


SYSTEM_PYTHON = "/usr/bin/python3"


def system_python_can_build() -> str | None:
    """Why the system interpreter cannot run `make install`, or None."""
    if not os.access(SYSTEM_PYTHON, os.X_OK):
        return f"no {SYSTEM_PYTHON}"
    res = subprocess.run([SYSTEM_PYTHON, str(REPO_ROOT / "scripts" / "python-package.py"),
                          "check"], capture_output=True, text=True)
    return (res.stderr.strip() or "its check failed") if res.returncode else None


def test_install_with_the_system_python_puts_the_commands_where_the_services_look(tmp_path):
    """Debian's interpreter puts a --prefix install under PREFIX/local unless
    told its packaging layout; the service files name PREFIX/bin."""
    why = system_python_can_build()
    if why:
        pytest.skip(f"{SYSTEM_PYTHON} cannot build the package: {why}")
    (tmp_path / "etc" / "keepme").mkdir(parents=True)
    before = tree(tmp_path)
    make("install", f"DESTDIR={tmp_path}", "PREFIX=/usr", python=SYSTEM_PYTHON)
    assert not (tmp_path / "usr" / "local").exists(), tree(tmp_path)
    run = (tmp_path / "etc/sv/turnstiled/run").read_text()
    command = re.search(r"^exec (\S+) -c", run, re.M).group(1)
    assert command == "/usr/bin/turnstiled" and (tmp_path / command[1:]).is_file()
    site = site_packages(tmp_path)
    scheme = subprocess.run([SYSTEM_PYTHON, "-c", "import sysconfig; "
                             "print('deb_system' in sysconfig.get_scheme_names())"],
                            capture_output=True, text=True).stdout.strip()
    if scheme == "True":
        assert site == tmp_path / "usr/lib/python3/dist-packages"
    version = subprocess.run([tmp_path / "usr/bin/turnstiled", "--version"],
                             capture_output=True, text=True,
                             env={**os.environ, "PYTHONPATH": str(site)})
    assert version.returncode == 0 and version.stdout.strip().endswith("0.1.0"), version.stderr
    make("uninstall", f"DESTDIR={tmp_path}", "PREFIX=/usr", python=SYSTEM_PYTHON)
    assert tree(tmp_path) == before


def test_an_interpreter_without_the_build_tools_is_named_before_anything_is_installed(tmp_path):
    bare = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", bare], check=True)
    dest = tmp_path / "dest"
    dest.mkdir()
    res = make("install", f"DESTDIR={dest}", "PREFIX=/usr", python=str(bare / "bin/python"),
               ok=False)
    assert res.returncode != 0 and "lacks pip, setuptools: install them" in res.stderr
    assert list(dest.iterdir()) == []
    # pip and a setuptools before 70.1, which builds wheels only with wheel.
    # Stand-ins: metadata alone, which is what the check reads; no such
    # old setuptools is installable here, and nothing gets as far as a build.
    (site,) = bare.glob("lib/python3*/site-packages")
    for dist, version in (("pip", "23.0.1"), ("setuptools", "66.1.1")):
        info = site / f"{dist}-{version}.dist-info"
        info.mkdir()
        (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {dist}\n"
                                       f"Version: {version}\n")
    res = make("install", f"DESTDIR={dest}", "PREFIX=/usr", python=str(bare / "bin/python"),
               ok=False)
    assert res.returncode != 0 and "lacks wheel: install them" in res.stderr, res.stderr


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
    assert not conf.with_name("turnstiled.conf.new").exists()  # ours, gone


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
