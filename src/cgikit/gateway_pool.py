"""Idle connections in one poller, requests in a fixed pool of worker threads.

Owns ``Pool``, the concurrency of cgikit's FastCGI and SCGI servers (``gateway_server``
holds the protocol-independent rest): the thread that runs ``Pool.run`` is the poller,
an ``event_loop.Loop`` watching the listening socket and every connection that waits
between two requests; ``threads`` worker threads serve what the poller hands them, one
connection each at a time, for as long as that connection has input at hand (after a
short wait: ``FIRST_INPUT_WAIT``, ``NEXT_REQUEST_WAIT``).

Why a poller: a web server keeps FastCGI connections open between requests (KEEP_CONN,
FastCGI 1.0 §5.1, research shared/research/fastcgi-anchors.md §5 item 17: the
application must not close them; nginx ``fastcgi_keep_conn on`` with an upstream
keepalive, Apache ``enablereuse``), and may keep more of them than there are threads.
A worker waiting on such a connection held a thread for nothing: as many idle
connections as threads, and a new connection waited in the backlog until one timed
out. Closing an idle connection to make room races with the web server sending on it
(nginx answers 502). So an idle connection costs a registration here, not a thread.

Backpressure: the poller accepts only while a worker is free (a worker is taken when a
connection is handed to it, not when it picks it up), so a connection nobody here can
serve waits in the kernel's listen backlog, where another process on the same socket
(prefork) may take it; a gateway has no 503 to give. A kept connection whose next
request begins while every worker is busy waits in the poller's queue instead: it is
ours, nobody else can serve it. The pool bounds concurrent requests, not connections.

An idle connection is closed after ``idle_timeout``. ``stop``: the listening socket is
closed; an idle connection is closed at once unless its next request has begun (then it
is served); requests in flight finish within the grace period, after which their
sockets are shut down so that their reads and writes fail.
"""

from __future__ import annotations

import collections
import contextlib
import functools
import queue
import select
import socket
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Final, Protocol

from cgikit.event_loop import READ, Loop, Timer

__all__ = ["FIRST_INPUT_WAIT", "NEXT_REQUEST_WAIT", "Held", "Pool", "Served", "input_ready"]

# A web server writes its request as soon as it has connected: a worker given a new
# connection waits this long for the first bytes before it gives the connection back
# to the poller, rather than send it through the poller for a few microseconds' delay.
FIRST_INPUT_WAIT: Final = 0.05
# After a response on a kept connection a busy web server often sends the next request
# at once (nginx reuses the connection for its next client request): the worker waits
# this long for it before parking the connection: short enough to delay a connection
# waiting for a worker by no more than that. bench/gateways.py, nginx keep-conn, 2 cores
# (noisy): about 3,100 req/s parking at once, 3,700 with the wait.
NEXT_REQUEST_WAIT: Final = 0.002

_ACCEPT_BACKOFF: Final = 0.1  # after EMFILE and the like, not to spin
_SWEEP_EVERY: Final = 1.0  # seconds between idle-timeout checks, at most
_JOIN_AFTER_CUT: Final = 5.0  # how long cut workers get to notice and return


class Served(Protocol):
    """A protocol's side of one connection (``GatewayServer.connection`` makes it)."""

    def serve(self) -> bool:
        """Serve the requests whose input is at hand; True: wait for more, False: done."""
        ...


@dataclass(eq=False, slots=True)
class Held:
    """A connection the server holds: its socket, and its protocol state once served."""

    sock: socket.socket
    peer: str
    handler: Served | None = None
    since: float = 0.0  # when it was parked (monotonic)


def input_ready(sock: socket.socket, wait: float = 0.0) -> bool:
    """True if ``sock`` has input (or an EOF) to read within ``wait`` seconds."""
    poller = select.poll()
    poller.register(sock, select.POLLIN)
    return bool(poller.poll(wait * 1000))


