"""The fd store (holder/turnstiled-fdstore) on its own: the real binary on a
real listening SOCK_SEQPACKET socket, real descriptors passed both ways.

Most entries here keep the write end of a pipe whose read end the test
holds, with no other copy of the write end left: writing through an fd the
store gives back and reading it at our end shows it is the same object, and
end-of-file at our end shows the store has closed its copy.

The protocol has no replies, so a test learns what the store did from a
new connection: before it turns to a newer connection the store carries
out everything the older one sent.
"""

from __future__ import annotations

import os
import random
import resource
import select
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from helpers import wait_for

from build import build_fdstore

# The store's limits, as the contract gives them.
LOG_BURST = 20
RESERVED_FDS = 8
REPLAY_TIMEOUT = 10.0
O_CLOEXEC = 0o2000000
LONG = 60000  # ms: an adoption timeout no test waits for


class Store:
    """One store started as the daemon starts it: a listening socket of the
    test's own on fd 3, stdin /dev/null, output to a log file."""

    def __init__(self, sandbox: Path, args: list[str], wrapper: list[str] = (),
                 extra: dict[int, int] | None = None) -> None:
        tag = time.monotonic_ns()
        self.path = str(sandbox / f"store-{tag}.sock")
        self.log_path = sandbox / f"store-{tag}.log"
        listener = socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        listener.bind(self.path)
        os.chmod(self.path, 0o777)  # only the store's SO_PEERCRED check keeps others out
        listener.listen(16)
        fd = listener.fileno()
        if fd == 3:
            fd = os.dup(fd)
        log = os.open(self.log_path, os.O_WRONLY | os.O_CREAT, 0o644)
        actions = [(os.POSIX_SPAWN_OPEN, 0, "/dev/null", os.O_RDONLY, 0),
                   (os.POSIX_SPAWN_DUP2, log, 1), (os.POSIX_SPAWN_DUP2, log, 2),
                   (os.POSIX_SPAWN_DUP2, fd, 3)]
        actions += [(os.POSIX_SPAWN_DUP2, src, dst) for dst, src in (extra or {}).items()]
        argv = [*wrapper, str(build_fdstore()), *args]
        self.pid = os.posix_spawn(argv[0], argv, {"PATH": "/usr/bin:/bin"},
                                  file_actions=actions)
        os.close(log)
        if fd != listener.fileno():
            os.close(fd)
        listener.close()
        self.status: int | None = None

    def poll(self) -> int | None:
        if self.status is None:
            pid, status = os.waitpid(self.pid, os.WNOHANG)
            if pid:
                self.status = os.waitstatus_to_exitcode(status)
        return self.status

    def wait(self, timeout: float = 5) -> int:
        wait_for(lambda: self.poll() is not None, timeout,
                 what=f"the store to exit; log:\n{self.log()}")
        return self.status

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def fds(self) -> list[int]:
        return sorted(int(n) for n in os.listdir(f"/proc/{self.pid}/fd"))

    def connect(self) -> socket.socket:
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        sock.connect(self.path)
        return sock

    def kill(self) -> None:
        if self.poll() is None:
            os.kill(self.pid, signal.SIGKILL)
            self.wait()


@pytest.fixture
def stores(sandbox: Path) -> Iterator:
    """start(timeout_ms, ...) -> Store; every store is killed at teardown."""
    started: list[Store] = []

    def start(timeout_ms: int | str = LONG, **kw) -> Store:
        store = Store(sandbox, [str(timeout_ms)], **kw)
        started.append(store)
        return store

    yield start
    for store in started:
        store.kill()


def send(sock: socket.socket, packet: bytes, fds: list[int] = ()) -> None:
    if fds:
        socket.send_fds(sock, [packet], list(fds))
    else:
        sock.send(packet)


def keep(sock: socket.socket, name: bytes, data: bytes = b"", fd: int | None = None) -> None:
    send(sock, b"keep\0" + name + b"\0" + data, [] if fd is None else [fd])


