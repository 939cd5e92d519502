"""Linger: whether a user's manager outlives their last logout.

`linger = yes` keeps every manager, `no` none, `maybe` (upstream's default)
those whose user has a file in linger_dir, as logind's /var/lib/systemd/linger.

As upstream, lingering is off when turnstiled does not manage the runtime
directory (services may rely on it and whoever manages it would remove it at
logout), unless TURNSTILED_LINGER_ENABLE_FORCE is set in the daemon's
environment.
"""

from __future__ import annotations

import os

from .config import Config

FORCE_ENV = "TURNSTILED_LINGER_ENABLE_FORCE"


def disabled_reason(config: Config) -> str | None:
    """Why lingering cannot happen at all under this config, or None."""
    if config.linger == "no":
        return "linger = no in the configuration"
    if not config.manage_rundir and not os.environ.get(FORCE_ENV):
        return (f"manage_rundir = no: lingering needs turnstiled to manage the runtime "
                f"directory (set {FORCE_ENV}=1 in turnstiled's environment to force it)")
    return None


def has_file(config: Config, username: str) -> bool:
    return os.path.isfile(os.path.join(config.linger_dir, username))


def wants_linger(config: Config, username: str) -> bool:
    if disabled_reason(config) is not None:
        return False
    return config.linger == "yes" or has_file(config, username)


def set_file(config: Config, username: str, enabled: bool) -> None:
    path = os.path.join(config.linger_dir, username)
    if enabled:
        os.makedirs(config.linger_dir, mode=0o755, exist_ok=True)
        with open(path, "a"):
            pass
    else:
        try:
            os.unlink(path)
        except FileNotFoundError:
            pass


def lingering_users(config: Config) -> list[str]:
    """The users whose managers start with the daemon (linger files)."""
    if disabled_reason(config) is not None:
        return []
    try:
        names = os.listdir(config.linger_dir)
    except FileNotFoundError:
        return []
    return sorted(n for n in names if has_file(config, n))
