"""The daemon's event loop: readers, writers, timers, signals, one thread.

Why not asyncio: importing it (with the inspect, typing, subprocess and
concurrent.futures it pulls in) keeps about 2 MB in the daemon for its
whole life, and the daemon needs none of its transports or tasks. The one
part that does need asyncio, the D-Bus API (dbus-fast), asks for it with
asyncio(); from then on an asyncio loop runs and this loop is its guest.

The contract, in asyncio's names and meanings, so the same code runs
either way:
- Callbacks run one at a time in the loop's thread; one that raises is
  logged and the loop goes on.
- call_soon: in order, after the callbacks already due. call_later and
  call_at: on time() (the monotonic clock); a Timer can be cancelled.
- add_reader / add_writer: level-triggered, one callback per fd and
  direction (a second replaces the first).
- add_signal_handler: the handler runs as an ordinary callback, never
  inside the signal (set_wakeup_fd).
- call_soon_threadsafe and in_thread: the only ways in from other threads.
- run(until, timeout): runs until stop(), until() is true (checked after
  each turn), or timeout seconds have passed.
- As asyncio's guest, this loop's epoll fd is a reader on the asyncio loop
  and its next timer is one asyncio timer: nothing else changes.
"""

from __future__ import annotations

import heapq
import itertools
import logging
import selectors
import signal
import socket
import sys
import threading
import time
from collections import deque
from collections.abc import Callable

TYPE_CHECKING = False  # not typing's (see turnstiled/__init__.py)
if TYPE_CHECKING:
    import asyncio
    from typing import Any

log = logging.getLogger("turnstiled")

# Threads in_thread runs at once: a mass logout removes many users' trees,
# and each thread costs its stack.
MAX_WORKERS = 4
# Cancelled timers are dropped from the heap once they are this many and
# half of it: a peer that opens and closes connections cancels one each.
_PURGE_AT = 64

_current: Loop | None = None


def current() -> Loop:
    """The daemon's loop (the one installed)."""
    if _current is None:
        raise RuntimeError("no turnstiled loop is installed")
    return _current


class Timer:
    """A pending call_later/call_at: when() it is due, cancel() to drop it."""

    __slots__ = ("_when", "_seq", "_call", "_args", "_loop", "_due")

    def __init__(self, loop: Loop, when: float, seq: int, call: Callable[..., object],
                 args: tuple) -> None:
        self._loop = loop
        self._when = when
        self._seq = seq
        self._call: Callable[..., object] | None = call
        self._args = args
        self._due = False  # out of the heap, queued to run this turn

    def __lt__(self, other: Timer) -> bool:
        return (self._when, self._seq) < (other._when, other._seq)

    def when(self) -> float:
        return self._when

    def cancelled(self) -> bool:
        return self._call is None

    def cancel(self) -> None:
        if self._call is not None:
            self._call, self._args = None, ()
            if not self._due:
                self._loop._timer_cancelled()


class _Watch:
    """A reader's or writer's callback. One removed or replaced is dropped,
    and does not run even if its event was queued in the same turn (as an
    asyncio handle is cancelled)."""

    __slots__ = ("call", "args", "dropped")

    def __init__(self, call: Callable[..., object], args: tuple) -> None:
        self.call, self.args, self.dropped = call, args, False

    def cancelled(self) -> bool:
        return self.dropped


