"""The FastCGI bridge's front: its connections on an event loop, its scripts without threads.

Why: the threaded bridge (``fastcgi_server`` threads, ``Dispatcher``, ``CGIHost``,
``cgi_runner``) spends more per request than the script's spawn (issue 4). As
``loop_server`` does for HTTP, ``FastCGILoopServer`` accepts on an ``event_loop.Loop``
and parses each connection with the sans-IO ``fastcgi_connection.Connection``; the
common request, a CGI directory's script (``Dispatcher.fast_route``) whose STDIN has
ended within ``FAST_BODY`` bytes, runs with ``script_task`` and is framed by
``fastcgi_exchange`` as the threaded bridge frames it.

Every other request (``cgi_ext`` scripts, other paths, larger bodies, bad PARAMS, no
free ``max_procs`` slot) is handed over with its connection to a worker thread that
serves it as before: ``FastCGIServer``'s own connection code (its pool never runs),
fed again the request's records so far: a BEGIN_REQUEST made anew, then every byte
received after the original one (``replay``). When that connection waits for its next
request it comes back to the loop, with its parser.
"""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any, Final, cast

from cgikit import posix_spawn
from cgikit.event_loop import READ, Loop
from cgikit.fastcgi_front import FrontConnection
from cgikit.fastcgi_server import FastCGIServer
from cgikit.gateway_socket import set_socket_options

TYPE_CHECKING = False
if TYPE_CHECKING:
    from cgikit._typing import WSGIApp
    from cgikit.fastcgi_connection import Connection
    from cgikit.site_dispatch import Dispatcher, FastRoute

__all__ = ["FastCGILoopServer"]

SWEEP: Final = 0.05  # seconds between timeout checks (scripts' and idle connections')


class FastCGILoopServer:
    """One worker's FastCGI bridge on ``sock`` (module docstring); a ``Serving``."""

    def __init__(
        self,
        app: WSGIApp,
        dispatcher: Dispatcher,
        sock: socket.socket,
        threads: int,
        shared: bool = False,
    ) -> None:
        # The threaded half, for what the loop hands over: its settings, its respond().
        self.threaded = FastCGIServer(app, sock, threads=threads, multiprocess=shared)
        self.route: Any = dispatcher.fast_route
        self.socket = sock
        self._accept: Callable[[], tuple[int, Any]] = sock._accept  # type: ignore[attr-defined]
        self._kind = (int(sock.family), int(sock.type), sock.proto)
        self.threads = threads
        self.loop: Loop | None = None
        self.connections: set[FrontConnection] = set()
        self.handed_over = 0  # requests given to the threads (tests count them)
        self.taken_whole = 0  # requests read in one pass (fastcgi_whole; tests count them)
        self.stopping = False
        self._grace = 10.0
        self._done = threading.Event()
        self._workers = ThreadPoolExecutor(threads, thread_name_prefix="cgikit-fastcgi")

    def log(self, message: str) -> None:
        self.threaded.log(message)

    def fast_route(self, uri: str) -> FastRoute | None:
        return cast("FastRoute | None", self.route(uri))

    # -- serving ---------------------------------------------------------------------

    def serve_forever(self) -> None:
        """Serve until ``shutdown``, then give busy connections the grace period."""
        posix_spawn.prepare()
        loop = self.loop = Loop()
        # One idle worker woken per connection: nginx connects per request (keep-conn
        # off), and every worker woken to find it taken cost a third of a request's CPU.
        loop.add(self.socket.fileno(), READ, self._on_accept, exclusive=True)
        self._sweep()
        try:
            loop.run(lambda: self.stopping)
            self._drain(loop)
        finally:
            for conn in list(self.connections):
                conn.abort("the server is stopping")
            self._workers.shutdown(wait=False, cancel_futures=True)
            self.threaded.release_pool()  # its pool never runs: its loop's descriptors go
            loop.close()
            self._done.set()

    def shutdown(self, timeout: float = 10.0) -> None:
        """From any thread: stop accepting; requests in flight get ``timeout`` seconds."""
        self._grace, self.stopping = timeout, True
        loop = self.loop
        if loop is None:
            return
        loop.wake()
        self._done.wait(timeout + 10.0)

    def _drain(self, loop: Loop) -> None:
        loop.remove(self.socket.fileno())
        deadline = time.monotonic() + self._grace
        while time.monotonic() < deadline:
            for conn in list(self.connections):
                conn.stop_if_idle()
            if not self.connections:
                return
            loop.run_once(max(0.0, min(0.1, deadline - time.monotonic())))

    def _sweep(self) -> None:
        now = time.monotonic()
        for conn in list(self.connections):
            conn.tick(now)
        if self.loop is not None:
            self.loop.call_later(SWEEP, self._sweep)

    def _on_accept(self, mask: int) -> None:
        try:
            # socket.accept's work without its two enum conversions (per request):
            # the C accept, and a socket of the listener's kind.
            fd, addr = self._accept()
            sock = socket.socket(*self._kind, fd)
        except OSError:  # EAGAIN (another worker took it), EMFILE
            return
        if self.loop is None or not self.threaded.admits(addr):  # FCGI_WEB_SERVER_ADDRS
            sock.close()
            return
        sock.setblocking(False)
        if self._kind[0] != socket.AF_UNIX:
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        peer = f"{addr[0]}:{addr[1]}" if isinstance(addr, tuple) else "unix"
        conn = FrontConnection(self, self.loop, sock, peer)
        self.connections.add(conn)
        # A web server writes its request as it connects: it is most often here
        # already, and reading it now saves a round of the loop.
        conn.read_now()

    # -- the threaded path -----------------------------------------------------------

    def hand_over(self, conn: FrontConnection, replay: bytes, unsent: bytes) -> None:
        """Serve ``conn``'s request on a worker thread (``unsent``: the loop's replies
        not yet written); the connection comes back when idle."""
        self.handed_over += 1
        self._workers.submit(self._serve_threaded, conn, replay, unsent)

    def _serve_threaded(self, conn: FrontConnection, replay: bytes, unsent: bytes) -> None:
        sock = conn.sock
        # As the threaded server's own: blocking, bounded by kernel timeouts (its
        # at-hand reads are MSG_DONTWAIT, which a Python-level timeout would wait on).
        sock.setblocking(True)
        set_socket_options(sock, self.threaded.timeout)
        handler = self.threaded.connection(sock, conn.peer)
        core: Connection = cast(Any, handler).conn  # its sans-IO parser
        core.receive_data(replay)
        try:
            if unsent:
                sock.sendall(unsent)
            keep = handler.serve()
        except OSError as exc:
            self.log(f"{conn.peer}: connection lost: {exc}")
            keep = False
        except Exception as bug:  # a bug must not kill the worker
            self.log(f"{conn.peer}: connection failed: {bug!r}")
            keep = False
        loop = self.loop
        if loop is not None:
            loop.call_soon_threadsafe(lambda: conn.resume(core if keep else None))
