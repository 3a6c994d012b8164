"""cgikit's HTTP/1.1 server (http_server, http_connection) over loopback sockets.

Every test starts a server on 127.0.0.1 port 0 in a background thread (fixture
``serve``), shuts it down at the end and checks that no thread or descriptor is left.
Clients are raw sockets (every one with a timeout) or ``http.client``. Apps are wrapped
in ``wsgiref.validate.validator`` with its warnings turned into errors.
"""

from __future__ import annotations

import contextlib
import http.client
import os
import socket
import threading
import time
import warnings
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import Any
from wsgiref.validate import validator

import pytest

from cgikit.http_server import HTTPServer

TIMEOUT = 5.0
Env = dict[str, Any]
StartResponse = Callable[..., Any]


def fds() -> set[str]:
    return set(os.listdir("/proc/self/fd")) if os.path.isdir("/proc/self/fd") else set()


@pytest.fixture(autouse=True)
def strict_warnings() -> Iterator[None]:
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        yield


class Running:
    def __init__(self, server: HTTPServer, lines: list[str]) -> None:
        self.server, self.lines = server, lines
        self.port = server.server_address[1]

    def connect(self) -> socket.socket:
        sock = socket.create_connection(("127.0.0.1", self.port), timeout=TIMEOUT)
        return sock

    def client(self) -> http.client.HTTPConnection:
        return http.client.HTTPConnection("127.0.0.1", self.port, timeout=TIMEOUT)


@contextlib.contextmanager
def running(
    app: Callable[..., Any], host: str = "127.0.0.1", *, validate: bool = True, **kw: Any
) -> Iterator[Running]:
    threads_before = set(threading.enumerate())
    fds_before = fds()
    lines: list[str] = []
    server = HTTPServer(validator(app) if validate else app, host, 0, log=lines.append, **kw)
    thread = threading.Thread(target=server.serve_forever)
    thread.start()
    try:
        yield Running(server, lines)
    finally:
        server.shutdown(timeout=2.0)
        thread.join(TIMEOUT)
        time.sleep(0.01)
        assert not thread.is_alive()
        assert set(threading.enumerate()) - threads_before == set()
        assert fds() - fds_before == set()


# -- apps ---------------------------------------------------------------------------


def hello(environ: Env, start_response: StartResponse) -> Iterable[bytes]:
    body = f"{environ['REQUEST_METHOD']} {environ['PATH_INFO']}?{environ['QUERY_STRING']}"
    data = body.encode("latin-1")
    start_response("200 OK", [("Content-Type", "text/plain"), ("Content-Length", str(len(data)))])
    return [data]


def echo(environ: Env, start_response: StartResponse) -> Iterable[bytes]:
    parts = []
    while part := environ["wsgi.input"].read(8192):  # the validator wants read(n)
        parts.append(part)
    data = b"".join(parts)
    start_response("200 OK", [("Content-Type", "application/octet-stream")])
    return [data]


def environ_app(environ: Env, start_response: StartResponse) -> Iterable[bytes]:
    keys = sorted(k for k in environ if k.isupper())
    text = "".join(f"{k}={environ[k]}\n" for k in keys)
    start_response("200 OK", [("Content-Type", "text/plain")])
    return [text.encode("latin-1")]


def generator(environ: Env, start_response: StartResponse) -> Iterator[bytes]:
    start_response("200 OK", [("Content-Type", "text/plain")])
    yield b"one,"
    yield b"two"


@pytest.fixture
def serve() -> Callable[..., contextlib.AbstractContextManager[Running]]:
    return running


