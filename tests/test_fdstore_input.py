"""The fd store (holder/turnstiled-fdstore) on its own, against malformed
input, a fuzz of packets checked against a model of the contract, and
valgrind (tests/fdstore_process.py; the contract is at the top of
holder/turnstiled-fdstore.c).
"""

from __future__ import annotations

import os
import random
import shutil

import pytest
from fdstore_process import LOG_BURST, at_eof, close_all, pipe_for_store, same_pipe
from helpers import wait_for

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
    sock = store.connect_first()
    r0 = store.held_pipe(sock, b"held")
    sock.keep(b"held", b"untouched")
    base = store.fds()
    packets = bad_packets()
    assert len(packets) <= LOG_BURST
    for packet, nfds, _ in packets:
        pipes = [pipe_for_store() for _ in range(nfds)]
        sock.send_packet(packet, [w for _, w in pipes])
        for r, w in pipes:
            os.close(w)
            assert at_eof(r), f"an fd of {packet[:40]!r} is still held"
            os.close(r)
        assert store.poll() is None
    assert store.fds() == base
    entries = store.connect().adopt()
    assert [(n, d) for n, d, _ in entries] == [(b"held", b"untouched")]
    assert same_pipe(entries[0][2], r0)
    close_all(entries)
    complaints = [line for line in store.log().splitlines() if "a packet ignored" in line]
    assert len(complaints) == len(packets), "one line per bad packet"
    for line, (packet, nfds, why) in zip(complaints, packets, strict=True):
        assert line.endswith(f"{nfds} fds): {why}"), (line, packet[:40])


def test_an_empty_packet_is_not_the_end_of_the_connection(stores):
    store = stores()
    sock = store.connect_first()
    sock.send_packet(b"")
    sock.keep(b"after")
    newer = store.connect()
    entries = newer.adopt()
    assert [n for n, _, _ in entries] == [b"after"]
    log = store.log()
    assert 'a packet ignored (0 bytes, 0 fds): unknown verb ""' in log
    assert "the connection ended" not in log


def test_complaints_are_rate_limited(stores):
    store = stores()
    sock = store.connect_first()
    for i in range(500):
        sock.send_packet(b"junk%d" % i)
    sock.send_packet(b"quit")
    assert store.wait() == 0
    lines = store.log().splitlines()
    assert sum("a packet ignored" in line for line in lines) == LOG_BURST
    assert f"{500 - LOG_BURST} more complaints were not logged (at most 20 in 10 s)" in lines[-2]
    assert len(lines) < LOG_BURST + 5


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
    sock = store.connect_first()
    base = len(store.fds())
    names = [b"s%d" % i for i in range(24)]
    pipes = [os.pipe() for _ in range(12)]
    ids = [os.fstat(w).st_ino for _, w in pipes]
    model: dict[bytes, list] = {}

    def check(sock):
        entries = sock.adopt()
        got = [(n, d, None if fd is None else os.fstat(fd).st_ino) for n, d, fd in entries]
        close_all(entries)
        assert got == [(n, d, i) for n, (d, i) in model.items()], f"seed {seed}"

    for _round in range(6):
        for _ in range(500):
            packet = random_packet(rng, names)
            if packet == b"quit":
                continue
            chosen = rng.choices(range(len(pipes)), k=rng.choice([0, 0, 1, 1, 1, 2, 3]))
            sock.send_packet(packet, [pipes[i][1] for i in chosen])
            expected(model, packet, [ids[i] for i in chosen])
        sock = store.connect()  # the older one's packets are carried out first
        check(sock)
        assert store.poll() is None, f"seed {seed}"
    wait_for(lambda: len(store.fds()) == base + sum(i is not None for _, i in model.values()),
             5, what=f"no stray fds (seed {seed})")
    for _, w in pipes:
        os.close(w)
    sock.send_packet(b"quit")
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
    sock = store.connect_first(30)
    pipes = [pipe_for_store() for _ in range(40)]
    for i, (_, w) in enumerate(pipes):
        sock.keep(b"e%d" % i, b"data %d" % i, w)
    sock.keep(b"e3", b"replaced", pipes[0][1])
    sock.keep(b"nofd", b"")
    for i in range(0, 40, 3):
        sock.send_packet(b"drop\0e%d" % i)
    sock.send_packet(b"keep\0two\0fds", [pipes[1][1], pipes[2][1]])
    sock.send_packet(b"keep\0" + b"d" * 70000, [pipes[1][1]])
    sock.send_packet(b"nonsense")
    for _, w in pipes:
        os.close(w)
    sock = store.connect()
    entries = sock.adopt(30)
    assert len(entries) == 40 - 14 + 1
    close_all(entries)
    sock.send_packet(b"quit")
    status = store.wait(30)
    report = vlog.read_text()
    assert status == 0, report
    assert "ERROR SUMMARY: 0 errors" in report, report
    assert "definitely lost: 0 bytes" in report or "All heap blocks were freed" in report, report
    # Only stdin, stdout and stderr are open at exit.
    assert "FILE DESCRIPTORS: 3 open (3 std) at exit." in report, report
    for r, _ in pipes:
        assert at_eof(r)