def adopt(sock: socket.socket, timeout: float = 5) -> list[tuple[bytes, bytes, int | None]]:
    """Every entry packet up to end, checked: (NAME, DATA, fd or None)."""
    entries = []
    deadline = time.monotonic() + timeout
    while True:
        ready, _, _ = select.select([sock], [], [], max(0, deadline - time.monotonic()))
        assert ready, f"no end within {timeout} s after {len(entries)} entries"
        msg, fds, flags, _ = socket.recv_fds(sock, 70000, 8, socket.MSG_CMSG_CLOEXEC)
        assert not flags & (socket.MSG_TRUNC | socket.MSG_CTRUNC)
        assert msg, f"the store hung up after {len(entries)} entries"
        verb, *fields = msg.split(b"\0")
        if verb == b"end":
            assert fields == [str(len(entries)).encode()]
            assert not fds
            return entries
        assert verb == b"entry" and len(fields) == 2, msg[:100]
        assert len(fds) <= 1
        entries.append((fields[0], fields[1], fds[0] if fds else None))


def close_all(entries) -> None:
    for _, _, fd in entries:
        if fd is not None:
            os.close(fd)


def pipe_for_store() -> tuple[int, int]:
    r, w = os.pipe()
    os.set_blocking(r, False)
    return r, w


def at_eof(r: int, timeout: float = 5) -> bool:
    """Whether every write end of the pipe whose read end is r gets closed
    within timeout (what was written meanwhile is read and dropped)."""
    deadline = time.monotonic() + timeout
    while True:
        ready, _, _ = select.select([r], [], [], max(0, deadline - time.monotonic()))
        if not ready:
            return False
        try:
            if os.read(r, 4096) == b"":
                return True
        except BlockingIOError:
            pass


def same_pipe(fd: int, r: int) -> bool:
    """Whether fd is a write end of the pipe whose read end is r."""
    os.write(fd, b"ping")
    ready, _, _ = select.select([r], [], [], 5)
    return bool(ready) and os.read(r, 16) == b"ping"


def kept_with(store: Store, sock: socket.socket, *pipes: tuple[bytes, int]) -> None:
    """Has the store keep each (NAME, write end) given, closing ours."""
    for name, w in pipes:
        keep(sock, name, b"", w)
        os.close(w)


def cloexec(pid: int, fd: int) -> bool:
    with open(f"/proc/{pid}/fdinfo/{fd}") as f:
        for line in f:
            if line.startswith("flags:"):
                return bool(int(line.split()[1], 8) & O_CLOEXEC)
    raise AssertionError(f"no flags for fd {fd}")


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
    status = Path(f"/proc/{store.pid}/status").read_text()
    ignored = int(status.split("SigIgn:")[1].split()[0], 16)
    assert ignored & (1 << signal.SIGHUP - 1) and ignored & (1 << signal.SIGPIPE - 1)
    os.kill(store.pid, signal.SIGHUP)
    sock = store.connect()
    assert adopt(sock) == []
    r, w = pipe_for_store()
    kept_with(store, sock, (b"p", w))
    wait_for(lambda: len(store.fds()) == 7, 5, what="the kept fd")  # stdio, 3, signalfd, conn, p
    assert store.poll() is None, "SIGHUP is ignored"
    assert all(cloexec(store.pid, fd) for fd in store.fds() if fd >= 3)
    assert "turnstiled-fdstore: a daemon took 0 entries" in store.log()
    assert all(line.startswith("turnstiled-fdstore: ") for line in store.log().splitlines())


# -- keep, drop, order


