"""cgikit's FastCGI and SCGI servers behind real web servers, from the configs users copy.

Each test runs over every set-up of tests/gateway_servers.VARIANTS: nginx FastCGI over
TCP with keep-conn on and off, nginx FastCGI over a Unix socket, nginx SCGI, Apache
mod_proxy_fcgi and lighttpd mod_fastcgi, each from its docs/deploy/ config, in front
of cgikit backends running integration.backend's app (the fixture apps, wrapped in the
PEP 3333 validator). The scale-out test runs three backends behind one nginx upstream.
"""

from __future__ import annotations

import hashlib
import http.client
import json
import random
import shutil
import signal
import socket
import tempfile
import time
import uuid
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from cgikit.errorpage import GENERIC_BODY
from fixtureapps import EXPECTED_FAILURE, cookies, head, hello
from gateway_servers import (
    VARIANTS,
    Backend,
    Front,
    GatewayPool,
    cli_serves_gateways,
    start_nginx,
)
from integration.backend import STDERR_LINE
from integration.wire import (
    FIRST_CHUNK_TIMEOUT,
    LOG_POLL,
    LOG_TIMEOUT,
    TIMEOUT,
    Reply,
    exchange,
    read_until,
    request,
    split_response,
)
from servers import HOST, stop

pytestmark = pytest.mark.server

SEQUENTIAL = 20
CONCURRENT = 20
# Whether a set-up reuses one backend connection for the requests of one client
# connection.
REUSES_CONNECTION = {
    "nginx-fastcgi-keep": True,  # fastcgi_keep_conn on + upstream keepalive
    "nginx-fastcgi-close": False,
    "nginx-fastcgi-unix": False,
    "nginx-scgi": False,  # SCGI: one request per connection
    "apache-proxy-fcgi": False,  # enablereuse off (see the config)
    "lighttpd-fastcgi": False,  # mod_fastcgi opens a connection per request
}
# Apache drops the app's Content-Length from a HEAD answer (as it does under mod_cgid).
KEEPS_HEAD_CONTENT_LENGTH = {"nginx": True, "apache": False, "lighttpd": True}
# PATH_INFO for .../echo_environ/caf%C3%A9/a%2Fb, or None when the server answers 404.
ENCODED_SLASH = {
    "nginx": "/caf\xc3\xa9/a/b",  # $uri is decoded, %2F too
    "apache": None,  # AllowEncodedSlashes Off (the default)
    "lighttpd": "/caf\xc3\xa9/a/b",
}


@pytest.fixture(scope="module")
def markers() -> Iterator[Path]:
    """Where the streaming app looks for the test's go-ahead (backends are root's)."""
    path = Path(tempfile.mkdtemp(prefix="cgikit-markers-"))
    yield path
    shutil.rmtree(path, ignore_errors=True)


@pytest.fixture(scope="module")
def gateway_pool(markers: Path) -> Iterator[GatewayPool]:
    pool = GatewayPool(markers)
    yield pool
    pool.stop_all()


@pytest.fixture(params=list(VARIANTS))
def front(request: pytest.FixtureRequest, gateway_pool: GatewayPool) -> Front:
    try:
        return gateway_pool.front(request.param)
    except RuntimeError as exc:
        pytest.fail(str(exc), pytrace=False)


def get(front: Front, path: str, **kwargs: object) -> Reply:
    return request(front.server, "GET", front.prefix + path, **kwargs)  # type: ignore[arg-type]


def diagnostics(front: Front) -> str:
    return f"{front.server.diagnostics()}\n{front.backend.diagnostics()}"


def wait_for_text(read: object, needle: str) -> str:
    """``read()``'s text once it holds ``needle`` (a bounded wait for a log line)."""
    import time

    assert callable(read)
    deadline = time.monotonic() + LOG_TIMEOUT
    text: str = read()
    while needle not in text and time.monotonic() < deadline:
        time.sleep(LOG_POLL)
        text = read()
    return text


# -- requests and the environ -----------------------------------------------------------


