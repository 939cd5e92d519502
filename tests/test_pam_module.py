"""pam_turnstile.so in the real libpam against no daemon, a silent socket and
a small real server of the tests' own (fakeserver.py): how it fails, and
how long its connection lives. No fakes of libpam or of the module.
"""

from __future__ import annotations

import os
import socket
import subprocess
import time

import pytest
from fakeserver import FAKE_ENV, module_service, open_and_capture
from helpers import OPEN_TIMEOUT, PAM_RHOST, PAM_SESSION_ERR, fd_flags, fds_of, wait_for
from pamclient import PamFailure, PamLogin, pamtester
from users import no_such_account
from wire import MSG_ERR, MSG_OK_DONE, MSG_OK_WAIT, MSG_REQ_ENV, encode_handshake, env_block

SESSION_ERR_TEXT = "Cannot make/remove an entry for the specified session"

pytestmark = pytest.mark.usefixtures("no_session_vars")


def fails_with_session_err(login: PamLogin, **kw) -> float:
    """Opens login, expecting PAM_SESSION_ERR from pam_open_session; returns
    the seconds it took."""
    start = time.monotonic()
    with pytest.raises(PamFailure) as exc:
        login.open(timeout=OPEN_TIMEOUT, **kw)
    elapsed = time.monotonic() - start
    assert exc.value.stage == "pam_open_session", exc.value
    assert exc.value.code == PAM_SESSION_ERR, exc.value
    assert login.open_code == PAM_SESSION_ERR
    return elapsed


# -- no daemon, a silent daemon, a daemon that hangs up


@pytest.mark.parametrize("kind", ["missing", "refused"])
def test_no_daemon_fails_at_the_timeout_in_process(kind, sandbox, confdir, pam_module,
                                                   test_user):
    """Waited for until timeout= (a restarting daemon; test_pam_retry.py)."""
    path = str(sandbox / "nothing.sock")
    if kind == "refused":
        # A stale socket file nobody listens on: connect() gets ECONNREFUSED.
        s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        s.bind(path)
        s.close()
    service = module_service(confdir, pam_module, path, "timeout=1")
    elapsed = fails_with_session_err(PamLogin(service, test_user.name, confdir))
    assert 0.9 <= elapsed < 3, f"failing took {elapsed:.2f} s"


def _pamtester_without_daemon(debuglevel, sandbox, confdir, pam_module, user):
    """pamtester opening a session with no daemon at SANDBOX/nothing.sock, at
    PAM_WRAPPER_DEBUGLEVEL debuglevel: (its result, seconds it took, path)."""
    path = str(sandbox / "nothing.sock")
    service = module_service(confdir, pam_module, path, "timeout=1")
    extra = {"PAM_WRAPPER_DEBUGLEVEL": debuglevel} if debuglevel else None
    start = time.monotonic()
    res = pamtester(service, user.name, confdir, "open_session", extra_environ=extra,
                    timeout=10)
    return res, time.monotonic() - start, path


DEBUGLEVELS = pytest.mark.parametrize("debuglevel", [None, "2"])


@DEBUGLEVELS
def test_no_daemon_fails_a_login_program_at_the_timeout(debuglevel, sandbox, confdir, pam_module,
                                              test_user):
    res, elapsed, _ = _pamtester_without_daemon(debuglevel, sandbox, confdir, pam_module,
                                                test_user)
    assert res.returncode == 1, res.stdout + res.stderr
    assert SESSION_ERR_TEXT in res.stderr, res.stderr
    assert "successfully opened" not in res.stdout + res.stderr
    assert elapsed < 3, f"failing took {elapsed:.2f} s"  # timeout=1


@DEBUGLEVELS
def test_no_daemon_reason_reaches_the_log(debuglevel, sandbox, confdir, pam_module,
                                          test_user):
    """The module's reason reaches stderr through pam_wrapper's syslog
    (LOG_ERR is shown at any PAM_WRAPPER_DEBUGLEVEL)."""
    res, _, path = _pamtester_without_daemon(debuglevel, sandbox, confdir, pam_module,
                                             test_user)
    reason = [line for line in res.stderr.splitlines() if path in line]
    assert reason and "connect" in reason[0], res.stderr


