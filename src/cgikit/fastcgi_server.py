"""cgikit's FastCGI server: a WSGI app behind nginx, Apache or lighttpd (Responder role).

Owns the I/O around ``fastcgi_connection.Connection`` (the sans-IO core, which owns
what the records mean): reading the socket when the core needs data, writing what it
produces, and turning one request's events into a WSGI call through the shared seam
(``gateway_server.GatewayServer.respond``). The listener and the thread pool are
``gateway_server``'s and ``gateway_pool``'s. FastCGI 1.0 sections below; research:
shared/research/fastcgi-anchors.md §4, §5, §9.

- One request at a time per connection (MPXS_CONNS=0, §9.2); with KEEP_CONN (§5.1) the
  connection serves the next request too, without it the connection is closed after
  END_REQUEST. Between requests a worker serves only what has arrived: with nothing to
  read the connection goes back to the pool's poller, which hands it to a worker again
  when the next request begins (an idle kept connection holds no thread). Management
  records (§4) are answered by the core; their replies are written after every event,
  between requests as well as during one.
- ``FCGI_WEB_SERVER_ADDRS`` (§3.2), when set, lists the web servers that may connect
  over TCP; any other peer is closed at once (``gateway_peers``).
- The environ comes from the PARAMS (§5.2) decoded as latin-1 (PEP 3333); the shared
  builder drops HTTP_PROXY (httpoxy) and the HTTP_CONTENT_* copies nginx sends.
- ``wsgi.input`` reads STDIN records (§5.3) only when the app reads: backpressure on
  the web server instead of buffering the body. ``wsgi.errors`` is FCGI_STDERR (§6.1).
- Output: each chunk the app produces is its STDOUT records joined, in one ``sendall``
  (a blocking write, so a slow web server slows the app rather than growing a buffer).
- ABORT_REQUEST (§5.4) or a closed connection (nginx's way, research §5 P4) cancels
  the request: ``wsgi.input`` raises ClientDisconnected, the next output does too, so
  ``Response`` closes the app's iterable; then the one END_REQUEST if the connection
  is still there, and a log line. Before each output chunk the socket is checked for
  input without blocking, so an abort is seen while the app only writes.
- A peer that breaks the protocol (``FastCGIError``) gets a log line and a closed
  connection; the worker goes on to the next one.
"""

from __future__ import annotations

import socket
from typing import Final

from cgikit.fastcgi_connection import (
    NEED_DATA,
    Connection,
    Event,
    FastCGIError,
    Params,
    RequestAborted,
    RequestRejected,
    RequestStarted,
    StdinData,
    StdinEnded,
)
from cgikit.gateway_pool import FIRST_INPUT_WAIT, NEXT_REQUEST_WAIT, Served, input_ready
from cgikit.gateway_server import GatewayServer
from cgikit.wsgi_request import ClientDisconnected

__all__ = ["FastCGIServer"]

_RECV: Final = 65536
# Body bytes read ahead of the app while it writes (looking for an ABORT); beyond
# this the check waits for the app to read, so a large body is never buffered whole.
_READ_AHEAD: Final = 1 << 18
_PEEKS: Final = 16  # reads per output chunk at most, so a flood cannot starve the app


class FastCGIServer(GatewayServer):
    """Serve ``app`` over FastCGI; arguments and lifecycle as ``GatewayServer``."""

    protocol = "fastcgi"
    peers_variable = "FCGI_WEB_SERVER_ADDRS"

    def connection(self, sock: socket.socket, peer: str) -> Served:
        """The state of one web-server connection, whose requests come one at a time."""
        return _FastCGIConnection(self, sock, peer)


