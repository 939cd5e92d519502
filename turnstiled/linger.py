"""Linger: whether a user's manager outlives their last logout.

`linger = yes` keeps every manager, `no` none, `maybe` (upstream's default)
those whose user has a file in linger_dir, as logind's /var/lib/systemd/linger.
"""

from __future__ import annotations

import os

from .config import Config


def wants_linger(config: Config, username: str) -> bool:
    if config.linger == "yes":
        return True
    if config.linger == "no":
        return False
    return os.path.isfile(os.path.join(config.linger_dir, username))
