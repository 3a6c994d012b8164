"""One web-server connection of ``fastcgi_loop`` while the event loop owns it.

Reads records into the sans-IO ``fastcgi_connection.Connection`` (which owns what they
mean: management replies, rejections, aborts), gathers a request's PARAMS and a STDIN
of at most ``FAST_BODY`` bytes (in one pass when a read brings the whole request, as
nginx's usually does: ``Connection.receive_whole``), then starts a
``fastcgi_exchange.FastCGIExchange`` for a CGI directory's script, or hands the
connection to ``fastcgi_loop``'s threads with the request's ``replay``. Writes are
queued and flushed at the end of the loop round (a quick script's head, body and
END_REQUEST leave in one segment), with backpressure (``OUT_HIGH``: the script is
paused until the web server takes more). While a script runs the socket is still
read: an ABORT_REQUEST or a close ends it (FastCGI §5.4).

Bytes received are kept for a replay only as long as the parser may still need them:
between requests, what it holds unparsed (less than one record); while a request is
gathered, everything after its BEGIN_REQUEST.
"""

from __future__ import annotations

import socket
import time
from typing import Final

from cgikit import fastcgi_records as wire
from cgikit.cgi_paths import raw_target
from cgikit.event_loop import READ, WRITE, Loop
from cgikit.fastcgi_connection import (
    NEED_DATA,
    Connection,
    ConnectionClosed,
    Event,
    FastCGIError,
    Params,
    RequestAborted,
    RequestRejected,
    RequestStarted,
    StdinData,
    StdinEnded,
)
from cgikit.fastcgi_exchange import FastCGIExchange
from cgikit.loop_connection import send_queued
from cgikit.wsgi_request import EnvironError, content_length

TYPE_CHECKING = False
if TYPE_CHECKING:
    from cgikit.fastcgi_loop import FastCGILoopServer

__all__ = ["FAST_BODY", "OUT_HIGH", "FrontConnection", "begin_record"]

FAST_BODY: Final = 65536  # a larger STDIN goes to the threads
OUT_HIGH: Final = 1 << 18  # bytes queued for the web server before the script is paused
_RECV: Final = 65536


def begin_record(request_id: int, role: int, keep_conn: bool) -> bytes:
    """A BEGIN_REQUEST record as the web server sent it (the replay's first)."""
    flags = wire.KEEP_CONN if keep_conn else 0
    return wire.encode_record(wire.BEGIN_REQUEST, request_id, wire.begin_request_body(role, flags))


