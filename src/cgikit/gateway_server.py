"""The server shared by cgikit's FastCGI and SCGI servers (sockets: ``gateway_socket``).

Owns ``GatewayServer``: the app, its WSGI values and a graceful ``shutdown`` as
``http_server.HTTPServer`` has, over one of two pools, which own the concurrency:
with ``threads=1`` ``gateway_inline.InlinePool`` (one thread: the loop accepts and
calls the app inline, no hand-off), else ``gateway_pool.Pool`` (one poller for the
listening socket and the idle kept connections, a fixed pool of worker threads for
the requests, and why). The protocols are the subclasses'
(``fastcgi_server``, ``scgi_server``); the WSGI seam they share (environ from CGI
variables, ``Response``) is ``wsgi_request`` and ``wsgi_response``; the peers a FastCGI
server admits (FCGI_WEB_SERVER_ADDRS) are ``gateway_peers``'.

A gateway has nothing like HTTP's 503 to give a web server it cannot serve yet, so a
connection is accepted only when a worker is free: it waits in the kernel's listen
backlog, which is the backpressure, and with several processes on one socket (prefork,
issue 4) a free process takes it. A kept connection waiting for its next request is not
a busy worker: it waits in the poller. A web server's connection is closed with a FIN
and a short, bounded drain of unread input, so the response is not destroyed by an RST
(research: shared/research/fastcgi-anchors.md §5 P6).

A connection's socket is blocking, bounded by the kernel's SO_RCVTIMEO/SO_SNDTIMEO
(``timeout``), set once on the listening socket, which accepted TCP sockets inherit on
Linux: a Python socket timeout would poll before every recv and send, a system call
each. What has arrived is read with MSG_DONTWAIT (``recv_at_hand``), one call.
"""

from __future__ import annotations

import contextlib
import os
import socket
import sys
import threading
import time
from collections.abc import Callable, Mapping

from cgikit.gateway_inline import InlinePool
from cgikit.gateway_peers import IPAddress, parse_peers, peer_allowed
from cgikit.gateway_pool import FIRST_INPUT_WAIT, NEXT_REQUEST_WAIT, Held, Pool, Served
from cgikit.gateway_socket import (
    Address,
    close_connection,
    listen,
    parse_address,
    peer_name,
    recv_at_hand,
    set_socket_options,
)
from cgikit.wsgi_request import BoundedInput, EnvironError, build_environ, content_length
from cgikit.wsgi_response import ClientGone, FileWrapper, Response, serialize_cgi

TYPE_CHECKING = False
if TYPE_CHECKING:
    from cgikit._typing import ErrorStream, WSGIApp

__all__ = [
    "Address",
    "GatewayServer",
    "LogErrors",
    "listen",
    "parse_address",
    "recv_at_hand",
    "set_socket_options",
]


def _stderr_log(message: str) -> None:
    stamp = time.strftime("%Y-%m-%d %H:%M:%S")
    print(f"[{stamp}] cgikit: {message}", file=sys.stderr, flush=True)


class LogErrors:
    """A ``wsgi.errors`` that sends each complete line to ``log``."""

    def __init__(self, log: Callable[[str], object]) -> None:
        self._log = log
        self._partial = ""

    def write(self, s: str) -> int:
        lines = (self._partial + s).split("\n")
        self._partial = lines.pop()
        for line in lines:
            self._log(line)
        return len(s)

    def writelines(self, seq: list[str]) -> None:
        for s in seq:
            self.write(s)

    def flush(self) -> None:
        if self._partial:
            self._log(self._partial)
            self._partial = ""