def test_silent_daemon_times_out(fake_server, confdir, pam_module, test_user):
    server = fake_server(mode="silent")
    service = module_service(confdir, pam_module, server.path, "timeout=1")
    login = PamLogin(service, test_user.name, confdir)
    elapsed = fails_with_session_err(login, unblock=server.drop_connections)
    assert server.conns, "the module never connected"
    assert 0.9 <= elapsed < 3, f"gave up after {elapsed:.2f} s, asked for timeout=1"
    # The module hung up when it gave up.
    assert server.conns[0].eof.wait(3)


def test_endless_wait_times_out(fake_server, confdir, pam_module, test_user):
    """OK_WAIT after OK_WAIT: one deadline for the whole wait, not one per
    message."""
    server = fake_server(mode="wait", delay=0.2)
    service = module_service(confdir, pam_module, server.path, "timeout=1")
    login = PamLogin(service, test_user.name, confdir)
    elapsed = fails_with_session_err(login, unblock=server.drop_connections)
    assert server.wait_conn().wait_handshake().uid == test_user.uid
    assert 0.9 <= elapsed < 3, f"gave up after {elapsed:.2f} s, asked for timeout=1"
    assert server.conns[0].eof.wait(3)
    assert not server.conns[0].got_req_env.is_set()


def test_daemon_gone_before_req_env_is_no_sigpipe(fake_server, confdir, pam_module,
                                                  test_user):
    """The daemon says OK_DONE and hangs up: the module's REQ_ENV then hits a
    closed socket. A login program (pamtester: SIGPIPE at its default) must
    get an error code, not die of SIGPIPE."""
    server = fake_server(mode="done-hangup")
    service = module_service(confdir, pam_module, server.path)
    res = pamtester(service, test_user.name, confdir, "open_session", timeout=10)
    assert res.returncode == 1, (res.returncode, res.stderr)
    assert SESSION_ERR_TEXT in res.stderr, res.stderr
    assert server.wait_conn().wait_handshake().uid == test_user.uid


@pytest.mark.parametrize("when", ["after-wait", "at-once"])
@pytest.mark.parametrize("close", [True, False], ids=["then-close", "then-linger"])
def test_err_reply_fails_the_session(when, close, fake_server, confdir, pam_module,
                                     test_user):
    """ERR alone fails the session at once: the module neither waits for the
    server to close nor asks for the environment, and it hangs up."""
    replies = (MSG_OK_WAIT, MSG_ERR) if when == "after-wait" else (MSG_ERR,)
    server = fake_server(replies=replies, close_after_err=close)
    service = module_service(confdir, pam_module, server.path)
    login = PamLogin(service, test_user.name, confdir)
    elapsed = fails_with_session_err(login, unblock=server.drop_connections)
    assert elapsed < 2, f"failing took {elapsed:.2f} s"
    conn = server.wait_conn()
    assert conn.wait_handshake().uid == test_user.uid
    assert not conn.got_req_env.is_set()
    if not close:
        assert conn.eof.wait(3), "the module kept the connection after ERR"
        assert conn.raw == encode_handshake(conn.facts), "the module sent more after ERR"


@pytest.mark.parametrize("payload", [
    pytest.param(b"XDG_RUNTIME_DIR=/x", id="no-final-nul"),
    pytest.param(b"XDG_RUNTIME_DIR=/x\0NOEQUALS\0", id="entry-without-equals"),
    pytest.param(b"=x\0", id="empty-name"),
])
def test_bad_env_block_fails_and_exports_nothing(payload, fake_server, confdir, pam_module,
                                                test_user):
    server = fake_server(env_bytes=env_block(payload))
    service = module_service(confdir, pam_module, server.path)
    login = PamLogin(service, test_user.name, confdir)
    fails_with_session_err(login, unblock=server.drop_connections)
    assert server.wait_conn().got_req_env.is_set()
    assert server.conns[0].eof.wait(3), "the module kept the connection of a failed session"


