"""The fd store (holder/turnstiled-fdstore) on its own, its start and its
limits: the real binary on a real listening SOCK_SEQPACKET socket, real
descriptors passed both ways (tests/fdstore_process.py; the contract is at
the top of holder/turnstiled-fdstore.c).

Keeping, dropping and connections: test_fdstore_connections.py; malformed
input, fuzz and valgrind: test_fdstore_input.py.
"""

from __future__ import annotations

import os
import resource
import shutil
import signal
import time

import pytest
from fdstore_process import (
    REPLAY_TIMEOUT,
    RESERVED_FDS,
    Store,
    at_eof,
    close_all,
    pipe_for_store,
    same_pipe,
)
from helpers import fd_flags, status_of, wait_for

# -- start


@pytest.mark.parametrize("args", [[], ["12a"], ["-1"], [" 5"], [""], ["1", "2"],
                                  ["99999999999999999999"]])
def test_a_bad_command_line_is_a_usage_line_and_exit_2(sandbox, args):
    store = Store(sandbox, args)
    assert store.wait() == 2
    assert store.log().startswith("turnstiled-fdstore: usage: turnstiled-fdstore ADOPT_TIMEOUT_MS")


def test_fd_3_must_be_a_listening_seqpacket_socket(sandbox):
    store = Store(sandbox, ["1000"], extra={3: os.open("/dev/null", os.O_RDONLY)})
    assert store.wait() == 1
    assert "fd 3 is not a listening AF_UNIX SOCK_SEQPACKET socket" in store.log()


def test_at_start_it_leaves_the_session_raises_nofile_and_keeps_only_its_own_fds(stores):
    r, w = os.pipe()
    store = stores(extra={7: w})
    os.close(w)
    # The stray fd 7 is closed at once: nothing else holds the write end.
    assert at_eof(r)
    os.close(r)
    assert os.getsid(store.pid) == store.pid
    hard = resource.getrlimit(resource.RLIMIT_NOFILE)[1]
    soft, _ = resource.prlimit(store.pid, resource.RLIMIT_NOFILE)
    assert soft == min(hard, 65536)
    ignored = int(status_of(store.pid)["SigIgn"], 16)
    assert ignored & (1 << signal.SIGHUP - 1) and ignored & (1 << signal.SIGPIPE - 1)
    os.kill(store.pid, signal.SIGHUP)
    sock = store.connect_first()
    sock.keep_pipe(b"p")
    store.wait_fds(7, "the kept fd")  # stdio, 3, signalfd, conn, p
    assert store.poll() is None, "SIGHUP is ignored"
    assert all(fd_flags(fd, store.pid) & os.O_CLOEXEC for fd in store.fds() if fd >= 3)
    assert "turnstiled-fdstore: a daemon took 0 entries" in store.log()
    assert all(line.startswith("turnstiled-fdstore: ") for line in store.log().splitlines())


# -- limits


def test_entries_get_fds_only_up_to_the_descriptor_limit(stores):
    # A hard limit of 16 leaves 16 - 8 fds for entries.
    store = stores(wrapper=[shutil.which("prlimit"), "--nofile=16:16", "--"])
    room = 16 - RESERVED_FDS
    sock = store.connect_first()
    sock.keep(b"nofd", b"first without an fd")
    pipes = [pipe_for_store() for _ in range(room + 3)]
    for i, (_, w) in enumerate(pipes):
        sock.keep(b"e%d" % i, b"", w)
        os.close(w)
    for r, _ in pipes[room:]:
        assert at_eof(r), "an fd beyond the limit is closed"
    sock.keep(b"nofd", b"still without")  # needs no descriptor
    sock.keep(b"more", b"no fd either")
    r, w = pipe_for_store()
    sock.keep(b"nofd", b"", w)  # would need one more: the entry goes
    os.close(w)
    assert at_eof(r)
    r, w = pipe_for_store()
    sock.keep(b"e0", b"replaced", w)  # a replacement needs no more
    os.close(w)
    assert at_eof(pipes[0][0]), "the replaced fd is closed"
    entries = store.connect().adopt()
    names = [n for n, _, _ in entries]
    assert names == [b"e%d" % i for i in range(room)] + [b"more"]
    assert entries[0][1] == b"replaced" and same_pipe(entries[0][2], r)
    for (_, _, fd), (pr, _) in zip(entries[1:room], pipes[1:room], strict=True):
        assert same_pipe(fd, pr)
    close_all(entries)
    log = store.log()
    assert log.count("(no descriptor to spare): it is forgotten") == 4
    assert "cannot keep nofd (no descriptor to spare): it is forgotten" in log


