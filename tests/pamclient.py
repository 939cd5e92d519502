"""Drive the real libpam from tests, with service files from a directory of ours.

Two ways, both on the real libpam and the real modules:

- `PamLogin` (alias `PamSession`): in-process with python-pam 2.1. python-pam
  binds `pam_start` itself, so an LD_PRELOADed pam_wrapper would be bypassed
  and /etc/pam.d would run; its `pam_start` is routed to libpam's
  `pam_start_confdir` (Linux-PAM >= 1.4) instead.
- `pamtester()`: out of process, a real login program's view, under
  pam_wrapper. pam_wrapper's variables are set for that subprocess only: it
  copies the service directory into one of a few /tmp/pam.X slots at process
  start, so they must never leak into the test process or the daemon.

Nothing here depends on turnstiled's own code: a bug shared by the daemon's
PAM helpers and these would otherwise go unseen.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import os
import subprocess
import threading
from collections.abc import Callable

from helpers import (
    PAM_BUF_ERR,
    PAM_CONV,
    PAM_ERROR_MSG,
    PAM_SUCCESS,
    PAM_TEXT_INFO,
    PAM_TTY,
    PAM_XDISPLAY,
)

import pam

PAM_WRAPPER_LIB = "libpam_wrapper.so"

_libpam = ctypes.CDLL(ctypes.util.find_library("pam"))
_start_confdir = _libpam.pam_start_confdir
_start_confdir.restype = ctypes.c_int
# (service, user, const struct pam_conv *, confdir, pam_handle_t **): python-pam
# hands over byref() pointers for the conversation and the handle.
_start_confdir.argtypes = [ctypes.c_char_p, ctypes.c_char_p, ctypes.c_void_p,
                           ctypes.c_char_p, ctypes.c_void_p]
_set_item = _libpam.pam_set_item
_set_item.restype = ctypes.c_int
_set_item.argtypes = [ctypes.c_void_p, ctypes.c_int, ctypes.c_char_p]
_strerror = _libpam.pam_strerror
_strerror.restype = ctypes.c_char_p
_strerror.argtypes = [ctypes.c_void_p, ctypes.c_int]


def confdir_pam_start(confdir: str | os.PathLike) -> Callable[..., int]:
    """A replacement for python-pam's `pam_start` (same call) that makes libpam
    read service files from confdir instead of /etc/pam.d."""
    raw = os.fsencode(confdir)

    def pam_start(service, user, conv, handle) -> int:
        return _start_confdir(service, user, conv, raw, handle)

    return pam_start


# The conversation after authentication: python-pam's own dies with
# authenticate(), but libpam keeps calling whatever is set (pam_exec's
# `stdout`, pam_motd ...). This one lives as long as the module, prints
# messages as a login program would and answers no prompt.


class _Message(ctypes.Structure):
    _fields_ = [("msg_style", ctypes.c_int), ("msg", ctypes.c_char_p)]


class _Response(ctypes.Structure):
    _fields_ = [("resp", ctypes.c_char_p), ("resp_retcode", ctypes.c_int)]


_CONV = ctypes.CFUNCTYPE(ctypes.c_int, ctypes.c_int, ctypes.POINTER(ctypes.POINTER(_Message)),
                         ctypes.POINTER(ctypes.POINTER(_Response)), ctypes.c_void_p)


class _Conv(ctypes.Structure):
    _fields_ = [("conv", _CONV), ("appdata_ptr", ctypes.c_void_p)]


_libc = ctypes.CDLL(None)
_libc.calloc.restype = ctypes.c_void_p
_libc.calloc.argtypes = [ctypes.c_size_t, ctypes.c_size_t]


@_CONV
def _printing_conv(count, messages, responses, appdata):
    block = _libc.calloc(max(count, 1), ctypes.sizeof(_Response))
    if not block:
        return PAM_BUF_ERR
    for i in range(count):
        m = messages[i].contents
        if m.msg_style in (PAM_ERROR_MSG, PAM_TEXT_INFO) and m.msg:
            print(m.msg.decode(errors="replace"), flush=True)
    responses[0] = ctypes.cast(block, ctypes.POINTER(_Response))
    return 0


_PRINTING = _Conv(_printing_conv, None)
_set_conv = _libpam["pam_set_item"]  # its own prototype: the item is a struct here
_set_conv.restype = ctypes.c_int
_set_conv.argtypes = [ctypes.c_void_p, ctypes.c_int, ctypes.c_void_p]


class PamFailure(Exception):
    """A PAM call failed; `code` is libpam's return code, `stage` the call."""

    def __init__(self, stage: str, code: int, reason: str) -> None:
        super().__init__(f"{stage} failed with PAM code {code}: {reason}")
        self.stage, self.code, self.reason = stage, code, reason


