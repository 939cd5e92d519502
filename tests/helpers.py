"""What every test module may need, each in one place: where the checkout
is, PAM's numbers, and how to read a state file.

Nothing here depends on turnstiled's own code: a bug shared by the daemon
and these helpers would otherwise go unseen.
"""

from __future__ import annotations

import os
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parent.parent
TESTS_DIR = REPO_ROOT / "tests"

# -- PAM's numbers (security/_pam_types.h)

# Return codes.
PAM_SUCCESS = 0
PAM_BUF_ERR = 5
PAM_PERM_DENIED = 6
PAM_SESSION_ERR = 14

# pam_set_item item types.
PAM_SERVICE = 1
PAM_USER = 2
PAM_TTY = 3
PAM_RHOST = 4
PAM_CONV = 5
PAM_RUSER = 8
PAM_XDISPLAY = 11

# Conversation message styles.
PAM_ERROR_MSG = 3
PAM_TEXT_INFO = 4


# -- state files


def read_kv(path: str | os.PathLike) -> dict[str, str] | None:
    """A KEY=VALUE file (a state file, an env dump) as a dict; None when it
    does not exist."""
    try:
        text = Path(path).read_text()
    except FileNotFoundError:
        return None
    out = {}
    for line in text.splitlines():
        key, sep, value = line.partition("=")
        if sep:
            out[key] = value
    return out
