"""The dinit backend's `run` (and its usage and `stop`) alone, against
stand-ins for dinit, dinitctl and dinit-monitor (tests/dinit.py's
fake_dinit, named in each test's docstring).

`run` sources /etc/profile, which may reset PATH, and looks for dinit and
dinit-monitor on that PATH and the login's: a dinit of the machine's would
be found and run. So each run here (dinit.Run) has a mount namespace of its
own in which /etc/profile is the test's: it sets PATH to a directory of the
few tools the backend and the stand-ins call, and the login's PATH is that
directory too unless a test says otherwise.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
from pathlib import Path
from types import SimpleNamespace

import pytest
from dinit import BACKEND, BACKEND_CONF, Run, fake_dinit, write_script


@pytest.fixture
def run(tmp_path) -> Run:
    return Run(tmp_path)


@pytest.fixture
def ran(run) -> SimpleNamespace:
    """A run with stand-ins for dinit, dinitctl and dinit-monitor in
    dinit_path (fake_dinit) and a system boot dir whose name has a blank:
    run, bindir, system_boot, sock, boot_d, and what the fifo got (ready)."""
    bindir = fake_dinit(run.root / "bin", run.out)
    system_boot = run.root / "system boot.d"
    system_boot.mkdir()
    run.conf(f"dinit_path={bindir}", f"system_boot_dir='{system_boot}'")
    res, ready = run()
    assert res.returncode == 0, res.stderr
    assert res.stderr == ""
    return SimpleNamespace(run=run, bindir=bindir, system_boot=system_boot, ready=ready,
                           sock=f"{run.rundir}/dinitctl",
                           boot_d=f"{run.home}/.config/dinit.d/boot.d")


# -- what run writes and execs


def test_run_execs_dinit_with_the_services_dirs_and_the_targets(ran):
    run = ran.run
    assert int((run.out / "pid").read_text()) == run.pid  # exec'd: the same process
    assert run.argv() == [
        "--user", "--ready-fd", "3", "--socket-path", ran.sock,
        "--services-dir", str(run.srvdir),
        "--services-dir", f"{run.home}/.config/dinit.d",
        "--services-dir", "/etc/dinit.d/user",
        "--services-dir", "/usr/local/lib/dinit.d/user",
        "--services-dir", "/usr/lib/dinit.d/user",
        "login.target", "graphical.target"]


def test_run_hands_ready_dinitctl_the_boot_dirs_and_the_socket(ran):
    # run's lines, then the socket path and NUL dinit wrote
    lines = f"{ran.bindir}/dinitctl\n{ran.boot_d}\n{ran.system_boot}\n"
    assert ran.ready == f"{lines}{ran.sock}\0".encode()


def test_run_writes_boot_system_and_login_target(ran):
    run = ran.run
    assert os.path.isdir(ran.boot_d)  # made when missing
    assert run.service("boot") == ["type = internal", "depends-on = system",
                                   "depends-on = login.target", f'waits-for.d = "{ran.boot_d}"']
    assert run.service("system") == ["type = internal", f'waits-for.d = "{ran.system_boot}"']
    assert run.service("login.target") == ["type = internal"]


def test_run_writes_the_graphical_target_and_its_monitor(ran):
    run, bindir, sock = ran.run, ran.bindir, ran.sock
    assert run.service("graphical.target") == ["type = triggered", "depends-on = login.target",
                                               "waits-for = graphical.monitor"]
    assert run.service("graphical.monitor") == [
        "type = process", "depends-on = login.target",
        f'command = "{bindir}/dinit-monitor" -E -i --socket-path "{sock}" '
        f'-c "/bin/sh {run.srvdir}/.graphical-notify %s" WAYLAND_DISPLAY DISPLAY']
    notify = (run.srvdir / ".graphical-notify").read_text()
    assert f"'{bindir}/dinitctl' --quiet --socket-path '{sock}' trigger graphical.target" in notify


def test_run_puts_dinit_path_first_on_dinits_path(ran):
    dinit_env = ran.run.env()
    assert dinit_env["PATH"].split(":")[0] == str(ran.bindir)
    assert dinit_env["XDG_RUNTIME_DIR"] == str(ran.run.rundir)


def test_run_without_a_runtime_dir_uses_the_home_socket(run):
    """Stand-in dinit (fake_dinit)."""
    bindir = fake_dinit(run.root / "bin", run.out)
    run.conf(f"dinit_path={bindir}")
    res, ready = run(env={"XDG_RUNTIME_DIR": ""})
    assert res.returncode == 0, res.stderr
    assert ready.endswith(f"\n{run.home}/.dinitctl\0".encode())


# -- finding dinit and dinit-monitor


def test_run_finds_dinit_on_the_login_path(run):
    """Stand-in dinit (fake_dinit), on the login's PATH only: the
    /etc/profile here resets PATH to the tools."""
    bindir = fake_dinit(run.root / "bin", run.out)
    res, ready = run(path=f"{bindir}:{run.tools}")
    assert res.returncode == 0, res.stderr
    assert ready.startswith(f"{bindir}/dinitctl\n".encode())
    assert run.env()["PATH"] == str(run.tools), "the profile's PATH, without the stand-ins"


def test_run_reports_a_missing_dinit(run):
    res, ready = run()
    assert res.returncode == 69
    assert "dinit not found" in res.stderr and "dinit_path" in res.stderr
    assert ready == b""


@pytest.mark.parametrize("version", ["0.16.1", "0.9.0", "0.16"])
def test_run_refuses_dinit_older_than_0_17(run, version):
    """Stand-in: a dinit that prints an old version (fake_dinit)."""
    bindir = fake_dinit(run.root / "bin", run.out, version=version)
    run.conf(f"dinit_path={bindir}")
    res, ready = run()
    assert res.returncode == 69
    assert (f"{bindir}/dinit is dinit {version}; turnstiled's dinit backend needs dinit "
            "0.17.0 or later") in res.stderr
    assert not (run.out / "argv").exists() and ready == b""


@pytest.mark.parametrize("version", ["0.17.0", "0.17", "0.19.1", "1.0.0", "0.100.2"])
def test_run_accepts_dinit_0_17_and_later(run, version):
    """Stand-in: a dinit that prints the version (fake_dinit)."""
    bindir = fake_dinit(run.root / "bin", run.out, version=version, monitor=None)
    run.conf(f"dinit_path={bindir}")
    res, _ = run()
    assert res.returncode == 0, res.stderr


def test_run_refuses_a_dinit_of_unknown_version(run):
    """Stand-in: a dinit whose --version prints something else."""
    bindir = fake_dinit(run.root / "bin", run.out)
    write_script(bindir / "dinit", "echo 'something else'")
    run.conf(f"dinit_path={bindir}")
    res, _ = run()
    assert res.returncode == 69
    assert "cannot tell the version" in res.stderr


def answers_kept(run) -> tuple[Path, dict[str, int]]:
    """Runs once with stand-ins (fake_dinit), whose answers are kept, then
    makes them answer otherwise (dinit 0.9.0, a dinit-monitor without -E):
    their dir, and the mtimes the first ones had."""
    bindir = fake_dinit(run.root / "bin", run.out)
    run.conf(f"dinit_path={bindir}")
    res, _ = run()
    assert res.returncode == 0 and res.stderr == ""
    mtimes = {n: os.stat(bindir / n).st_mtime_ns for n in ("dinit", "dinit-monitor")}
    fake_dinit(bindir, run.out, version="0.9.0", monitor="old")
    return bindir, mtimes


def test_run_keeps_what_dinit_and_dinit_monitor_said(run):
    """Stand-ins (answers_kept), asked for their version and -E at the first
    run only: the answers are kept while the programs' mtimes stay."""
    bindir, mtimes = answers_kept(run)
    kept = run.home / ".cache" / "turnstiled"
    assert (kept / "dinit").read_text() == f"{bindir}/dinit\n0.22.1\n"
    assert (kept / "dinit-monitor").read_text() == f"{bindir}/dinit-monitor\n-E\n"
    for name, ns in mtimes.items():
        os.utime(bindir / name, ns=(ns, ns))
    res, _ = run()
    assert res.returncode == 0 and res.stderr == ""
    assert run.argv()[-1] == "graphical.target"