class PamTimeout(Exception):
    """pam_open_session did not return in time (the module hangs)."""


class PamLogin:
    """One login through the real libpam: authenticate, then open a session.

    The service file must allow authentication (`auth`/`account` pam_permit):
    python-pam reaches a handle only through authenticate().

    `code` is the return code of the last PAM call, `open_code` that of
    pam_open_session (None until it ran).
    """

    def __init__(self, service: str, user: str, confdir: str | os.PathLike) -> None:
        self.service, self.user, self.confdir = service, user, str(confdir)
        self._pam = pam.pam()
        self._pam.pam_start = confdir_pam_start(self.confdir)
        self.code: int | None = None
        self.open_code: int | None = None
        self.opened = False
        self.env: dict[str, str] = {}
        self._stuck = False

    @property
    def handle(self) -> int | None:
        """The pam_handle_t pointer while the handle lives, else None."""
        h = self._pam.handle
        return h.handle if h else None

    def set_item(self, item: int, value: str | None) -> None:
        """pam_set_item on the live handle (None clears a string item)."""
        if not self.handle:
            raise RuntimeError("no PAM handle: set items through open(items=...)")
        code = _set_item(self.handle, item, None if value is None else value.encode())
        if code != PAM_SUCCESS:
            raise PamFailure(f"pam_set_item({item})", code, self._strerror(code))

    def open(self, items: dict[int, str | None] | None = None,
             env: dict[str, str] | None = None, timeout: float | None = 120.0,
             unblock: Callable[[], object] | None = None) -> dict[str, str]:
        """Authenticates, sets PAM `items` and PAM environment `env`, opens the
        session; returns the PAM environment. Raises PamFailure on failure.

        python-pam sets PAM_TTY and PAM_XDISPLAY from the test process's own
        $DISPLAY or stdin tty; both are cleared first so a session's facts
        depend only on `items`.

        A module stuck in a C call cannot be interrupted from Python, so the
        PAM calls run in a worker thread: after `timeout` seconds `unblock`
        is called (e.g. to hang up the server's side of the connection) and
        PamTimeout raised. The default is above any login_timeout the tests
        set; timeout=None runs the calls in the calling thread, unbounded.
        """
        if timeout is None:
            return self._open(items, env)
        result: dict[str, object] = {}

        def run() -> None:
            try:
                result["env"] = self._open(items, env)
            except BaseException as err:  # handed to the caller below
                result["err"] = err

        worker = threading.Thread(target=run, name="pam-open", daemon=True)
        worker.start()
        worker.join(timeout)
        if worker.is_alive():
            if unblock is not None:
                unblock()
            worker.join(5)
            if worker.is_alive():
                # Still inside libpam: leave the handle alone for good.
                self._stuck = True
            raise PamTimeout(f"pam_open_session({self.service}) for {self.user} did not "
                             f"return within {timeout:g} s")
        if "err" in result:
            raise result["err"]  # type: ignore[misc]
        return result["env"]  # type: ignore[return-value]

    def _open(self, items: dict[int, str | None] | None,
              env: dict[str, str] | None) -> dict[str, str]:
        a = self._pam
        ok = a.authenticate(self.user, "", service=self.service, env=env or None,
                            call_end=False, resetcreds=False)
        self.code = a.code
        if not ok:
            reason = str(a.reason)
            self.end()
            raise PamFailure("pam_authenticate", a.code, reason)
        _set_conv(ctypes.c_void_p(self.handle), PAM_CONV, ctypes.byref(_PRINTING))
        try:
            self.set_item(PAM_TTY, None)
            self.set_item(PAM_XDISPLAY, None)
            for item, value in (items or {}).items():
                self.set_item(item, value)
        except Exception:
            self.end()
            raise
        code = a.open_session()
        self.code = self.open_code = code
        if code != PAM_SUCCESS:
            reason = str(a.reason)
            self.end()
            raise PamFailure("pam_open_session", code, reason)
        self.opened = True
        got = a.getenvlist()
        self.env = got if isinstance(got, dict) else {}
        return dict(self.env)

    def close_session(self) -> int:
        """pam_close_session alone (the handle stays until end()); its code."""
        code = PAM_SUCCESS
        if self.opened and self.handle and not self._stuck:
            code = self._pam.close_session()
            self.code = code
            self.opened = False
        return code

    def close(self) -> int:
        """Closes the session (if open) and ends the handle; returns the code."""
        if self._stuck:
            return PAM_SUCCESS
        code = self.close_session()
        self.end()
        return code

    def end(self) -> None:
        """pam_end: frees the handle (and runs the modules' data cleanups)."""
        if self.handle and not self._stuck:
            self._pam.end()

    def _strerror(self, code: int) -> str:
        raw = _strerror(self.handle, code)
        return raw.decode(errors="replace") if raw else f"PAM error {code}"

    def __enter__(self) -> PamLogin:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


