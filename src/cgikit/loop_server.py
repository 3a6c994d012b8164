"""``cgikit serve``'s HTTP/1.1 server with an event loop in front of the thread pool.

Why: a CGI request is a process spawn and a few pipe reads; a thread, a selector and a
WSGI generator stack per request cost more than the spawn (bench/RESULTS.md, issue 3).
``LoopServer`` is ``http_server.HTTPServer`` whose accepting thread runs an
``event_loop.Loop`` instead of a bare accept: its connections (``loop_connection``)
are the loop's while idle or reading a request head (keep-alive and header timeouts,
400/408/431 answers, as ``http_connection.Connection`` does), and the loop answers the
common request itself: a script in a CGI directory (``Dispatcher.fast_route``) whose
body, if any, has arrived whole and is at most ``FAST_BODY`` bytes (``loop_exchange``). Every other
request (static files, ``cgi_ext`` scripts, chunked or large bodies, ``Expect:
100-continue``, no free ``max_procs`` slot) is handed, with its parser, to the thread
pool, which serves that connection to its end through the WSGI path as before.

Shutdown (``HTTPServer.shutdown``): the loop stops accepting, closes idle connections,
lets its requests in flight finish within the grace period, then ends their scripts.
A client that hangs up while its script runs ends the script (issue 3 item 4): the
socket is watched for EOF (peeked, ``client_socket``) once the request is read.
"""

from __future__ import annotations

import socket
import time
import traceback
from collections.abc import Callable
from typing import Final

from cgikit import posix_spawn
from cgikit.event_loop import READ, Loop
from cgikit.http_request import Request
from cgikit.http_server import HTTPServer, Queued
from cgikit.loop_connection import FAST_BODY, LoopConnection

TYPE_CHECKING = False
if TYPE_CHECKING:
    from cgikit.site_dispatch import Dispatcher, FastRoute

__all__ = ["FAST_BODY", "LoopConnection", "LoopServer"]

SWEEP: Final = 0.05  # seconds between timeout checks while scripts run
SWEEP_IDLE: Final = 0.5  # ... and while none runs (keep-alive and header timeouts)