class Loop:
    def __init__(self) -> None:
        self._selector = selectors.EpollSelector()
        # (call, args, and the watch or timer that queued it, if one did:
        # dropped since, the call does not run)
        self._ready: deque[tuple[Callable[..., object], tuple, _Watch | Timer | None]] = deque()
        self._timers: list[Timer] = []
        self._cancelled = 0
        self._seq = itertools.count()
        self._signals: dict[int, tuple[Callable[..., object], tuple]] = {}
        # Signals and other threads wake the loop through this pair.
        self._wake_r, self._wake_w = socket.socketpair()
        self._wake_r.setblocking(False)
        self._wake_w.setblocking(False)
        self.add_reader(self._wake_r.fileno(), self._woken)
        self._work: deque[tuple[Callable[..., object], tuple, Callable | None]] = deque()
        self._work_lock = threading.Lock()
        self._workers = 0
        self._running = False
        self._stopping = False
        self._until: Callable[[], bool] | None = None
        self._host: asyncio.AbstractEventLoop | None = None
        self._host_timer: asyncio.TimerHandle | None = None
        self._host_soon = False
        self._in_turn = False

    # -- installing

    def install(self) -> Loop:
        """Makes this the loop current() returns."""
        global _current
        _current = self
        return self

    def close(self) -> None:
        global _current
        for sig in list(self._signals):
            self.remove_signal_handler(sig)
        if self._host is not None:
            self._close_host(self._host)
            self._host = None
        self._selector.close()
        self._wake_r.close()
        self._wake_w.close()
        if _current is self:
            _current = None

    # -- calls

    def time(self) -> float:
        return time.monotonic()

    def call_soon(self, call: Callable[..., object], *args: Any) -> None:
        self._ready.append((call, args, None))
        self._host_wake()

    def call_soon_threadsafe(self, call: Callable[..., object], *args: Any) -> None:
        self._ready.append((call, args, None))  # deque.append is atomic
        try:
            self._wake_w.send(b"\0")
        except OSError:
            pass  # a wake-up is pending already, or the loop is closed

    def call_later(self, delay: float, call: Callable[..., object], *args: Any) -> Timer:
        return self.call_at(self.time() + delay, call, *args)

    def call_at(self, when: float, call: Callable[..., object], *args: Any) -> Timer:
        timer = Timer(self, when, next(self._seq), call, args)
        heapq.heappush(self._timers, timer)
        if self._timers[0] is timer:
            self._host_wake()
        return timer

    def in_thread(self, work: Callable[..., object], *args: Any,
                  done: Callable[[object], object] | None = None) -> None:
        """Runs work(*args) in a worker thread (for what blocks: walking
        /proc, removing a user's tree); done(result) is called on the loop
        when it ends: result is None if work raised (which is logged).
        At most MAX_WORKERS run at once, and none is left when idle."""
        with self._work_lock:
            self._work.append((work, args, done))
            if self._workers >= MAX_WORKERS:
                return
            self._workers += 1
        threading.Thread(target=self._worker, daemon=True).start()

    def _worker(self) -> None:
        while True:
            with self._work_lock:
                if not self._work:
                    self._workers -= 1
                    return
                work, args, done = self._work.popleft()
            result = None
            try:
                result = work(*args)
            except Exception:
                log.exception("%s failed", getattr(work, "__name__", work))
            if done is not None:
                self.call_soon_threadsafe(done, result)

    # -- descriptors

    def add_reader(self, fd: int, call: Callable[..., object], *args: Any) -> None:
        self._watch(fd, selectors.EVENT_READ, _Watch(call, args))

    def add_writer(self, fd: int, call: Callable[..., object], *args: Any) -> None:
        self._watch(fd, selectors.EVENT_WRITE, _Watch(call, args))

    def remove_reader(self, fd: int) -> bool:
        return self._unwatch(fd, selectors.EVENT_READ)

    def remove_writer(self, fd: int) -> bool:
        return self._unwatch(fd, selectors.EVENT_WRITE)

    def _watch(self, fd: int, event: int, watch: _Watch) -> None:
        try:
            key = self._selector.get_key(fd)
        except KeyError:
            self._selector.register(fd, event, {event: watch})
            return
        old = key.data.get(event)
        if old is not None:
            old.dropped = True
        key.data[event] = watch
        if not key.events & event:
            self._selector.modify(fd, key.events | event, key.data)

    def _unwatch(self, fd: int, event: int) -> bool:
        try:
            key = self._selector.get_key(fd)
        except (KeyError, ValueError):
            return False
        if not key.events & event:
            return False
        key.data.pop(event).dropped = True
        events = key.events & ~event
        if events:
            self._selector.modify(fd, events, key.data)
        else:
            self._selector.unregister(fd)
        return True

    # -- signals

    def add_signal_handler(self, sig: int, call: Callable[..., object], *args: Any) -> None:
        if not self._signals:
            signal.set_wakeup_fd(self._wake_w.fileno(), warn_on_full_buffer=False)
        self._signals[sig] = (call, args)
        # A Python-level handler, so the C one writes sig to the wakeup fd;
        # the real handling happens in _woken, on the loop.
        signal.signal(sig, _noted)
        signal.siginterrupt(sig, False)

    def remove_signal_handler(self, sig: int) -> bool:
        if self._signals.pop(sig, None) is None:
            return False
        signal.signal(sig, signal.SIG_DFL)
        if not self._signals:
            signal.set_wakeup_fd(-1)
        return True

    def _woken(self) -> None:
        while True:
            try:
                data = self._wake_r.recv(4096)
            except (BlockingIOError, InterruptedError):
                return
            if not data:
                return
            for sig in data:
                handler = self._signals.get(sig)  # 0: call_soon_threadsafe
                if handler is not None:
                    self._ready.append((*handler, None))

    # -- running

    def stop(self) -> None:
        """Ends run() after the current turn."""
        self._stopping = True
        if self._host is not None and self._host.is_running():
            self._host.stop()

    def run(self, until: Callable[[], bool] | None = None,
            timeout: float | None = None) -> None:
        """Runs callbacks until stop(), until() is true or timeout passes."""
        if self._running:
            raise RuntimeError("the loop is running already")
        deadline = None if timeout is None else self.time() + timeout
        self._running, self._stopping, self._until = True, False, until
        try:
            while not self._done():
                if self._host is not None:
                    self._run_as_guest(deadline)
                    return
                wait = deadline - self.time() if deadline is not None else None
                if wait is not None and wait <= 0:
                    return
                self._turn(wait)
        finally:
            self._running, self._until = False, None

    def _done(self) -> bool:
        return self._stopping or (self._until is not None and self._until())

    def _turn(self, most: float | None) -> None:
        """One turn: waits (at most `most` seconds, None: no bound) for a
        descriptor or the next timer, then runs what is due."""
        if self._ready:
            wait: float | None = 0.0
        elif self._timers:
            wait = max(0.0, self._timers[0]._when - self.time())
            wait = wait if most is None else min(wait, most)
        else:
            wait = most
        for key, events in self._selector.select(wait):
            for event in (selectors.EVENT_READ, selectors.EVENT_WRITE):
                watch = key.data.get(event) if events & event else None
                if watch is not None:
                    self._ready.append((watch.call, watch.args, watch))
        now = self.time()
        while self._timers and self._timers[0]._when <= now:
            timer = heapq.heappop(self._timers)
            if timer._call is None:
                self._cancelled -= 1
            else:
                timer._due = True
                self._ready.append((timer._call, timer._args, timer))
        # What these calls add waits for the next turn.
        for _ in range(len(self._ready)):
            call, args, source = self._ready.popleft()
            if source is not None:
                if source.cancelled():
                    continue
                if isinstance(source, Timer):
                    source._call, source._args = None, ()  # it ran
            try:
                call(*args)
            except (SystemExit, KeyboardInterrupt):
                raise
            except BaseException:
                log.exception("unexpected error in %s", getattr(call, "__qualname__", call))

    def _timer_cancelled(self) -> None:
        self._cancelled += 1
        if self._cancelled > _PURGE_AT and self._cancelled * 2 > len(self._timers):
            self._timers = [t for t in self._timers if t._call is not None]
            heapq.heapify(self._timers)
            self._cancelled = 0

    # -- as asyncio's guest

    def asyncio(self) -> asyncio.AbstractEventLoop:
        """The asyncio loop (made, and this loop made its guest, on the first
        call). run() drives it from then on."""
        if self._host is None:
            # asyncio imports ssl when it can: OpenSSL would cost the
            # daemon, which never speaks TLS, about 3.5 MB for its life.
            sys.modules.setdefault("ssl", None)  # type: ignore[arg-type]
            import asyncio
            self._host = asyncio.new_event_loop()
            self._host.add_reader(self._selector.fileno(), self._guest_turn)
            self._host_wake()
        return self._host

    def _close_host(self, host: asyncio.AbstractEventLoop) -> None:
        """As asyncio.run ends: what still runs there is cancelled and
        given its turn to finish, then the loop closes."""
        import asyncio
        tasks = asyncio.all_tasks(host)
        for task in tasks:
            task.cancel()
        if tasks:
            host.run_until_complete(asyncio.gather(*tasks, return_exceptions=True))
        host.run_until_complete(host.shutdown_asyncgens())
        host.remove_reader(self._selector.fileno())
        host.close()

    def _run_as_guest(self, deadline: float | None) -> None:
        assert self._host is not None
        stop_at = None if deadline is None else self._host.call_at(deadline, self.stop)
        self._host_wake()
        try:
            self._host.run_forever()
        finally:
            if stop_at is not None:
                stop_at.cancel()

    def _host_wake(self) -> None:
        """Makes sure the host gives this loop a turn when something is
        due: now (ready calls) or at the first timer."""
        if self._host is None or self._in_turn:
            return
        if self._ready:
            if not self._host_soon:
                self._host_soon = True
                self._host.call_soon(self._guest_turn)
            return
        if self._host_timer is not None:
            if self._timers and self._host_timer.when() <= self._timers[0]._when:
                return
            self._host_timer.cancel()
            self._host_timer = None
        if self._timers:
            self._host_timer = self._host.call_at(self._timers[0]._when, self._guest_turn)

    def _guest_turn(self) -> None:
        self._host_soon = False
        if self._host_timer is not None:
            self._host_timer.cancel()
            self._host_timer = None
        self._in_turn = True
        try:
            self._turn(0.0)
        finally:
            self._in_turn = False
        if self._running and self._done():
            assert self._host is not None
            self._host.stop()
        self._host_wake()


def _noted(sig: int, frame: object) -> None:
    """The Python-level signal handler: the wakeup fd has the signal."""