def test_keep_replace_drop_and_order(stores):
    store = stores()
    a = store.connect()
    assert adopt(a) == []
    ra, wa = pipe_for_store()
    rb, wb = pipe_for_store()
    rc, wc = pipe_for_store()
    keep(a, b"a", b"first", wa)
    keep(a, b"b", b"", wb)
    keep(a, b"nofd", b"plain")
    keep(a, b"c", b"x", wc)
    for w in (wa, wb, wc):
        os.close(w)
    ra2, wa2 = pipe_for_store()
    keep(a, b"a", b"second", wa2)     # new fd: the old one is closed, the place kept
    os.close(wa2)
    keep(a, b"b", b"new data")        # no fd: b keeps its fd
    send(a, b"drop\0c")               # closed and forgotten
    send(a, b"drop\0unknown")         # nothing to do, nothing said
    keep(a, b"c", b"again")           # back, at the end, without an fd
    assert at_eof(ra), "the replaced fd is closed"
    assert at_eof(rc), "the dropped entry's fd is closed"

    b = store.connect()
    entries = adopt(b)
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
    sock = store.connect()
    assert adopt(sock) == []
    r, w = pipe_for_store()
    every_byte = bytes(range(1, 256))
    longest = b"n" * 64
    biggest = b"d" * (65535 - len(b"keep\0") - len(longest) - 1)  # its entry is 65536 bytes
    keep(sock, b"bytes", every_byte, w)
    os.close(w)
    keep(sock, b"empty")
    keep(sock, longest, biggest)
    keep(sock, "süß ünïcode".encode(), b"\xff\xfe")
    sock.close()
    for _ in range(3):
        sock = store.connect()
        entries = adopt(sock)
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
    a = store.connect()
    assert adopt(a) == []
    r, w = pipe_for_store()
    kept_with(store, a, (b"secret", w))
    assert connect_as(test_user, store.path) == ["0", "0"], "end of file, no entry, no fd"
    assert f"a connection from uid {test_user.uid} refused: only root may connect" in store.log()
    # The root connection is still the open one.
    keep(a, b"after")
    ready, _, _ = select.select([a], [], [], 0.2)
    assert not ready, "the open connection was closed"
    entries = adopt(store.connect())
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
    a = store.connect()
    assert adopt(a) == []
    keep(a, b"from-a")  # sent just before b connects: still carried out
    b = store.connect()
    entries = adopt(b)
    assert [n for n, _, _ in entries] == [b"from-a"]
    ready, _, _ = select.select([a], [], [], 5)
    assert ready and a.recv(100) == b"", "the older connection is closed"
    keep(b, b"from-b")
    entries = adopt(store.connect())
    assert [n for n, _, _ in entries] == [b"from-a", b"from-b"]
    assert "a newer connection replaces the open one" in store.log()


# -- letting go


def test_with_no_connection_it_closes_everything_when_the_timer_runs_out(stores):
    store = stores(400)
    sock = store.connect()
    assert adopt(sock) == []
    r, w = pipe_for_store()
    kept_with(store, sock, (b"p", w))
    keep(sock, b"q", b"no fd")
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
    sock = store.connect()
    assert adopt(sock) == []
    r, w = pipe_for_store()
    kept_with(store, sock, (b"p", w))
    time.sleep(0.9)
    assert store.poll() is None
    sock.close()
    time.sleep(0.2)
    sock = store.connect()  # within the new 800 ms
    entries = adopt(sock)
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
    sock = store.connect()
    assert adopt(sock) == []
    r, w = pipe_for_store()
    kept_with(store, sock, (b"p", w))
    send(sock, b"quit")
    assert at_eof(r)
    assert store.wait() == 0
    assert "quit: closing 1 fds of 1 entries and exiting" in store.log()


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT])
def test_sigterm_and_sigint_close_everything_and_exit_0(stores, sig):
    store = stores()
    sock = store.connect()
    assert adopt(sock) == []
    r, w = pipe_for_store()
    kept_with(store, sock, (b"p", w))
    wait_for(lambda: len(store.fds()) == 7, 5, what="the kept fd")
    os.kill(store.pid, sig)
    assert at_eof(r)
    assert store.wait() == 0
    assert f"{sig.name}: closing 1 fds of 1 entries and exiting" in store.log()


# -- bad input


def bad_packets() -> list[tuple[bytes, int, str]]:
    """(packet, fds attached, what the log says)."""
    return [
        (b"frob\0x\0y", 1, 'unknown verb "frob"'),
        (b"entry\0x\0y", 1, 'unknown verb "entry"'),
        (b"\x1b[31mred\nverb", 1, 'unknown verb "?[31mred?verb"'),
        (b"", 1, 'unknown verb ""'),
        (b"keep\0" + b"n" * 65 + b"\0d", 1, "keep: bad name"),
        (b"keep\0\0d", 1, "keep: bad name"),
        (b"keep\0new\nline\0d", 1, "keep: bad name"),
        (b"keep\0del\x7f\0d", 1, "keep: bad name"),
        (b"keep\0held\0two fds", 2, "keep: more than one fd"),
        (b"keep\0held\0" + b"d" * (65536 - 10), 1, "keep: longer than 65535 bytes"),
        (b"keep\0held\0" + b"d" * 70000, 1, "longer than 65536 bytes"),
        (b"keep\0held", 1, "wrong number of fields"),
        (b"keep\0held\0d\0e", 1, "wrong number of fields"),
        (b"keep", 0, "wrong number of fields"),
        (b"drop\0held", 1, "drop: an fd attached"),
        (b"drop\0held\0x", 0, "wrong number of fields"),
        (b"drop\0", 0, "drop: bad name"),
        (b"quit\0now", 0, "wrong number of fields"),
        (b"quit", 1, "quit: an fd attached"),
    ]


