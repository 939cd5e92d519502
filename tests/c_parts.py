"""The C parts under test, built from the checkout when missing or older
than their source, or named by an environment variable (a prebuilt one,
upstream's module say, used as is)."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest
from helpers import REPO_ROOT

MODULE_REL = "pam/pam_turnstile.so"
# Names a prebuilt PAM module to test instead of building pam/pam_turnstile.so.
MODULE_ENV = "TURNSTILED_TEST_PAM_MODULE"
HOLDER_REL = "holder/turnstiled-holder"
HOLDER_ENV = "TURNSTILED_TEST_HOLDER"
FDSTORE_REL = "holder/turnstiled-fdstore"
FDSTORE_ENV = "TURNSTILED_TEST_FDSTORE"


_builds: dict[str, dict[str, object]] = {}


def _build(rel: str, src_rel: str, override_env: str) -> Path:
    """REPO_ROOT/rel, built with `make rel` when missing or older than its
    source; $override_env names a prebuilt file to use instead. Skips the
    calling test (with the reason) when it cannot be built; the outcome is
    remembered for the whole run."""
    done = _builds.setdefault(rel, {})
    if "path" in done:
        return done["path"]  # type: ignore[return-value]
    if "skip" in done:
        pytest.skip(str(done["skip"]))
    override = os.environ.get(override_env)
    if override:
        # Built elsewhere (e.g. upstream's module, which speaks the same
        # protocol); used as is, never rebuilt.
        path = Path(override).resolve()
        if not path.is_file():
            pytest.fail(f"{override_env}={override}: no such file")
        done["path"] = path
        return path
    out, src = REPO_ROOT / rel, REPO_ROOT / src_rel
    reason = None
    if not src.exists() and not out.exists():
        reason = f"{src} does not exist"
    elif src.exists() and (not out.exists() or out.stat().st_mtime < src.stat().st_mtime):
        try:
            res = subprocess.run(["make", rel], cwd=REPO_ROOT, capture_output=True,
                                 text=True, timeout=120, check=False)
        except (OSError, subprocess.TimeoutExpired) as err:
            reason = f"cannot run make for {rel}: {err}"
        else:
            if res.returncode != 0 or not out.exists():
                tail = (res.stdout + res.stderr).strip()[-2000:]
                reason = f"`make {rel}` failed (exit {res.returncode}):\n{tail}"
    if reason is not None:
        done["skip"] = reason
        pytest.skip(reason)
    done["path"] = out
    return out


def build_module() -> Path:
    """pam/pam_turnstile.so ($TURNSTILED_TEST_PAM_MODULE names another)."""
    return _build(MODULE_REL, "pam/pam_turnstile.c", MODULE_ENV)


def build_holder() -> Path:
    """holder/turnstiled-holder ($TURNSTILED_TEST_HOLDER names another)."""
    return _build(HOLDER_REL, "holder/turnstiled-holder.c", HOLDER_ENV)


def build_fdstore() -> Path:
    """holder/turnstiled-fdstore ($TURNSTILED_TEST_FDSTORE names another)."""
    return _build(FDSTORE_REL, "holder/turnstiled-fdstore.c", FDSTORE_ENV)