def test_unknown_env_reply_fails(fake_server, confdir, pam_module, test_user):
    """After REQ_ENV only ENV is allowed."""
    server = fake_server(env_bytes=bytes([MSG_OK_DONE]))
    service = module_service(confdir, pam_module, server.path)
    fails_with_session_err(PamLogin(service, test_user.name, confdir),
                           unblock=server.drop_connections)


def test_user_not_in_passwd_fails_without_connecting(fake_server, confdir, pam_module):
    name = no_such_account("tsdtnosuchuser")
    server = fake_server()
    service = module_service(confdir, pam_module, server.path)
    fails_with_session_err(PamLogin(service, name, confdir), unblock=server.drop_connections)
    time.sleep(0.1)
    assert server.conns == []


def _host_of(length: int) -> str:
    host = ("a" * (length - len(".example.org"))) + ".example.org"
    assert len(host) == length
    return host


def test_remote_host_of_the_longest_length_is_sent(fake_server, confdir, pam_module,
                                                  test_user):
    host = _host_of(256)
    facts, _ = open_and_capture(fake_server(), confdir, pam_module, test_user.name,
                                items={PAM_RHOST: host})
    assert facts.remote_host == host and facts.remote


def test_remote_host_too_long_fails_the_session_unsent(fake_server, confdir, pam_module,
                                                       test_user):
    """A value longer than the protocol allows fails the session instead of
    being sent (the daemon would drop the handshake) or cut."""
    server = fake_server()
    service = module_service(confdir, pam_module, server.path)
    fails_with_session_err(PamLogin(service, test_user.name, confdir),
                           items={PAM_RHOST: _host_of(257)}, unblock=server.drop_connections)
    time.sleep(0.1)
    assert all(c.facts is None for c in server.conns), "an oversized field was sent"


def test_daemon_own_session_registers_nothing(fake_server, confdir, pam_module, test_user):
    """Module arg `turnstiled`: the daemon's own PAM session for a user
    manager; the module must not contact any daemon, and succeeds."""
    server = fake_server()
    service = module_service(confdir, pam_module, server.path, "turnstiled")
    with PamLogin(service, test_user.name, confdir) as login:
        env = login.open(timeout=OPEN_TIMEOUT, unblock=server.drop_connections)
        assert login.open_code == 0
    assert "XDG_RUNTIME_DIR" not in env
    time.sleep(0.1)
    assert server.conns == [], "the module connected in the daemon's own session"


# -- the connection's lifetime


@pytest.mark.parametrize("env_ahead", [False, True], ids=["env-when-asked", "env-ahead"])
def test_close_session_closes_the_connection(env_ahead, fake_server, confdir, pam_module,
                                             test_user):
    """Whether ENV comes when asked for (upstream's daemon) or right behind
    OK_DONE (ours), the module takes it, and holds the connection."""
    server = fake_server(env_ahead=env_ahead)
    service = module_service(confdir, pam_module, server.path)
    login = PamLogin(service, test_user.name, confdir)
    try:
        env = login.open(timeout=OPEN_TIMEOUT, unblock=server.drop_connections)
        assert all(env.get(k) == v for k, v in FAKE_ENV.items()), env
        conn = server.wait_conn()
        conn.wait_handshake()
        # Held open for the whole session.
        assert not conn.eof.wait(0.3), "the module hung up while the session is open"
        assert login.close_session() == 0
        # Before pam_end: the session ends at pam_close_session.
        assert conn.eof.wait(3), "the server saw no EOF after pam_close_session"
        assert conn.raw.endswith(bytes([MSG_REQ_ENV])), "the module sent data after REQ_ENV"
        login.end()
    finally:
        login.close()


