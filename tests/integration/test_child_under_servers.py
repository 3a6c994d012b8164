"""cgikit.run(app) as a real CGI script under Apache httpd, lighttpd and BusyBox httpd.

Every fixture app (tests/fixtureapps) runs under every server, as www-data, from the
configs in docs/deploy/. Where a server itself cannot do something, that server's case
is a strict xfail naming the server's limitation: if the server learns to do it, the
xfail turns into a failure and must be removed.
"""

from __future__ import annotations

import hashlib
import json
import random
from urllib.parse import urlsplit

import pytest

import cgikit
from cgikit.errorpage import GENERIC_BODY
from fixtureapps import EXPECTED_FAILURE, binary_body, cookies, head, hello, raise_after
from integration.runtime import Runtime
from integration.wire import (
    TIMEOUT,
    Reply,
    assert_clean_log,
    exchange,
    request,
    split_response,
    stream_with_marker,
    wait_for_log,
)
from servers import SERVER_NAMES, Server

pytestmark = pytest.mark.server


def on_every_server(**xfail: str) -> pytest.MarkDecorator:
    """Run the test under each server; ``name=reason`` makes that server a strict xfail."""
    params = [
        pytest.param(name, marks=pytest.mark.xfail(strict=True, reason=xfail[name]))
        if name in xfail
        else name
        for name in SERVER_NAMES
    ]
    return pytest.mark.parametrize("server", params, indirect=True)


def get_ok(server: Server, target: str, headers: dict[str, str | bytes] | None = None) -> bytes:
    """GET ``target``; it must answer 200 and leave the error log clean."""
    mark = server.log_size()
    reply = request(server, "GET", target, headers=headers)
    assert reply.status == 200, f"{reply.status} {reply.body[:500]!r}\n{server.diagnostics()}"
    assert reply.complete
    assert_clean_log(server, mark)
    return reply.body


def assert_still_serving(server: Server) -> None:
    """After a failure, the server must still run the next script."""
    assert get_ok(server, "/cgi-bin/hello.cgi") == hello.BODY


def post_ok(server: Server, target: str, body: bytes, timeout: float = TIMEOUT) -> Reply:
    """POST ``body``; it must answer 200 and leave the error log clean."""
    mark = server.log_size()
    headers = {"Content-Type": "application/octet-stream"}
    reply = request(server, "POST", target, body=body, headers=headers, timeout=timeout)
    assert reply.status == 200, f"{reply.status} {reply.body[:500]!r}\n{server.diagnostics()}"
    assert_clean_log(server, mark)
    return reply


# What the servers do on their own, observed and relied on below:
# Apache 2.4 drops the Content-Length a script sends and chunk-encodes the body (HTTP/1.1)
# or closes the connection (HTTP/1.0) instead; HEAD answers carry no Content-Length.
KEEPS_SCRIPT_CONTENT_LENGTH = {"apache": False, "lighttpd": True, "busybox": True}
# PATH_INFO for /cgi-bin/echo_environ.cgi/caf%C3%A9/a%2Fb, or None for a 404 by the server:
ENCODED_SLASH = {
    "apache": None,  # AllowEncodedSlashes Off (the default): 404, the script never runs
    "lighttpd": "/caf\xc3\xa9/a/b",  # decodes %2F like any escape: a plain "/"
    "busybox": None,  # rejects an encoded slash in the path: 404
}
CUT_INVISIBLE_ON_APACHE = (
    "Apache drops the script's Content-Length and ends its own chunked encoding "
    "cleanly when the script exits, so a client cannot tell a cut body from a whole one"
)


# -- the environ ------------------------------------------------------------------------