class GatewayServer:
    """A pool of ``threads`` workers serving ``app`` on one listening socket.

    ``address``: a string for ``parse_address``, an Address, or a listening socket
    (taken over: fd 0 from a web server, systemd's). Bound when the constructor
    returns; ``serve_forever`` serves until ``shutdown``. Subclasses implement
    ``connection``. ``timeout`` bounds each read and write once a request has begun;
    ``idle_timeout`` how long a connection may wait for its next request.
    ``multiprocess``: other processes serve the same socket (prefork), for
    ``wsgi.multiprocess`` (PEP 3333).
    """

    protocol = "gateway"
    # The variable listing the web servers allowed to connect over TCP (FastCGI's
    # FCGI_WEB_SERVER_ADDRS); None: anyone may.
    peers_variable: str | None = None

    def __init__(
        self,
        app: WSGIApp,
        address: str | Address | socket.socket,
        *,
        threads: int = 8,
        timeout: float = 60.0,
        idle_timeout: float = 300.0,
        multiprocess: bool = False,
        log: Callable[[str], object] = _stderr_log,
    ) -> None:
        if type(threads) is not int or threads < 1:
            raise ValueError(f"threads must be a positive int: {threads!r}")
        if not (timeout > 0 and idle_timeout > 0):
            raise ValueError("timeout and idle_timeout must be positive")
        self.app, self.threads, self.log = app, threads, log
        self.timeout, self.idle_timeout = timeout, idle_timeout
        self.allowed_peers = self._allowed_peers()
        self._extras = {
            "wsgi.multithread": threads > 1,
            "wsgi.multiprocess": bool(multiprocess),
            "wsgi.run_once": False,
        }
        self._request_extras = {**self._extras, "wsgi.file_wrapper": FileWrapper}
        self._unlink: tuple[str, int] | None = None
        if isinstance(address, socket.socket):
            self.socket = address
            self.socket.setblocking(False)
        else:
            if isinstance(address, str):
                address = parse_address(address)
            self.socket = listen(address)
            if address.path is not None:
                self._unlink = (address.path, os.stat(address.path).st_ino)
        self.server_address: tuple[str, int] | str = self._bound_address()
        # Each connection inherits these from the listener where the kernel allows
        # (TCP on Linux); else ``_setup`` sets them per connection.
        self._inherits = set_socket_options(self.socket, timeout)
        # How long a connection with nothing to read waits before it goes back to the
        # poller: a worker thread may wait (``gateway_pool``); the one thread never does.
        inline = threads == 1
        self.first_wait = 0.0 if inline else FIRST_INPUT_WAIT
        self.next_wait = 0.0 if inline else NEXT_REQUEST_WAIT
        self._pool: Pool | InlinePool
        if inline:
            self._pool = InlinePool(
                self.socket,
                idle_timeout=idle_timeout,
                serve=self._serve,
                admit=self._admit,
                input_done=_input_done,
                log=log,
            )
        else:
            self._pool = Pool(
                self.socket,
                threads=threads,
                idle_timeout=idle_timeout,
                serve=self._serve,
                admit=self._admit,
                close=close_connection,
                log=log,
                name=f"cgikit-{self.protocol}",
            )
        self._lock = threading.Lock()
        self._stop_requested = threading.Event()
        self._done = threading.Event()
        self._serving = False

    def _allowed_peers(self) -> frozenset[IPAddress] | None:
        if self.peers_variable is None or self.peers_variable not in os.environ:
            return None
        return parse_peers(os.environ[self.peers_variable], self.peers_variable)

    def _bound_address(self) -> tuple[str, int] | str:
        name = self.socket.getsockname()
        return name if isinstance(name, str) else (name[0], name[1])

    @property
    def stopping(self) -> bool:
        """True once ``shutdown`` was called: requests begun are served, idle ones closed."""
        return self._stop_requested.is_set()

    def environ_extras(self) -> dict[str, object]:
        """PEP 3333 values for this long-running server (build_environ sets CGI's)."""
        return dict(self._extras)

    def connection(self, sock: socket.socket, peer: str) -> Served:
        """The protocol's state for a connection just accepted (subclasses)."""
        raise NotImplementedError

    def serve_forever(self) -> None:
        """Serve until ``shutdown``; then release the socket and the threads."""
        with self._lock:
            if self._serving or self.stopping:
                raise RuntimeError("serve_forever() runs once per server")
            self._serving = True
        try:
            self._pool.run()
        finally:
            self._close_sockets()
            self._done.set()

    def shutdown(self, timeout: float = 10.0) -> None:
        """Stop accepting; let in-flight requests finish for up to ``timeout`` seconds.

        Idle connections are closed. Returns once ``serve_forever`` has returned (at
        once if it never ran). Connections still busy after ``timeout`` are cut.
        """
        if self.begin_shutdown(timeout):
            self._done.wait(timeout + 10.0)
        else:
            self._close_sockets()
            self.release_pool()

    def begin_shutdown(self, timeout: float = 10.0) -> bool:
        """``shutdown`` without the wait, from any thread (the app's too: a worker that
        reached its request limit takes no more connections from that moment). Whether
        the server is serving."""
        with self._lock:
            serving = self._serving
            first = not self._stop_requested.is_set()
            self._stop_requested.set()
        if serving and first:
            self._pool.stop(timeout)
        return serving

    def release_pool(self) -> None:
        """Close the pool's event loop if ``serve_forever`` never ran it (a server whose
        connection code another front borrows: ``fastcgi_loop``); its run closes it."""
        if not self._serving:
            self._pool.loop.close()

    def __enter__(self) -> GatewayServer:
        return self

    def __exit__(self, *exc: object) -> None:
        self.shutdown()

    def respond(
        self,
        meta: Mapping[str, str],
        wsgi_input: Callable[[int], bytes],
        errors: ErrorStream,
        send: Callable[[bytes], object],
        log: Callable[[str], object],
        deferred: Callable[[bytes], object] | None = None,
    ) -> None:
        """Run the app for one request (CGI variables ``meta``); never raises for it.

        ``deferred``: ``Response``'s, for a body the app returned whole in memory.
        """
        try:
            length = content_length(meta)
            environ = build_environ(meta, BoundedInput(wsgi_input, length), errors, length)
        except EnvironError as exc:
            log(f"cannot serve this request: {exc.reason}")
            _answer(send, exc.status)
            return
        environ.update(self._request_extras)
        Response(environ, send, log, deferred=deferred).run(self.app)

    # -- the pool's callbacks ------------------------------------------------------------

    def _admit(self, sock: socket.socket, addr: object) -> Held | None:
        """A connection just accepted (on the poller's thread): held, or refused and closed."""
        if not self.admits(addr):
            sock.close()
            return None
        return Held(sock, peer_name(addr))

    def admits(self, addr: object) -> bool:
        """Whether the peer ``accept`` gave may be served; a refusal is logged.

        FastCGI 1.0 §3.2: a peer not in FCGI_WEB_SERVER_ADDRS is closed at once.
        """
        if self.allowed_peers is None or peer_allowed(addr, self.allowed_peers):
            return True
        self.log(f"{peer_name(addr)}: not in {self.peers_variable}, connection closed")
        return False

    def _serve(self, held: Held) -> bool:
        """Serve what ``held`` has at hand (a worker, or the loop); True keeps it."""
        try:
            if held.handler is None:
                if not self._inherits:
                    set_socket_options(held.sock, self.timeout)
                held.handler = self.connection(held.sock, held.peer)
            return held.handler.serve()
        except Exception as exc:  # a bug must not kill the worker; log it
            self.log(f"{held.peer}: connection failed: {exc!r}")
            return False

    def _close_sockets(self) -> None:
        self.socket.close()
        if self._unlink is not None:
            path, inode = self._unlink
            with contextlib.suppress(OSError):
                if os.stat(path).st_ino == inode:  # ours, not a successor's
                    os.unlink(path)


def _input_done(held: Held) -> bool:
    """Whether the protocol read all the input it was sent (its ``input_done``)."""
    return bool(getattr(held.handler, "input_done", False))


def _answer(send: Callable[[bytes], object], status: str) -> None:
    """A plain-text error response for a request that cannot reach the app."""
    body = status.encode("latin-1") + b"\n"
    headers = [("Content-Type", "text/plain; charset=utf-8"), ("Content-Length", str(len(body)))]
    with contextlib.suppress(OSError, ClientGone):
        send(serialize_cgi(status, headers) + body)