def test_pam_end_alone_closes_the_connection(fake_server, confdir, pam_module, test_user):
    """A login program that never calls pam_close_session still ends the
    session at pam_end."""
    server = fake_server()
    service = module_service(confdir, pam_module, server.path)
    login = PamLogin(service, test_user.name, confdir)
    try:
        login.open(timeout=OPEN_TIMEOUT, unblock=server.drop_connections)
        conn = server.wait_conn()
        conn.wait_handshake()
        assert not conn.eof.wait(0.3)
        login.end()
        assert conn.eof.wait(3), "the server saw no EOF after pam_end"
    finally:
        login.close()


def test_process_exit_closes_the_connection(fake_server, confdir, pam_module, test_user):
    """pamtester opens a session and exits without closing it: the process
    ending ends the session."""
    server = fake_server()
    service = module_service(confdir, pam_module, server.path)
    res = pamtester(service, test_user.name, confdir, "open_session", timeout=20)
    assert res.returncode == 0, res.stdout + res.stderr
    conn = server.wait_conn()
    assert conn.wait_handshake().uid == test_user.uid
    assert conn.eof.wait(3)


def _socket_fds() -> set[int]:
    return {fd for fd, target in fds_of().items() if target.startswith("socket:")}


def test_connection_is_close_on_exec(fake_server, confdir, pam_module, test_user):
    """The module's socket has O_CLOEXEC, and a child spawned while the
    session is open (the user's shell) does not hold the connection, or the
    server would never see the logout."""
    server = fake_server()
    service = module_service(confdir, pam_module, server.path)
    login = PamLogin(service, test_user.name, confdir)
    child = None
    before = _socket_fds()
    try:
        login.open(timeout=OPEN_TIMEOUT, unblock=server.drop_connections)
        conn = server.wait_conn()
        conn.wait_handshake()
        new = _socket_fds() - before - server.server_fds()
        assert len(new) == 1, f"expected one new client socket, found fds {sorted(new)}"
        (fd,) = new
        assert fd_flags(fd) & os.O_CLOEXEC, f"fd {fd} of the module lacks O_CLOEXEC"
        # close_fds=False: the child gets every fd not marked close-on-exec.
        child = subprocess.Popen(["sleep", "5"], close_fds=False)
        assert login.close_session() == 0
        assert conn.eof.wait(3), "no EOF after close_session: a child holds the socket"
        assert child.poll() is None, "the child ended early; the test proves nothing"
    finally:
        login.close()
        if child is not None:
            child.kill()
            child.wait(5)


def test_failed_session_leaks_no_fd(fake_server, confdir, pam_module, test_user):
    server = fake_server(replies=(MSG_ERR,))
    service = module_service(confdir, pam_module, server.path)
    before = _socket_fds()
    fails_with_session_err(PamLogin(service, test_user.name, confdir),
                           unblock=server.drop_connections)
    assert server.wait_conn().wait_handshake().uid == test_user.uid
    leaked = _socket_fds() - before - server.server_fds()
    assert not leaked, f"socket fds left open by a failed session: {sorted(leaked)}"


def test_sessions_in_parallel(fake_server, confdir, pam_module, test_users):
    """Several handles open at once, each with its own connection."""
    server = fake_server()
    service = module_service(confdir, pam_module, server.path)
    logins = [PamLogin(service, u.name, confdir) for u in test_users]
    try:
        for login in logins:
            assert login.open(timeout=OPEN_TIMEOUT,
                              unblock=server.drop_connections)["FOO"] == "bar"
        assert len(server.conns) == len(test_users)
        uids = sorted(c.wait_handshake().uid for c in server.conns)
        assert uids == sorted(u.uid for u in test_users)
        logins[1].close()
        wait_for(lambda: sum(c.eof.is_set() for c in server.conns) == 1, 3,
                 what="one connection to close")
        for i, conn in enumerate(server.conns):
            assert conn.eof.is_set() == (conn.facts.uid == test_users[1].uid), i
    finally:
        for login in logins:
            login.close()
    wait_for(lambda: all(c.eof.is_set() for c in server.conns), 3,
             what="every connection to close")