def test_run_asks_again_when_a_programs_mtime_changes(run):
    """Stand-ins (answers_kept) with a new mtime, even an older one."""
    bindir, mtimes = answers_kept(run)
    for name, ns in mtimes.items():
        os.utime(bindir / name, ns=(ns, ns - 10**9))
    res, _ = run()
    assert res.returncode == 69 and "is dinit 0.9.0" in res.stderr


def test_run_without_dinit_monitor_leaves_graphical_out(run):
    """Stand-in dinit without a dinit-monitor (fake_dinit)."""
    bindir = fake_dinit(run.root / "bin", run.out, monitor=None)
    run.conf(f"dinit_path={bindir}")
    res, _ = run()
    assert res.returncode == 0, res.stderr
    assert res.stderr == ""
    assert run.argv()[-1] == "login.target"
    assert not (run.srvdir / "graphical.target").exists()
    assert not (run.srvdir / "graphical.monitor").exists()
    assert "graphical" not in " ".join(run.service("boot"))


@pytest.mark.parametrize("dinit_version,monitor,message", [
    ("0.22.1", "old", "dinit-monitor has no -E (--env); it needs dinit-monitor 0.19.1"),
    ("0.18.0", "env", "is dinit 0.18.0; dinit-monitor -E needs dinit 0.19.1 or later"),
])
def test_run_with_an_old_dinit_monitor_leaves_graphical_out(run, dinit_version, monitor,
                                                            message):
    """Stand-ins: dinit printing the version, dinit-monitor with or without
    -E in its --help (fake_dinit). The real 0.19.1 calls itself 0.19.0."""
    bindir = fake_dinit(run.root / "bin", run.out, version=dinit_version, monitor=monitor)
    run.conf(f"dinit_path={bindir}")
    res, _ = run()
    assert res.returncode == 0, res.stderr
    assert "graphical.target left out" in res.stderr and message in res.stderr
    assert run.argv()[-1] == "login.target"
    assert not (run.srvdir / "graphical.target").exists()


