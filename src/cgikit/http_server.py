"""cgikit's HTTP/1.1 server: a WSGI app on a listening socket, with a bounded pool.

Owns the listening socket (SO_REUSEADDR, IPv4 or IPv6), the accept loop, and a fixed
set of worker threads that take accepted connections from a bounded queue; each worker
serves one connection at a time through ``http_connection.Connection`` (requests in
order, keep-alive and pipelining per RFC 9112 §9.3). When every worker is busy a new
connection waits in the queue; when the queue is full it is answered 503 (RFC 9110
§15.6.4) and closed. ``shutdown()`` stops accepting, closes idle and queued
connections, and lets in-flight requests finish within a bound.
"""

from __future__ import annotations

import collections
import select
import socket
import sys
import threading
import time
from collections.abc import Callable
from typing import Final

from cgikit.http_connection import Connection, Limits
from cgikit.http_head import error_response
from cgikit.http_request import Request, RequestParser

TYPE_CHECKING = False
if TYPE_CHECKING:
    from cgikit._typing import WSGIApp

__all__ = ["HTTPServer", "serve_http"]

_REJECT_LINGER: Final = 0.1  # seconds spent reading a refused client's request before close


# An accepted connection waiting for a worker: the socket, the client's address, and,
# for one an event loop hands over, its parser and the request whose head it has read.
Queued = tuple[socket.socket, tuple[str, int], "tuple[RequestParser, Request] | None"]


_stamp_cache: tuple[int, str] = (0, "")


def _stderr_log(message: str) -> None:
    global _stamp_cache
    second = int(time.time())
    if _stamp_cache[0] != second:  # one strftime a second, not one a request
        _stamp_cache = (second, time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(second)))
    sys.stderr.write(f"[{_stamp_cache[1]}] cgikit: {message}\n")
    sys.stderr.flush()


