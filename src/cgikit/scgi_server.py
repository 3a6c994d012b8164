"""cgikit's SCGI server: a WSGI app behind nginx's ``scgi_pass`` (or any SCGI client).

Owns the I/O around ``scgi_request.SCGIRequestParser`` (the sans-IO parser, which
owns the netstring and the body's bounds): reading the socket when the parser needs
data, and turning the one request of a connection into a WSGI call through the shared
seam (``gateway_server.GatewayServer.respond``). The listener and the concurrency are
``gateway_server``'s, ``gateway_inline``'s (threads=1) and ``gateway_pool``'s.
Research: shared/research/fastcgi-anchors.md §4, §5 (SCGI).

- One request per connection (SCGI item 7): the response is the CGI header block
  (``Status:``, which nginx parses) and the body, written to the socket as the app
  produces them; the connection's close ends it.
- The environ comes from the headers decoded as latin-1 (PEP 3333); ``wsgi.input``
  reads the socket only when the app reads, and ends at CONTENT_LENGTH (item 6; flup
  handed over the raw socket, bug B5). A connection closed before the body's end
  makes ``wsgi.input`` raise ClientDisconnected (research §9 item 3).
- SCGI has no error channel: ``wsgi.errors`` lines go to the server's log.
- A malformed request (``SCGIError``) gets a log line and a closed connection, no
  response: the peer is not speaking SCGI, so it would not read one. A connection
  closed before its first byte (a port probe, a health check) is not logged.
"""

from __future__ import annotations

import socket
from typing import Final

from cgikit.gateway_pool import Served, input_ready
from cgikit.gateway_server import GatewayServer, LogErrors
from cgikit.gateway_socket import recv_at_hand
from cgikit.scgi_request import (
    NEED_DATA,
    Body,
    EndOfBody,
    Event,
    Headers,
    IncompleteRequest,
    SCGIError,
    SCGIRequestParser,
)
from cgikit.wsgi_request import ClientDisconnected

__all__ = ["SCGIServer"]

_RECV: Final = 65536


class SCGIServer(GatewayServer):
    """Serve ``app`` over SCGI; arguments and lifecycle as ``GatewayServer``."""

    protocol = "scgi"

    def connection(self, sock: socket.socket, peer: str) -> Served:
        """The state of a connection and its one request."""
        return _SCGIConnection(self, sock, peer)


class _SCGIConnection:
    def __init__(self, server: SCGIServer, sock: socket.socket, peer: str) -> None:
        self.server, self.sock, self.peer = server, sock, peer
        self.parser = SCGIRequestParser()
        self.body = bytearray()  # received, not yet read by the app
        self.body_done = False
        self.gone = False  # the web server closed mid-body: nothing more is written
        self.parked = False  # given back to the poller once, to wait for its request
        self.held: list[bytes] = []  # a body returned whole, written at the end

    @property
    def input_done(self) -> bool:
        """The whole request was read (``InlinePool``'s close needs no drain)."""
        return self.body_done

    def log(self, message: str) -> None:
        self.server.log(f"{self.peer}: scgi: {message}")

    def serve(self) -> bool:
        """Serve the request; True (nothing has arrived yet): wait in the poller."""
        # The first byte may be long in coming on a pre-opened connection: it waits in
        # the pool's poller, not in a thread. The request then has ``timeout`` per read.
        try:
            data = recv_at_hand(self.sock, _RECV)
        except OSError as exc:
            self.log(f"read failed: {exc}")
            data = b""
        if data is None:
            wait = 0.0 if self.parked else self.server.first_wait
            if wait <= 0 or not input_ready(self.sock, wait):
                self.parked = True  # the poller gives it back once input has come
                return True
            data = self._recv()
        self.parser.receive_data(data)
        self._serve()
        return False

    def _serve(self) -> None:
        try:
            event = self._next_event()
        except IncompleteRequest as cut:
            if cut.received:
                self.log(f"incomplete request: {cut.reason}")
            return
        except SCGIError as exc:
            self.log(f"bad request, closing the connection: {exc.reason}")
            return
        if not isinstance(event, Headers):  # the parser's first event is Headers
            raise AssertionError(f"SCGI parser gave {event!r} before Headers")
        meta = {k.decode("latin-1"): v.decode("latin-1") for k, v in event.params.items()}
        errors = LogErrors(self.log)
        self.server.respond(meta, self._read_body, errors, self._send, self.log, self.held.append)
        errors.flush()
        self.body_done = self.body_done or self._body_received()
        if self.held and not self.gone:
            try:
                self.sock.sendall(b"".join(self.held))
            except OSError as gone:
                self.log(f"client went away before the response was complete ({gone})")

    def _body_received(self) -> bool:
        """Whether the body's end has arrived, read by the app or not (no I/O)."""
        try:
            while (event := self.parser.next_event()) is not NEED_DATA:
                if isinstance(event, EndOfBody):
                    return True
        except SCGIError:
            pass
        return False

    def _recv(self) -> bytes:
        try:
            return self.sock.recv(_RECV)
        except OSError as exc:  # a timeout or a reset: the web server is gone for us
            self.log(f"read failed: {exc}")
            return b""

    def _next_event(self) -> Event:
        while (event := self.parser.next_event()) is NEED_DATA:
            self.parser.receive_data(self._recv())
        return event

    def _read_body(self, size: int) -> bytes:
        """``wsgi.input``'s source: up to ``size`` body bytes, b"" at the body's end."""
        while not self.body and not self.body_done:
            try:
                event = self._next_event()
            except SCGIError as exc:  # IncompleteRequest: the web server closed
                self.gone = True
                raise ClientDisconnected(exc.reason) from exc
            if isinstance(event, Body):
                self.body += event.data
            elif isinstance(event, EndOfBody):
                self.body_done = True
        data = bytes(self.body[:size])
        del self.body[:size]
        return data

    def _send(self, data: bytes) -> None:
        if self.gone:  # not even the 500 for the app's ClientDisconnected
            raise ClientDisconnected("the web server closed the connection")
        self.sock.sendall(data)