def test_get_with_query_and_utf8_path(front: Front) -> None:
    reply = get(front, "/echo_environ/caf%C3%A9/a%20b?q=caf%C3%A9&x=1")
    assert reply.status == 200, f"{reply.status} {reply.body[:300]!r}\n{diagnostics(front)}"
    env = json.loads(reply.body)
    # The web server mounts the app at the prefix; the app's router moved one segment.
    assert env["SCRIPT_NAME"] == f"{front.prefix}/echo_environ"
    assert env["PATH_INFO"] == "/caf\xc3\xa9/a b"  # decoded, the UTF-8 bytes as latin-1
    assert env["QUERY_STRING"] == "q=caf%C3%A9&x=1"  # as sent
    assert env["REQUEST_METHOD"] == "GET"
    assert env["SERVER_PORT"] == str(front.server.port)
    assert env["wsgi.url_scheme"] == "http"
    for absent in ("CONTENT_LENGTH", "CONTENT_TYPE", "HTTP_CONTENT_LENGTH", "HTTP_PROXY"):
        assert absent not in env, f"{absent}={env[absent]!r}"


def test_encoded_slash_in_the_path(front: Front) -> None:
    reply = get(front, "/echo_environ/caf%C3%A9/a%2Fb")
    expected = ENCODED_SLASH[front.server.name]
    if expected is None:
        assert reply.status == 404
    else:
        assert reply.status == 200
        assert json.loads(reply.body)["PATH_INFO"] == expected


def test_one_mib_post_is_echoed_exactly(front: Front) -> None:
    body = random.Random(4).randbytes(1 << 20)
    headers: dict[str, str | bytes] = {"Content-Type": "application/octet-stream"}
    path = front.prefix + "/echo_body/"
    reply = request(front.server, "POST", path, body=body, headers=headers)
    assert reply.status == 200, f"{reply.status}\n{diagnostics(front)}"
    assert hashlib.sha256(reply.body).hexdigest() == hashlib.sha256(body).hexdigest()
    assert reply.header("X-Seen-Content-Length") == str(len(body))
    assert reply.header("X-Read-Past-End") == "0"


# -- responses --------------------------------------------------------------------------


def test_streaming_response_arrives_chunk_by_chunk(front: Front, markers: Path) -> None:
    """The app yields ``first``, then waits for the marker the test creates only after it
    has read ``first``: a set-up that buffers the response times out here."""
    name = uuid.uuid4().hex
    conn = http.client.HTTPConnection(HOST, front.server.port, timeout=FIRST_CHUNK_TIMEOUT)
    try:
        conn.request("GET", f"{front.prefix}/stream/?marker={name}")
        response = conn.getresponse()
        first = read_until(response, b"first\n", FIRST_CHUNK_TIMEOUT)
        (markers / name).touch()
        rest = response.read()
    except TimeoutError:
        pytest.fail(f"{front.name} held back the first chunk: it buffers the response")
    finally:
        conn.close()
        (markers / name).unlink(missing_ok=True)
    assert (first, rest) == (b"first\n", b"second\nthird\n")


def test_several_set_cookie_headers_stay_separate(front: Front) -> None:
    reply = get(front, "/cookies/")
    assert reply.status == 200
    assert reply.headers.get_all("Set-Cookie") == list(cookies.COOKIES)


def test_head_gets_the_headers_and_no_body(front: Front) -> None:
    host = f"{HOST}:{front.server.port}".encode()
    raw = b"HEAD %s/head/ HTTP/1.1\r\nHost: %s\r\nConnection: close\r\n\r\n" % (
        front.prefix.encode(),
        host,
    )
    status, fields, body = split_response(exchange(front.server, raw))
    assert status == "HTTP/1.1 200 OK"
    assert fields["x-method"] == ["HEAD"]
    length = fields.get("content-length")
    if KEEPS_HEAD_CONTENT_LENGTH[front.server.name]:
        assert length == [str(len(head.BODY))]  # the GET's length
    else:
        assert length in (None, [str(len(head.BODY))])
    assert body == b""  # read until the server closed


def test_app_that_raises_gives_500_and_a_log_line(front: Front) -> None:
    start = len(front.backend.log_text())
    reply = get(front, "/raise_before/")
    assert reply.status == 500
    assert reply.body == GENERIC_BODY  # no traceback for the client
    needle = f"RuntimeError: {EXPECTED_FAILURE}: raised before"
    log = wait_for_text(lambda: front.backend.log_text()[start:], needle)
    assert needle in log, diagnostics(front)
    assert "Traceback (most recent call last)" in log
    assert get(front, "/hello/").body == hello.BODY  # and serves on