# -- the config


def test_run_with_a_conf_whose_last_command_fails(run):
    """Stand-in dinit (fake_dinit). A sourced file's status is its last
    command's; it is not an error."""
    bindir = fake_dinit(run.root / "bin", run.out)
    run.conf(f"dinit_path={bindir}", "[ -e /nonexistent ] && dinit_args=--quiet")
    res, ready = run()
    assert res.returncode == 0, res.stderr
    assert ready.endswith(b"/run/dinitctl\0")


def test_run_takes_the_dinit_program_as_dinit_path(run):
    """Stand-in dinit (fake_dinit)."""
    bindir = fake_dinit(run.root / "bin", run.out)
    run.conf(f"dinit_path={bindir}/dinit")
    res, ready = run()
    assert res.returncode == 0, res.stderr
    assert ready.endswith(b"/run/dinitctl\0")
    assert run.argv()[-1] == "graphical.target"


def test_run_passes_dinit_args_split_at_blanks_and_unglobbed(run):
    """Stand-in dinit without a dinit-monitor (fake_dinit): login.target is
    the last target."""
    bindir = fake_dinit(run.root / "bin", run.out, monitor=None)
    run.conf(f"dinit_path={bindir}", "dinit_args='--quiet  --log-file /x/*'")
    res, _ = run()
    assert res.returncode == 0, res.stderr
    assert run.argv()[-4:] == ["--quiet", "--log-file", "/x/*", "login.target"]


def test_run_takes_services_dirs_up_to_the_first_empty_one(run):
    """Stand-in dinit (fake_dinit)."""
    bindir = fake_dinit(run.root / "bin", run.out, monitor=None)
    run.conf(f"dinit_path={bindir}", "services_dir1=/one", "services_dir2='/two and a half'",
             "services_dir3=", "services_dir4=/four")
    res, _ = run()
    assert res.returncode == 0, res.stderr
    argv = run.argv()
    dirs = [argv[i + 1] for i, a in enumerate(argv) if a == "--services-dir"]
    assert dirs == [str(run.srvdir), "/one", "/two and a half"]


def test_run_uses_the_configured_boot_dirs(run):
    """Stand-in dinit (fake_dinit). An empty system_boot_dir: nothing."""
    bindir = fake_dinit(run.root / "bin", run.out, monitor=None)
    run.conf(f"dinit_path={bindir}", 'boot_dir="$HOME/my boot.d"', "system_boot_dir=")
    res, _ = run()
    assert res.returncode == 0, res.stderr
    assert (run.home / "my boot.d").is_dir()
    assert run.service("boot")[-1] == f'waits-for.d = "{run.home}/my boot.d"'
    assert run.service("system") == ["type = internal"]


def test_run_with_an_empty_boot_dir_waits_for_nothing(run):
    """Stand-in dinit (fake_dinit)."""
    bindir = fake_dinit(run.root / "bin", run.out, monitor=None)
    run.conf(f"dinit_path={bindir}", "boot_dir=")
    res, _ = run()
    assert res.returncode == 0, res.stderr
    assert run.service("boot") == ["type = internal", "depends-on = system",
                                   "depends-on = login.target"]
    assert not (run.home / ".config").exists()


