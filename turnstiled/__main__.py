"""turnstiled [-c FILE] [--check-config]"""

from __future__ import annotations

import logging
import sys

from . import __version__, config, daemon
from . import log as logsetup

USAGE = f"""usage: turnstiled [-c FILE] [--check-config] [--version]

Login session tracker and user service manager launcher.

  -c, --config FILE  configuration file (default {config.DEFAULT_PATH})
  --check-config     validate the configuration, print problems and exit
  --version          print the version and exit"""


class _Args:
    config = config.DEFAULT_PATH
    check_config = False


def _parse(argv: list[str]) -> _Args | int:
    """The command line; an exit status when it is done with (help, errors).
    (Not argparse: the daemon keeps every module it imports for its life.)"""
    args = _Args()
    rest = list(argv)
    while rest:
        arg = rest.pop(0)
        if arg in ("-h", "--help"):
            print(USAGE)
            return 0
        if arg == "--version":
            print(f"turnstiled {__version__}")
            return 0
        if arg == "--check-config":
            args.check_config = True
        elif arg in ("-c", "--config") and rest:
            args.config = rest.pop(0)
        elif arg.startswith("--config="):
            args.config = arg.split("=", 1)[1]
        else:
            print(f"{USAGE}\nturnstiled: unexpected argument {arg!r}", file=sys.stderr)
            return 2
    return args


def main(argv: list[str] | None = None) -> int:
    args = _parse(sys.argv[1:] if argv is None else argv)
    if isinstance(args, int):
        return args

    cfg, problems = config.load(args.config)
    if args.check_config:
        for problem in problems:
            print(problem, file=sys.stderr)
        if not problems:
            print(f"{args.config}: ok")
        return 1 if problems else 0

    logsetup.setup(cfg)
    for problem in problems:
        logging.getLogger("turnstiled").warning("config: %s", problem)
    daemon.serve(cfg)
    return 0


if __name__ == "__main__":
    sys.exit(main())