def test_bad_packets_are_logged_ignored_and_their_fds_closed(stores):
    store = stores()
    sock = store.connect()
    assert adopt(sock) == []
    r0, w0 = pipe_for_store()
    kept_with(store, sock, (b"held", w0))
    keep(sock, b"held", b"untouched")
    wait_for(lambda: len(store.fds()) == 7, 5, what="the kept fd")
    base = store.fds()
    packets = bad_packets()
    assert len(packets) <= LOG_BURST
    for packet, nfds, _ in packets:
        pipes = [pipe_for_store() for _ in range(nfds)]
        send(sock, packet, [w for _, w in pipes])
        for r, w in pipes:
            os.close(w)
            assert at_eof(r), f"an fd of {packet[:40]!r} is still held"
            os.close(r)
        assert store.poll() is None
    assert store.fds() == base
    entries = adopt(store.connect())
    assert [(n, d) for n, d, _ in entries] == [(b"held", b"untouched")]
    assert same_pipe(entries[0][2], r0)
    close_all(entries)
    complaints = [line for line in store.log().splitlines() if "a packet ignored" in line]
    assert len(complaints) == len(packets), "one line per bad packet"
    for line, (packet, nfds, why) in zip(complaints, packets, strict=True):
        assert line.endswith(f"{nfds} fds): {why}"), (line, packet[:40])


def test_an_empty_packet_is_not_the_end_of_the_connection(stores):
    store = stores()
    sock = store.connect()
    assert adopt(sock) == []
    send(sock, b"")
    keep(sock, b"after")
    newer = store.connect()
    entries = adopt(newer)
    assert [n for n, _, _ in entries] == [b"after"]
    log = store.log()
    assert 'a packet ignored (0 bytes, 0 fds): unknown verb ""' in log
    assert "the connection ended" not in log


def test_complaints_are_rate_limited(stores):
    store = stores()
    sock = store.connect()
    assert adopt(sock) == []
    for i in range(500):
        send(sock, b"junk%d" % i)
    send(sock, b"quit")
    assert store.wait() == 0
    lines = store.log().splitlines()
    assert sum("a packet ignored" in line for line in lines) == LOG_BURST
    assert f"{500 - LOG_BURST} more complaints were not logged (at most 20 in 10 s)" in lines[-2]
    assert len(lines) < LOG_BURST + 5


# -- limits


