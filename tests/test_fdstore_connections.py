"""The fd store (holder/turnstiled-fdstore) on its own, what it keeps and
gives back and to whom: keep, drop and their order, who may connect, the
newest connection, and letting go (tests/fdstore_process.py; the contract
is at the top of holder/turnstiled-fdstore.c).
"""

from __future__ import annotations

import os
import select
import signal
import subprocess
import sys
import time

import pytest
from fdstore_process import at_eof, close_all, pipe_for_store, same_pipe

# -- keep, drop, order


def test_keep_replace_drop_and_order(stores):
    store = stores()
    a = store.connect_first()
    ra, wa = pipe_for_store()
    rb, wb = pipe_for_store()
    rc, wc = pipe_for_store()
    a.keep(b"a", b"first", wa)
    a.keep(b"b", b"", wb)
    a.keep(b"nofd", b"plain")
    a.keep(b"c", b"x", wc)
    for w in (wa, wb, wc):
        os.close(w)
    ra2, wa2 = pipe_for_store()
    a.keep(b"a", b"second", wa2)         # new fd: the old one is closed, the place kept
    os.close(wa2)
    a.keep(b"b", b"new data")            # no fd: b keeps its fd
    a.send_packet(b"drop\0c")            # closed and forgotten
    a.send_packet(b"drop\0unknown")      # nothing to do, nothing said
    a.keep(b"c", b"again")               # back, at the end, without an fd
    assert at_eof(ra), "the replaced fd is closed"
    assert at_eof(rc), "the dropped entry's fd is closed"

    b = store.connect()
    entries = b.adopt()
    assert [(n, d) for n, d, _ in entries] == [
        (b"a", b"second"), (b"b", b"new data"), (b"nofd", b"plain"), (b"c", b"again")]
    fds = {n: fd for n, _, fd in entries}
    assert fds[b"nofd"] is None and fds[b"c"] is None
    assert same_pipe(fds[b"a"], ra2)
    assert same_pipe(fds[b"b"], rb)
    close_all(entries)
    assert "unknown" not in store.log()
    assert "ignored" not in store.log()


def test_entries_come_back_intact_on_every_connection(stores):
    store = stores()
    sock = store.connect_first()
    r, w = pipe_for_store()
    every_byte = bytes(range(1, 256))
    longest = b"n" * 64
    biggest = b"d" * (65535 - len(b"keep\0") - len(longest) - 1)  # its entry is 65536 bytes
    sock.keep(b"bytes", every_byte, w)
    os.close(w)
    sock.keep(b"empty")
    sock.keep(longest, biggest)
    sock.keep("süß ünïcode".encode(), b"\xff\xfe")
    sock.close()
    for _ in range(3):
        sock = store.connect()
        entries = sock.adopt()
        assert [(n, d) for n, d, _ in entries] == [
            (b"bytes", every_byte), (b"empty", b""), (longest, biggest),
            ("süß ünïcode".encode(), b"\xff\xfe")]
        assert same_pipe(entries[0][2], r)
        assert os.fstat(entries[0][2]).st_ino == os.fstat(r).st_ino
        close_all(entries)
        sock.close()
    assert store.poll() is None


# -- who may connect


CLIENT = """
import select, socket, sys
s = socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET)
s.connect(sys.argv[1])
select.select([s], [], [], 10)
msg, fds, _, _ = socket.recv_fds(s, 70000, 8)
print(len(msg), len(fds))
"""


def connect_as(user, path: str) -> list[str]:
    """What a client running as user reads first: [bytes, fds]."""
    res = subprocess.run([sys.executable, "-c", CLIENT, path], user=user.uid, group=user.gid,
                         extra_groups=[], cwd="/", capture_output=True, text=True, timeout=30)
    assert res.returncode == 0, res.stderr
    return res.stdout.split()


def test_a_peer_that_is_not_root_is_closed_at_once(stores, test_user):
    store = stores()
    a = store.connect_first()
    a.keep_pipe(b"secret")
    assert connect_as(test_user, store.path) == ["0", "0"], "end of file, no entry, no fd"
    assert f"a connection from uid {test_user.uid} refused: only root may connect" in store.log()
    # The root connection is still the open one.
    a.keep(b"after")
    ready, _, _ = select.select([a], [], [], 0.2)
    assert not ready, "the open connection was closed"
    entries = store.connect().adopt()
    assert [n for n, _, _ in entries] == [b"secret", b"after"]
    close_all(entries)


def test_a_peer_that_is_not_root_does_not_stop_the_timer(stores, test_user):
    store = stores(2000)
    start = time.monotonic()
    assert connect_as(test_user, store.path) == ["0", "0"]
    assert store.wait(5) == 0
    assert time.monotonic() - start >= 1.9


def test_the_newest_connection_wins(stores):
    store = stores()
    a = store.connect_first()
    a.keep(b"from-a")  # sent just before b connects: still carried out
    b = store.connect()
    entries = b.adopt()
    assert [n for n, _, _ in entries] == [b"from-a"]
    ready, _, _ = select.select([a], [], [], 5)
    assert ready and a.recv(100) == b"", "the older connection is closed"
    b.keep(b"from-b")
    entries = store.connect().adopt()
    assert [n for n, _, _ in entries] == [b"from-a", b"from-b"]
    assert "a newer connection replaces the open one" in store.log()


# -- letting go


def test_with_no_connection_it_closes_everything_when_the_timer_runs_out(stores):
    store = stores(400)
    sock = store.connect_first()
    r = sock.keep_pipe(b"p")
    sock.keep(b"q", b"no fd")
    sock.close()
    start = time.monotonic()
    assert at_eof(r, 5)
    assert time.monotonic() - start >= 0.35
    assert store.wait(5) == 0
    log = store.log()
    assert "the connection ended; 2 entries kept, closing them all in 400 ms" in log
    assert "no daemon connected within 400 ms: closing 1 fds of 2 entries and exiting" in log


def test_a_connection_stops_the_timer(stores):
    store = stores(800)
    time.sleep(0.2)
    sock = store.connect_first()
    r = sock.keep_pipe(b"p")
    time.sleep(0.9)
    assert store.poll() is None
    sock.close()
    time.sleep(0.2)
    sock = store.connect()  # within the new 800 ms
    entries = sock.adopt()
    assert same_pipe(entries[0][2], r)
    close_all(entries)
    time.sleep(0.9)
    assert store.poll() is None
    sock.close()
    assert at_eof(r, 5)
    assert store.wait(5) == 0


@pytest.mark.parametrize("timeout_ms", [0, 300])
def test_the_timer_runs_from_start(stores, timeout_ms):
    start = time.monotonic()
    store = stores(timeout_ms)
    assert store.wait(5) == 0
    assert time.monotonic() - start >= timeout_ms / 1000 * 0.9
    assert f"no daemon connected within {timeout_ms} ms" in store.log()


def test_quit_closes_everything_and_exits_0(stores):
    store = stores()
    sock = store.connect_first()
    r = sock.keep_pipe(b"p")
    sock.send_packet(b"quit")
    assert at_eof(r)
    assert store.wait() == 0
    assert "quit: closing 1 fds of 1 entries and exiting" in store.log()


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT])
def test_sigterm_and_sigint_close_everything_and_exit_0(stores, sig):
    store = stores()
    sock = store.connect_first()
    r = store.held_pipe(sock, b"p")
    os.kill(store.pid, sig)
    assert at_eof(r)
    assert store.wait() == 0
    assert f"{sig.name}: closing 1 fds of 1 entries and exiting" in store.log()
