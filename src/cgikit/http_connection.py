"""One HTTP/1.1 connection of cgikit's server: socket reads, the WSGI call, framing.

Owns the I/O around the sans-IO ``RequestParser`` for one accepted socket, driven by
one worker thread of ``http_server``: read with timeouts, answer ``BadRequest`` with its
status, build the PEP 3333 environ, run the app through the shared ``Response`` driver
with an HTTP/1.1 serializer (``http_head.frame_head``), and decide whether the
connection lives on (RFC 9112 §9.3).

Framing of responses (RFC 9112 §6.3): the app's (or the driver's) Content-Length when
known; otherwise chunked transfer coding for HTTP/1.1 (§7.1) or the end of the
connection for HTTP/1.0 (§6.3 rule 8). HEAD, 1xx, 204 and 304 carry no body (RFC 9110
§6.4.1). The request body is read from the socket only as the app reads ``wsgi.input``.

The environ carries ``cgikit.client_fd``, the client socket's descriptor (a cgikit
extension, not PEP 3333): ``CGIHost`` watches it to end a script whose client hung up.
It is only to be polled and peeked at: reading from it or closing it is this module's.
"""

from __future__ import annotations

import select
import socket
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Final

from cgikit.http_head import (
    error_response,
    frame_head,
    request_meta,
    status_phrase,
)
from cgikit.http_request import (
    NEED_DATA,
    BadRequest,
    ConnectionClosed,
    Data,
    EndOfMessage,
    Request,
    RequestParser,
)
from cgikit.wsgi_request import BoundedInput, build_environ
from cgikit.wsgi_response import (
    FileWrapper,
    Response,
)

TYPE_CHECKING = False
if TYPE_CHECKING:
    from cgikit._typing import Environ, Headers, WSGIApp

_RECV: Final = 65536
FIRST_REQUEST_WAIT: Final = 1.0  # shutdown: seconds a new connection has to send a request
_DRAIN_LIMIT: Final = 1 << 20  # unread body bytes read and dropped to keep the connection


@dataclass(frozen=True, slots=True)
class Limits:
    """The per-connection settings a server hands to every connection."""

    header_timeout: float
    idle_timeout: float
    max_header_bytes: int
    max_body_bytes: int | None


class BodyError(OSError):
    """Reading the request body failed; ``status`` is the answer if none went out yet."""

    def __init__(self, status: int, reason: str) -> None:
        super().__init__(reason)
        self.status = status
        self.reason = reason


class Connection:
    """Serve the requests of one accepted socket, in order, until it closes."""

    def __init__(
        self,
        sock: socket.socket,
        remote: tuple[str, int],
        server: tuple[str, int],
        app: WSGIApp,
        limits: Limits,
        log: Callable[[str], object],
        stopping: Callable[[], bool],
        wake_fd: int,
    ) -> None:
        self.sock, self.remote, self.server = sock, remote, server
        self.app, self.limits, self.log = app, limits, log
        self.stopping, self.wake_fd = stopping, wake_fd
        self.parser = RequestParser(limits.max_header_bytes, limits.max_body_bytes)
        self.fresh = True  # no request answered on it yet
        sock.settimeout(limits.idle_timeout)  # every send and body read (slow clients)

    def serve(self, first: Request | None = None) -> None:
        """Answer requests until the client closes, an error, or shutdown.

        ``first`` is a request whose head ``parser`` has already given (an event loop
        that read it hands the connection over here); its body is still in the parser.
        """
        request = first
        while request is not None or (request := self._read_head()) is not None:
            exchange = Exchange(self, request)
            if not exchange.run():
                return
            self.fresh = False
            self.parser.start_next_request()
            request = None

    def recv(self, timeout: float, *, idle: bool = False) -> bytes | None:
        """Bytes from the client (b"" at EOF), or None on timeout (or shutdown if idle)."""
        poller = select.poll()
        poller.register(self.sock, select.POLLIN)
        if idle:
            poller.register(self.wake_fd, select.POLLIN)
        ready = {fd for fd, _ in poller.poll(max(0.0, timeout) * 1000)}
        if self.sock.fileno() not in ready:
            return None
        try:
            return self.sock.recv(_RECV)
        except OSError:  # ECONNRESET and friends: the client is gone
            return b""

    def send_error(self, status: int, reason: str) -> None:
        """Answer a refused request and log it; the caller closes."""
        self.log(f"{self.remote[0]}:{self.remote[1]} bad request: {status} {reason}")
        try:
            self.sock.sendall(error_response(status, reason))
        except OSError:
            pass

    def _read_head(self) -> Request | None:
        """The next request head, or None when the connection should close."""
        started: float | None = None  # when this head's first bytes arrived
        while True:
            try:
                event = self.parser.next_event()
            except BadRequest as exc:
                self.send_error(exc.status, exc.reason)
                return None
            if isinstance(event, Request):
                return event
            if isinstance(event, ConnectionClosed):
                return None
            if started is None and self.stopping() and not self.fresh:
                return None  # an idle keep-alive connection: closed at shutdown
            if started is None and self.stopping():
                # Accepted before the shutdown: its first request is on its way, and a
                # client must not see the connection closed unanswered (a SIGHUP).
                data = self.recv(FIRST_REQUEST_WAIT)
                if data is None:
                    return None
                started = time.monotonic()
            elif started is None:  # RFC 9112 §9.3: idle keep-alive connection
                data = self.recv(self.limits.idle_timeout, idle=True)
                if data is None:
                    return None
                started = time.monotonic()
            else:  # a header block must complete within header_timeout (RFC 9110 §15.5.9)
                left = started + self.limits.header_timeout - time.monotonic()
                data = self.recv(left)
                if data is None:
                    self.send_error(408, "request header not received in time")
                    return None
            self.parser.receive_data(data)