PamSession = PamLogin


def service_text(module_path: str | os.PathLike, module_args: str = "") -> str:
    """The text of write_service's file."""
    return (
        "auth required pam_permit.so\n"
        "account required pam_permit.so\n"
        f"session required {module_path} {module_args}".rstrip() + "\n"
        "session required pam_permit.so\n"
    )


def write_service(directory: str | os.PathLike, name: str, module_path: str | os.PathLike,
                  module_args: str = "") -> str:
    """Writes DIRECTORY/NAME: permissive auth/account, our module in session.

    `session required pam_permit.so` follows the module because a lone
    failing optional module (or a lone PAM_IGNORE) would turn into
    PAM_PERM_DENIED; production stacks have more session modules too.
    Returns the file's path.
    """
    os.makedirs(directory, exist_ok=True)
    path = os.path.join(directory, name)
    with open(path, "w") as f:
        f.write(service_text(module_path, module_args))
    os.chmod(path, 0o644)
    return path


def environ_without_pam_wrapper() -> dict[str, str]:
    """os.environ without pam_wrapper's variables: what every subprocess but
    pamtester's gets (the daemon's above all)."""
    return {k: v for k, v in os.environ.items()
            if not k.startswith("PAM_WRAPPER") and k != "LD_PRELOAD"}


def pamtester(service: str, user: str, service_dir: str | os.PathLike, *ops: str,
              env: dict[str, str] | None = None, items: dict[str, str] | None = None,
              extra_environ: dict[str, str] | None = None,
              timeout: float = 30) -> subprocess.CompletedProcess:
    """Runs `pamtester -v [-E k=v] [-I k=v] SERVICE USER OPS...` under pam_wrapper.

    `env` goes into the PAM environment (pamtester's -E), `items` are PAM
    items (-I tty=..., rhost=..., ruser=...), `extra_environ` adds to the
    subprocess's own environment (e.g. PAM_WRAPPER_DEBUGLEVEL=2). pam_wrapper's
    variables are set for this subprocess only. Raises
    subprocess.TimeoutExpired after `timeout` seconds (the child is killed).
    """
    if not ops:
        raise ValueError("pamtester needs at least one operation")
    cmd = ["pamtester", "-v"]
    for k, v in (env or {}).items():
        cmd += ["-E", f"{k}={v}"]
    for k, v in (items or {}).items():
        cmd += ["-I", f"{k}={v}"]
    cmd += [service, user, *ops]
    proc_env = environ_without_pam_wrapper()
    proc_env.update(extra_environ or {})
    proc_env.update(LD_PRELOAD=PAM_WRAPPER_LIB, PAM_WRAPPER="1",
                    PAM_WRAPPER_SERVICE_DIR=str(service_dir))
    return subprocess.run(cmd, env=proc_env, capture_output=True, text=True, timeout=timeout,
                          stdin=subprocess.DEVNULL, check=False)
