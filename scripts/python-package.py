"""python-package.py: the Python half of `make install` and `make uninstall`,
run by the interpreter whose site-packages receive the package.

  check                  pip and the build requirements are there
  dirs PREFIX            the commands' and the package's directories
  install DESTDIR PREFIX pip install --root DESTDIR --prefix PREFIX, tidied
  uninstall DESTDIR PREFIX  removes it again, file by file from its RECORD
                         (pip cannot uninstall from a DESTDIR tree)

Debian's interpreter installs a --prefix into PREFIX/local/... (its
posix_local scheme) unless DEB_PYTHON_INSTALL_LAYOUT=deb_system, which
gives PREFIX/bin and PREFIX/lib/python3/dist-packages; other interpreters
ignore the variable. PREFIX=/usr/local is Debian's posix_local with base
/usr, which its interpreter searches.
"""

from __future__ import annotations

import glob
import importlib.metadata
import itertools
import os
import subprocess
import sys
import sysconfig

PACKAGE = "turnstiled"


def fail(msg: str) -> int:
    print(f"make install: {msg}", file=sys.stderr)
    return 1


def version_of(dist: str) -> tuple[int, ...] | None:
    # Read from the installed metadata: importing setuptools (or even
    # looking pip up) here would trip setuptools' distutils shim.
    try:
        text = importlib.metadata.version(dist)
    except importlib.metadata.PackageNotFoundError:
        return None
    parts = []
    for part in text.split(".")[:2]:
        digits = "".join(itertools.takewhile(str.isdigit, part))
        parts.append(int(digits or 0))
    return tuple(parts)


def check() -> int:
    missing = [d for d in ("pip", "setuptools") if version_of(d) is None]
    setuptools = version_of("setuptools")
    if setuptools is not None and setuptools < (61,):
        missing.append("setuptools>=61")
    # Before 70.1 setuptools builds wheels with the wheel package's
    # bdist_wheel; pip then fails with "invalid command 'bdist_wheel'".
    if setuptools is not None and setuptools < (70, 1) and version_of("wheel") is None:
        missing.append("wheel")
    if missing:
        return fail(f"{sys.executable} lacks {', '.join(missing)}: install them "
                    "(Debian: python3-pip python3-setuptools python3-wheel) "
                    "or pass PYTHON=an interpreter that has them")
    return 0


def layout(prefix: str) -> tuple[str, str | None]:
    """The --prefix for pip and the DEB_PYTHON_INSTALL_LAYOUT that picks
    its scheme (None: unset)."""
    local = "posix_local" in sysconfig.get_scheme_names() and \
        sysconfig.get_default_scheme() == "posix_local"
    if local and os.path.normpath(prefix) == "/usr/local":
        return "/usr", None
    return prefix, "deb_system"


def with_layout(value: str | None) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k != "DEB_PYTHON_INSTALL_LAYOUT"}
    if value is not None:
        env["DEB_PYTHON_INSTALL_LAYOUT"] = value
    return env


def paths(prefix: str) -> tuple[str, str]:
    """Where pip puts the commands and the package for PREFIX, as the
    interpreter's sysconfig says (pip asks it the same way)."""
    pip_prefix, value = layout(prefix)
    saved = dict(os.environ)
    os.environ.clear()
    os.environ.update(with_layout(value))
    try:
        got = sysconfig.get_paths(sysconfig.get_preferred_scheme("prefix"),
                                  vars={"base": pip_prefix, "platbase": pip_prefix})
    finally:
        os.environ.clear()
        os.environ.update(saved)
    return got["scripts"], got["purelib"]


def staged(destdir: str, path: str) -> str:
    return os.path.join(destdir or "/", path.lstrip("/"))


def install(destdir: str, prefix: str) -> int:
    pip_prefix, value = layout(prefix)
    env = dict(with_layout(value), PIP_ROOT_USER_ACTION="ignore")
    src = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    # --no-compile: byte code made here would name the DESTDIR paths;
    # packagers byte-compile at install time (Debian's py3compile, xbps's
    # pycompile), and Python writes its own cache where it may.
    res = subprocess.run([sys.executable, "-m", "pip", "install", "-q", "--root", destdir or "/",
                          "--prefix", pip_prefix, "--no-deps", "--ignore-installed",
                          "--no-build-isolation", "--no-compile", "--no-warn-script-location",
                          "--disable-pip-version-check", src], env=env)
    if res.returncode != 0:
        return res.returncode
    scripts, purelib = paths(prefix)
    for info in glob.glob(os.path.join(staged(destdir, purelib), f"{PACKAGE}-*.dist-info")):
        # direct_url.json names the build directory: not the installed
        # system's business.
        direct = os.path.join(info, "direct_url.json")
        if os.path.exists(direct):
            os.unlink(direct)
            record = os.path.join(info, "RECORD")
            with open(record) as f:
                lines = [line for line in f if not line.startswith(
                    os.path.basename(info) + "/direct_url.json,")]
            with open(record, "w") as f:
                f.writelines(lines)
    if os.path.realpath(purelib) not in {os.path.realpath(p) for p in sys.path if p}:
        print(f"note: {sys.executable} does not search {purelib}; the commands need "
              f"PYTHONPATH={purelib}")
    return 0


def uninstall(destdir: str, prefix: str) -> int:
    root = staged(destdir, prefix)
    sites = {staged(destdir, paths(prefix)[1])}
    # Where other layouts put it: site-packages, Debian's dist-packages,
    # and PREFIX/local/... from an install without deb_system.
    for top in (root, os.path.join(root, "local")):
        sites.update(glob.glob(os.path.join(top, "lib", "python3*", "*-packages")))
    records = [r for site in sorted(sites) for r in
               glob.glob(os.path.join(site, f"{PACKAGE}-*.dist-info", "RECORD"))]
    for record in records:
        site = os.path.dirname(os.path.dirname(record))
        dirs = set()
        with open(record) as f:
            for line in f:
                path = os.path.normpath(os.path.join(site, line.rsplit(",", 2)[0]))
                if os.path.isfile(path) or os.path.islink(path):
                    os.unlink(path)
                # Only the package's own directories; the site and bin
                # directories are the system's (or the install manifest's).
                if os.path.dirname(path) != site and path.startswith(site + os.sep):
                    dirs.add(os.path.dirname(path))
        # Byte code pip did not list, then the package's directories left empty.
        for d in sorted(dirs, key=len, reverse=True):
            cache = os.path.join(d, "__pycache__")
            for pyc in glob.glob(os.path.join(cache, "*.pyc")):
                os.unlink(pyc)
            for empty in (cache, d):
                try:
                    os.rmdir(empty)
                except OSError:
                    pass
    if not records:
        print(f"uninstall: no {PACKAGE} package under {root}")
    return 0


def main() -> int:
    cmd, args = sys.argv[1], sys.argv[2:]
    if cmd == "check":
        return check()
    if cmd == "dirs":
        print("\n".join(paths(args[0])))
        return 0
    if cmd == "install":
        return install(*args)
    if cmd == "uninstall":
        return uninstall(*args)
    print(__doc__, file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(main())
