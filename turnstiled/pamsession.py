"""A PAM session opened with python-pam, optionally from a directory of
service files instead of /etc/pam.d (Linux-PAM's pam_start_confdir), so a
sandboxed instance never touches the system's PAM configuration.
"""

from __future__ import annotations

import ctypes
import ctypes.util

import pam

PAM_ESTABLISH_CRED = 0x0002
PAM_DELETE_CRED = 0x0004
PAM_CONV = 5
PAM_ERROR_MSG = 3
PAM_TEXT_INFO = 4


class _Message(ctypes.Structure):
    _fields_ = [("msg_style", ctypes.c_int), ("msg", ctypes.c_char_p)]


class _Response(ctypes.Structure):
    _fields_ = [("resp", ctypes.c_char_p), ("resp_retcode", ctypes.c_int)]


_CONV_FUNC = ctypes.CFUNCTYPE(ctypes.c_int, ctypes.c_int,
                              ctypes.POINTER(ctypes.POINTER(_Message)),
                              ctypes.POINTER(ctypes.POINTER(_Response)), ctypes.c_void_p)


class _Conv(ctypes.Structure):
    _fields_ = [("conv", _CONV_FUNC), ("appdata_ptr", ctypes.c_void_p)]


_libc = ctypes.CDLL(None)
_libc.calloc.restype = ctypes.c_void_p
_libc.calloc.argtypes = [ctypes.c_size_t, ctypes.c_size_t]


@_CONV_FUNC
def _silent_conv(count, messages, responses, appdata):
    """No one is at a terminal: messages are dropped, prompts get no answer.

    python-pam's own conversation function dies with authenticate(), but
    libpam keeps calling it (pam_exec, pam_motd...): this one lives as long
    as the module, so session modules that talk cannot crash the caller.
    """
    block = _libc.calloc(max(count, 1), ctypes.sizeof(_Response))
    if not block:
        return 5  # PAM_BUF_ERR
    responses[0] = ctypes.cast(block, ctypes.POINTER(_Response))
    return 0


_SILENT = _Conv(_silent_conv, None)


class PamError(Exception):
    pass


def _confdir_start(confdir: str):
    """A drop-in for libpam's pam_start that reads service files from confdir."""
    libpam = ctypes.CDLL(ctypes.util.find_library("pam"))
    start = libpam.pam_start_confdir
    start.restype = ctypes.c_int

    def pam_start(service, user, conv, handle):
        return start(service, user, conv, confdir.encode(), handle)

    return pam_start


class PamSession:
    """One open PAM session: open() returns its environment, close() ends it."""

    def __init__(self, service: str, user: str, confdir: str = "") -> None:
        self._auth = pam.pam()
        if confdir:
            self._auth.pam_start = _confdir_start(confdir)
        self.service, self.user = service, user
        self.opened = False

    def open(self) -> dict[str, str]:
        a = self._auth
        # python-pam reaches a handle only through authenticate; the service
        # file decides what that means (pam_rootok for the daemon's own).
        if not a.authenticate(self.user, "", service=self.service, call_end=False,
                              resetcreds=False):
            reason = a.reason
            self.end()
            raise PamError(f"PAM service {self.service!r} refused {self.user}: {reason}")
        a.pam_set_item(a.handle, PAM_CONV, ctypes.cast(ctypes.pointer(_SILENT),
                                                       ctypes.c_char_p))
        a.pam_setcred(a.handle, PAM_ESTABLISH_CRED)
        code = a.open_session()
        if code != 0:
            reason = a.reason
            self.end()
            raise PamError(f"pam_open_session({self.service}) for {self.user}: {reason}")
        self.opened = True
        env = a.getenvlist()
        return env if isinstance(env, dict) else {}

    def close(self) -> None:
        a = self._auth
        if self.opened:
            a.close_session()
            a.pam_setcred(a.handle, PAM_DELETE_CRED)
            self.opened = False
        self.end()

    def end(self) -> None:
        if self._auth.handle:
            self._auth.end()