def test_entries_get_fds_only_up_to_the_descriptor_limit(stores):
    # A hard limit of 16 leaves 16 - 8 fds for entries.
    store = stores(wrapper=[shutil.which("prlimit"), "--nofile=16:16", "--"])
    room = 16 - RESERVED_FDS
    sock = store.connect()
    assert adopt(sock) == []
    keep(sock, b"nofd", b"first without an fd")
    pipes = [pipe_for_store() for _ in range(room + 3)]
    for i, (_, w) in enumerate(pipes):
        keep(sock, b"e%d" % i, b"", w)
        os.close(w)
    for r, _ in pipes[room:]:
        assert at_eof(r), "an fd beyond the limit is closed"
    keep(sock, b"nofd", b"still without")  # needs no descriptor
    keep(sock, b"more", b"no fd either")
    r, w = pipe_for_store()
    keep(sock, b"nofd", b"", w)  # would need one more: the entry goes
    os.close(w)
    assert at_eof(r)
    r, w = pipe_for_store()
    keep(sock, b"e0", b"replaced", w)  # a replacement needs no more
    os.close(w)
    assert at_eof(pipes[0][0]), "the replaced fd is closed"
    entries = adopt(store.connect())
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
    sock = store.connect()
    assert adopt(sock) == []
    r1, w1 = pipe_for_store()
    kept_with(store, sock, (b"x", w1))
    keep(sock, b"y", b"no fd")
    wait_for(lambda: len(store.fds()) == 7, 5, what="the kept fd")
    # No descriptor number left below the limit: the kernel drops what
    # comes with a message and says so (MSG_CTRUNC).
    open_fds = set(store.fds())
    lowest_free = min(n for n in range(len(open_fds) + 1) if n not in open_fds)
    saved = resource.prlimit(store.pid, resource.RLIMIT_NOFILE)
    resource.prlimit(store.pid, resource.RLIMIT_NOFILE, (lowest_free, saved[1]))
    try:
        r2, w2 = pipe_for_store()
        r3, w3 = pipe_for_store()
        # z and frob first: forgetting x frees a descriptor.
        kept_with(store, sock, (b"z", w3))
        r4, w4 = pipe_for_store()
        send(sock, b"frob", [w4])
        os.close(w4)
        kept_with(store, sock, (b"x", w2))
        keep(sock, b"y", b"changed")
        assert at_eof(r3) and at_eof(r2) and at_eof(r4)
        assert at_eof(r1), "the old fd of x is closed: x is forgotten"
        wait_for(lambda: "cannot keep x" in store.log(), 5, what="the last complaint")
    finally:
        resource.prlimit(store.pid, resource.RLIMIT_NOFILE, saved)
    entries = adopt(store.connect())
    assert [(n, d, fd) for n, d, fd in entries] == [(b"y", b"changed", None)]
    assert "cannot keep z (its fd did not arrive): it is forgotten" in store.log()
    assert "cannot keep x (its fd did not arrive): it is forgotten" in store.log()
    assert "a packet ignored (4 bytes, 0 fds): its fds did not all arrive" in store.log()


def test_a_daemon_that_does_not_take_the_entries_is_let_go_after_10_s(stores):
    store = stores()
    sock = store.connect()
    assert adopt(sock) == []
    # Far more than the socket buffers hold.
    big = b"d" * 60000
    for i in range(30):
        keep(sock, b"e%d" % i, big)
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
    entries = adopt(store.connect())
    assert [(n, d) for n, d, _ in entries] == [(b"e%d" % i, big) for i in range(30)]


def test_a_daemon_that_hangs_up_while_taking_the_entries_is_let_go(stores):
    store = stores(500)
    sock = store.connect()
    assert adopt(sock) == []
    for i in range(30):
        keep(sock, b"e%d" % i, b"d" * 60000)
    sock.close()
    wait_for(lambda: "30 entries kept" in store.log(), 5, what="the first connection to end")
    quitter = store.connect()
    # stdio, listener, signalfd and the new connection: accepted, sending
    wait_for(lambda: len(store.fds()) == 6, 5, what="the store to accept")
    quitter.close()
    wait_for(lambda: "the connection failed while taking the entries; 30 entries kept" in
             store.log(), 5, what="the store to let go")
    assert store.wait(5) == 0


# -- fuzz


def valid_name(name: bytes) -> bool:
    return 1 <= len(name) <= 64 and all(b >= 0x20 and b != 0x7F for b in name)


def expected(model: dict, packet: bytes, fd_ids: list) -> None:
    """Applies packet to model (NAME -> [DATA, fd id or None]) as the
    contract says the store does."""
    if len(packet) > 65536:
        return
    verb, *fields = packet.split(b"\0")
    if verb == b"keep" and len(fields) == 2 and valid_name(fields[0]) and \
            len(fd_ids) <= 1 and len(packet) <= 65535:
        name, data = fields
        old = model.get(name, [None, None])
        model[name] = [data, fd_ids[0] if fd_ids else old[1]]
    elif verb == b"drop" and len(fields) == 1 and valid_name(fields[0]) and not fd_ids:
        model.pop(fields[0], None)