class Pool:
    """The poller and the workers of one server; ``run`` in one thread, ``stop`` from any.

    ``serve(held)`` runs in a worker and never raises: True keeps the connection (it
    waits in the poller for its next request), False has the worker close it with
    ``close`` (the FIN and bounded drain that protect a response). ``admit(sock, addr)``
    runs in the poller for each accepted connection: False, and it is already closed.
    """

    def __init__(
        self,
        listener: socket.socket,
        *,
        threads: int,
        idle_timeout: float,
        serve: Callable[[Held], bool],
        admit: Callable[[socket.socket, object], Held | None],
        close: Callable[[socket.socket], None],
        log: Callable[[str], object],
        name: str,
    ) -> None:
        self.listener, self.threads, self.idle_timeout = listener, threads, idle_timeout
        self._serve, self._admit, self._close, self._log = serve, admit, close, log
        self._name = name
        self.loop = Loop()
        self._jobs: queue.SimpleQueue[Held | None] = queue.SimpleQueue()
        self._free = threads  # workers not handed a connection
        self._busy: set[Held] = set()  # handed to a worker, not yet back
        self._waiting: collections.deque[Held] = collections.deque()  # begun, no worker yet
        self._parked: dict[int, Held] = {}  # idle, by descriptor; oldest first
        self._watching = self._paused = False
        self._sweep: Timer | None = None
        self._stopping = threading.Event()  # set by stop(), from any thread
        self._draining = False  # set on the loop's thread once stop() reached it
        self._finished = False  # past the grace period, or drained

    # -- running ----------------------------------------------------------------------

    def run(self) -> None:
        """Poll and serve until ``stop`` and the drain are done; the workers are joined."""
        workers = [
            threading.Thread(target=self._work, name=f"{self._name}-{n}", daemon=True)
            for n in range(self.threads)
        ]
        for worker in workers:
            worker.start()
        try:
            self._watch_listener()
            self.loop.run(until=lambda: self._finished)
        finally:
            for _ in workers:
                self._jobs.put(None)
            for worker in workers:
                worker.join(_JOIN_AFTER_CUT)
            self._close_parked()
            self.loop.close()

    def stop(self, grace: float) -> None:
        """From any thread: stop accepting, close idle connections, drain for ``grace``."""
        self._stopping.set()
        self.loop.call_soon_threadsafe(functools.partial(self._begin_stop, grace))

    def _work(self) -> None:
        while (held := self._jobs.get()) is not None:
            keep = self._serve(held) and not self._stopping.is_set()
            if not keep:
                self._close(held.sock)
            self.loop.call_soon_threadsafe(functools.partial(self._returned, held, keep))

    # -- the poller's side: every method below runs on the loop's thread ---------------

    def _returned(self, held: Held, keep: bool) -> None:
        """A worker is done with ``held``: it is free again, ``held`` waits if kept."""
        self._busy.discard(held)
        self._free += 1
        if keep:
            self._park(held)
        if self._waiting and self._free:
            self._dispatch(self._waiting.popleft())
        self._watch_listener()
        self._check_drained()

    def _dispatch(self, held: Held) -> None:
        self._free -= 1
        self._busy.add(held)
        self._jobs.put(held)

    def _ready(self, held: Held) -> None:
        """``held`` has input: to a free worker, or in line for the next one."""
        if self._free:
            self._dispatch(held)
        else:
            self._waiting.append(held)

    def _watch_listener(self) -> None:
        """Watch the listening socket exactly while a worker is free (backpressure)."""
        want = self._free > 0 and not self._paused and not self._stopping.is_set()
        if want and not self._watching:
            self.loop.add(self.listener.fileno(), READ, self._on_listener, exclusive=True)
        elif self._watching and not want:
            self.loop.remove(self.listener.fileno())
        self._watching = want

    def _on_listener(self, mask: int) -> None:
        while self._free and not self._stopping.is_set():
            try:
                sock, addr = self.listener.accept()
            except (BlockingIOError, ConnectionAbortedError):  # another process took it
                break
            except OSError as exc:  # EMFILE, ENOBUFS: back off rather than spin
                self._log(f"accept failed: {exc}")
                self._paused = True
                self.loop.call_later(_ACCEPT_BACKOFF, self._resume_accepting)
                break
            held = self._admit(sock, addr)
            if held is not None:
                self._dispatch(held)
        self._watch_listener()

    def _resume_accepting(self) -> None:
        self._paused = False
        self._watch_listener()

    # -- idle connections ---------------------------------------------------------------

    def _park(self, held: Held) -> None:
        """Wait for ``held``'s next request here, not in a thread (module docstring)."""
        if self._stopping.is_set():
            self._settle(held)
            return
        fd = held.sock.fileno()
        held.since = time.monotonic()
        self._parked[fd] = held
        self.loop.add(fd, READ, functools.partial(self._unpark, fd))
        if self._sweep is None:
            self._sweep = self.loop.call_later(self._sweep_every(), self._expire)

    def _unpark(self, fd: int, mask: int) -> None:
        self.loop.remove(fd)
        self._ready(self._parked.pop(fd))

    def _sweep_every(self) -> float:
        return min(_SWEEP_EVERY, self.idle_timeout / 2)

    def _expire(self) -> None:
        """Close the connections idle for ``idle_timeout`` (the dict is oldest first)."""
        self._sweep = None
        limit = time.monotonic() - self.idle_timeout
        while self._parked:
            fd, held = next(iter(self._parked.items()))
            if held.since > limit:
                break
            del self._parked[fd]
            self.loop.remove(fd)
            held.sock.close()  # no request begun, nothing unread: a FIN, no RST
        if self._parked:
            self._sweep = self.loop.call_later(self._sweep_every(), self._expire)

    def _settle(self, held: Held) -> None:
        """While stopping: serve ``held`` if its next request has begun, else close it."""
        if input_ready(held.sock):
            self._ready(held)
        else:
            held.sock.close()

    def _unwatch_parked(self) -> list[Held]:
        for fd in self._parked:
            self.loop.remove(fd)
        parked = list(self._parked.values())
        self._parked.clear()
        return parked

    def _close_parked(self) -> None:
        for held in self._unwatch_parked():
            held.sock.close()

    # -- stopping ------------------------------------------------------------------------

    def _begin_stop(self, grace: float) -> None:
        if self._draining:  # stop() called twice: the first grace period holds
            return
        self._watch_listener()  # stops watching: _stopping is set
        self.listener.close()  # new clients are refused (or wait for another process)
        self._draining = True
        for held in self._unwatch_parked():
            self._settle(held)
        self.loop.call_later(grace, self._cut)
        self._check_drained()

    def _check_drained(self) -> None:
        if self._draining and not self._busy and not self._waiting:
            self._finished = True

    def _cut(self) -> None:
        """Past the grace period: reads and writes in flight fail, waiting ones close."""
        for held in self._busy:
            with contextlib.suppress(OSError):
                held.sock.shutdown(socket.SHUT_RDWR)
        for held in self._waiting:
            held.sock.close()
        self._waiting.clear()
        self._finished = True
