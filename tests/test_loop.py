"""The daemon's event loop (turnstiled/loop.py) on real descriptors,
signals and threads, on its own and as the guest of an asyncio loop."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import threading
import time

from helpers import REPO_ROOT, wait_for

from turnstiled.loop import MAX_WORKERS, Loop


def test_calls_run_in_order_and_timers_when_due(loop):
    said = []
    loop.call_later(0.05, said.append, "late")
    loop.call_later(0.01, said.append, "early")
    dropped = loop.call_later(0.02, said.append, "cancelled")
    loop.call_soon(said.append, "soon")
    loop.call_soon(said.append, "soon 2")
    dropped.cancel()
    assert dropped.cancelled()
    t0 = time.monotonic()
    loop.run(until=lambda: "late" in said, timeout=5)
    assert said == ["soon", "soon 2", "early", "late"]
    assert 0.05 <= time.monotonic() - t0 < 2


def test_a_call_added_by_a_call_waits_for_the_next_turn(loop):
    said = []

    def first():
        said.append(1)
        loop.call_soon(said.append, 3)
        loop.stop()

    loop.call_soon(first)
    loop.call_soon(said.append, 2)
    loop.run()
    assert said == [1, 2]  # the turn ended; 3 is due in the next
    loop.run(until=lambda: len(said) == 3, timeout=1)
    assert said == [1, 2, 3]


def test_readers_and_writers_follow_their_descriptor(loop):
    a, b = socket.socketpair()
    a.setblocking(False)
    got = []

    def readable():
        got.append(a.recv(100))

    loop.add_reader(a.fileno(), readable)
    loop.run(timeout=0.05)
    assert got == []
    b.send(b"hello")
    loop.run(until=lambda: bool(got), timeout=5)
    assert got == [b"hello"]
    # A writer next to the reader on the same fd, then each removed.
    wrote = []
    loop.add_writer(a.fileno(), lambda: wrote.append(True) or loop.remove_writer(a.fileno()))
    loop.run(until=lambda: bool(wrote), timeout=5)
    assert loop.remove_reader(a.fileno()) is True
    assert loop.remove_reader(a.fileno()) is False
    assert loop.remove_writer(a.fileno()) is False
    b.send(b"unheard")
    loop.run(timeout=0.05)
    assert got == [b"hello"]
    a.close()
    b.close()


def test_a_signal_is_handled_on_the_loop(loop):
    heard = []
    loop.add_signal_handler(signal.SIGUSR1, heard.append, "usr1")
    os.kill(os.getpid(), signal.SIGUSR1)
    loop.run(until=lambda: bool(heard), timeout=5)
    assert heard == ["usr1"]
    assert loop.remove_signal_handler(signal.SIGUSR1)
    assert signal.getsignal(signal.SIGUSR1) is signal.SIG_DFL


def test_another_thread_wakes_a_sleeping_loop(loop):
    said = []
    t = threading.Timer(0.1, loop.call_soon_threadsafe, args=(said.append, "from a thread"))
    t.start()
    t0 = time.monotonic()
    loop.run(until=lambda: bool(said), timeout=5)
    assert said == ["from a thread"] and time.monotonic() - t0 < 2
    t.join()


def test_work_in_a_thread_reports_back_on_the_loop(loop, caplog):
    results = []
    loop.in_thread(sum, [1, 2, 3], done=results.append)

    def fails():
        raise OSError("no such thing")

    loop.in_thread(fails, done=results.append)
    loop.run(until=lambda: len(results) == 2, timeout=5)
    assert sorted(results, key=str) == [6, None]
    assert "no such thing" in caplog.text


def test_at_most_a_few_threads_work_at_once_and_none_stays(loop):
    running, most, results = [0], [0], []
    lock = threading.Lock()

    def work(n):
        with lock:
            running[0] += 1
            most[0] = max(most[0], running[0])
        time.sleep(0.01)
        with lock:
            running[0] -= 1
        return n

    # Threads alive now (a worker of an earlier test may still be on its way
    # out) are not this test's: it waits only for the ones it started.
    before = set(threading.enumerate())
    for n in range(40):
        loop.in_thread(work, n, done=results.append)
    loop.run(until=lambda: len(results) == 40, timeout=10)
    assert sorted(results) == list(range(40))
    assert 1 < most[0] <= MAX_WORKERS
    wait_for(lambda: not set(threading.enumerate()) - before, 5, what="the workers to exit",
             detail=lambda: set(threading.enumerate()) - before)


def test_a_failing_callback_is_logged_and_the_loop_goes_on(loop, caplog):
    said = []
    loop.call_soon(lambda: 1 / 0)
    loop.call_soon(said.append, "after")
    loop.run(until=lambda: bool(said), timeout=5)
    assert said == ["after"] and "ZeroDivisionError" in caplog.text


def test_cancelled_timers_do_not_pile_up(loop):
    for _ in range(10_000):
        loop.call_later(3600, print).cancel()
    assert len(loop._timers) < 200


def test_as_asyncio_guest_both_loops_run(loop):
    import asyncio
    said = []
    host = loop.asyncio()
    assert loop.asyncio() is host
    a, b = socket.socketpair()
    a.setblocking(False)
    loop.add_reader(a.fileno(), lambda: said.append(("read", a.recv(10))))

    async def from_asyncio():
        await asyncio.sleep(0.02)
        said.append("asyncio")
        b.send(b"x")
        # Ours, called from asyncio's side: it must still run soon.
        loop.call_soon(said.append, "soon from asyncio")
        loop.call_later(0.02, said.append, "timer from asyncio")

    host.create_task(from_asyncio())
    loop.call_later(0.01, said.append, "ours")
    loop.run(until=lambda: "timer from asyncio" in said, timeout=5)
    assert said == ["ours", "asyncio", "soon from asyncio", ("read", b"x"),
                    "timer from asyncio"]
    # stop() and a timeout end a guest run too.
    loop.call_later(0.01, loop.stop)
    loop.run(timeout=5)
    t0 = time.monotonic()
    loop.run(timeout=0.05)
    assert 0.04 < time.monotonic() - t0 < 2
    a.close()
    b.close()


def test_the_daemon_imports_neither_asyncio_nor_typing():
    """What keeps the idle daemon small (bench/scale.py has the figure):
    a module that imports either makes every daemon carry it."""
    code = ("import sys, turnstiled.__main__, turnstiled.daemon\n"
            "print(' '.join(m for m in ('asyncio', 'typing', 'ssl') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], cwd=REPO_ROOT, capture_output=True,
                         text=True, check=True)
    assert out.stdout.strip() == ""


def test_a_closed_loop_is_not_current():
    from turnstiled import loop as loop_module
    lp = Loop().install()
    assert loop_module.current() is lp
    lp.close()
    try:
        loop_module.current()
    except RuntimeError:
        pass
    else:
        raise AssertionError("current() after close")


def test_closing_a_guest_ends_what_runs_on_asyncio(caplog):
    import asyncio
    lp = Loop().install()
    ended = []

    async def forever():
        try:
            await asyncio.sleep(3600)
        finally:
            ended.append(True)

    lp.asyncio().create_task(forever())
    lp.run(timeout=0.05)
    lp.close()
    assert ended == [True]
    assert "destroyed but it is pending" not in caplog.text


def test_what_is_removed_or_cancelled_in_a_turn_does_not_run_in_it(loop):
    """As asyncio's handles: a reader removed, or a due timer cancelled, by
    an earlier call of the same turn does not run."""
    a, b = socket.socketpair()
    said = []
    timer = loop.call_later(0, said.append, "timer")

    def first():
        said.append("first")
        loop.remove_reader(a.fileno())
        timer.cancel()

    b.send(b"x")
    time.sleep(0.01)  # the timer is due, the socket readable: one turn
    loop.call_soon(first)
    loop.add_reader(a.fileno(), said.append, "reader")
    loop.run(timeout=0.05)
    assert said == ["first"]
    a.close()
    b.close()
