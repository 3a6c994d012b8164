"""A minimal single-threaded event loop: descriptors, timers and a wake-up pair.

Owns readiness dispatch for the event-driven CGI path (``loop_server``): callbacks on
descriptors (epoll on Linux, else poll) and one-shot timers on the monotonic clock.
Everything registered here runs on the loop's thread; the only cross-thread entry is
``wake`` (a socket pair byte), which makes a blocked ``select`` return so the owner can
look at a flag another thread set (a shutdown). No asyncio: one request costs a few
dictionary operations here, not a task, a future and a handle per step.
"""

from __future__ import annotations

import collections
import heapq
import itertools
import select
import socket
import time
from collections.abc import Callable
from typing import Any, Final

__all__ = ["READ", "WRITE", "Loop", "Timer"]

READ: Final = 1
WRITE: Final = 2
Callback = Callable[[int], None]  # called with the ready mask


class Timer:
    """A pending one-shot call; ``cancel`` makes it a no-op."""

    __slots__ = ("callback", "when")

    def __init__(self, when: float, callback: Callable[[], None] | None) -> None:
        self.when, self.callback = when, callback

    def cancel(self) -> None:
        self.callback = None


class Loop:
    """Callbacks on ready descriptors and on timers, until ``stop``.

    Straight on ``select.epoll`` (``select.poll`` elsewhere), a dict from descriptor to
    callback: ``selectors`` costs several Python calls per registration, and a CGI
    request registers and removes half a dozen descriptors.
    """

    def __init__(self) -> None:
        if hasattr(select, "epoll"):
            self._poller: Any = select.epoll()
            self._scale = 1.0  # epoll.poll takes seconds
            self._exclusive: int = getattr(select, "EPOLLEXCLUSIVE", 0)
        else:
            self._poller = select.poll()
            self._scale = 1000.0  # poll.poll takes milliseconds
            self._exclusive = 0
        self._callbacks: dict[int, Callback] = {}
        self._masks: dict[int, int] = {}
        self._timers: list[tuple[float, int, Timer]] = []
        self._order = itertools.count()  # ties broken by scheduling order
        self._soon: collections.deque[Callable[[], None]] = collections.deque()
        self._wake_r, self._wake_w = socket.socketpair()
        self._wake_r.setblocking(False)
        self._wake_w.setblocking(False)
        self.add(self._wake_r.fileno(), READ, self._on_wake)
        self.running = False
        # Called with an exception a callback raised (and the callback): the owner logs
        # it and cleans up what the callback belonged to; the loop goes on.
        self.on_error: Callable[[Exception, Callable[..., object]], None] = _raise

    # -- descriptors ---------------------------------------------------------------------

    def add(self, fd: int, mask: int, callback: Callback, exclusive: bool = False) -> None:
        """Call ``callback(mask)`` whenever ``fd`` is ready for ``mask`` (READ, WRITE).

        ``exclusive``: a listening socket that several processes' loops watch; the
        kernel wakes one idle loop per connection, not all of them (EPOLLEXCLUSIVE,
        Linux 4.5): the others would wake only to find the connection taken. Such a
        descriptor can be removed and added again, not modified.
        """
        if fd in self._callbacks:
            raise KeyError(f"descriptor {fd} is already watched")
        events = _EVENTS[mask]
        if exclusive and self._exclusive:
            events |= self._exclusive
        self._poller.register(fd, events)
        self._callbacks[fd], self._masks[fd] = callback, mask

    def modify(self, fd: int, mask: int, callback: Callback) -> None:
        """Change what ``fd`` is watched for; a zero mask removes it."""
        if mask == 0:
            self.remove(fd)
        elif fd not in self._callbacks:
            self.add(fd, mask, callback)
        else:
            if self._masks[fd] != mask:
                self._poller.modify(fd, _EVENTS[mask])
                self._masks[fd] = mask
            self._callbacks[fd] = callback

    def remove(self, fd: int) -> None:
        """Stop watching ``fd`` (nothing happens if it is not watched)."""
        if self._callbacks.pop(fd, None) is not None:
            del self._masks[fd]
            try:
                self._poller.unregister(fd)
            except (OSError, KeyError):  # closed already: the kernel dropped it
                pass

    # -- timers --------------------------------------------------------------------------

    def call_at(self, when: float, callback: Callable[[], None]) -> Timer:
        """Call ``callback()`` once ``time.monotonic()`` reaches ``when``."""
        timer = Timer(when, callback)
        heapq.heappush(self._timers, (when, next(self._order), timer))
        return timer

    def call_later(self, delay: float, callback: Callable[[], None]) -> Timer:
        return self.call_at(time.monotonic() + delay, callback)

    # -- running -------------------------------------------------------------------------

    def call_soon(self, callback: Callable[[], None]) -> None:
        """Run ``callback()`` at the end of this round (after the ready callbacks)."""
        self._soon.append(callback)

    def call_soon_threadsafe(self, callback: Callable[[], None]) -> None:
        """From any thread: run ``callback()`` on the loop's thread, soon."""
        self._soon.append(callback)
        self.wake()

    def wake(self) -> None:
        """From any thread: make the loop's current wait return."""
        try:
            self._wake_w.send(b"x")
        except OSError:  # the pair is full (already woken) or closed
            pass

    def run_once(self, max_wait: float | None = None) -> None:
        """Wait for readiness or the next timer, then run what is due."""
        wait = 0.0 if self._soon else max_wait  # a callback queued outside a round
        if self._timers:
            due = max(0.0, self._timers[0][0] - time.monotonic())
            wait = due if wait is None else min(wait, due)
        timeout = -1 if wait is None else wait * self._scale
        callbacks, masks = self._callbacks, self._masks
        for fd, events in self._poller.poll(timeout):
            callback = callbacks.get(fd)
            if callback is None:  # removed by an earlier callback of this round
                continue
            ready = (READ if events & _READISH else 0) | (WRITE if events & _WRITEISH else 0)
            if ready & masks[fd]:
                try:
                    callback(ready & masks[fd])
                except Exception as exc:  # a bug in one callback must not stop the loop
                    self.on_error(exc, callback)
        self._run_soon()
        if self._timers and self._timers[0][0] <= time.monotonic():
            self._run_timers()
            self._run_soon()  # what the timers queued: this round, not the next wake

    def _run_soon(self) -> None:
        while self._soon:
            self._call(self._soon.popleft())

    def _call(self, callback: Callable[[], None]) -> None:
        try:
            callback()
        except Exception as exc:
            self.on_error(exc, callback)

    def _run_timers(self) -> None:
        now = time.monotonic()
        while self._timers and self._timers[0][0] <= now:
            timer = heapq.heappop(self._timers)[2]
            callback, timer.callback = timer.callback, None
            if callback is not None:
                self._call(callback)

    def run(self, until: Callable[[], bool]) -> None:
        """Run until ``until()`` is true (checked after every step)."""
        self.running = True
        try:
            while not until():
                self.run_once()
        finally:
            self.running = False

    def close(self) -> None:
        if hasattr(self._poller, "close"):  # epoll holds a descriptor; poll does not
            self._poller.close()
        self._callbacks.clear()
        self._wake_r.close()
        self._wake_w.close()
        self._timers.clear()

    def _on_wake(self, mask: int) -> None:
        try:
            while self._wake_r.recv(4096):
                pass
        except OSError:
            pass


def _raise(exc: Exception, callback: Callable[..., object]) -> None:
    raise exc


# Readiness as poll/epoll report it: an error or a hang-up wakes readers and writers
# alike (what selectors does), so a peer's close is seen by whoever waits on it.
_IN, _OUT = select.POLLIN, select.POLLOUT
_READISH: Final = _IN | select.POLLHUP | select.POLLERR | select.POLLPRI
_WRITEISH: Final = _OUT | select.POLLHUP | select.POLLERR
_EVENTS: Final = {READ: _IN, WRITE: _OUT, READ | WRITE: _IN | _OUT}