class _FastCGIConnection:
    """One transport connection and its current request."""

    def __init__(self, server: FastCGIServer, sock: socket.socket, peer: str) -> None:
        self.server, self.sock, self.peer = server, sock, peer
        # GET_VALUES (§4.1) reports the pool: a request per thread at once, and as many
        # connections to keep them all busy (idle ones beyond that are accepted too).
        self.conn = Connection(max_conns=server.threads, max_reqs=server.threads)
        # How long to wait for input before parking: the first bytes, the next request
        # after a response; within a request's records, only what has arrived.
        self.wait = FIRST_INPUT_WAIT
        self.request_id = 0
        self.stdin = bytearray()
        self.stdin_ended = self.aborted = False

    def log(self, message: str) -> None:
        self.server.log(f"{self.peer}: fastcgi: {message}")

    def serve(self) -> bool:
        """Serve the requests that have arrived; True: wait in the poller for the next."""
        try:
            while (event := self._next_event(idle=True)) is not None:
                if not self._between(event):
                    return False
            return True
        except FastCGIError as exc:
            self.log(f"protocol error, closing the connection: {exc.reason}")
        except OSError as exc:  # a write to a vanished web server
            self.log(f"connection lost: {exc}")
        return False

    def _between(self, event: Event) -> bool:
        """Act on an event between requests; False when the connection is done."""
        if isinstance(event, RequestStarted):
            return self._request(event.request_id)
        if isinstance(event, RequestRejected):
            return not event.close_connection
        return False  # ConnectionClosed; other events only come for an active request

    # -- reading ------------------------------------------------------------------------

    def _next_event(self, *, idle: bool) -> Event | None:
        """The core's next event, reading the socket as needed; None (``idle``): nothing
        has arrived, the connection is to wait in the poller rather than in this thread."""
        while True:
            event = self.conn.next_event()
            self._flush()
            if event is not NEED_DATA:
                return event
            if idle and not input_ready(self.sock, self.wait):
                return None
            self.wait = 0.0
            self._receive()

    def _flush(self) -> None:
        """Write the core's own replies (GET_VALUES_RESULT, UNKNOWN_TYPE, rejections)."""
        if replies := self.conn.data_to_send():
            self.sock.sendall(replies)

    def _receive(self) -> None:
        try:
            data = self.sock.recv(_RECV)
        except OSError as exc:  # a timeout or a reset: the web server is gone for us
            self.log(f"read failed: {exc}")
            data = b""
        self.conn.receive_data(data)

    def _pump(self, *, block: bool) -> bool:
        """Handle one event of the active request; False if none without blocking."""
        event = self.conn.next_event()
        self._flush()
        if event is NEED_DATA:
            if not block and not input_ready(self.sock):
                return False
            self._receive()
        elif isinstance(event, StdinData):
            self.stdin += event.data
        elif isinstance(event, StdinEnded):
            self.stdin_ended = True
        elif isinstance(event, RequestAborted):
            self.aborted = True
        return True  # RequestRejected (CANT_MPX_CONN) was answered by the flush

    def _read_stdin(self, size: int) -> bytes:
        """``wsgi.input``'s source: up to ``size`` body bytes, b"" after the empty STDIN."""
        while not self.stdin and not self.stdin_ended and not self.aborted:
            self._pump(block=True)
        if self.aborted:
            raise ClientDisconnected("the web server aborted the request")
        data = bytes(self.stdin[:size])
        del self.stdin[:size]
        return data

    # -- one request --------------------------------------------------------------------

    def _request(self, request_id: int) -> bool:
        """Serve the request just begun; True to wait for another on this connection."""
        self.request_id = request_id
        self.stdin = bytearray()
        self.stdin_ended = self.aborted = False
        event = self._next_event(idle=False)
        while isinstance(event, RequestRejected):  # a second BEGIN: answered already
            event = self._next_event(idle=False)
        if isinstance(event, Params):
            meta = {k.decode("latin-1"): v.decode("latin-1") for k, v in event.params.items()}
            self.server.respond(meta, self._read_stdin, _Stderr(self), self._send, self.log)
        else:  # RequestAborted before the PARAMS ended
            self.aborted = True
        if self.aborted:
            self.log(f"request {request_id} aborted by the web server")
        ending = self.conn.end_request(request_id)
        self.request_id = 0
        try:
            self.sock.sendall(ending.data)
        except OSError:
            return False  # the web server is gone: nobody to tell
        self.wait = NEXT_REQUEST_WAIT
        return not ending.close_connection

    def _send(self, data: bytes) -> None:
        """``Response``'s send: STDOUT records for ``data``, one write."""
        self._check_abort()
        self.sock.sendall(self.conn.send_stdout(self.request_id, data))

    def _check_abort(self) -> None:
        """Read what already arrived, without blocking, to see an ABORT or a close."""
        for _ in range(_PEEKS):
            if self.aborted or len(self.stdin) >= _READ_AHEAD:
                break
            if not self._pump(block=False):
                break
        if self.aborted:
            raise ClientDisconnected("the web server aborted the request")

    def send_stderr(self, data: bytes) -> None:
        if self.request_id and not self.aborted:
            self.sock.sendall(self.conn.send_stderr(self.request_id, data))


class _Stderr:
    """``wsgi.errors``: text written as FCGI_STDERR records of the current request."""

    def __init__(self, connection: _FastCGIConnection) -> None:
        self._connection = connection

    def write(self, s: str) -> int:
        try:
            self._connection.send_stderr(s.encode("utf-8", "backslashreplace"))
        except OSError:
            pass  # the web server is gone; the request's output will notice
        return len(s)

    def writelines(self, seq: list[str]) -> None:
        for s in seq:
            self.write(s)

    def flush(self) -> None:
        """Each write is sent at once."""
