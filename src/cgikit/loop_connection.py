"""One client connection of ``loop_server`` while the event loop owns it.

Reads request heads (keep-alive and header timeouts, 400/408/431 answers, as
``http_connection.Connection`` does), starts a ``loop_exchange.LoopExchange`` for a
request the loop answers itself or hands the connection (socket, parser, parsed head)
to the server's thread pool, and writes what the exchange queues: flushed at the end of
the loop round, so a quick script's head, body and last chunk leave in one segment,
with backpressure (``OUT_HIGH``: the script is paused until the client takes more)
and a bounded wait for a slow client (``idle_timeout``). Timeouts are deadlines that
the server's sweep checks (``tick``), not a timer object per request. While a script
runs, a hang-up is watched for (a peek: ``client_socket``) and ends it (issue 3 item 4).
"""

from __future__ import annotations

import socket
import time
from collections.abc import Callable
from typing import Final

from cgikit.client_socket import peek_client
from cgikit.event_loop import READ, WRITE, Loop
from cgikit.http_connection import FIRST_REQUEST_WAIT  # the same wait on both paths
from cgikit.http_head import error_response, request_meta
from cgikit.http_request import BadRequest, ConnectionClosed, Data, Request, RequestParser
from cgikit.loop_exchange import LoopExchange

TYPE_CHECKING = False
if TYPE_CHECKING:
    from cgikit.loop_server import LoopServer

__all__ = ["FAST_BODY", "FIRST_REQUEST_WAIT", "OUT_HIGH", "LoopConnection", "send_queued"]

FAST_BODY: Final = 65536  # a larger request body goes to the thread pool, streamed
OUT_HIGH: Final = 1 << 18  # bytes queued for a client before its script is paused
_RECV: Final = 65536


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
        # Stopping too: the answer says Connection: close, as the threads' would.
        if fits and not request.expect_continue:
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
        sent = send_queued(self.sock, self.out)
        if sent < 0:
            self._gone()
            return
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


def send_queued(sock: socket.socket, out: bytearray) -> int:
    """Send what a non-blocking ``sock`` takes of ``out`` now and drop it from ``out``;
    the count sent, or -1 when the peer is gone (shared with ``fastcgi_front``)."""
    try:
        sent = sock.send(out)
    except BlockingIOError:
        return 0
    except OSError:
        return -1
    del out[:sent]
    return sent