class FrontConnection:
    """One web-server connection while the loop owns it (module docstring)."""

    def __init__(self, server: FastCGILoopServer, loop: Loop, sock: socket.socket, peer: str):
        self.server, self.loop, self.sock, self.peer = server, loop, sock, peer
        self.fd = sock.fileno()
        self.core = Connection(max_conns=server.threads, max_reqs=server.threads)
        self.exchange: FastCGIExchange | None = None
        self.out = bytearray()
        self.flush_soon = self.blocked = self.full = False
        self.closed = self.closing = self.handed = self.eof = False
        self.fed = bytearray()  # between requests: the bytes the parser holds
        self.replay: bytearray | None = None  # a request being gathered: its records
        self.request_id = 0
        self.meta: dict[str, str] = {}
        self.body = bytearray()
        self.since = time.monotonic()  # the last input, for the idle timeout
        loop.add(self.fd, READ, self._on_ready)

    def stopping(self) -> bool:
        return self.server.stopping

    # -- reading ---------------------------------------------------------------------

    def _on_ready(self, mask: int) -> None:
        if mask & WRITE:
            self._flush()
        if mask & READ and not (self.closed or self.handed or self.eof):
            self._read()

    def read_now(self) -> None:
        """Read what has arrived, if anything, without waiting for the loop."""
        if not (self.closed or self.handed or self.eof):
            self._read()

    def _read(self) -> None:
        try:
            data = self.sock.recv(_RECV)
        except BlockingIOError:
            return
        except OSError:  # a reset: the web server is gone
            data = b""
        self.received(data)

    def received(self, data: bytes) -> None:
        """Act on bytes from the socket (``b""``: EOF)."""
        self.since = time.monotonic()
        if data and self.replay is None and not self.fed:
            whole = self.core.receive_whole(data)
            if whole is not None:  # the usual read: one request, whole (fastcgi_whole)
                self.server.taken_whole += 1
                self.request_id, self.meta = whole.request_id, whole.meta
                self.body = bytearray(whole.stdin)
                self.replay = bytearray(data)  # its records as they came, for a hand-over
                if self._fits(whole.meta) and len(self.body) <= FAST_BODY:
                    self._dispatch()
                else:
                    self._hand_over()
                return
        if not data:
            self.eof = True  # level-triggered: stop watching a socket at EOF
            self._watch()
        self.core.receive_data(data)
        (self.fed if self.replay is None else self.replay).extend(data)
        self._process()

    def _process(self) -> None:
        """Act on every event the parser has."""
        while not (self.closed or self.handed):
            try:
                event = self.core.next_event()
            except FastCGIError as exc:
                self.server.log(f"{self.peer}: fastcgi: protocol error, closing: {exc.reason}")
                self._gone()
                return
            self._queue(self.core.data_to_send())
            if event is NEED_DATA:
                if self.replay is None:  # keep what the parser holds, no more
                    del self.fed[: len(self.fed) - self.core.buffered_bytes]
                return
            self._on_event(event)

    def _on_event(self, event: Event) -> None:
        if isinstance(event, RequestStarted):
            self.request_id, self.meta, self.body = event.request_id, {}, bytearray()
            tail = self.fed[len(self.fed) - self.core.buffered_bytes :]
            self.replay = bytearray(begin_record(event.request_id, event.role, event.keep_conn))
            self.replay += tail
            self.fed = bytearray()
        elif isinstance(event, Params):
            self.meta = event.meta
            if not self._fits(event.meta):
                self._hand_over()
        elif isinstance(event, StdinData) and self.replay is not None:
            self.body += event.data
            if len(self.body) > FAST_BODY:
                self._hand_over()
        elif isinstance(event, StdinEnded) and self.replay is not None:
            self._dispatch()
        elif isinstance(event, RequestAborted):
            self._aborted()
        elif isinstance(event, RequestRejected) and event.close_connection:
            self._close_when_sent()
        elif isinstance(event, ConnectionClosed):
            self._gone()

    @staticmethod
    def _fits(meta: dict[str, str]) -> bool:
        """Whether the declared body is one the loop takes (at most ``FAST_BODY``)."""
        declared = meta.get("CONTENT_LENGTH", "0") or "0"
        return declared.isascii() and declared.isdigit() and int(declared) <= FAST_BODY

    def _aborted(self) -> None:
        if self.exchange is not None:
            self.exchange.client_gone()  # ends the script; END_REQUEST (§5.4)
        elif self.replay is not None:  # aborted while gathered: nothing ran
            self._stop_gathering()
            self.server.log(f"{self.peer}: fastcgi: request {self.request_id} aborted")
            self.end_request()

    def _stop_gathering(self) -> bytes:
        """The replay, no longer needed: ``fed`` keeps what the parser holds."""
        replay, self.replay = bytes(self.replay or b""), None
        self.fed = bytearray(replay[len(replay) - self.core.buffered_bytes :])
        return replay

    def _dispatch(self) -> None:
        """STDIN ended: the loop runs a CGI directory's script; the threads the rest."""
        meta = self.meta
        try:
            length = content_length(meta)
            route = (
                None
                if self.stopping()
                else self.server.fast_route(raw_target(meta).decode("latin-1"))
            )
        except (EnvironError, UnicodeError):
            route = None
        if route is None or length is None:
            if route is not None:
                route.release()
            self._hand_over()
            return
        try:
            exchange = FastCGIExchange(self, meta, bytes(self.body), length, route)
        except EnvironError:  # the threaded path answers it
            route.release()
            self._hand_over()
            return
        self._stop_gathering()
        self.body = bytearray()
        self.exchange = exchange
        exchange.start()

    def _hand_over(self) -> None:
        replay = self._stop_gathering()
        self.fed = bytearray()
        self.handed = True
        self.loop.remove(self.fd)
        unsent = bytes(self.out)
        self.out.clear()
        self.blocked = self.full = False
        self.server.hand_over(self, replay, unsent)

    def resume(self, core: Connection | None) -> None:
        """The threads are done with the connection: ``core`` is its parser, or None:
        close it."""
        if self.closed:
            return
        self.handed = False
        if core is None or core.buffered_bytes:  # a partial record cannot be replayed
            if core is not None:
                self.server.log(f"{self.peer}: fastcgi: a partial record on hand-back: closed")
            self.close()
            return
        self.sock.setblocking(False)
        self.core, self.since = core, time.monotonic()
        self.loop.add(self.fd, READ, self._on_ready)

    # -- the exchange's side ---------------------------------------------------------

    def write(self, data: bytes) -> bool:
        """``data`` as STDOUT records; False once ``OUT_HIGH`` bytes wait (pause)."""
        if not self.closed:
            self._queue(self.core.send_stdout(self.request_id, data))
        self.full = len(self.out) >= OUT_HIGH
        return not self.full

    def send_stderr(self, data: bytes) -> None:
        if not self.closed and self.core.active_request == self.request_id:
            self._queue(self.core.send_stderr(self.request_id, data))

    def note(self, message: str) -> None:
        self.server.log(f"{self.peer}: fastcgi: {message}")

    def watch_client(self, on: bool) -> None:
        """The socket is always read (an ABORT_REQUEST is a record): nothing to do."""

    def end_request(self) -> None:
        """The empty STDOUT and END_REQUEST; the next request, or a close once sent."""
        self.exchange = None
        if self.closed:
            return
        ending = self.core.end_request(self.request_id)
        self._queue(ending.data)
        if ending.close_connection:
            self._close_when_sent()
        else:
            self.loop.call_soon(self._process)  # a next request already received

    def cut(self) -> None:
        """The body was cut: close without END_REQUEST, so the web server can tell."""
        self.exchange = None
        self._close_when_sent()

    # -- writing ---------------------------------------------------------------------

    def _queue(self, data: bytes) -> None:
        if not data or self.closed:
            return
        self.out += data
        if not self.flush_soon and not self.blocked:  # blocked: WRITE readiness flushes
            self.flush_soon = True
            self.loop.call_soon(self._flush)

    def _flush(self) -> None:
        self.flush_soon = False
        if self.closed or self.handed:
            return
        if self.out and send_queued(self.sock, self.out) < 0:
            self._gone()
            return
        if self.blocked != bool(self.out):
            self.blocked = bool(self.out)
            self._watch()
        if self.blocked:
            return
        if self.closing:
            self.close()
        elif self.full and self.exchange is not None:
            self.full = False
            self.exchange.drained()

    def _watch(self) -> None:
        if not (self.closed or self.handed):
            mask = (0 if self.eof else READ) | (WRITE if self.blocked else 0)
            self.loop.modify(self.fd, mask, self._on_ready)

    def _close_when_sent(self) -> None:
        self.closing = True
        if not self.out and not self.flush_soon:
            self.close()

    # -- the end ---------------------------------------------------------------------

    def tick(self, now: float) -> None:
        """The server's sweep: a script's timeouts; an idle or stalled connection."""
        if self.handed or self.closed:
            return
        exchange = self.exchange
        if exchange is not None:
            if exchange.task is not None and not exchange.done:
                exchange.task.tick(now)
            return
        limit = self.server.threaded.timeout if self.replay else self.server.threaded.idle_timeout
        if now - self.since > limit:
            self.close()

    def stop_if_idle(self) -> None:
        if not (self.handed or self.exchange or self.replay or self.out):
            self.close()

    def abort(self, why: str) -> None:
        if self.exchange is not None:
            self.exchange.abandon(why)
            self.exchange = None
        self.close()

    def _gone(self) -> None:
        exchange, self.exchange = self.exchange, None
        self.out.clear()
        if exchange is not None and not exchange.done:
            exchange.abandon("the web server went away")
        self.close()

    def close(self) -> None:
        if self.closed:
            return
        self.closed = True
        if not self.handed:
            self.loop.remove(self.fd)
        self.server.connections.discard(self)
        try:
            self.sock.shutdown(socket.SHUT_WR)  # a FIN after the last byte
        except OSError:
            pass
        self.sock.close()