class LoopServer(HTTPServer):
    """``HTTPServer`` for a ``Dispatcher``, with the event-driven fast path (docstring)."""

    def __init__(
        self,
        app: Dispatcher,
        host: str,
        port: int,
        *,
        threads: int = 8,
        max_body_bytes: int | None = None,
    ) -> None:
        super().__init__(app, host, port, threads=threads, max_body_bytes=max_body_bytes)
        self.route: Callable[[str], FastRoute | None] = app.fast_route
        self.loop: Loop | None = None
        self.connections: set[LoopConnection] = set()
        self.handed_over = 0  # requests given to the thread pool (tests count them)
        self._loop_done = False  # the loop has stopped handing connections over

    @property
    def stopping(self) -> bool:
        return self._stopping

    def _accept_loop(self) -> None:
        loop = self.loop = Loop()
        try:
            posix_spawn.prepare()
            loop.on_error = self._callback_failed
            self._watch_listener(loop)
            # shutdown() writes to this pair and never reads it: level-triggered, it
            # would wake the loop for ever, so it is watched once.
            wake = self._wake_r.fileno()
            loop.add(wake, READ, lambda mask: loop.remove(wake))
            self._sweep()
            loop.run(lambda: self._stopping)
            self._drain(loop)
        finally:
            for conn in list(self.connections):
                conn.abort("the server is stopping")
            loop.close()
            with self._lock:  # the threads may go once nothing more can be handed over
                self._loop_done = True
                self._lock.notify_all()

    def _next_connection(self) -> Queued | None:
        """HTTPServer's, but a thread stays while the loop drains: a connection handed
        over during the drain must find one (else it would be closed unanswered)."""
        with self._lock:
            while not self._queue and not (self._stopping and self._loop_done):
                self._lock.wait()
            if not self._queue:
                return None
            item = self._queue.popleft()
            self._active.add(item[0])
            return item

    def _callback_failed(self, exc: Exception, callback: Callable[..., object]) -> None:
        """A bug in a callback: log it, end the connection it served, serve on (as
        HTTPServer does for a connection whose thread raised)."""
        owner = getattr(callback, "__self__", None)
        conn = owner if isinstance(owner, LoopConnection) else None
        exchange = getattr(getattr(owner, "owner", None), "conn", None)  # a ScriptTask's
        if isinstance(exchange, LoopConnection):
            conn = exchange
        where = f"{conn.remote[0]}:{conn.remote[1]}" if conn is not None else "the server"
        detail = "".join(traceback.format_exception(exc)).rstrip()
        self.log(f"{where}: internal error, connection closed: {detail}")
        if conn is not None:
            conn.abort("internal error")

    def _sweep(self) -> None:
        """Timeouts, checked every ``SWEEP`` seconds while scripts run (else every
        ``SWEEP_IDLE``): a deadline is an attribute, not a timer object per request
        (a 30 s keep-alive timer re-armed per request would pile up in a heap)."""
        now = time.monotonic()
        busy = False
        for conn in list(self.connections):
            try:
                conn.tick(now)
            except Exception as exc:
                self._callback_failed(exc, conn.tick)
            busy = busy or conn.exchange is not None
        if self.loop is not None:
            self.loop.call_later(SWEEP if busy else SWEEP_IDLE, self._sweep)

    def _drain(self, loop: Loop) -> None:
        """Stopping: no new connections; idle ones close; busy ones get the grace."""
        loop.remove(self.socket.fileno())
        for conn in list(self.connections):
            conn.stop_if_idle()
        deadline = time.monotonic() + self._grace
        while self.connections and time.monotonic() < deadline:
            loop.run_once(max(0.0, min(0.5, deadline - time.monotonic())))

    def _on_accept(self, mask: int) -> None:
        loop = self.loop
        if loop is None:
            return
        if self.defer_when_busy and self._busy():
            # Another process on this socket may be idle: leave it the connection for a
            # moment (as HTTPServer does), then take it if it is still there.
            loop.remove(self.socket.fileno())
            loop.call_later(self.defer_when_busy, self._accept_deferred)
            return
        self._accept(loop)

    def _accept_deferred(self) -> None:
        if self.loop is not None and not self._stopping:
            self._accept(self.loop)
            self._watch_listener(self.loop)

    def _watch_listener(self, loop: Loop) -> None:
        # One idle worker woken per connection (EPOLLEXCLUSIVE), unless a busy one is
        # to leave connections to the others: woken alone, it would leave them waiting.
        exclusive = not self.defer_when_busy
        loop.add(self.socket.fileno(), READ, self._on_accept, exclusive=exclusive)

    def _busy(self) -> bool:
        """Whether there are ``threads`` connections already, as HTTPServer counts."""
        return len(self.connections) + len(self._active) + len(self._queue) >= self.threads

    def _accept(self, loop: Loop) -> None:
        """One connection: with several processes on the socket, each takes its turn."""
        try:
            sock, addr = self.socket.accept()
        except OSError:  # EAGAIN (another worker took it, a client gave up), EMFILE
            return
        sock.setblocking(False)
        if sock.family != socket.AF_UNIX:
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        remote = addr[:2] if isinstance(addr, tuple) else ("unix", 0)
        self.connections.add(LoopConnection(self, loop, sock, remote))

    def hand_over(self, conn: LoopConnection, request: Request) -> None:
        """Give a connection and its parsed request head to the thread pool."""
        self.connections.discard(conn)
        self.handed_over += 1
        conn.sock.setblocking(True)
        with self._lock:
            self._queue.append((conn.sock, conn.remote, (conn.parser, request)))
            self._lock.notify()