@on_every_server()
def test_environ_carries_request_as_latin1_strings(server: Server) -> None:
    headers = {"X-Utf8": b"caf\xc3\xa9", "Proxy": "http://proxy.invalid:3128"}
    body = get_ok(server, "/cgi-bin/echo_environ.cgi/some/path?q=caf%C3%A9&x=1", headers)
    env = json.loads(body)
    assert env["GATEWAY_INTERFACE"] == "CGI/1.1"
    assert env["REQUEST_METHOD"] == "GET"
    assert env["SCRIPT_NAME"] == "/cgi-bin/echo_environ.cgi"
    assert env["PATH_INFO"] == "/some/path"
    assert env["QUERY_STRING"] == "q=caf%C3%A9&x=1"
    assert env["SERVER_PROTOCOL"] == "HTTP/1.1"
    assert env["REMOTE_ADDR"] == "127.0.0.1"
    assert env["HTTP_HOST"] == f"127.0.0.1:{server.port}"
    assert env["HTTP_X_UTF8"] == "caf\xc3\xa9"  # the header's UTF-8 bytes, one char each
    assert env["wsgi.url_scheme"] == "http"
    assert env["wsgi.input_terminated"] == "None"  # the key is set only when true
    assert "HTTP_PROXY" not in env  # httpoxy
    assert "CONTENT_LENGTH" not in env  # a GET has no body (lighttpd passes "0")
    assert "CONTENT_TYPE" not in env


@on_every_server(
    busybox="BusyBox httpd 1.35 passes SERVER_PORT=80, not the port of -p 127.0.0.1:PORT"
)
def test_server_port_is_the_real_port(server: Server) -> None:
    env = json.loads(get_ok(server, "/cgi-bin/echo_environ.cgi"))
    assert env["SERVER_PORT"] == str(server.port)
    # An HTTP/1.0 client may send no Host header: the server must still know its port.
    raw = exchange(server, b"GET /cgi-bin/echo_environ.cgi HTTP/1.0\r\n\r\n")
    assert json.loads(split_response(raw)[2])["SERVER_PORT"] == str(server.port)


@on_every_server()
def test_utf8_path_info_arrives_as_latin1_bytes(server: Server) -> None:
    env = json.loads(get_ok(server, "/cgi-bin/echo_environ.cgi/caf%C3%A9"))
    assert env["PATH_INFO"] == "/caf\xc3\xa9"


@on_every_server()
def test_encoded_slash_in_path_info(server: Server) -> None:
    reply = request(server, "GET", "/cgi-bin/echo_environ.cgi/caf%C3%A9/a%2Fb")
    expected = ENCODED_SLASH[server.name]
    if expected is None:
        assert reply.status == 404
    else:
        assert reply.status == 200
        assert json.loads(reply.body)["PATH_INFO"] == expected
    assert_still_serving(server)


# -- request bodies ---------------------------------------------------------------------


@on_every_server()
def test_body_read_with_read_n(server: Server) -> None:
    body = bytes(range(256)) * 64 + b"\r\n\x00end"
    reply = post_ok(server, "/cgi-bin/echo_body.cgi", body)
    assert reply.body == body
    assert reply.header("X-Seen-Content-Length") == str(len(body))
    assert reply.header("X-Read-Past-End") == "0"
    assert reply.header("X-Input-Terminated") == "None"  # the key is set only when true


@on_every_server()
def test_body_read_line_by_line(server: Server) -> None:
    body = b"first line\nsecond line\r\n\nlast, no newline"
    reply = post_ok(server, "/cgi-bin/echo_lines.cgi", body)
    assert reply.body == body
    assert reply.header("X-Lines") == "4"
    assert reply.header("X-Leftover-Lines") == "0"


@on_every_server()
def test_20_mib_post_round_trip(server: Server) -> None:
    body = random.Random(3875).randbytes(20 * 1024 * 1024)
    reply = post_ok(server, "/cgi-bin/echo_body.cgi", body, timeout=120)
    assert len(reply.body) == len(body)
    assert hashlib.sha256(reply.body).hexdigest() == hashlib.sha256(body).hexdigest()


@on_every_server(
    busybox="BusyBox httpd does not decode a chunked request body: the script gets the "
    "raw chunk framing (and no CONTENT_LENGTH)"
)
def test_chunked_post(server: Server) -> None:
    mark = server.log_size()
    parts = [b"hello ", bytes(range(256)), b" chunked world"]
    reply = request(server, "POST", "/cgi-bin/echo_body.cgi", body=iter(parts))
    assert reply.status == 200
    assert reply.body == b"".join(parts)
    if server.name == "apache":
        # Apache passes the de-chunked body without CONTENT_LENGTH: cgikit reads to EOF.
        assert reply.header("X-Seen-Content-Length") == "absent"
        assert reply.header("X-Input-Terminated") == "True"
    else:
        # lighttpd buffers the whole body and passes its length.
        assert reply.header("X-Seen-Content-Length") == str(len(reply.body))
    assert_clean_log(server, mark)


