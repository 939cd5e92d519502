"""turnstiled [-c FILE] [--check-config]"""

from __future__ import annotations

import sys

# asyncio imports ssl when it can: OpenSSL would cost the daemon, which
# never speaks TLS, about 3.5 MB of memory for its whole life.
sys.modules.setdefault("ssl", None)  # type: ignore[arg-type]

import argparse  # noqa: E402
import asyncio  # noqa: E402
import logging  # noqa: E402

from . import __version__, config, daemon  # noqa: E402
from . import log as logsetup  # noqa: E402


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="turnstiled", description="Login session tracker and user service manager launcher.")
    parser.add_argument("-c", "--config", default=config.DEFAULT_PATH,
                        help=f"configuration file (default {config.DEFAULT_PATH})")
    parser.add_argument("--check-config", action="store_true",
                        help="validate the configuration, print problems and exit")
    parser.add_argument("--version", action="version", version=f"turnstiled {__version__}")
    args = parser.parse_args(argv)

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
    asyncio.run(daemon.serve(cfg))
    return 0


if __name__ == "__main__":
    sys.exit(main())