def random_packet(rng: random.Random, names: list[bytes]) -> bytes:
    def name() -> bytes:
        roll = rng.random()
        if roll < 0.8:
            return rng.choice(names)
        if roll < 0.9:
            return b"n" * rng.choice([0, 64, 65, 100])
        return bytes(rng.randrange(1, 256) for _ in range(rng.randrange(1, 8)))

    def data() -> bytes:
        roll = rng.random()
        if roll < 0.05:
            return b"d" * rng.choice([65520, 65530, 65531, 65540])
        return bytes(rng.randrange(1 if roll < 0.9 else 0, 256)
                     for _ in range(rng.randrange(0, 40)))

    roll = rng.random()
    if roll < 0.5:
        fields = [b"keep", name(), data()]
    elif roll < 0.7:
        fields = [b"drop", name()]
    elif roll < 0.8:
        fields = [rng.choice([b"keep", b"drop", b"quit"])] + \
            [name() for _ in range(rng.randrange(1, 5))]
    else:
        return bytes(rng.randrange(0, 256) for _ in range(rng.randrange(0, 60)))
    return b"\0".join(fields)


def test_fuzz_leaves_exactly_what_the_contract_says(stores):
    seed = random.randrange(1 << 32)
    rng = random.Random(seed)
    store = stores()
    sock = store.connect()
    assert adopt(sock) == []
    base = len(store.fds())
    names = [b"s%d" % i for i in range(24)]
    pipes = [os.pipe() for _ in range(12)]
    ids = [os.fstat(w).st_ino for _, w in pipes]
    model: dict[bytes, list] = {}

    def check(sock):
        entries = adopt(sock)
        got = [(n, d, None if fd is None else os.fstat(fd).st_ino) for n, d, fd in entries]
        close_all(entries)
        assert got == [(n, d, i) for n, (d, i) in model.items()], f"seed {seed}"

    for _round in range(6):
        for _ in range(500):
            packet = random_packet(rng, names)
            if packet == b"quit":
                continue
            chosen = rng.choices(range(len(pipes)), k=rng.choice([0, 0, 1, 1, 1, 2, 3]))
            send(sock, packet, [pipes[i][1] for i in chosen])
            expected(model, packet, [ids[i] for i in chosen])
        sock = store.connect()  # the older one's packets are carried out first
        check(sock)
        assert store.poll() is None, f"seed {seed}"
    wait_for(lambda: len(store.fds()) == base + sum(i is not None for _, i in model.values()),
             5, what=f"no stray fds (seed {seed})")
    for _, w in pipes:
        os.close(w)
    send(sock, b"quit")
    assert store.wait() == 0
    for r, _ in pipes:
        os.set_blocking(r, False)
        assert at_eof(r), "every fd closed at quit"
        os.close(r)


# -- valgrind


@pytest.mark.skipif(shutil.which("valgrind") is None, reason="valgrind is not installed")
def test_a_whole_life_is_valgrind_clean(stores, sandbox):
    vlog = sandbox / "valgrind.log"
    store = stores(wrapper=[
        shutil.which("valgrind"), "--error-exitcode=99", "--leak-check=full",
        "--errors-for-leak-kinds=definite", "--track-fds=yes", f"--log-file={vlog}"])
    sock = store.connect()
    assert adopt(sock, 30) == []
    pipes = [pipe_for_store() for _ in range(40)]
    for i, (_, w) in enumerate(pipes):
        keep(sock, b"e%d" % i, b"data %d" % i, w)
    keep(sock, b"e3", b"replaced", pipes[0][1])
    keep(sock, b"nofd", b"")
    for i in range(0, 40, 3):
        send(sock, b"drop\0e%d" % i)
    send(sock, b"keep\0two\0fds", [pipes[1][1], pipes[2][1]])
    send(sock, b"keep\0" + b"d" * 70000, [pipes[1][1]])
    send(sock, b"nonsense")
    for _, w in pipes:
        os.close(w)
    sock = store.connect()
    entries = adopt(sock, 30)
    assert len(entries) == 40 - 14 + 1
    close_all(entries)
    send(sock, b"quit")
    status = store.wait(30)
    report = vlog.read_text()
    assert status == 0, report
    assert "ERROR SUMMARY: 0 errors" in report, report
    assert "definitely lost: 0 bytes" in report or "All heap blocks were freed" in report, report
    # Only stdin, stdout and stderr are open at exit.
    assert "FILE DESCRIPTORS: 3 open (3 std) at exit." in report, report
    for r, _ in pipes:
        assert at_eof(r)