# -- responses --------------------------------------------------------------------------


@on_every_server()
def test_binary_response(server: Server) -> None:
    reply = request(server, "GET", "/cgi-bin/binary_body.cgi")
    assert reply.status == 200
    assert reply.body == binary_body.BODY


@on_every_server()
@pytest.mark.parametrize("script", ["stream.cgi", "write_stream.cgi"])
def test_streaming_reaches_client_chunk_by_chunk(
    server: Server, script: str, cgi_runtime: Runtime
) -> None:
    mark = server.log_size()
    try:
        first, rest = stream_with_marker(server, script, cgi_runtime.markers)
    except TimeoutError:
        pytest.fail(f"{server.name} held back the first chunk of {script}: it buffers")
    assert first == b"first\n"
    assert rest == b"second\nthird\n"
    assert_clean_log(server, mark)


@on_every_server()
def test_redirect_keeps_absolute_location(server: Server) -> None:
    mark = server.log_size()
    reply = request(server, "GET", "/cgi-bin/redirect.cgi")
    assert reply.status == 302
    expected = f"{server.base_url}/cgi-bin/redirect.cgi/landed?from=redirect"
    assert reply.header("Location") == expected
    assert_clean_log(server, mark)


@on_every_server()
def test_redirect_without_host_header_names_a_host(server: Server) -> None:
    """An HTTP/1.0 request may come without Host: an absolute Location still needs a host.

    lighttpd passes SERVER_NAME="" then; cgikit fills in SERVER_NAME only when it is
    missing, so wsgiref.util.application_uri builds "http://:PORT/...".
    """
    mark = server.log_size()
    raw = exchange(server, b"GET /cgi-bin/redirect.cgi HTTP/1.0\r\n\r\n")
    status, fields, _ = split_response(raw)
    assert status.split()[1] == "302"
    location = fields["location"][0]
    assert urlsplit(location).scheme == "http"
    assert urlsplit(location).hostname, f"no host in Location {location!r}"
    assert_clean_log(server, mark)


@on_every_server()
def test_several_set_cookie_headers_stay_separate(server: Server) -> None:
    mark = server.log_size()
    reply = request(server, "GET", "/cgi-bin/cookies.cgi")
    assert reply.status == 200
    assert reply.headers.get_all("Set-Cookie") == list(cookies.COOKIES)
    assert_clean_log(server, mark)


@on_every_server()
def test_head_gets_no_body_and_the_get_length(server: Server) -> None:
    get = request(server, "GET", "/cgi-bin/head.cgi")
    assert get.status == 200
    assert get.body == head.BODY
    host = f"127.0.0.1:{server.port}".encode()
    raw = b"HEAD /cgi-bin/head.cgi HTTP/1.1\r\nHost: " + host + b"\r\nConnection: close\r\n\r\n"
    status, fields, body = split_response(exchange(server, raw))
    assert status == "HTTP/1.1 200 OK"
    assert fields["x-method"] == ["HEAD"]
    assert body == b""  # read until the server closed: nothing after the headers
    head_length = fields.get("content-length", [None])[0]
    if KEEPS_SCRIPT_CONTENT_LENGTH[server.name]:
        assert get.header("Content-Length") == str(len(head.BODY))
        assert head_length == get.header("Content-Length")
    else:
        # Apache drops the script's Content-Length and computes its own only when the
        # whole body reaches it at once, which is a matter of timing: whatever it says
        # must still be the truth.
        assert head_length in (None, str(len(head.BODY)))
        assert get.header("Content-Length") in (None, str(len(head.BODY)))


@on_every_server()
def test_nph_script_speaks_http_itself(server: Server) -> None:
    mark = server.log_size()
    host = f"127.0.0.1:{server.port}".encode()
    raw = b"GET /cgi-bin/nph-hello.cgi HTTP/1.1\r\nHost: " + host + b"\r\n\r\n"
    status, fields, body = split_response(exchange(server, raw))
    assert status == "HTTP/1.1 200 OK"
    assert fields["server"] == [f"cgikit/{cgikit.__version__}"]  # not the web server's
    assert "date" in fields
    assert fields["connection"] == ["close"]
    assert body == hello.BODY
    assert_clean_log(server, mark)


# -- failures ---------------------------------------------------------------------------