def read_response(sock: socket.socket) -> tuple[bytes, dict[str, str], bytes]:
    """One response from a raw socket: status line, headers, and the body (when it has
    a Content-Length; else what came with the head). Reads at most that response."""
    buf = b""
    while b"\r\n\r\n" not in buf:
        data = sock.recv(65536)
        if not data:
            raise EOFError(buf)
        buf += data
    head, _, rest = buf.partition(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    headers = {k.lower(): v.strip() for k, _, v in (line.partition(":") for line in lines[1:])}
    if "content-length" in headers:
        n = int(headers["content-length"])
        while len(rest) < n:
            rest += sock.recv(65536)
        if rest[n:]:
            raise AssertionError(f"more than one response: {rest!r}")
        return lines[0].encode(), headers, rest[:n]
    return lines[0].encode(), headers, rest


def recv_all(sock: socket.socket) -> bytes:
    out = b""
    while data := sock.recv(65536):
        out += data
    return out


# -- tests --------------------------------------------------------------------------


def test_get_and_head() -> None:
    with running(hello) as srv:
        client = srv.client()
        client.request("GET", "/a%20b?x=1&y=%20")
        resp = client.getresponse()
        assert resp.status == 200
        assert resp.read() == b"GET /a b?x=1&y=%20"
        assert resp.getheader("Server") == "cgikit"
        assert resp.getheader("Date")
        client.request("HEAD", "/h")
        resp = client.getresponse()
        assert resp.status == 200
        assert resp.getheader("Content-Length") == "8"  # "HEAD /h?"
        assert resp.read() == b""
        client.close()
    assert any('"GET /a%20b?x=1&y=%20 HTTP/1.1" 200 18' in line for line in srv.lines)


def test_post_content_length_and_environ() -> None:
    with running(environ_app) as srv:
        sock = srv.connect()
        sock.sendall(
            b"POST /p%2Fq?a=b HTTP/1.1\r\nHost: x\r\nContent-Type: text/plain\r\n"
            b"Content-Length: 3\r\nCookie: a=1\r\nCookie: b=2\r\nX-A: 1\r\nX-A: 2\r\n"
            b"X_B: dropped\r\nConnection: close\r\n\r\nabc"
        )
        data = recv_all(sock)
        sock.close()
    text = data.decode("latin-1")
    assert "Transfer-Encoding: chunked" in text  # the length was unknown
    for line in [
        "REQUEST_METHOD=POST",
        "PATH_INFO=/p/q",
        "QUERY_STRING=a=b",
        "REQUEST_URI=/p%2Fq?a=b",
        "SCRIPT_NAME=\n",
        "CONTENT_LENGTH=3",
        "CONTENT_TYPE=text/plain",
        "HTTP_COOKIE=a=1; b=2",
        "HTTP_X_A=1, 2",
        "SERVER_PROTOCOL=HTTP/1.1",
        "REMOTE_ADDR=127.0.0.1",
        "SERVER_PORT=" + str(srv.port),
    ]:
        assert line in text
    assert "X_B" not in text and "HTTP_CONTENT_LENGTH" not in text


def test_post_echo_and_chunked_upload() -> None:
    with running(echo) as srv:
        client = srv.client()
        client.request("POST", "/", body=b"x" * 100000)
        resp = client.getresponse()
        assert resp.getheader("Transfer-Encoding") == "chunked"
        assert resp.read() == b"x" * 100000
        client.request("POST", "/", body=iter([b"ab", b"cd", b"e"]), encode_chunked=True)
        resp = client.getresponse()
        assert resp.read() == b"abcde"
        client.close()


def test_keep_alive_three_requests() -> None:
    with running(hello) as srv:
        sock = srv.connect()
        for n in range(3):
            sock.sendall(f"GET /{n} HTTP/1.1\r\nHost: x\r\n\r\n".encode())
            status, headers, body = read_response(sock)
            assert status == b"HTTP/1.1 200 OK"
            assert body == f"GET /{n}?".encode()
            assert "connection" not in headers
        sock.close()


def test_pipelining_in_order() -> None:
    with running(echo) as srv:
        sock = srv.connect()
        reqs = b"".join(
            b"POST /%d HTTP/1.1\r\nHost: x\r\nContent-Length: 2\r\n\r\nb%d" % (n, n)
            for n in range(3)
        )
        sock.sendall(reqs + b"GET / HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        data = recv_all(sock)
        sock.close()
    assert data.count(b"HTTP/1.1 200 OK") == 4
    assert data.index(b"2\r\nb0\r\n") < data.index(b"2\r\nb1\r\n") < data.index(b"2\r\nb2\r\n")
    assert data.endswith(b"Content-Length: 0\r\nConnection: close\r\n\r\n")  # a known length


def test_http10_close_delimited() -> None:
    with running(generator) as srv:
        sock = srv.connect()
        sock.sendall(b"GET / HTTP/1.0\r\n\r\n")
        data = recv_all(sock)
        sock.close()
    assert data.startswith(b"HTTP/1.1 200 OK\r\n")
    assert b"Connection: close" in data and b"chunked" not in data
    assert data.endswith(b"\r\n\r\none,two")


def test_http10_keep_alive_with_length() -> None:
    with running(hello) as srv:
        sock = srv.connect()
        for _ in range(2):
            sock.sendall(b"GET / HTTP/1.0\r\nConnection: keep-alive\r\n\r\n")
            _, headers, body = read_response(sock)
            assert headers["connection"] == "keep-alive" and body == b"GET /?"
        sock.close()


def test_expect_100_continue() -> None:
    with running(echo) as srv:
        sock = srv.connect()
        sock.sendall(
            b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\nExpect: 100-continue\r\n\r\n"
        )
        assert sock.recv(100) == b"HTTP/1.1 100 Continue\r\n\r\n"
        sock.sendall(b"hello")
        _, headers, rest = read_response(sock)
        assert headers["transfer-encoding"] == "chunked"
        while not rest.endswith(b"0\r\n\r\n"):
            rest += sock.recv(100)
        assert rest == b"5\r\nhello\r\n0\r\n\r\n"
        sock.close()


def test_expect_unread_body_closes() -> None:
    with running(hello) as srv:
        sock = srv.connect()
        sock.sendall(
            b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\nExpect: 100-continue\r\n\r\n"
        )
        data = recv_all(sock)  # no 100; the server closes rather than read the body
        sock.close()
    assert data.startswith(b"HTTP/1.1 200 OK") and b"100 Continue" not in data


def test_streaming_not_buffered() -> None:
    go_on = threading.Event()

    def stream(environ: Env, start_response: StartResponse) -> Iterator[bytes]:
        start_response("200 OK", [("Content-Type", "text/plain")])
        yield b"first"
        if not go_on.wait(TIMEOUT):
            raise RuntimeError("the client never saw the first chunk")
        yield b"second"

    with running(stream) as srv:
        sock = srv.connect()
        sock.sendall(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
        buf = b""
        while b"first" not in buf:
            buf += sock.recv(1000)
        go_on.set()
        while not buf.endswith(b"0\r\n\r\n"):
            buf += sock.recv(1000)
        assert buf.endswith(b"5\r\nfirst\r\n6\r\nsecond\r\n0\r\n\r\n")
        sock.close()


@pytest.mark.parametrize(
    ("request_bytes", "status"),
    [
        (b"GET / HTTP/1.1\r\n\r\n", b"400"),
        (b"GARBAGE\r\n\r\n", b"400"),
        (b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 99999\r\n\r\n", b"413"),
        (b"GET / HTTP/1.1\r\nHost: x\r\nX: " + b"a" * 70000 + b"\r\n\r\n", b"431"),
        (b"POST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: gzip, chunked\r\n\r\n", b"501"),
        (b"GET / HTTP/2.0\r\nHost: x\r\n\r\n", b"505"),
        (
            b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 3\r\n"
            b"Transfer-Encoding: chunked\r\n\r\n0\r\n\r\n",
            b"400",
        ),
        (b"GET http//x HTTP/1.1\r\nHost: x\r\n\r\n", b"400"),
    ],
)
def test_parser_errors(request_bytes: bytes, status: bytes) -> None:
    with running(echo, max_body_bytes=1000) as srv:
        sock = srv.connect()
        with contextlib.suppress(OSError):
            sock.sendall(request_bytes)
        data = recv_all(sock)
        sock.close()
    assert data.startswith(b"HTTP/1.1 " + status)
    assert b"Connection: close" in data
    assert any("bad request: " + status.decode() in line for line in srv.lines)


def test_chunked_body_over_limit_is_413() -> None:
    with running(echo, max_body_bytes=10) as srv:
        sock = srv.connect()
        sock.sendall(
            b"POST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n20\r\n" + b"a" * 32
        )
        data = recv_all(sock)
        sock.close()
    assert data.startswith(b"HTTP/1.1 413 ")


def test_slow_client_header_timeout() -> None:
    with running(hello, header_timeout=0.3, idle_timeout=2.0) as srv:
        sock = srv.connect()
        sock.sendall(b"GET / HTTP/1.1\r\n")
        started = time.monotonic()
        data = recv_all(sock)
        sock.close()
    assert data.startswith(b"HTTP/1.1 408 ")
    assert time.monotonic() - started < 1.5


def test_slow_body_is_408() -> None:
    with running(echo, idle_timeout=0.3) as srv:
        sock = srv.connect()
        sock.sendall(b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 10\r\n\r\nabc")
        data = recv_all(sock)
        sock.close()
    assert data.startswith(b"HTTP/1.1 408 ") and b"Connection: close" in data


def test_unread_body_not_arriving_closes() -> None:
    with running(hello, idle_timeout=0.3) as srv:
        sock = srv.connect()
        sock.sendall(b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 2000000\r\n\r\nabc")
        data = recv_all(sock)  # the response, then a close: the body never came
        sock.close()
    assert data.startswith(b"HTTP/1.1 200 OK") and data.endswith(b"POST /?")


def test_absolute_form_target() -> None:
    with running(hello) as srv:
        sock = srv.connect()
        sock.sendall(b"GET http://x/abs?q HTTP/1.1\r\nHost: x\r\n\r\n")
        _, _, body = read_response(sock)
        sock.close()
    assert body == b"GET /abs?q"


def target_parts(environ: Env, start_response: StartResponse) -> Iterable[bytes]:
    keys = ("REQUEST_URI", "PATH_INFO", "QUERY_STRING", "HTTP_HOST")
    data = "|".join(environ.get(key, "-") for key in keys).encode("latin-1")
    start_response("200 OK", [("Content-Type", "text/plain"), ("Content-Length", str(len(data)))])
    return [data]


@pytest.mark.parametrize(
    ("target", "expected"),
    [
        # RFC 9112 §3.2.2: the origin-form is routed, the target's host replaces Host.
        (b"http://example.org/a%20b?q=1", b"/a%20b?q=1|/a b|q=1|example.org"),
        (b"HTTPS://user@example.org:8443/x", b"/x|/x||example.org:8443"),
        (b"http://example.org", b"/|/||example.org"),
        (b"http://example.org?q", b"/?q|/|q|example.org"),
        (b"/plain?x", b"/plain?x|/plain|x|original"),
    ],
)
def test_absolute_form_is_served_as_its_origin_form(target: bytes, expected: bytes) -> None:
    with running(target_parts) as srv:
        sock = srv.connect()
        sock.sendall(b"GET " + target + b" HTTP/1.1\r\nHost: original\r\n\r\n")
        status, _, body = read_response(sock)
        sock.close()
    assert (status.split()[1], body) == (b"200", expected)


def test_idle_connection_closed() -> None:
    with running(hello, idle_timeout=0.3) as srv:
        sock = srv.connect()
        started = time.monotonic()
        assert sock.recv(100) == b""
        assert time.monotonic() - started < 1.5
        sock.close()


def test_client_disconnect_mid_response_closes_app() -> None:
    closed = threading.Event()

    class Endless:
        def __iter__(self) -> Iterator[bytes]:
            while True:
                yield b"x" * 65536

        def close(self) -> None:
            closed.set()

    def app(environ: Env, start_response: StartResponse) -> Endless:
        start_response("200 OK", [("Content-Type", "text/plain")])
        return Endless()

    with running(app) as srv:
        sock = srv.connect()
        sock.sendall(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
        assert sock.recv(1000).startswith(b"HTTP/1.1 200 OK")
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, b"\x01\x00\x00\x00\x00\x00\x00\x00")
        sock.close()  # an RST
        assert closed.wait(TIMEOUT)
        deadline = time.monotonic() + TIMEOUT
        while not any("client went away" in line for line in srv.lines):
            assert time.monotonic() < deadline
            time.sleep(0.01)


def test_503_when_pool_and_queue_full() -> None:
    release = threading.Event()
    entered = threading.Event()

    def slow(environ: Env, start_response: StartResponse) -> Iterable[bytes]:
        entered.set()
        release.wait(TIMEOUT)
        start_response("200 OK", [("Content-Type", "text/plain")])
        return [b"done"]

    with running(slow, threads=1, queue_size=1) as srv:
        busy = srv.connect()
        busy.sendall(b"GET / HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        assert entered.wait(TIMEOUT)
        queued = srv.connect()
        queued.sendall(b"GET / HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        time.sleep(0.1)
        refused = srv.connect()
        refused.sendall(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
        assert recv_all(refused).startswith(b"HTTP/1.1 503 ")
        release.set()
        assert recv_all(busy).endswith(b"done\r\n0\r\n\r\n")
        assert recv_all(queued).endswith(b"done\r\n0\r\n\r\n")
        for sock in (busy, queued, refused):
            sock.close()


def _has_ipv6() -> bool:
    if not socket.has_ipv6:
        return False
    try:
        with socket.socket(socket.AF_INET6, socket.SOCK_STREAM) as sock:
            sock.bind(("::1", 0))
    except OSError:
        return False
    return True


@pytest.mark.skipif(not _has_ipv6(), reason="no IPv6 loopback (::1) on this machine")
def test_ipv6() -> None:
    with running(environ_app, host="::1") as srv:
        sock = socket.create_connection(("::1", srv.port), timeout=TIMEOUT)
        sock.sendall(b"GET / HTTP/1.1\r\nHost: [::1]\r\nConnection: close\r\n\r\n")
        data = recv_all(sock)
        sock.close()
    assert b"REMOTE_ADDR=::1\n" in data and b"SERVER_NAME=::1\n" in data


def test_flask_app() -> None:
    flask = pytest.importorskip("flask")
    app = flask.Flask(__name__)

    @app.route("/hi/<name>", methods=["GET", "POST"])  # type: ignore[untyped-decorator]
    def hi(name: str) -> str:
        return f"hi {name} {flask.request.get_data(as_text=True)}"

    # Not under the validator: Werkzeug calls wsgi.input.read() with no size when
    # wsgi.input_terminated is set, which PEP 3333 allows and the validator refuses.
    with running(app.wsgi_app, validate=False) as srv:
        client = srv.client()
        client.request("POST", "/hi/bob", body=b"payload")
        resp = client.getresponse()
        assert resp.status == 200 and resp.read() == b"hi bob payload"
        client.request("GET", "/missing")
        resp = client.getresponse()
        assert resp.status == 404
        resp.read()
        client.close()


def test_fifty_concurrent_requests() -> None:
    def one(n: int, port: int) -> bytes:
        client = http.client.HTTPConnection("127.0.0.1", port, timeout=TIMEOUT)
        try:
            client.request("POST", f"/{n}", body=str(n).encode() * 1000)
            return client.getresponse().read()
        finally:
            client.close()

    with running(echo, threads=8, queue_size=64) as srv, ThreadPoolExecutor(50) as pool:
        results = list(pool.map(lambda n: one(n, srv.port), range(50)))
    assert results == [str(n).encode() * 1000 for n in range(50)]


def test_app_error_is_500_and_connection_lives() -> None:
    def broken(environ: Env, start_response: StartResponse) -> Iterable[bytes]:
        raise ValueError("boom")

    with running(broken) as srv:
        client = srv.client()
        for _ in range(2):
            client.request("GET", "/")
            resp = client.getresponse()
            assert resp.status == 500
            resp.read()
        client.close()
    assert any("boom" in line for line in srv.lines)


def test_unread_body_drained_keeps_connection() -> None:
    with running(hello) as srv:
        sock = srv.connect()
        for _ in range(2):
            sock.sendall(b"POST /d HTTP/1.1\r\nHost: x\r\nContent-Length: 4\r\n\r\nabcd")
            _, _, body = read_response(sock)
            assert body == b"POST /d?"
        sock.close()


def test_shutdown_waits_for_in_flight_request() -> None:
    entered = threading.Event()

    def slow(environ: Env, start_response: StartResponse) -> Iterable[bytes]:
        entered.set()
        time.sleep(0.3)
        start_response("200 OK", [("Content-Type", "text/plain")])
        return [b"late"]

    threads_before = set(threading.enumerate())
    server = HTTPServer(validator(slow), "127.0.0.1", 0, log=lambda line: None)
    thread = threading.Thread(target=server.serve_forever)
    thread.start()
    sock = socket.create_connection(server.server_address, timeout=TIMEOUT)
    sock.sendall(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
    assert entered.wait(TIMEOUT)
    server.shutdown(timeout=3.0)
    thread.join(TIMEOUT)
    data = recv_all(sock)
    sock.close()
    assert data.startswith(b"HTTP/1.1 200 OK") and b"Connection: close" in data
    assert data.endswith(b"late\r\n0\r\n\r\n")
    assert set(threading.enumerate()) - threads_before == set()