class HTTPServer:
    """Serve ``app`` over HTTP/1.1 on ``host``:``port`` (``port=0``: any free port).

    The socket is bound and listening when the constructor returns, so
    ``server_address`` holds the real port; ``serve_forever`` then accepts until
    ``shutdown``. Args are those of ``serve_http``, and ``sock``: a listening socket,
    TCP or Unix, bound by the caller (``cgikit run --http``, systemd), served instead of
    binding ``host``:``port``.

    Raises:
        ValueError: a limit is out of range.
        OSError: the address cannot be bound.
    """

    def __init__(
        self,
        app: WSGIApp,
        host: str = "127.0.0.1",
        port: int = 8000,
        *,
        threads: int = 8,
        queue_size: int | None = None,
        header_timeout: float = 10.0,
        idle_timeout: float = 30.0,
        max_header_bytes: int = 65536,
        max_body_bytes: int | None = None,
        log: Callable[[str], object] = _stderr_log,
        sock: socket.socket | None = None,
    ) -> None:
        if type(threads) is not int or threads < 1:
            raise ValueError(f"threads must be a positive int: {threads!r}")
        if not (header_timeout > 0 and idle_timeout > 0):
            raise ValueError("header_timeout and idle_timeout must be positive")
        self.app, self.log, self.threads = app, log, threads
        self.queue_size = 4 * threads if queue_size is None else queue_size
        if self.queue_size < 0:
            raise ValueError(f"queue_size must be >= 0: {queue_size!r}")
        self.limits = Limits(header_timeout, idle_timeout, max_header_bytes, max_body_bytes)
        if sock is None:
            self.socket = _listen(host, port)
        else:  # a listening socket bound elsewhere (cgikit run, systemd): TCP or Unix
            self.socket = sock
            sock.setblocking(False)
        self.server_address: tuple[str, int] = _peer(self.socket.getsockname(), "localhost")
        self._wake_r, self._wake_w = socket.socketpair()
        self._lock = threading.Condition()
        self._queue: collections.deque[Queued] = collections.deque()
        self._active: set[socket.socket] = set()
        self._stopping = False
        self._done = threading.Event()
        self._serving = False
        self._grace = 10.0
        # Seconds a process with no free thread waits before it takes a connection that
        # several processes share (prefork); 0 when this process is the only acceptor.
        self.defer_when_busy = 0.0

    def serve_forever(self) -> None:
        """Accept and serve connections until ``shutdown``; then release everything."""
        with self._lock:
            if self._serving or self._stopping:
                raise RuntimeError("serve_forever() runs once per server")
            self._serving = True
            # A wake-up pair of this process's own: after a fork (prefork workers) the
            # pair made in __init__ is shared, and one worker's shutdown would wake and
            # stop them all.
            self._wake_r.close()
            self._wake_w.close()
            self._wake_r, self._wake_w = socket.socketpair()
        workers = [
            threading.Thread(target=self._work, name=f"cgikit-http-{n}", daemon=True)
            for n in range(self.threads)
        ]
        for worker in workers:
            worker.start()
        try:
            self._accept_loop()
        finally:
            self._stop(workers)

    def shutdown(self, timeout: float = 10.0) -> None:
        """Stop accepting; let in-flight requests finish for up to ``timeout`` seconds.

        Returns once ``serve_forever`` has returned (or at once if it never ran).
        Connections still busy after ``timeout`` are cut.
        """
        with self._lock:
            self._stopping = True
            self._grace = timeout
            serving = self._serving
            self._lock.notify_all()
        try:
            self._wake_w.send(b"x")  # never read: every poll on it sees it readable
        except OSError:
            pass
        if serving:
            self._done.wait(timeout + 5.0)
        else:
            self._close_sockets()

    def __enter__(self) -> HTTPServer:
        return self

    def __exit__(self, *exc: object) -> None:
        self.shutdown()

    # -- the acceptor -----------------------------------------------------------------

    def _accept_loop(self) -> None:
        poller = select.poll()
        poller.register(self.socket, select.POLLIN)
        poller.register(self._wake_r, select.POLLIN)
        waker = select.poll()
        waker.register(self._wake_r, select.POLLIN)
        while not self._stopping:
            ready = {fd for fd, _ in poller.poll()}
            if self._wake_r.fileno() in ready or self._stopping:
                return
            # Another process on this socket may have a free thread: leave it the
            # connection for a moment rather than queue it behind busy ones here.
            busy = self.defer_when_busy and not self._idle_workers()
            if busy and waker.poll(self.defer_when_busy * 1000):
                return
            try:
                sock, addr = self.socket.accept()
            except OSError:  # EAGAIN (another process took it, a client gave up), EMFILE
                continue
            if sock.family != socket.AF_UNIX:
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            peer = _peer(addr, "unix")
            with self._lock:
                if len(self._queue) < self.queue_size or self._idle_workers():
                    self._queue.append((sock, peer, None))
                    self._lock.notify()
                    continue
            self._reject(sock, peer)

    def _idle_workers(self) -> bool:
        return len(self._active) + len(self._queue) < self.threads

    def _reject(self, sock: socket.socket, addr: tuple[str, int]) -> None:
        """503 to a connection no worker nor the queue can take (RFC 9110 §15.6.4)."""
        self.log(f"{addr[0]}:{addr[1]} refused: all {self.threads} workers busy, queue full")
        try:
            sock.settimeout(_REJECT_LINGER)
            sock.sendall(error_response(503, "the server is busy; try again later"))
            sock.shutdown(socket.SHUT_WR)
            # Read what the client sent so the close is a FIN, not an RST that could
            # destroy the 503 in the client's receive buffer.
            deadline = time.monotonic() + _REJECT_LINGER
            while time.monotonic() < deadline and sock.recv(65536):
                pass
        except OSError:
            pass
        finally:
            sock.close()

    # -- the workers ------------------------------------------------------------------

    def _work(self) -> None:
        while (item := self._next_connection()) is not None:
            sock, addr, resumed = item
            try:
                conn = Connection(
                    sock,
                    addr,
                    self.server_address,
                    self.app,
                    self.limits,
                    self.log,
                    lambda: self._stopping,
                    self._wake_r.fileno(),
                )
                if resumed is None:
                    conn.serve()
                else:
                    conn.parser = resumed[0]
                    conn.serve(resumed[1])
            except Exception as exc:  # a bug must not kill the worker; log it
                self.log(f"{addr[0]}:{addr[1]} connection failed: {exc!r}")
            finally:
                with self._lock:
                    self._active.discard(sock)
                _close(sock)

    def _next_connection(self) -> Queued | None:
        """The next accepted connection; None once stopping with none left to serve.

        Stopping, the queue is still served (each connection's request gets its answer,
        with ``Connection: close``): a client whose connection was accepted must not see
        it closed unanswered (a SIGHUP replacing workers would lose requests).
        """
        with self._lock:
            while not self._queue and not self._stopping:
                self._lock.wait()
            if not self._queue:
                return None
            item = self._queue.popleft()
            self._active.add(item[0])
            return item

    def _stop(self, workers: list[threading.Thread]) -> None:
        """Stop accepting; the workers serve what is queued and in flight within the grace
        period; then what is left is closed or cut."""
        self.socket.close()  # stop accepting first: new clients get a refused connect
        with self._lock:
            self._stopping = True
            self._lock.notify_all()
        deadline = time.monotonic() + self._grace
        for worker in workers:
            worker.join(max(0.0, deadline - time.monotonic()))
        with self._lock:  # past the grace period: what is still queued is closed unserved
            queued, self._queue = list(self._queue), collections.deque()
            busy = list(self._active)
        for sock, _, _ in queued:
            _close(sock)
        for sock in busy:  # past the grace period: cut, so sends and reads fail
            try:
                sock.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
        for worker in workers:
            worker.join(5.0)
        self._close_sockets()
        self._done.set()

    def _close_sockets(self) -> None:
        self.socket.close()
        self._wake_r.close()
        self._wake_w.close()


