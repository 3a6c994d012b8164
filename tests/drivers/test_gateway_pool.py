"""The pool under the FastCGI and SCGI servers (gateway_pool, gateway_server), on loopback.

Idle kept connections wait in the poller, not in a worker thread: more of them than
threads neither starve a new connection nor become unusable; they are closed after the
idle timeout and at shutdown, while a request in flight is drained. A server accepts
only while a worker is free, so that another process on the same socket takes a
connection it cannot serve. Also the peers FCGI_WEB_SERVER_ADDRS admits, and the WSGI
process-model flags.
"""

from __future__ import annotations

import os
import socket
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import Any

import pytest

from cgikit.fastcgi_server import FastCGIServer
from cgikit.gateway_peers import parse_peers, peer_allowed
from cgikit.gateway_server import Address, listen
from cgikit.scgi_server import SCGIServer
from drivers.gateway_apps import TIMEOUT, environ_keys, hello, pool_mode, running
from drivers.test_fastcgi_server import closed, read_reply, request_bytes
from drivers.test_scgi_server import exchange, scgi_request

Env = dict[str, Any]
pytestmark = pytest.mark.usefixtures("pool_mode")
__all__ = ["pool_mode"]  # the fixture, imported for pytest


def served(sock: socket.socket, *, keep: bool = True) -> bytes:
    sock.sendall(request_bytes(keep=keep))
    return read_reply(sock).body


def kept(srv: Any, count: int, body: bytes = b"Hello, world!") -> list[socket.socket]:
    """``count`` connections that have each served a KEEP_CONN request, now idle."""
    socks = []
    for _ in range(count):
        sock = srv.connect()
        assert served(sock) == body
        socks.append(sock)
    return socks


class Gate:
    """An app whose requests wait until ``release``; ``entered`` counts them."""

    def __init__(self, name: bytes = b"gate") -> None:
        self.name = name
        self.entered = threading.Semaphore(0)
        self.released = threading.Event()

    def __call__(self, environ: Env, start_response: Callable[..., Any]) -> Iterable[bytes]:
        self.entered.release()
        assert self.released.wait(TIMEOUT)
        start_response("200 OK", [("Content-Type", "text/plain")])
        return [self.name]


def test_as_many_idle_kept_connections_as_threads_leave_room_for_a_new_one() -> None:
    with running(FastCGIServer, hello, threads=3) as srv:
        idle = kept(srv, 3)
        fresh = srv.connect()
        fresh.settimeout(1.0)  # at once, not after the idle timeout (300 s)
        assert served(fresh, keep=False) == b"Hello, world!"
        assert closed(fresh)
        for sock in [fresh, *idle]:
            sock.close()


def test_fifty_idle_kept_connections_on_two_threads_all_serve_on() -> None:
    with running(FastCGIServer, hello, threads=2) as srv:
        idle = kept(srv, 50)
        for sock in reversed(idle):  # each in turn, the oldest last
            assert served(sock) == b"Hello, world!"
        for sock in idle:  # all at once: they wait for the two workers in line
            sock.sendall(request_bytes(7, keep=True))
        for sock in idle:
            reply = read_reply(sock)
            assert (reply.body, {r.request_id for r in reply.records}) == (b"Hello, world!", {7})
        for sock in idle:
            sock.close()


def test_shutdown_closes_idle_connections_and_drains_the_request_in_flight() -> None:
    gate = Gate()
    with running(FastCGIServer, gate, threads=2) as srv:
        gate.released.set()
        idle = kept(srv, 4, b"gate")
        gate.released.clear()
        gate.entered = threading.Semaphore(0)  # count from here: the busy request only
        busy = srv.connect()
        busy.sendall(request_bytes(keep=True))
        assert gate.entered.acquire(timeout=TIMEOUT)
        stopper = threading.Thread(target=srv.server.shutdown, args=(TIMEOUT,))
        started = time.monotonic()
        stopper.start()
        for sock in idle:  # closed at once, while the request is still in flight
            assert closed(sock)
            sock.close()
        assert stopper.is_alive()
        gate.released.set()
        assert read_reply(busy).body == b"gate"  # finished, then closed: no next request
        assert closed(busy)
        busy.close()
        stopper.join(TIMEOUT)
        assert not stopper.is_alive()
        assert time.monotonic() - started < TIMEOUT


def test_an_idle_connection_is_closed_after_the_idle_timeout() -> None:
    with running(FastCGIServer, hello, idle_timeout=0.3) as srv:
        (sock,) = kept(srv, 1)
        time.sleep(0.1)
        assert served(sock) == b"Hello, world!"  # a request restarts the clock
        started = time.monotonic()
        assert closed(sock)
        assert 0.25 < time.monotonic() - started < 2.0
        sock.close()
        assert served(srv.connect(), keep=False) == b"Hello, world!"


def test_scgi_connection_without_its_request_yet_holds_no_thread() -> None:
    with running(SCGIServer, hello, threads=1) as srv:
        silent = srv.connect()  # pre-opened: the request comes later
        time.sleep(0.2)
        assert exchange(srv.connect(), scgi_request()).endswith(b"Hello, world!")
        assert exchange(silent, scgi_request()).endswith(b"Hello, world!")


