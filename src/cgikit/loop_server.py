"""``cgikit serve``'s HTTP/1.1 server with an event loop in front of the thread pool.

Why: a CGI request is a process spawn and a few pipe reads; a thread, a selector and a
WSGI generator stack per request cost more than the spawn (bench/RESULTS.md, issue 3).
``LoopServer`` is ``http_server.HTTPServer`` whose accepting thread runs an
``event_loop.Loop`` instead of a bare accept: it owns every connection while it is idle
or reading a request head (keep-alive and header timeouts, 400/408/431 answers, as
``http_connection.Connection`` does), and answers the common request on the loop
itself: a script in a CGI directory (``Dispatcher.fast_route``) whose body, if any, has
arrived whole and is at most ``FAST_BODY`` bytes (``loop_exchange``). Every other
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
from cgikit.client_socket import peek_client
from cgikit.event_loop import READ, WRITE, Loop
from cgikit.http_head import error_response, request_meta
from cgikit.http_request import BadRequest, ConnectionClosed, Data, Request, RequestParser
from cgikit.http_server import HTTPServer
from cgikit.loop_exchange import LoopExchange

TYPE_CHECKING = False
if TYPE_CHECKING:
    from cgikit.site_dispatch import Dispatcher, FastRoute

__all__ = ["FAST_BODY", "LoopConnection", "LoopServer"]

FAST_BODY: Final = 65536  # a larger request body goes to the thread pool, streamed
SWEEP: Final = 0.05  # seconds between timeout checks while scripts run
SWEEP_IDLE: Final = 0.5  # ... and while none runs (keep-alive and header timeouts)
OUT_HIGH: Final = 1 << 18  # bytes queued for a client before its script is paused
FIRST_REQUEST_WAIT: Final = 1.0  # stopping: seconds a new connection has to send a request
_RECV: Final = 65536


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

    @property
    def stopping(self) -> bool:
        return self._stopping

    def _accept_loop(self) -> None:
        posix_spawn.prepare()
        loop = self.loop = Loop()
        loop.on_error = self._callback_failed
        loop.add(self.socket.fileno(), READ, self._on_accept)
        # shutdown() writes to this pair and never reads it: level-triggered, it would
        # wake the loop for ever, so it is watched once.
        loop.add(self._wake_r.fileno(), READ, lambda mask: loop.remove(self._wake_r.fileno()))
        self._sweep()
        try:
            loop.run(lambda: self._stopping)
            self._drain(loop)
        finally:
            for conn in list(self.connections):
                conn.abort("the server is stopping")
            loop.close()

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
            self.loop.add(self.socket.fileno(), READ, self._on_accept)

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


class LoopConnection:
    """One client connection while the loop owns it (module docstring)."""

    def __init__(
        self, server: LoopServer, loop: Loop, sock: socket.socket, remote: tuple[str, int]
    ) -> None:
        self.server, self.loop, self.sock, self.remote = server, loop, sock, remote
        self.fd = sock.fileno()
        limits = server.limits
        self.parser = RequestParser(limits.max_header_bytes, limits.max_body_bytes)
        self.exchange: LoopExchange | None = None
        self.out = bytearray()
        self.closing = False  # close once ``out`` is sent
        self.started = False  # bytes of a request head have arrived
        self.watching = False  # the client is watched for a hang-up
        self.timer: Callable[[], None] | None = None  # due at ``deadline``
        self.deadline = 0.0
        self.closed = False
        self.flush_soon = False  # a _flush is queued for the end of the round
        self.blocked = False  # the socket took only part of ``out``: waiting for room
        self.served = 0  # requests answered on this connection
        loop.add(self.fd, READ, self._on_ready)
        self._wait(limits.idle_timeout, self._idle_expired)

    def stopping(self) -> bool:
        return self.server.stopping

    # -- reading requests ------------------------------------------------------------

    def _on_ready(self, mask: int) -> None:
        if mask & WRITE:
            self._flush()
        if mask & READ and not self.closed:
            if self.exchange is None:
                self._read()
            elif not self.exchange.done:
                self._check_client()

    def _read(self) -> None:
        try:
            data = self.sock.recv(_RECV)
        except BlockingIOError:
            return
        except OSError:  # ECONNRESET and friends: the client is gone
            data = b""
        if data and not self.started:  # a header block must complete in time (RFC 9110)
            self.started = True
            self._wait(self.server.limits.header_timeout, self._head_expired)
        self.parser.receive_data(data)
        self._next_request()

    def _next_request(self) -> None:
        """Act on what the parser has: a request, more to wait for, or the end."""
        if self.exchange is not None or self.closed:
            return
        try:
            event = self.parser.next_event()
        except BadRequest as exc:
            self._refuse(exc.status, exc.reason)
            return
        if isinstance(event, Request):
            self._cancel_timer()
            self._dispatch(event)
        elif isinstance(event, ConnectionClosed) or (self.stopping() and not self.started):
            self.close()

    def _dispatch(self, request: Request) -> None:
        try:
            meta = request_meta(request, self.remote, self.server.server_address)
        except BadRequest as exc:
            self._refuse(exc.status, exc.reason)
            return
        length = request.content_length or 0
        fits = not request.chunked and length <= FAST_BODY and self.parser.buffered >= length
        route = None
        if fits and not request.expect_continue and not self.stopping():
            route = self.server.route(meta["REQUEST_URI"])
        if route is None:
            self.loop.remove(self.fd)
            self.server.hand_over(self, request)
            return
        body = bytearray()
        while isinstance(event := self.parser.next_event(), Data):
            body += event.data
        # EndOfMessage now: the whole body was buffered (``fits``).
        self.exchange = LoopExchange(self, request, bytes(body), route, meta)
        self.exchange.start()

    # -- timers ----------------------------------------------------------------------

    def _wait(self, seconds: float, expired: Callable[[], None]) -> None:
        """Call ``expired`` after ``seconds`` (checked by the server's sweep)."""
        self.deadline, self.timer = time.monotonic() + seconds, expired

    def _cancel_timer(self) -> None:
        self.timer = None

    def tick(self, now: float) -> None:
        """The server's sweep: fire a due timer; let a running script check its own."""
        if self.timer is not None and now >= self.deadline:
            expired, self.timer = self.timer, None
            expired()
        exchange = self.exchange
        if exchange is not None and exchange.task is not None and not exchange.done:
            exchange.task.tick(now)

    def _idle_expired(self) -> None:
        self.timer = None
        if self.exchange is None and not self.started:  # RFC 9112 §9.3: idle keep-alive
            self.close()

    def _head_expired(self) -> None:
        self.timer = None
        if self.exchange is None:
            self._refuse(408, "request header not received in time")

    def _refuse(self, status: int, reason: str) -> None:
        self.server.log(f"{self.remote[0]}:{self.remote[1]} bad request: {status} {reason}")
        self.closing = True
        self.write(error_response(status, reason))

    # -- the exchange's side ---------------------------------------------------------

    def write(self, data: bytes) -> bool:
        """Queue ``data``; it is sent at the end of this loop round, so the head, body
        and last chunk of a quick script leave in one segment. False once more than
        ``OUT_HIGH`` bytes wait: the writer should pause until ``drained``."""
        if self.closed:
            return True
        self.out += data
        if not self.flush_soon and not self.blocked:  # blocked: WRITE readiness flushes
            self.flush_soon = True
            self.loop.call_soon(self._flush)
        return len(self.out) < OUT_HIGH

    def _flush(self) -> None:
        self.flush_soon = False
        if self.closed or not self.out:
            return
        try:
            sent = self.sock.send(self.out)
        except BlockingIOError:
            sent = 0
        except OSError:
            self._gone()
            return
        del self.out[:sent]
        self.blocked = bool(self.out)
        if self.blocked:  # the client is slow: wait for room, a bounded time (idle_timeout)
            self._watch()
            if sent or self.timer is None:
                self._wait(self.server.limits.idle_timeout, self._send_expired)
            return
        if self.timer is not None and self.exchange is not None:
            self._cancel_timer()
        self._watch()
        self._sent()

    def _sent(self) -> None:
        """Everything written so far is out."""
        if self.closing:
            self.close()
        elif self.exchange is not None:
            if self.exchange.done:
                self._next()
            else:
                self.exchange.drained()

    def _send_expired(self) -> None:
        self.timer = None
        self.server.log(f"{self.remote[0]}:{self.remote[1]} client too slow: closed")
        self._gone()

    def watch_client(self, on: bool) -> None:
        """Watch the socket for a hang-up while a script runs (the body is all read)."""
        self.watching = on
        self._watch()

    def _watch(self) -> None:
        if self.closed:
            return
        exchange = self.exchange
        # Reading: between requests, while a script runs (a hang-up), and once the
        # response is all queued (the mask then stays as it is until the next request).
        reading = exchange is None or self.watching or (exchange.done and not self.blocked)
        mask = (READ if reading else 0) | (WRITE if self.blocked else 0)
        self.loop.modify(self.fd, mask, self._on_ready)

    def _check_client(self) -> None:
        state = peek_client(self.fd)
        if state == "quiet":
            return
        self.watching = False  # gone, or a pipelined request: not ours to read yet
        self._watch()
        if state == "gone":
            self._gone()

    def _gone(self) -> None:
        exchange, self.exchange = self.exchange, None
        self.out.clear()
        if exchange is not None and not exchange.done:
            exchange.client_gone()
        self.close()

    def finish(self, keep: bool, access_line: str) -> None:
        """The exchange is over: log it; then the next request, or close when sent."""
        self.server.log(access_line)
        if not keep:
            self.closing = True
        if not self.out:
            self._sent()

    def _next(self) -> None:
        self.exchange = None
        self.served += 1
        self.parser.start_next_request()
        self._watch()
        self.started = self.parser.buffered > 0  # a pipelined request's head, begun
        if self.started:
            self._wait(self.server.limits.header_timeout, self._head_expired)
        else:
            self._wait(self.server.limits.idle_timeout, self._idle_expired)
        self._next_request()

    # -- the end ---------------------------------------------------------------------

    def stop_if_idle(self) -> None:
        """Stopping: an idle keep-alive connection closes; a new one gets a moment for
        its first request (its client sent it, or is about to: it was accepted)."""
        if self.exchange is not None or self.out or self.started:
            return
        if self.served:
            self.close()
        else:
            self._wait(FIRST_REQUEST_WAIT, self._idle_expired)

    def abort(self, why: str) -> None:
        """Past the grace period, or after an internal error: end the script, close."""
        if self.exchange is not None:
            self.exchange.abandon(why)
        self.close()

    def close(self) -> None:
        if self.closed:
            return
        self.closed = True
        self._cancel_timer()
        self.loop.remove(self.fd)
        self.server.connections.discard(self)
        try:
            self.sock.shutdown(socket.SHUT_WR)  # a FIN after the last response byte
        except OSError:
            pass
        self.sock.close()
