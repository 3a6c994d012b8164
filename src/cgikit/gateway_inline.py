"""One thread per worker process: accept, serve each request inline, wait in epoll.

Owns ``InlinePool``, the concurrency of cgikit's FastCGI and SCGI servers with
``threads=1`` (the default: prefork processes, ``gateway_options``). ``gateway_pool.Pool``
is the other one, for ``threads`` > 1; both take the same callbacks from
``gateway_server.GatewayServer``. The thread that runs ``InlinePool.run`` is the only
one: an ``event_loop.Loop`` watches the listening socket and every connection that
waits for input (a kept FastCGI connection between requests, a pre-opened SCGI one);
when one is ready the loop calls the protocol's ``serve`` right there, which serves
the requests that have arrived on it (the app called inline, its body read and its
response written with blocking calls bounded by the kernel timeouts ``gateway_server``
sets) and returns without waiting for more. No hand-off, no queue, no lock: the model
of gunicorn's sync worker and of uWSGI's processes, which serve one request at a time
per process, with the poller of ``Pool`` kept so that several web-server connections
per process never starve each other (an idle one costs a registration, not the
process: the bug ``Pool``'s docstring tells).

Backpressure: a process accepts one connection per loop round and only between
requests, so a connection it cannot serve yet waits in the kernel's listen backlog,
where another process on the same socket takes it (prefork; a gateway has no 503).

What inline means for the rest:

- ABORT_REQUEST or a close while the app runs is seen only when the app reads its
  body or writes a chunk (``fastcgi_server`` peeks before each chunk): nothing else
  runs in this process meanwhile. A response computed whole (a list) is not cut short.
- A connection is closed with a FIN. If input is still unread (a body the app did not
  read), the FIN goes first and the rest is read (bounded) by the loop, as
  ``gateway_server``'s closing does in a worker thread, so that the close is not an RST
  that destroys the response in the web server's buffer (research
  shared/research/fastcgi-anchors.md §5 P6), without blocking this process.
- ``stop``: the listening socket is closed once the request in flight has returned;
  idle connections are closed then, unless their next request has begun (it is served).
  After the grace period a request still in flight has its socket shut down from the
  calling thread, so that its reads and writes fail.
"""

from __future__ import annotations

import functools
import socket
import threading
import time
from collections.abc import Callable
from typing import Final

from cgikit.event_loop import READ, Loop, Timer
from cgikit.gateway_pool import Held, input_ready

__all__ = ["InlinePool"]

_RECV: Final = 65536
_DRAIN_SECONDS: Final = 0.2  # reading a closed connection's unread input, at most
_DRAIN_BYTES: Final = 1 << 20
_ACCEPT_BACKOFF: Final = 0.1  # after EMFILE and the like, not to spin
_ACCEPT_BATCH: Final = 4  # connections accepted per wake-up of the listener, at most
_SWEEP_EVERY: Final = 1.0  # seconds between idle-timeout checks, at most
_DONTWAIT: Final = getattr(socket, "MSG_DONTWAIT", 0)