@on_every_server()
def test_raise_before_headers_gives_generic_500(server: Server) -> None:
    mark = server.log_size()
    reply = request(server, "GET", "/cgi-bin/raise_before.cgi")
    assert reply.status == 500
    assert reply.body == GENERIC_BODY  # no traceback, no exception text for the client
    log = wait_for_log(server, mark, f"RuntimeError: {EXPECTED_FAILURE}: raised before")
    assert "Traceback (most recent call last)" in log
    assert_still_serving(server)


@on_every_server()
def test_raise_after_headers_cuts_the_body(server: Server) -> None:
    mark = server.log_size()
    reply = request(server, "GET", "/cgi-bin/raise_after.cgi")
    assert reply.status == 200
    assert reply.body == raise_after.FIRST  # no error page glued to the partial body
    log = wait_for_log(server, mark, f"RuntimeError: {EXPECTED_FAILURE}: raised after")
    assert "Traceback (most recent call last)" in log
    assert_still_serving(server)


@on_every_server(apache=CUT_INVISIBLE_ON_APACHE)
def test_cut_body_is_visible_to_the_client(server: Server) -> None:
    # Connection: close, or lighttpd holds the short response open until its keep-alive
    # idle timeout (5 s) before closing.
    reply = request(
        server, "GET", "/cgi-bin/raise_after.cgi?declare=1", headers={"Connection": "close"}
    )
    assert reply.status == 200
    assert reply.body == raise_after.FIRST
    assert not reply.complete, "the client saw a whole response"
    assert_still_serving(server)


# -- Flask ------------------------------------------------------------------------------


@on_every_server()
def test_flask_route_with_query_argument(server: Server) -> None:
    assert get_ok(server, "/cgi-bin/flask_app.cgi/hello?name=Ada") == b"Hello, Ada!\n"


@on_every_server()
def test_flask_post_form(server: Server) -> None:
    mark = server.log_size()
    fields = {"name": "Ada", "words": "caf\u00e9 & more"}
    body = b"".join(
        b'--xyzzy\r\nContent-Disposition: form-data; name="%s"\r\n\r\n%s\r\n'
        % (name.encode(), value.encode())
        for name, value in fields.items()
    )
    body += b"--xyzzy--\r\n"
    headers = {"Content-Type": "multipart/form-data; boundary=xyzzy"}
    reply = request(server, "POST", "/cgi-bin/flask_app.cgi/form", body=body, headers=headers)
    assert reply.status == 200, reply.body
    assert reply.body.decode() == "Ada says caf\u00e9 & more\n"
    assert_clean_log(server, mark)


@on_every_server()
def test_flask_post_urlencoded_form(server: Server) -> None:
    mark = server.log_size()
    body = b"name=Ada&words=caf%C3%A9+%26+more"
    headers = {"Content-Type": "application/x-www-form-urlencoded"}
    reply = request(server, "POST", "/cgi-bin/flask_app.cgi/form", body=body, headers=headers)
    assert reply.status == 200, reply.body
    assert reply.body.decode() == "Ada says caf\u00e9 & more\n"
    assert_clean_log(server, mark)


@on_every_server()
def test_flask_redirect(server: Server) -> None:
    reply = request(server, "GET", "/cgi-bin/flask_app.cgi/go")
    assert reply.status == 302
    # Werkzeug sends a relative Location, built from SCRIPT_NAME.
    location = reply.header("Location")
    assert location == "/cgi-bin/flask_app.cgi/hello?name=redirected"
    assert get_ok(server, location) == b"Hello, redirected!\n"


@on_every_server()
def test_flask_404(server: Server) -> None:
    mark = server.log_size()
    reply = request(server, "GET", "/cgi-bin/flask_app.cgi/no/such/page")
    assert reply.status == 404
    assert b"Not Found" in reply.body
    assert_clean_log(server, mark)


# -- last: the whole error log ----------------------------------------------------------


@on_every_server()
def test_error_log_holds_only_expected_tracebacks(server: Server) -> None:
    """Runs after the others (pytest keeps file order): no stray traceback, no warning."""
    log = server.log_since(0)
    assert "WSGIWarning" not in log
    tracebacks = log.count("Traceback (most recent call last)")
    assert tracebacks == log.count(f"RuntimeError: {EXPECTED_FAILURE}"), log