def test_wsgi_errors_reach_a_log(front: Front) -> None:
    """FastCGI carries wsgi.errors to the web server's error log (FCGI_STDERR); SCGI has
    no such channel, so the backend logs it."""
    fastcgi = front.backend.protocol == "fastcgi"
    reply = get(front, "/stderr/")
    assert reply.status == 200
    if fastcgi:
        log = wait_for_text(lambda: front.server.log_since(0), STDERR_LINE)
    else:
        log = wait_for_text(front.backend.log_text, STDERR_LINE)
    assert STDERR_LINE in log, diagnostics(front)


# -- connections and load ---------------------------------------------------------------


def test_sequential_requests_and_backend_connections(front: Front) -> None:
    """Keep-conn set-ups send every request of one client over one backend connection;
    the others open a connection per request (the backend numbers its connections)."""
    connections = []
    conn = http.client.HTTPConnection(HOST, front.server.port, timeout=TIMEOUT)
    try:  # one client connection, so that one nginx worker serves them all
        for n in range(SEQUENTIAL):
            conn.request("GET", f"{front.prefix}/connection/?n={n}")
            response = conn.getresponse()
            assert response.status == 200
            connections.append(int(response.read()))
    finally:
        conn.close()
    assert 0 not in connections, "the backend does not number its connections"
    if REUSES_CONNECTION[front.name]:
        assert len(set(connections)) == 1, connections
    else:
        assert len(set(connections)) == SEQUENTIAL, connections


def test_concurrent_requests_all_answered_correctly(front: Front) -> None:
    def one(n: int) -> tuple[int, str]:
        body = f"request {n} ".encode() * (n + 1)
        path = f"{front.prefix}/echo_body/"
        headers: dict[str, str | bytes] = {"Content-Type": "text/plain"}
        reply = request(front.server, "POST", path, body=body, headers=headers)
        return reply.status, "ok" if reply.body == body else f"wrong body {reply.body[:80]!r}"

    with ThreadPoolExecutor(CONCURRENT) as pool:
        results = list(pool.map(one, range(CONCURRENT)))
    assert results == [(200, "ok")] * CONCURRENT, diagnostics(front)


# -- scale-out --------------------------------------------------------------------------


def served_by(port: int, count: int) -> list[str]:
    """Which backend served each of ``count`` requests (a new client connection each)."""
    names = []
    for _ in range(count):
        reply = request_to(port, "/whoami/")
        assert reply.status == 200, reply.body[:300]
        names.append(reply.body.decode())
    return names


def request_to(port: int, path: str) -> Reply:
    conn = http.client.HTTPConnection(HOST, port, timeout=TIMEOUT)
    try:
        conn.request("GET", path)
        response = conn.getresponse()
        return Reply(response.status, response.msg, response.read(), True)
    finally:
        conn.close()


def port_closes(port: int, within: float) -> bool:
    """Whether connecting to ``port`` is refused within ``within`` seconds."""
    deadline = time.monotonic() + within
    while time.monotonic() < deadline:
        try:
            socket.create_connection((HOST, port), timeout=1).close()
        except ConnectionRefusedError:
            return True
        except OSError:
            pass
        time.sleep(0.05)
    return False


def test_upstream_spreads_requests_and_survives_a_killed_backend(
    gateway_pool: GatewayPool,
) -> None:
    backends: list[Backend] = []
    server = None
    try:
        # As users start them: cgikit run --fastcgi ADDR, when the CLI has it.
        use_cli = cli_serves_gateways()
        backends = [gateway_pool.new_backend("fastcgi", use_cli=use_cli) for _ in range(3)]
        ports = {f"PORT{x}": str(b.port) for x, b in zip("ABC", backends, strict=True)}
        server = start_nginx("nginx-upstream.conf", ports)
        names = served_by(server.port, 30)
        assert min(names.count(b.address) for b in backends) >= 5, names  # round robin
        victim, *survivors = backends
        victim.process.send_signal(signal.SIGKILL)  # its workers die with it
        victim.process.wait(TIMEOUT)
        # Its workers get SIGTERM from the kernel and drain what they hold; once
        # none listens any more, nginx must send everything to the survivors.
        assert port_closes(victim.port, TIMEOUT), victim.diagnostics()
        after = served_by(server.port, 30)  # every one answered 200
        assert set(after) == {b.address for b in survivors}
        assert len(request_to(server.port, "/echo_environ/x").body) > 0
    finally:
        if server is not None:
            stop(server.process)
            shutil.rmtree(server.rundir, ignore_errors=True)
        for backend in backends:
            backend.stop()