@pytest.fixture
def shared_socket() -> Iterator[tuple[socket.socket, socket.socket]]:
    """One listening socket twice, as prefork workers have it."""
    first = listen(Address("127.0.0.1", 0))
    second = socket.socket(fileno=os.dup(first.fileno()))
    yield first, second
    first.close()
    second.close()


def test_a_server_with_no_free_worker_leaves_new_connections_to_another(
    shared_socket: tuple[socket.socket, socket.socket],
) -> None:
    gate_a, gate_b = Gate(b"a"), Gate(b"b")
    gate_b.released.set()
    servers = [
        FastCGIServer(gate, sock, threads=1, log=print)
        for gate, sock in zip((gate_a, gate_b), shared_socket, strict=True)
    ]
    threads = [threading.Thread(target=server.serve_forever) for server in servers]
    for thread in threads:
        thread.start()
    address = shared_socket[0].getsockname()
    probes: list[socket.socket] = []
    try:
        while not gate_a.entered.acquire(timeout=0.1):  # until a's one worker is busy
            assert len(probes) < 50, "server a never took a connection"
            probes.append(socket.create_connection(address, timeout=TIMEOUT))
            probes[-1].sendall(request_bytes())
        for _ in range(5):  # a is busy: b takes every new connection, at once
            with socket.create_connection(address, timeout=1.0) as sock:
                assert served(sock, keep=False) == b"b"
        gate_a.released.set()
        assert sorted(read_reply(sock).body for sock in probes)[0] == b"a"
    finally:
        gate_a.released.set()
        for sock in probes:
            sock.close()
        for server in servers:
            server.shutdown(TIMEOUT)
        for thread in threads:
            thread.join(TIMEOUT)


# -- FCGI_WEB_SERVER_ADDRS (FastCGI 1.0 §3.2) ----------------------------------------------


def test_parse_peers_and_check_a_peer() -> None:
    allowed = parse_peers(" 127.0.0.1, ::1 ,192.0.2.7")
    assert peer_allowed(("127.0.0.1", 9000), allowed)
    assert peer_allowed(("::1", 9000, 0, 0), allowed)
    assert peer_allowed(("::ffff:192.0.2.7", 9000, 0, 0), allowed)  # IPv4 on an IPv6 socket
    assert not peer_allowed(("127.0.0.2", 9000), allowed)
    assert not peer_allowed(("::2", 9000, 0, 0), allowed)
    assert peer_allowed("", allowed) and peer_allowed(b"", allowed)  # Unix peers: unchecked
    for bad in ("", " , ", "localhost", "127.0.0.1,10.0.0.300", "127.0.0.1/8"):
        with pytest.raises(ValueError, match="FCGI_WEB_SERVER_ADDRS"):
            parse_peers(bad)


def test_a_peer_not_in_fcgi_web_server_addrs_is_closed_at_once(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setenv("FCGI_WEB_SERVER_ADDRS", "192.0.2.1,::1")
    with running(FastCGIServer, hello, threads=1) as srv:
        refused = srv.connect()
        refused.sendall(request_bytes())
        assert closed(refused)  # no reply, not even END_REQUEST
        refused.close()
        srv.wait_log("127.0.0.1:")
        assert "not in FCGI_WEB_SERVER_ADDRS" in srv.wait_log("connection closed")
    with running(SCGIServer, hello) as srv:  # SCGI has no such variable
        assert exchange(srv.connect(), scgi_request()).endswith(b"Hello, world!")
    with running(FastCGIServer, hello, f"unix:{tmp_path / 's'}") as srv:  # not TCP
        assert served(srv.connect(), keep=False) == b"Hello, world!"
    monkeypatch.setenv("FCGI_WEB_SERVER_ADDRS", "192.0.2.1, 127.0.0.1")
    with running(FastCGIServer, hello) as srv:
        assert served(srv.connect(), keep=False) == b"Hello, world!"
    monkeypatch.setenv("FCGI_WEB_SERVER_ADDRS", "web.example")
    with pytest.raises(ValueError, match=r"not an IP address: 'web\.example'"):
        FastCGIServer(hello, "127.0.0.1:0")


# -- PEP 3333's process model --------------------------------------------------------------


@pytest.mark.parametrize(
    ("kw", "flags"),
    [
        ({"threads": 1}, {"wsgi.multithread=False", "wsgi.multiprocess=False"}),
        ({"threads": 2}, {"wsgi.multithread=True", "wsgi.multiprocess=False"}),
        (
            {"threads": 1, "multiprocess": True},
            {"wsgi.multithread=False", "wsgi.multiprocess=True"},
        ),
    ],
)
def test_wsgi_multithread_and_multiprocess_tell_the_truth(kw: Env, flags: set[str]) -> None:
    with running(FastCGIServer, environ_keys, **kw) as srv:
        sock = srv.connect()
        lines = set(served(sock, keep=False).decode("latin-1").split("\n"))
        sock.close()
    with running(SCGIServer, environ_keys, **kw) as srv:
        scgi = exchange(srv.connect(), scgi_request()).partition(b"\r\n\r\n")[2]
    assert flags <= lines
    assert flags <= set(scgi.decode("latin-1").split("\n"))
