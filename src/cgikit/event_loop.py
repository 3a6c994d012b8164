"""A minimal single-threaded event loop: descriptors, timers and a wake-up pair.

Owns readiness dispatch for the event-driven CGI path (``loop_server``): callbacks on
descriptors (``selectors``, epoll on Linux) and one-shot timers on the monotonic clock.
Everything registered here runs on the loop's thread; the only cross-thread entry is
``wake`` (a socket pair byte), which makes a blocked ``select`` return so the owner can
look at a flag another thread set (a shutdown). No asyncio: one request costs a few
dictionary operations here, not a task, a future and a handle per step.
"""

from __future__ import annotations

import heapq
import itertools
import selectors
import socket
import time
from collections.abc import Callable
from typing import Final

__all__ = ["READ", "WRITE", "Loop", "Timer"]

READ: Final = selectors.EVENT_READ
WRITE: Final = selectors.EVENT_WRITE
Callback = Callable[[int], None]  # called with the ready mask


class Timer:
    """A pending one-shot call; ``cancel`` makes it a no-op."""

    __slots__ = ("callback", "when")

    def __init__(self, when: float, callback: Callable[[], None] | None) -> None:
        self.when, self.callback = when, callback

    def cancel(self) -> None:
        self.callback = None


class Loop:
    """Callbacks on ready descriptors and on timers, until ``stop``."""

    def __init__(self) -> None:
        self._selector = selectors.DefaultSelector()
        self._timers: list[tuple[float, int, Timer]] = []
        self._order = itertools.count()  # ties broken by scheduling order
        self._wake_r, self._wake_w = socket.socketpair()
        self._wake_r.setblocking(False)
        self._wake_w.setblocking(False)
        self._selector.register(self._wake_r, READ, self._on_wake)
        self.running = False

    # -- descriptors ---------------------------------------------------------------------

    def add(self, fd: int, mask: int, callback: Callback) -> None:
        """Call ``callback(mask)`` whenever ``fd`` is ready for ``mask``."""
        self._selector.register(fd, mask, callback)

    def modify(self, fd: int, mask: int, callback: Callback) -> None:
        """Change what ``fd`` is watched for; a zero mask removes it."""
        if mask == 0:
            self.remove(fd)
        elif fd in self._selector.get_map():
            self._selector.modify(fd, mask, callback)
        else:
            self._selector.register(fd, mask, callback)

    def remove(self, fd: int) -> None:
        """Stop watching ``fd`` (nothing happens if it is not watched)."""
        if fd in self._selector.get_map():
            self._selector.unregister(fd)

    # -- timers --------------------------------------------------------------------------

    def call_at(self, when: float, callback: Callable[[], None]) -> Timer:
        """Call ``callback()`` once ``time.monotonic()`` reaches ``when``."""
        timer = Timer(when, callback)
        heapq.heappush(self._timers, (when, next(self._order), timer))
        return timer

    def call_later(self, delay: float, callback: Callable[[], None]) -> Timer:
        return self.call_at(time.monotonic() + delay, callback)

    # -- running -------------------------------------------------------------------------

    def wake(self) -> None:
        """From any thread: make the loop's current wait return."""
        try:
            self._wake_w.send(b"x")
        except OSError:  # the pair is full (already woken) or closed
            pass

    def run_once(self, max_wait: float | None = None) -> None:
        """Wait for readiness or the next timer, then run what is due."""
        wait = max_wait
        if self._timers:
            due = max(0.0, self._timers[0][0] - time.monotonic())
            wait = due if wait is None else min(wait, due)
        ready = self._selector.select(wait)
        watched = self._selector.get_map()
        for key, mask in ready:
            # An earlier callback of this round may have removed (or replaced) it.
            current = watched.get(key.fd)
            if current is not None and current.data == key.data:
                key.data(mask & current.events)
        now = time.monotonic()
        while self._timers and self._timers[0][0] <= now:
            timer = heapq.heappop(self._timers)[2]
            callback, timer.callback = timer.callback, None
            if callback is not None:
                callback()

    def run(self, until: Callable[[], bool]) -> None:
        """Run until ``until()`` is true (checked after every step)."""
        self.running = True
        try:
            while not until():
                self.run_once()
        finally:
            self.running = False

    def close(self) -> None:
        self._selector.close()
        self._wake_r.close()
        self._wake_w.close()
        self._timers.clear()

    def _on_wake(self, mask: int) -> None:
        try:
            while self._wake_r.recv(4096):
                pass
        except OSError:
            pass
