"""turnstile-update-runit-env VAR|VAR=VALUE ...

Writes values into the user's runit env dir (TURNSTILE_ENV_DIR), one file
per variable, which the user's services read with `chpst -e`. VAR alone
takes the value from the caller's environment (unset: the variable is
removed from the services' environment).
"""

from __future__ import annotations

import argparse
import os
import re
import secrets
import subprocess
import sys

from .config import DEFAULT_PATH

_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")


def env_dir_from_conf(conf_dir: str) -> str:
    """service_env_dir as runit.conf sets it (POSIX sh, so sh evaluates it)."""
    conf = os.path.join(conf_dir, "runit.conf")
    script = ('[ -r "$1" ] && . "$1"; '
              'printf %s "${service_env_dir:-$HOME/.config/service-env}"')
    out = subprocess.run(["/bin/sh", "-c", script, "sh", conf], capture_output=True,
                         text=True, check=False)
    return out.stdout


def write_value(env_dir: int, name: str, value: str | None) -> None:
    """Replaces NAME in the env dir (a directory fd). chpst -e: an empty file
    removes the variable, otherwise the first line is its value.

    The dir may be a user's and the caller root: the temporary file is new
    (O_EXCL, a name nobody could guess), nothing is followed through a
    symlink, and the rename replaces whatever is at NAME, never its target."""
    tmp = f".{name}.{secrets.token_hex(8)}.tmp"
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC,
                 0o644, dir_fd=env_dir)
    try:
        with open(fd, "w", closefd=False) as f:
            if value is not None:
                f.write(value + "\n")
        os.replace(tmp, name, src_dir_fd=env_dir, dst_dir_fd=env_dir)
    except BaseException:
        os.unlink(tmp, dir_fd=env_dir)
        raise
    finally:
        os.close(fd)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="turnstile-update-runit-env",
        description="Update the chpst(8) env dir shared by your runit user services.")
    parser.add_argument("vars", nargs="+", metavar="VAR|VAR=VALUE")
    parser.add_argument("-d", "--env-dir", help="the env dir (default: $TURNSTILE_ENV_DIR, "
                        "else service_env_dir from the backend's runit.conf)")
    parser.add_argument("-c", "--config", default=DEFAULT_PATH,
                        help="turnstiled.conf whose backend/runit.conf to read")
    args = parser.parse_args(argv)

    updates: list[tuple[str, str | None]] = []
    for item in args.vars:
        name, sep, value = item.partition("=")
        if not _NAME.match(name):
            parser.error(f"{name!r} is not a variable name")
        if sep and "\n" in value:
            parser.error(f"{name}: the value has a newline; chpst -e reads only the first line")
        updates.append((name, value if sep else os.environ.get(name)))

    env_dir = args.env_dir or os.environ.get("TURNSTILE_ENV_DIR") or env_dir_from_conf(
        os.path.join(os.path.dirname(os.path.abspath(args.config)), "backend"))
    try:
        os.makedirs(env_dir, exist_ok=True)
        dirfd = os.open(env_dir, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC)
        try:
            for name, value in updates:
                write_value(dirfd, name, value)
        finally:
            os.close(dirfd)
    except OSError as err:
        print(f"turnstile-update-runit-env: {env_dir}: {err.strerror}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