class InlinePool:
    """The loop of one single-threaded server; ``run`` in one thread, ``stop`` from any.

    ``serve(held)`` never raises: True keeps the connection (it waits in the loop for
    more input), False closes it. ``admit(sock, addr)``: the Held to serve, or None
    (refused, already closed). ``input_done(held)``: True if nothing of the
    connection's input is known to be unread (the close then needs no drain).
    """

    def __init__(
        self,
        listener: socket.socket,
        *,
        idle_timeout: float,
        serve: Callable[[Held], bool],
        admit: Callable[[socket.socket, object], Held | None],
        input_done: Callable[[Held], bool],
        log: Callable[[str], object],
    ) -> None:
        self.listener, self.idle_timeout = listener, idle_timeout
        # What socket.accept does, without its two enum conversions per call (this is
        # per request): the C accept, and a socket of the listener's family and type.
        self._accept: Callable[[], tuple[int, object]] = listener._accept  # type: ignore[attr-defined]
        self._kind = (int(listener.family), int(listener.type), listener.proto)
        self._serve, self._admit, self._input_done, self._log = serve, admit, input_done, log
        self.loop = Loop()
        self.loop.on_error = self._on_error
        self._idle: dict[int, Held] = {}  # waiting for input, by descriptor; oldest first
        self._lingering: dict[int, socket.socket] = {}  # FIN sent, draining their input
        self._current: Held | None = None  # being served (read by the cutting thread)
        self._sweep: Timer | None = None
        self._stopping = threading.Event()  # set by stop(), from any thread
        self._stopped = False  # the loop thread's view: stop reached it
        self._cutter: threading.Timer | None = None

    # -- running ------------------------------------------------------------------------

    def run(self) -> None:
        """Accept and serve until ``stop``; every socket it holds is closed at the end."""
        try:
            if not self._stopping.is_set():
                self.loop.add(self.listener.fileno(), READ, self._on_listener, exclusive=True)
            self.loop.run(until=lambda: self._stopped and not self._lingering)
        finally:
            if self._cutter is not None:
                self._cutter.cancel()
            for held in self._idle.values():
                held.sock.close()
            for sock in self._lingering.values():
                sock.close()
            self._idle.clear()
            self._lingering.clear()
            self.loop.close()

    def stop(self, grace: float) -> None:
        """From any thread: stop accepting; the request in flight has ``grace`` seconds."""
        if self._stopping.is_set():
            return
        self._stopping.set()  # first: the loop takes no connection once it sees this
        self.loop.call_soon_threadsafe(self._begin_stop)
        cutter = threading.Timer(grace, self._cut)
        cutter.name, cutter.daemon = "cgikit-inline-cut", True
        self._cutter = cutter
        cutter.start()

    def _cut(self) -> None:
        """Past the grace period (the cutting thread): the request in flight fails."""
        held = self._current
        if held is not None:
            try:
                held.sock.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass

    def _on_error(self, exc: Exception, callback: Callable[..., object]) -> None:
        self._log(f"bug in the gateway loop, serving on: {exc!r}")

    # -- connections --------------------------------------------------------------------

    def _on_listener(self, mask: int) -> None:
        """Take a connection and serve it; again while more wait, up to ``_ACCEPT_BATCH``
        (each accept saves a trip through epoll; the bound keeps kept connections whose
        next request came meanwhile from waiting behind new ones)."""
        accept, kind = self._accept, self._kind
        for _ in range(_ACCEPT_BATCH):
            try:
                fd, addr = accept()
                sock = socket.socket(kind[0], kind[1], kind[2], fd)
            except (BlockingIOError, ConnectionAbortedError):  # none, or another took it
                return
            except OSError as exc:  # EMFILE, ENOBUFS: back off rather than spin
                self._log(f"accept failed: {exc}")
                self.loop.remove(self.listener.fileno())
                self.loop.call_later(_ACCEPT_BACKOFF, self._resume_accepting)
                return
            held = self._admit(sock, addr)
            if held is not None:
                self._run(held, fresh=True)
            if self._stopping.is_set():
                return

    def _resume_accepting(self) -> None:
        if not self._stopping.is_set():
            self.loop.add(self.listener.fileno(), READ, self._on_listener, exclusive=True)

    def _on_input(self, held: Held, mask: int) -> None:
        self._run(held, fresh=False)

    def _run(self, held: Held, *, fresh: bool) -> None:
        """Serve what ``held`` has at hand; then it waits in the loop, or is closed."""
        self._current = held
        keep = self._serve(held)
        self._current = None
        fd = held.sock.fileno()
        if keep and not self._stopping.is_set():
            if fresh:
                self.loop.add(fd, READ, functools.partial(self._on_input, held))
            else:
                del self._idle[fd]  # to the end: the dict stays oldest first
            self._idle[fd] = held
            held.since = time.monotonic()
            if self._sweep is None:
                self._sweep = self.loop.call_later(self._sweep_every(), self._expire)
            return
        if not fresh:
            self.loop.remove(fd)
            del self._idle[fd]
        self._release(held)

    def _release(self, held: Held) -> None:
        """Close ``held``: at once if its input was all read, else FIN first and drain.

        "All read" is the protocol's word (its request's input ended, nothing buffered):
        a web server sends nothing after that but a next request on a kept connection,
        and this one is not kept, so nothing can arrive to turn the close into an RST.
        """
        sock = held.sock
        if self._input_done(held):
            sock.close()  # a FIN
            return
        try:
            sock.shutdown(socket.SHUT_WR)
        except OSError:
            sock.close()
            return
        fd = sock.fileno()
        self._lingering[fd] = sock
        drained = [0]
        self.loop.add(fd, READ, functools.partial(self._drain, fd, drained))
        self.loop.call_later(_DRAIN_SECONDS, functools.partial(self._end_linger, fd))

    def _drain(self, fd: int, drained: list[int], mask: int) -> None:
        sock = self._lingering[fd]
        try:
            data = sock.recv(_RECV, _DONTWAIT)
        except BlockingIOError:
            return
        except OSError:
            data = b""
        drained[0] += len(data)
        if not data or drained[0] >= _DRAIN_BYTES:
            self._end_linger(fd)

    def _end_linger(self, fd: int) -> None:
        sock = self._lingering.pop(fd, None)
        if sock is not None:
            self.loop.remove(fd)
            sock.close()

    # -- idle connections -----------------------------------------------------------------

    def _sweep_every(self) -> float:
        return min(_SWEEP_EVERY, self.idle_timeout / 2)

    def _expire(self) -> None:
        """Close the connections idle for ``idle_timeout`` (the dict is oldest first)."""
        self._sweep = None
        limit = time.monotonic() - self.idle_timeout
        while self._idle:
            fd, held = next(iter(self._idle.items()))
            if held.since > limit:
                break
            del self._idle[fd]
            self.loop.remove(fd)
            held.sock.close()  # between requests, nothing unread: a FIN, no RST
        if self._idle:
            self._sweep = self.loop.call_later(self._sweep_every(), self._expire)

    # -- stopping -------------------------------------------------------------------------

    def _begin_stop(self) -> None:
        """On the loop thread, nothing in flight: close the listener, settle idle ones."""
        if self._stopped:
            return
        self.loop.remove(self.listener.fileno())
        self.listener.close()  # new clients are refused (or wait for another process)
        for fd, held in list(self._idle.items()):
            del self._idle[fd]
            self.loop.remove(fd)
            if input_ready(held.sock):  # its next request has begun: served, then closed
                self._run(held, fresh=True)
            else:
                held.sock.close()
        self._stopped = True
