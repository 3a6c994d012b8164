"""cgikit's SCGI server (scgi_server, gateway_server) over loopback sockets.

The client is a raw socket sending a netstring of headers and the body, then reading
the CGI-style response until the server closes. Every socket has a timeout; every
server is shut down by ``running``.
"""

from __future__ import annotations

import hashlib
import socket
from pathlib import Path

import pytest

from cgikit.scgi_server import SCGIServer
from drivers.gateway_apps import (
    DEFAULT_THREADS,
    TIMEOUT,
    Slow,
    echo_body,
    environ_keys,
    hello,
    pool_mode,
    running,
)

pytestmark = pytest.mark.usefixtures("pool_mode")
__all__ = ["pool_mode"]  # the fixture, imported for pytest


def scgi_request(body: bytes = b"", **extra: str) -> bytes:
    headers = {"CONTENT_LENGTH": str(len(body)), "SCGI": "1", "REQUEST_METHOD": "GET"}
    headers |= {"PATH_INFO": "/p", "SERVER_NAME": "", "HTTP_PROXY": "x", **extra}
    block = b"".join(k.encode() + b"\0" + v.encode("latin-1") + b"\0" for k, v in headers.items())
    return str(len(block)).encode() + b":" + block + b"," + body


def exchange(sock: socket.socket, data: bytes) -> bytes:
    sock.sendall(data)
    out = b""
    while chunk := sock.recv(65536):
        out += chunk
    sock.close()
    return out


@pytest.mark.parametrize("unix", [False, True])
def test_hello(tmp_path: Path, unix: bool) -> None:
    address = f"unix:{tmp_path / 'scgi.sock'}" if unix else "127.0.0.1:0"
    with running(SCGIServer, hello, address) as srv:
        out = exchange(srv.connect(), scgi_request())
    assert out.startswith(b"Status: 200 OK\r\n")
    assert out.endswith(b"\r\n\r\nHello, world!")


def test_environ() -> None:
    with running(SCGIServer, environ_keys) as srv:
        out = exchange(srv.connect(), scgi_request(HTTP_X_LATIN="caf\xe9"))
    lines = set(out.partition(b"\r\n\r\n")[2].decode("latin-1").split("\n"))
    assert {"PATH_INFO=/p", "SERVER_NAME=localhost", "HTTP_X_LATIN=caf\xe9", "SCGI=1"} <= lines
    threaded = f"wsgi.multithread={DEFAULT_THREADS['threads'] > 1}"
    assert {threaded, "wsgi.run_once=False"} <= lines
    assert not any(line.startswith("HTTP_PROXY") for line in lines)


def test_echo_one_mib_body() -> None:
    body = bytes(range(256)) * 4096
    with running(SCGIServer, echo_body) as srv:
        out = exchange(srv.connect(), scgi_request(body, REQUEST_METHOD="POST"))
    expected = f"{len(body)} {hashlib.sha256(body).hexdigest()}".encode()
    assert out.partition(b"\r\n\r\n")[2] == expected


def test_garbage_netstring_closes_and_the_server_serves_on() -> None:
    with running(SCGIServer, hello, threads=1) as srv:
        assert exchange(srv.connect(), b"GET / HTTP/1.1\r\n\r\n") == b""
        srv.wait_log("bad request")
        assert exchange(srv.connect(), b"5:abcde;") == b""
        assert exchange(srv.connect(), scgi_request()).endswith(b"Hello, world!")
        probe = srv.connect()  # closed before a byte: not logged
        probe.close()
        assert exchange(srv.connect(), scgi_request()).endswith(b"Hello, world!")
    assert len([line for line in srv.lines if "scgi:" in line]) == 2


def test_peer_gone_mid_body_closes_the_iterable() -> None:
    app = Slow(read_body=True)
    with running(SCGIServer, app) as srv:
        sock = srv.connect()
        sock.sendall(scgi_request(b"x" * 100)[:-50])
        assert app.started.wait(TIMEOUT)
        sock.close()
        assert app.closed.wait(TIMEOUT)
        assert isinstance(app.error, ConnectionError | OSError)
        srv.wait_log("connection closed after 50 of the body's 100 bytes")