def _listen(host: str, port: int) -> socket.socket:
    """A listening TCP socket with SO_REUSEADDR; ``host`` may be IPv6 (``::1``)."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind((host, port))
        sock.listen(128)
        # Readiness comes from poll; several processes may poll one socket (prefork),
        # and the one that loses the race must get EAGAIN, not block in accept().
        sock.setblocking(False)
    except BaseException:
        sock.close()
        raise
    return sock


def _peer(name: object, unix: str) -> tuple[str, int]:
    """A socket name as (host, port); a Unix socket's (a path, often empty) as (unix, 0)."""
    if isinstance(name, tuple):
        return name[0], name[1]
    return unix, 0


def _close(sock: socket.socket) -> None:
    try:
        sock.shutdown(socket.SHUT_WR)  # a FIN after the last response byte
    except OSError:
        pass
    sock.close()


def serve_http(
    app: WSGIApp,
    host: str = "127.0.0.1",
    port: int = 8000,
    *,
    threads: int = 8,
    queue_size: int | None = None,
    header_timeout: float = 10.0,
    idle_timeout: float = 30.0,
    max_header_bytes: int = 65536,
    max_body_bytes: int | None = None,
    log: Callable[[str], object] = _stderr_log,
) -> None:
    """Serve ``app`` over HTTP/1.1 until KeyboardInterrupt; then shut down gracefully.

    Args:
        app: the WSGI application (called from ``threads`` threads at once).
        host, port: the address to bind; ``"::1"`` or another IPv6 address binds IPv6.
        threads: worker threads, each serving one connection at a time.
        queue_size: accepted connections that may wait for a worker (default
            4 x threads); beyond it a connection gets 503.
        header_timeout: seconds for a request's header block once it has begun (408).
        idle_timeout: seconds a keep-alive connection may idle, and the limit on each
            read or write of a slow client.
        max_header_bytes: the header block's size limit (431).
        max_body_bytes: the request body's size limit (413), None for none.
        log: called with each log line (access log and errors).
    Raises:
        OSError: the address cannot be bound.
    """
    server = HTTPServer(
        app,
        host,
        port,
        threads=threads,
        queue_size=queue_size,
        header_timeout=header_timeout,
        idle_timeout=idle_timeout,
        max_header_bytes=max_header_bytes,
        max_body_bytes=max_body_bytes,
        log=log,
    )
    host_shown = f"[{server.server_address[0]}]" if ":" in host else server.server_address[0]
    log(f"serving on http://{host_shown}:{server.server_address[1]}/")
    thread = threading.Thread(target=server.serve_forever, name="cgikit-http-accept")
    thread.start()
    try:
        while thread.is_alive():
            thread.join(0.5)
    except KeyboardInterrupt:
        log("shutting down")
    finally:
        server.shutdown()
        thread.join(15.0)
