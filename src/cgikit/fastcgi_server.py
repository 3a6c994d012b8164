"""cgikit's FastCGI server: a WSGI app behind nginx, Apache or lighttpd (Responder role).

Owns the I/O around ``fastcgi_connection.Connection`` (the sans-IO core, which owns
what the records mean): reading the socket when the core needs data, writing what it
produces, and turning one request's events into a WSGI call through the shared seam
(``gateway_server.GatewayServer.respond``). The listener and the concurrency are
``gateway_server``'s, ``gateway_inline``'s (threads=1: this code runs on the loop's
thread) and ``gateway_pool``'s. FastCGI 1.0 sections below; research:
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
  A body the app returned whole (a list) is held and written with END_REQUEST in one
  ``sendall`` (up to 64 KiB held): one system call per response.
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
from cgikit.gateway_pool import Served, input_ready
from cgikit.gateway_server import GatewayServer
from cgikit.gateway_socket import recv_at_hand
from cgikit.wsgi_request import ClientDisconnected

__all__ = ["FastCGIServer"]

_RECV: Final = 65536
# Body bytes read ahead of the app while it writes (looking for an ABORT); beyond
# this the check waits for the app to read, so a large body is never buffered whole.
_READ_AHEAD: Final = 1 << 18
_PEEKS: Final = 16  # reads per output chunk at most, so a flood cannot starve the app
_HOLD_MAX: Final = 1 << 16  # held output written at once beyond this


class FastCGIServer(GatewayServer):
    """Serve ``app`` over FastCGI; arguments and lifecycle as ``GatewayServer``."""

    protocol = "fastcgi"
    peers_variable: str | None = "FCGI_WEB_SERVER_ADDRS"

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
        self.wait = server.first_wait
        self.request_id = 0
        self.stdin = bytearray()
        # No request's input is pending (its empty STDIN came): a close needs no drain.
        self.stdin_ended = True
        self.aborted = False
        self.held: list[bytes] = []  # STDOUT records of a body returned whole, unsent
        self.held_bytes = 0

    @property
    def input_done(self) -> bool:
        """Nothing the web server sent is known to be unread (``InlinePool``'s close)."""
        return self.stdin_ended and not self.conn.buffered_bytes

    def log(self, message: str) -> None:
        self.server.log(f"{self.peer}: fastcgi: {message}")

    def serve(self) -> bool:
        """Serve the requests that have arrived; True: wait in the poller for the next."""
        try:
            while True:
                event = self.conn.next_event()
                if event is NEED_DATA:
                    self._flush()
                    if not self._receive_at_hand():
                        return True
                elif not self._between(event):
                    return False
        except FastCGIError as exc:
            self.log(f"protocol error, closing the connection: {exc.reason}")
        except OSError as lost:  # a write to a vanished web server
            self.log(f"connection lost: {lost}")
        return False

    def _between(self, event: Event) -> bool:
        """Act on an event between requests; False when the connection is done."""
        if isinstance(event, RequestStarted):
            return self._request(event.request_id)
        self._flush()
        if isinstance(event, RequestRejected):
            return not event.close_connection
        return False  # ConnectionClosed; other events only come for an active request

    # -- reading ------------------------------------------------------------------------

    def _receive_at_hand(self) -> bool:
        """Feed the core what has arrived (after ``self.wait`` at most); False if nothing."""
        try:
            data = recv_at_hand(self.sock, _RECV)
        except OSError as exc:
            self.log(f"read failed: {exc}")
            data = b""
        if data is None:
            if self.wait <= 0 or not input_ready(self.sock, self.wait):
                return False
            data = self._recv()
        self.wait = 0.0
        self.conn.receive_data(data)
        return True

    def _recv(self) -> bytes:
        """Block for input (at most the kernel timeout); b"" when the web server is gone."""
        try:
            return self.sock.recv(_RECV)
        except OSError as exc:  # a timeout (EAGAIN) or a reset: the web server is gone
            self.log(f"read failed: {exc}")
            return b""

    def _next_event(self) -> Event:
        """The core's next event within a request, blocking for input as needed."""
        while (event := self.conn.next_event()) is NEED_DATA:
            self._flush()
            self.conn.receive_data(self._recv())
        self._flush()
        return event

    def _flush(self) -> None:
        """Write the core's own replies (GET_VALUES_RESULT, UNKNOWN_TYPE, rejections)."""
        if replies := self.conn.data_to_send():
            self.sock.sendall(replies)

    def _pump(self, *, block: bool) -> bool:
        """Handle one event of the active request; False if none without blocking."""
        event = self.conn.next_event()
        self._flush()
        if event is NEED_DATA:
            if block:
                self.conn.receive_data(self._recv())
                return True
            try:
                data = recv_at_hand(self.sock, _RECV)
            except OSError:
                data = b""  # a reset: the web server is gone, an abort
            if data is None:
                return False
            self.conn.receive_data(data)
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
        event = self._next_event()
        while isinstance(event, RequestRejected):  # a second BEGIN: answered already
            event = self._next_event()
        if isinstance(event, Params):
            self.server.respond(
                event.meta, self._read_stdin, _Stderr(self), self._send, self.log, self._hold
            )
        else:  # RequestAborted before the PARAMS ended
            self.aborted = True
        self._settle_input()
        if self.aborted:
            self.log(f"request {request_id} aborted by the web server")
        ending = self.conn.end_request(request_id)
        self.request_id = 0
        data = ending.data
        if self.held:  # the response and its END_REQUEST in one write
            data = b"".join((*self.held, data))
            self.held.clear()
            self.held_bytes = 0
        try:
            self.sock.sendall(data)
        except OSError:
            return False  # the web server is gone: nobody to tell
        self.wait = self.server.next_wait
        return not ending.close_connection

    def _settle_input(self) -> None:
        """Take the request's records already received (no I/O): a body the app left
        unread, its empty STDIN, so that ``input_done`` can tell a close needs no drain."""
        while not self.stdin_ended and not self.aborted:
            event = self.conn.next_event()
            if event is NEED_DATA:
                return
            if isinstance(event, StdinEnded):
                self.stdin_ended = True
            elif isinstance(event, RequestAborted):
                self.aborted = True
        self._flush()

    def _send(self, data: bytes) -> None:
        """``Response``'s send: STDOUT records for ``data``, one write."""
        self._check_abort()
        self.sock.sendall(self.conn.send_stdout(self.request_id, data))

    def _hold(self, data: bytes) -> None:
        """``Response``'s deferred send (a body returned whole): written with END_REQUEST,
        or at once past ``_HOLD_MAX`` so that a large body is not copied twice over."""
        records = self.conn.send_stdout(self.request_id, data)
        self.held.append(records)
        self.held_bytes += len(records)
        if self.held_bytes >= _HOLD_MAX:
            self.sock.sendall(b"".join(self.held))
            self.held.clear()
            self.held_bytes = 0

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
