"""Published state: one KEY=VALUE file per user and per session (fields in
turnstiled/views.py), kept by a listener of the registry.

Readers (turnstilectl, scripts, other tools) never see a half-written file:
each is written to a temporary name and renamed into place.
"""

from __future__ import annotations

import errno
import logging
import os

from . import views
from .config import Config

TYPE_CHECKING = False  # not typing's (see turnstiled/__init__.py)
if TYPE_CHECKING:
    from .registry import Login, Session
    from .seats import Seat, Seats

log = logging.getLogger("turnstiled")


class StateDir:
    def __init__(self, root: str) -> None:
        self.users = os.path.join(root, "users")
        self.sessions = os.path.join(root, "sessions")
        # path -> the text it has: a change that shows in no field (a core
        # service up, say) writes nothing.
        self._published: dict[str, str] = {}

    def managed_rundirs(self) -> dict[int, str]:
        """uid -> the runtime dir a previous run made for that user, from the
        users/ files it left (read before prepare() drops them). A daemon
        that died, and an fd store that let go of its managers, leave those
        dirs behind."""
        found: dict[int, str] = {}
        try:
            names = os.listdir(self.users)
        except OSError:
            return found
        for name in names:
            if not (name.isascii() and name.isdigit()):
                continue
            try:
                with open(os.path.join(self.users, name), errors="surrogateescape") as f:
                    fields = dict(line.partition("=")[::2]
                                  for line in f.read(65536).splitlines())
            except OSError:
                continue
            path = fields.get("RUNTIME", "")
            if fields.get("RUNTIME_DIR_MANAGED") == "1" and path.startswith("/"):
                found[int(name)] = path
        return found

    def prepare(self) -> None:
        """Creates the directories and drops what a previous run left behind."""
        for d in (self.users, self.sessions):
            os.makedirs(d, mode=0o755, exist_ok=True)
            os.chmod(d, 0o755)
            for name in os.listdir(d):
                os.unlink(os.path.join(d, name))
        self._published.clear()

    # Names are uids and session ids (digits): a file's path is the
    # directory's and its name, no os.path.join needed.

    def write_user(self, uid: int, text: str) -> None:
        """text: KEY=VALUE lines (turnstiled.views.user_file)."""
        self._publish(self.users, str(uid), text)

    def write_session(self, sid: str, text: str) -> None:
        """text: KEY=VALUE lines (turnstiled.views.session_file)."""
        self._publish(self.sessions, sid, text)

    def remove_user(self, uid: int) -> None:
        self._remove(f"{self.users}/{uid}")

    def remove_session(self, sid: str) -> None:
        self._remove(f"{self.sessions}/{sid}")

    def _publish(self, directory: str, name: str, text: str) -> None:
        path = f"{directory}/{name}"
        if self._published.get(path) == text:
            return
        if _write(directory, name, text):
            self._published[path] = text
        else:
            self._published.pop(path, None)

    def _remove(self, path: str) -> None:
        self._published.pop(path, None)
        _unlink(path)


class StateFiles:
    """The registry's listener that keeps the state files true; with seats,
    also theirs (a session's ACTIVE changes with the VT)."""

    def __init__(self, state: StateDir, config: Config, seats: Seats | None = None) -> None:
        self.state, self.config, self.seats = state, config, seats

    def login_changed(self, login: Login) -> None:
        self.state.write_user(login.user.uid, views.user_file(login, self.config))

    def login_ended(self, login: Login) -> None:
        self.state.remove_user(login.user.uid)

    def session_opened(self, session: Session) -> None:
        self.state.write_session(session.id, views.session_file(session, self.seats))

    def session_closed(self, session: Session) -> None:
        self.state.remove_session(session.id)

    def session_changed(self, session: Session) -> None:
        self.session_opened(session)

    # -- turnstiled.seats.SeatListener

    def active_changed(self, seat_id: str, before: Session | None,
                       after: Session | None) -> None:
        for session in (before, after):
            if session is not None:
                self.session_opened(session)

    def seat_added(self, seat: Seat) -> None:
        pass

    def seat_removed(self, seat: Seat) -> None:
        pass


_CREATE = os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW | os.O_CLOEXEC


def _write(directory: str, name: str, text: str) -> bool:
    """Publishes one file; False if it could not.
    A failure (ENOSPC on a full /run) is logged and leaves nothing behind:
    published state is a view, never a reason for a login to fail or for
    the registry to keep what it should not."""
    path, tmp = f"{directory}/{name}", f"{directory}/.{name}.tmp"
    try:
        fd = os.open(tmp, _CREATE, 0o644)
        try:
            data = text.encode(errors="surrogateescape")
            if os.write(fd, data) != len(data):
                raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        finally:
            os.close(fd)
        os.rename(tmp, path)
        return True
    except OSError as err:
        _unlink(tmp)
        _unlink(path)  # stale is worse than missing
        log.error("cannot publish %s/%s: %s", directory, name, err.strerror)
        return False


def _unlink(path: str) -> None:
    try:
        os.unlink(path)
    except FileNotFoundError:
        pass