class Exchange:
    """One request and its response on a connection."""

    def __init__(self, conn: Connection, request: Request) -> None:
        self.conn, self.request = conn, request
        self.started = time.monotonic()
        self.pending = b""  # body bytes from the parser not yet given to the app
        self.body_done = False
        self.continue_sent = False
        self.head_sent = False
        self.head_len = 0  # bytes of the next send that are the serialized head
        self.framing = "none"  # "length", "chunked", "close" or "none"
        self.expected: int | None = None
        self.body_sent = 0
        self.client_gone = False
        self.keep_alive = request.keep_alive and not conn.stopping()
        self.status = "000"

    def run(self) -> bool:
        """Serve the request; returns whether the connection may carry another one."""
        conn, request = self.conn, self.request
        try:
            environ = self.environ()
        except BadRequest as exc:
            conn.send_error(exc.status, exc.reason)
            return False
        # No Content-Type invented: a CGI host must pass a script's document on without
        # one (RFC 3875 §6.3.1), and RFC 9110 §8.3 leaves the guess to the recipient.
        response = _HTTPResponse(
            environ, self.send, conn.log, serialize=self.serialize, default_content_type=None
        )
        response.run(conn.app)
        keep = self.finish(response)
        length = self.body_sent if self.framing != "chunked" else response.body_bytes
        conn.log(
            f'{conn.remote[0]} - "{request.method} {request.target.decode("ascii")} '
            f'HTTP/{request.version[0]}.{request.version[1]}" {self.status[:3]} {length} '
            f"{time.monotonic() - self.started:.3f}s"
        )
        return keep

    def finish(self, response: _HTTPResponse) -> bool:
        """End the body's framing; whether the connection can stay open."""
        if self.client_gone:
            return False
        if response.broken:
            return False
        if self.framing == "chunked":
            try:
                self.conn.sock.sendall(b"0\r\n\r\n")  # RFC 9112 §7.1: last chunk, no trailer
            except OSError:
                return False
        elif self.framing == "length" and self.body_sent != self.expected:
            return False  # a short body: the client would wait for the rest (§6.3 rule 5)
        elif self.framing == "close":
            return False
        return self.keep_alive and self.drain()

    def drain(self) -> bool:
        """Read and drop the body the app left unread, up to a bound (RFC 9112 §9.3)."""
        if self.body_done:
            return True
        if self.request.expect_continue and not self.continue_sent:
            return False  # RFC 9110 §10.1.1: the client may not send it; close instead
        dropped = len(self.pending)
        self.pending = b""
        try:
            while (data := self.read_body(_RECV)) and dropped <= _DRAIN_LIMIT:
                dropped += len(data)
        except BodyError:
            return False
        return self.body_done

    # -- the request ----------------------------------------------------------------

    def environ(self) -> Environ:
        """The PEP 3333 environ for the request (latin-1 "bytes as str")."""
        request, conn = self.request, self.conn
        meta = request_meta(request, conn.remote, conn.server)
        length = None if request.chunked else (request.content_length or 0)
        if length is None:
            self.body_done = False
        elif length == 0:
            self.body_done = self._no_body()
        env = build_environ(meta, BoundedInput(self.read_body, length), sys.stderr, length)
        env["wsgi.input_terminated"] = True  # the stream ends at the body's end
        env["wsgi.multithread"] = True
        env["wsgi.multiprocess"] = False
        env["wsgi.run_once"] = False
        env["wsgi.file_wrapper"] = FileWrapper
        env["cgikit.client_fd"] = conn.sock.fileno()  # for a hang-up watch (docstring)
        return env

    def _no_body(self) -> bool:
        event = self.conn.parser.next_event()  # EndOfMessage at once (§6.3 rule 6)
        return isinstance(event, EndOfMessage)

    def read_body(self, size: int) -> bytes:
        """The ``read(n)`` source of ``wsgi.input``: body bytes, b"" at its end."""
        if not self.pending and not self.body_done:
            self._send_continue()
            self.pending = self._next_data()
        data, self.pending = self.pending[:size], self.pending[size:]
        return data

    def _next_data(self) -> bytes:
        conn = self.conn
        while True:
            try:
                event = conn.parser.next_event()
            except BadRequest as exc:
                self.keep_alive = False  # the answer says Connection: close
                raise BodyError(exc.status, exc.reason) from None
            if isinstance(event, Data):
                return event.data
            if event is not NEED_DATA:  # EndOfMessage
                self.body_done = True
                return b""
            data = conn.recv(conn.limits.idle_timeout)
            if data is None:
                self.keep_alive = False
                raise BodyError(408, "request body not received in time")
            conn.parser.receive_data(data)

    def _send_continue(self) -> None:
        """RFC 9110 §10.1.1: 100 Continue when the app first reads, before any response."""
        if self.request.expect_continue and not self.continue_sent and not self.head_sent:
            self.continue_sent = True
            self._sendall(b"HTTP/1.1 100 Continue\r\n\r\n")

    # -- the response ---------------------------------------------------------------

    def serialize(self, status: str, headers: Headers) -> bytes:
        """The status line and fields (RFC 9112 §4), with the framing this server adds."""
        request = self.request
        keep = self.keep_alive and not self.conn.stopping()  # a shutdown: the last one
        head, self.framing, self.keep_alive, self.expected = frame_head(
            status, headers, request.method, request.version, keep
        )
        self.status, self.head_len = status, len(head)
        return head

    def send(self, data: bytes) -> None:
        """The driver's ``send``: the head as is, body bytes framed (chunked or raw)."""
        head, body = data[: self.head_len], data[self.head_len :]
        self.head_len = 0
        if head:
            self.head_sent = True
        if body:
            self.body_sent += len(body)
            if self.framing == "chunked":  # RFC 9112 §7.1: chunk-size CRLF data CRLF
                body = b"%x\r\n%b\r\n" % (len(body), body)
        self._sendall(head + body)

    def _sendall(self, data: bytes) -> None:
        try:
            self.conn.sock.sendall(data)
        except OSError:
            self.client_gone = True
            raise


class _HTTPResponse(Response):
    """The shared driver, answering body read errors with their own status."""

    broken = False  # the connection must close (a late failure, a body error)

    def fail(self, exc_info: tuple[type[BaseException], BaseException, object]) -> None:
        exc = exc_info[1]
        if isinstance(exc, BodyError) and not self.headers_sent:
            self._log(f"request body: {exc.status} {exc.reason}")
            status = f"{exc.status} {status_phrase(exc.status)}"
            body = f"{status}\n{exc.reason}\n".encode("latin-1", "replace")
            headers = [("Content-Type", "text/plain; charset=utf-8")]
            headers.append(("Content-Length", str(len(body))))
            self.start_response(status, headers, exc_info)  # type: ignore[arg-type]
            self.write(body)
            self.finish()
            self.broken = True  # the request body's state is unknown: close
            return
        self.broken = self.headers_sent  # the body is incomplete: only a close tells
        super().fail(exc_info)