def test_an_fd_the_kernel_could_not_give_forgets_its_entry(stores):
    store = stores()
    sock = store.connect_first()
    r1 = store.held_pipe(sock, b"x")
    sock.keep(b"y", b"no fd")
    # No descriptor number left below the limit: the kernel drops what
    # comes with a message and says so (MSG_CTRUNC).
    open_fds = set(store.fds())
    lowest_free = min(n for n in range(len(open_fds) + 1) if n not in open_fds)
    saved = resource.prlimit(store.pid, resource.RLIMIT_NOFILE)
    resource.prlimit(store.pid, resource.RLIMIT_NOFILE, (lowest_free, saved[1]))
    try:
        # z and frob first: forgetting x frees a descriptor.
        r3 = sock.keep_pipe(b"z")
        r4, w4 = pipe_for_store()
        sock.send_packet(b"frob", [w4])
        os.close(w4)
        r2 = sock.keep_pipe(b"x")
        sock.keep(b"y", b"changed")
        assert at_eof(r3) and at_eof(r2) and at_eof(r4)
        assert at_eof(r1), "the old fd of x is closed: x is forgotten"
        wait_for(lambda: "cannot keep x" in store.log(), 5, what="the last complaint")
    finally:
        resource.prlimit(store.pid, resource.RLIMIT_NOFILE, saved)
    entries = store.connect().adopt()
    assert [(n, d, fd) for n, d, fd in entries] == [(b"y", b"changed", None)]
    assert "cannot keep z (its fd did not arrive): it is forgotten" in store.log()
    assert "cannot keep x (its fd did not arrive): it is forgotten" in store.log()
    assert "a packet ignored (4 bytes, 0 fds): its fds did not all arrive" in store.log()


def test_a_daemon_that_does_not_take_the_entries_is_let_go_after_10_s(stores):
    store = stores()
    sock = store.connect_first()
    # Far more than the socket buffers hold.
    big = b"d" * 60000
    for i in range(30):
        sock.keep(b"e%d" % i, big)
    sock.close()
    start = time.monotonic()
    stuck = store.connect()
    wait_for(lambda: "did not take the entries" in store.log(), REPLAY_TIMEOUT + 2,
             interval=0.1, what="the store to let go")
    assert time.monotonic() - start >= REPLAY_TIMEOUT - 0.5
    got = 0
    while True:
        msg = stuck.recv(70000)
        if not msg:
            break
        assert msg.startswith(b"entry\0")
        got += 1
    assert 0 < got < 30
    assert "did not take the entries within 10 s; 30 entries kept, closing them all" in \
        store.log()
    entries = store.connect().adopt()
    assert [(n, d) for n, d, _ in entries] == [(b"e%d" % i, big) for i in range(30)]


def test_a_daemon_that_hangs_up_while_taking_the_entries_is_let_go(stores):
    store = stores(500)
    sock = store.connect_first()
    for i in range(30):
        sock.keep(b"e%d" % i, b"d" * 60000)
    sock.close()
    wait_for(lambda: "30 entries kept" in store.log(), 5, what="the first connection to end")
    quitter = store.connect()
    # stdio, listener, signalfd and the new connection: accepted, sending
    store.wait_fds(6, "the store to accept")
    quitter.close()
    wait_for(lambda: "the connection failed while taking the entries; 30 entries kept" in
             store.log(), 5, what="the store to let go")
    assert store.wait(5) == 0