def test_run_quotes_paths_for_dinit_and_sh(run):
    """Stand-ins for dinit and dinit-monitor (fake_dinit), in a directory
    whose name has a quote and a blank; dinitctl records its arguments."""
    bindir = fake_dinit(run.root / "it's bin", run.out)
    write_script(bindir / "dinitctl", f'printf "%s\\n" "$@" > {run.out}/ctl')
    run.conf(f"dinit_path='{run.root}/it'\\''s bin'",
             r"""boot_dir="$HOME/it's a \"q\" \\dir" """)
    res, ready = run()
    assert res.returncode == 0, res.stderr
    boot_dir = f"{run.home}/it's a \"q\" \\dir"
    assert os.path.isdir(boot_dir)
    assert run.service("boot")[-1] == \
        f'waits-for.d = "{run.home}/it\'s a \\"q\\" \\\\dir"'
    assert f"\n{boot_dir}\n".encode() in ready
    assert f'command = "{bindir}/dinit-monitor" -E' in run.service("graphical.monitor")[-1]
    # what dinit-monitor runs when a display appears
    notify = subprocess.run(["sh", str(run.srvdir / ".graphical-notify"), "set"],
                            capture_output=True, text=True, timeout=10)
    assert notify.returncode == 0, notify.stderr
    assert (run.out / "ctl").read_text().splitlines() == [
        "--quiet", "--socket-path", f"{run.rundir}/dinitctl", "trigger", "graphical.target"]


def test_run_refuses_paths_dinit_would_misread(run):
    """Stand-in dinit (fake_dinit)."""
    bindir = fake_dinit(run.root / "bin", run.out)
    run.conf(f"dinit_path={bindir}", "boot_dir='/tmp/$NOPE'")
    res, ready = run()
    assert res.returncode == 69
    assert "/tmp/$NOPE" in res.stderr and "dinit would misread" in res.stderr
    assert ready == b""


# -- arguments, usage, stop


@pytest.mark.parametrize("args,message", [
    (lambda run: [run.root / "plain", run.srvdir], "is not a fifo"),
    (lambda run: [run.fifo, run.root / "missing"], "is not a writable directory"),
    (lambda run: [run.fifo, "relative/srv"], "is not an absolute path"),
], ids=["not a fifo", "missing srvdir", "relative srvdir"])
def test_run_checks_its_arguments(run, args, message):
    """Stand-in dinit (fake_dinit), never run."""
    bindir = fake_dinit(run.root / "bin", run.out)
    run.conf(f"dinit_path={bindir}")
    (run.root / "plain").write_text("")
    res, _ = run("run", *map(str, args(run)), str(run.confdir))
    assert res.returncode == 69, res.stderr
    assert message in res.stderr
    assert not (run.out / "argv").exists()


def test_run_needs_the_home_directory(run):
    """Stand-in dinit (fake_dinit), never run."""
    bindir = fake_dinit(run.root / "bin", run.out)
    run.conf(f"dinit_path={bindir}")
    res, _ = run(env={"HOME": str(run.root / "nohome")})
    assert res.returncode == 70 and "home directory" in res.stderr
    assert not (run.out / "argv").exists()


def backend(*args: str) -> subprocess.CompletedProcess:
    """backends/dinit ARGS with only PATH set: for what it does before it
    reads a profile or looks for dinit."""
    return subprocess.run([str(BACKEND), *args], capture_output=True, text=True, timeout=10,
                          env={"PATH": "/usr/bin:/bin"})


@pytest.mark.parametrize("args", [[], ["bogus"], ["graphical-notify"]])
def test_usage(args):
    res = backend(*args)
    assert res.returncode == 64 and "usage:" in res.stderr


def test_stop_sends_term():
    victim = subprocess.Popen(["sleep", "30"])
    try:
        res = backend("stop", str(victim.pid))
        assert res.returncode == 0, res.stderr
        assert victim.wait(5) == -signal.SIGTERM
    finally:
        if victim.poll() is None:
            victim.kill()
            victim.wait(5)


@pytest.mark.parametrize("bad", ["", "12x", "-1"])
def test_stop_refuses_what_is_not_a_process_id(bad):
    res = backend("stop", bad)
    assert res.returncode == 64 and "not a process id" in res.stderr


def test_scripts_are_posix_sh():
    for shell in ("sh", "dash"):
        if shutil.which(shell) is None:
            continue
        res = subprocess.run([shell, "-n", str(BACKEND)], capture_output=True, text=True,
                             timeout=10)
        assert res.returncode == 0, res.stderr
    conf = subprocess.run(["sh", "-n", str(BACKEND_CONF)], capture_output=True, text=True,
                          timeout=10)
    assert conf.returncode == 0, conf.stderr
