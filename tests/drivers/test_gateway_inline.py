"""The single-threaded servers (``threads=1``: gateway_inline) on loopback.

The app runs on the loop's own thread: kept connections between requests wait in the
loop and never starve each other or a new one; a slow web server holds the app back
(a blocking write) instead of growing a buffer; a body the app leaves unread does not
turn the close into an RST; ``shutdown`` lets the request in flight finish, then closes
the idle connections, and a request past the grace period is cut.
"""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from typing import Any

from cgikit import fastcgi_records as wire
from cgikit.fastcgi_server import FastCGIServer
from cgikit.scgi_server import SCGIServer
from drivers.gateway_apps import TIMEOUT, hello, running
from drivers.test_fastcgi_server import PARAMS, closed, read_reply, request_bytes
from drivers.test_gateway_pool import Gate, kept, served
from drivers.test_scgi_server import exchange, scgi_request

Env = dict[str, Any]
CHUNK = 1 << 20


def test_many_kept_connections_on_one_thread_are_all_served() -> None:
    with running(FastCGIServer, hello, threads=1) as srv:
        idle = kept(srv, 20)
        for sock in idle:  # all at once: served one after the other by the loop
            sock.sendall(request_bytes(3, keep=True))
        for sock in reversed(idle):
            reply = read_reply(sock)
            assert (reply.body, {r.request_id for r in reply.records}) == (b"Hello, world!", {3})
        fresh = srv.connect()
        fresh.settimeout(1.0)
        assert served(fresh, keep=False) == b"Hello, world!"
        for sock in [fresh, *idle]:
            sock.close()


def test_a_silent_connection_does_not_hold_the_thread() -> None:
    """A connection that sends nothing (or half a record) waits in the loop."""
    with running(FastCGIServer, hello, threads=1) as srv:
        silent = srv.connect()
        half = srv.connect()
        half.sendall(request_bytes()[:5])  # inside the first record header
        time.sleep(0.1)
        other = srv.connect()
        other.settimeout(1.0)
        assert served(other, keep=False) == b"Hello, world!"
        half.sendall(request_bytes()[5:])
        assert read_reply(half).body == b"Hello, world!"
        for sock in (silent, half, other):
            sock.close()
    with running(SCGIServer, hello, threads=1) as srv:
        silent = srv.connect()
        assert exchange(srv.connect(), scgi_request()).endswith(b"Hello, world!")
        assert exchange(silent, scgi_request()).endswith(b"Hello, world!")


class Counted:
    """Streams ``chunks`` chunks of 1 MiB, counting those the server took."""

    def __init__(self, chunks: int) -> None:
        self.chunks, self.taken = chunks, 0

    def __call__(self, environ: Env, start_response: Callable[..., Any]) -> Iterable[bytes]:
        start_response("200 OK", [("Content-Type", "application/octet-stream")])
        return self._body()

    def _body(self) -> Iterator[bytes]:
        for _ in range(self.chunks):
            self.taken += 1
            yield b"x" * CHUNK


def test_a_slow_web_server_holds_the_app_back() -> None:
    """Output is written as it comes, with a blocking write: while the web server reads
    nothing, the app is not asked for more than the socket buffers hold."""
    app = Counted(16)
    with running(FastCGIServer, app, threads=1) as srv:
        sock = srv.connect()
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 65536)
        sock.sendall(request_bytes())
        time.sleep(0.5)
        assert 0 < app.taken < 12, app.taken  # a buffering server takes all 16 MiB
        reader, stdout, end = wire.RecordReader(), 0, None
        while end is None:
            record = reader.next_record()
            if record is None:
                reader.feed(sock.recv(CHUNK))
            elif record.type == wire.STDOUT:
                stdout += len(record.content)
            elif record.type == wire.END_REQUEST:
                end = record
        sock.close()
    assert stdout > 16 * CHUNK  # the body and the header block
    assert app.taken == 16


def test_an_unread_body_does_not_reset_the_response() -> None:
    """hello never reads its 4 MiB body: the server answers, sends its FIN, and reads
    the rest as it comes, so the close is not an RST that destroys the response."""
    body = b"y" * (4 * CHUNK)
    params = {**PARAMS, b"REQUEST_METHOD": b"POST", b"CONTENT_LENGTH": str(len(body)).encode()}
    with running(FastCGIServer, hello, threads=1) as srv:
        sock = srv.connect()
        sender = threading.Thread(
            target=_send_quietly, args=(sock, request_bytes(params=params, body=body))
        )
        sender.start()
        reply = read_reply(sock)
        assert reply.body == b"Hello, world!"
        assert reply.end == (0, wire.REQUEST_COMPLETE)
        sender.join(TIMEOUT)
        assert closed(sock)
        sock.close()
        assert served(srv.connect(), keep=False) == b"Hello, world!"  # and serves on


def _send_quietly(sock: socket.socket, data: bytes) -> None:
    try:
        sock.sendall(data)
    except OSError:
        pass  # the server stopped draining after its bound: allowed


def test_shutdown_finishes_the_request_in_flight_then_closes_idle_ones() -> None:
    gate = Gate()
    with running(FastCGIServer, gate, threads=1) as srv:
        gate.released.set()
        idle = kept(srv, 3, b"gate")
        gate.released.clear()
        busy = srv.connect()
        busy.sendall(request_bytes(keep=True))
        for _ in range(4):  # the three kept requests and the busy one
            assert gate.entered.acquire(timeout=TIMEOUT)
        stopper = threading.Thread(target=srv.server.shutdown, args=(TIMEOUT,))
        stopper.start()
        time.sleep(0.2)
        assert stopper.is_alive()  # the request in flight holds the one thread
        gate.released.set()
        assert read_reply(busy).body == b"gate"
        assert closed(busy)
        for sock in idle:  # closed once the thread was back in the loop
            assert closed(sock)
            sock.close()
        busy.close()
        stopper.join(TIMEOUT)
        assert not stopper.is_alive()


def test_a_request_past_the_grace_period_is_cut() -> None:
    gate = Gate()
    with running(FastCGIServer, Slowly(gate), threads=1) as srv:
        sock = srv.connect()
        sock.sendall(request_bytes())
        assert gate.entered.acquire(timeout=TIMEOUT)
        started = time.monotonic()
        srv.server.shutdown(timeout=0.3)  # the app writes on, every 20 ms, for ever
        assert time.monotonic() - started < TIMEOUT
        gate.released.set()
        sock.close()


class Slowly:
    """Writes a chunk every 20 ms until its write fails (the server cut it)."""

    def __init__(self, gate: Gate) -> None:
        self.gate = gate

    def __call__(self, environ: Env, start_response: Callable[..., Any]) -> Iterable[bytes]:
        write = start_response("200 OK", [("Content-Type", "text/plain")])
        self.gate.entered.release()
        while not self.gate.released.is_set():
            write(b"tick\n")
            time.sleep(0.02)
        return []
