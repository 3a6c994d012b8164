"""The response driver when the app misbehaves: 500s, log lines, cut bodies, close()."""

from __future__ import annotations

import sys
from typing import Any

import pytest

from cgikit.errorpage import GENERIC_BODY
from cgikit.wsgi_response import ClientDisconnected, Response
from helpers_child import Out, assert_same_as_validated, make_environ, respond, split_response

TEXT = [("Content-Type", "text/plain")]
GENERIC_500 = (
    b"Status: 500 Internal Server Error\r\nContent-Type: text/plain; charset=utf-8\r\n"
    b"Content-Length: 94\r\n\r\n"
    b"500 Internal Server Error\n\n"
    b"The application failed. The details are in the server's error log.\n"
)


class Body:
    """An iterable body that records close() and can fail after ``fail_after`` chunks."""

    def __init__(self, chunks: list[bytes], fail_after: int | None = None) -> None:
        self.chunks = chunks
        self.fail_after = fail_after
        self.closed = 0

    def __iter__(self) -> Any:
        for index, chunk in enumerate(self.chunks):
            if index == self.fail_after:
                raise RuntimeError("failed while iterating")
            yield chunk
        if self.fail_after == len(self.chunks):
            raise RuntimeError("failed while iterating")

    def close(self) -> None:
        self.closed += 1


def body_app(body: Body, status: str = "200 OK", headers: Any = TEXT) -> Any:
    def app(environ: dict[str, Any], start_response: Any) -> Body:
        start_response(status, headers)  # as given: a tuple must be refused
        return body

    return app


def test_generic_500_vector_matches_the_page() -> None:
    assert GENERIC_500.endswith(GENERIC_BODY)
    assert f"Content-Length: {len(GENERIC_BODY)}".encode() in GENERIC_500


def test_o6_exception_before_start_response() -> None:
    def app(environ: dict[str, Any], start_response: Any) -> list[bytes]:
        raise ValueError("boom <secret path>")

    out = respond(app)
    assert out.sent == [GENERIC_500]
    assert len(out.logs) == 1
    assert "Traceback (most recent call last)" in out.logs[0]
    assert "ValueError: boom <secret path>" in out.logs[0]


def test_sys_exit_in_the_app_is_a_500_not_a_silent_exit() -> None:
    # Without a response the server would say only "premature end of script headers".
    def app(environ: dict[str, Any], start_response: Any) -> list[bytes]:
        sys.exit(3)

    out = respond(app)
    assert out.sent == [GENERIC_500]
    assert "SystemExit: 3" in out.logs[0]


def test_exception_after_start_response_before_body_is_still_a_500() -> None:
    body = Body([b"never"], fail_after=0)
    out = respond(body_app(body))
    assert out.sent == [GENERIC_500]
    assert body.closed == 1


def test_o7_exception_after_headers_cuts_the_body() -> None:
    body = Body([b"partial", b" more"], fail_after=2)
    out = respond(body_app(body))
    head = b"Status: 200 OK\r\nContent-Type: text/plain\r\n\r\n"
    assert out.sent == [head + b"partial", b" more"]  # unchanged: no second status
    assert len(out.logs) == 2
    assert "RuntimeError: failed while iterating" in out.logs[0]
    assert "may be incomplete" in out.logs[1]
    assert body.closed == 1


@pytest.mark.parametrize("fail_after", [None, 0, 1, 2])
@pytest.mark.parametrize("method", ["GET", "HEAD"])
def test_close_is_always_called_once(fail_after: int | None, method: str) -> None:
    body = Body([b"a", b"b"], fail_after=fail_after)
    respond(body_app(body), method)
    assert body.closed == 1


def test_close_called_when_the_client_is_gone() -> None:
    body = Body([b"a", b"b"])
    out = Out()

    def send(data: bytes) -> None:
        raise BrokenPipeError(32, "Broken pipe")

    Response(make_environ(), send, out.logs.append).run(body_app(body))
    assert body.closed == 1
    assert len(out.logs) == 1 and "went away" in out.logs[0]


def test_close_called_when_start_response_rejects_headers_late() -> None:
    closed: list[bool] = []

    def app(environ: dict[str, Any], start_response: Any) -> Any:
        try:
            start_response("200 OK", [("X-Bad", "a\r\nb")])
            yield b"never"
        finally:
            closed.append(True)

    out = respond(app)
    assert out.sent == [GENERIC_500]
    assert closed == [True]


@pytest.mark.parametrize(
    ("status", "headers"),
    [
        ("200", TEXT),
        ("20X OK", TEXT),
        ("200OK", TEXT),
        ("200 OK\r\nX-Injected: 1", TEXT),
        ("200 OK", [("X-A", "a\r\nSet-Cookie: evil=1")]),
        ("200 OK", [("X-A", "a\nb")]),
        ("200 OK", [("X-A", "a\x00b")]),
        ("200 OK", [("X-A", "\u20ac")]),
        ("200 OK", [("Bad Name", "x")]),
        ("200 OK", [("Status", "200 OK")]),
        ("200 OK", [("Content-Length", "12abc")]),
        ("200 OK", [("Content-Length", "-1")]),
        ("200 OK", [*TEXT, ("content-type", "text/html")]),
        ("200 OK", (("Content-Type", "text/plain"),)),
    ],
)
def test_o8_bad_status_or_header_is_500_and_one_log_line(status: str, headers: Any) -> None:
    out = respond(body_app(Body([b"body"]), status, headers))
    assert out.sent == [GENERIC_500]
    assert b"Injected" not in out.data and b"evil" not in out.data
    assert len(out.logs) == 1, out.logs
    assert "Traceback" not in out.logs[0] and "\n" not in out.logs[0]


def test_start_response_twice_without_exc_info() -> None:
    def app(environ: dict[str, Any], start_response: Any) -> list[bytes]:
        start_response("200 OK", TEXT)
        start_response("404 Not Found", TEXT)
        return [b"x"]

    out = respond(app)
    assert out.sent == [GENERIC_500]
    assert len(out.logs) == 1 and "second time" in out.logs[0]


def test_exc_info_before_headers_replaces_the_response() -> None:
    def app(environ: dict[str, Any], start_response: Any) -> list[bytes]:
        start_response("200 OK", [*TEXT, ("Content-Length", "100")])
        try:
            raise KeyError("inner")
        except KeyError:
            start_response("503 Busy", [("Content-Type", "text/csv")], sys.exc_info())
        return [b"oops"]

    out = respond(app)
    assert out.sent == [
        b"Status: 503 Busy\r\nContent-Type: text/csv\r\nContent-Length: 4\r\n\r\noops"
    ]
    assert out.logs == []
    assert_same_as_validated(app, out)


def test_exc_info_after_headers_reraises() -> None:
    def app(environ: dict[str, Any], start_response: Any) -> Any:
        start_response("200 OK", TEXT)
        yield b"part"
        try:
            raise KeyError("inner failure")
        except KeyError:
            start_response("500 Oops", TEXT, sys.exc_info())
        yield b"never"

    out = respond(app)
    assert out.sent == [b"Status: 200 OK\r\nContent-Type: text/plain\r\n\r\npart"]
    assert "KeyError: 'inner failure'" in out.logs[0]
    assert "may be incomplete" in out.logs[-1]


@pytest.mark.parametrize(
    ("app_result", "message"),
    [
        ("no start_response", "without calling start_response"),
        ("body, no start_response", "before calling start_response"),
        ("str chunk", "TypeError"),
        ("write before start", "before calling start_response"),
    ],
)
def test_protocol_misuse_is_500(app_result: str, message: str) -> None:
    def app(environ: dict[str, Any], start_response: Any) -> Any:
        if app_result == "no start_response":
            return []
        if app_result == "body, no start_response":
            return [b"body"]
        if app_result == "str chunk":
            start_response("200 OK", TEXT)
            return ["text, not bytes"]
        response.write(b"early")
        return []

    out = Out()
    response = Response(make_environ(), out.sent.append, out.logs.append)
    response.run(app)
    assert out.sent == [GENERIC_500]
    assert len(out.logs) == 1 and message in out.logs[0]


def test_head_request_failure_has_no_body() -> None:
    def app(environ: dict[str, Any], start_response: Any) -> list[bytes]:
        raise ValueError("boom")

    out = respond(app, "HEAD")
    assert out.sent == [GENERIC_500[: GENERIC_500.index(b"\r\n\r\n") + 4]]


def failing_app(environ: dict[str, Any], start_response: Any) -> list[bytes]:
    secret_local = "<b>local</b>"
    raise ValueError(f"<script>alert(1)</script> {len(secret_local)}")


def test_debug_page_is_escaped_html() -> None:
    out = respond(failing_app, debug=True, meta={"QUERY_STRING": "q=<img src=x onerror=1>"})
    status, headers, body = split_response(out.data)
    assert status == "Status: 500 Internal Server Error"
    assert headers == [
        ("Content-Type", "text/html; charset=utf-8"),
        ("Content-Length", str(len(body))),
    ]
    page = body.decode("utf-8")
    assert page.startswith("<!DOCTYPE html>")
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in page
    assert "<script>" not in page
    assert "&lt;b&gt;local&lt;/b&gt;" in page and "<b>local</b>" not in page
    assert "&lt;img src=x onerror=1&gt;" in page and "<img" not in page
    assert "failing_app" in page
    assert "Traceback" in out.logs[0]


def test_debug_off_shows_nothing_of_the_error() -> None:
    out = respond(failing_app)
    assert out.sent == [GENERIC_500]
    assert b"script" not in out.data and b"failing_app" not in out.data


BACKEND_ERRORS = [
    ConnectionRefusedError(111, "database refused the connection"),
    ConnectionResetError(104, "backend reset the connection"),
    BrokenPipeError(32, "pipe to a helper process broke"),
]


@pytest.mark.parametrize("error", BACKEND_ERRORS, ids=lambda e: type(e).__name__)
def test_app_connection_error_before_headers_is_a_500(error: OSError) -> None:
    # The app's own connection to a backend failing is an app failure (RFC 3875 §6.1: a
    # response is always sent), not "the client went away": only a failing send is that.
    def app(environ: dict[str, Any], start_response: Any) -> list[bytes]:
        raise error

    out = respond(app)
    assert out.sent == [GENERIC_500]
    assert len(out.logs) == 1 and "Traceback (most recent call last)" in out.logs[0]


@pytest.mark.parametrize("error", BACKEND_ERRORS, ids=lambda e: type(e).__name__)
def test_app_connection_error_after_headers_is_logged_with_traceback(error: OSError) -> None:
    def app(environ: dict[str, Any], start_response: Any) -> Any:
        start_response("200 OK", TEXT)
        yield b"partial"
        raise error

    out = respond(app)
    assert out.sent == [b"Status: 200 OK\r\nContent-Type: text/plain\r\n\r\npartial"]
    assert "Traceback (most recent call last)" in out.logs[0]
    assert not any("went away" in line for line in out.logs)


def test_a_client_gone_while_the_app_reads_is_no_app_error() -> None:
    # wsgi.input raising ClientDisconnected (a short body, an aborted request) that the
    # app lets through: nothing is sent (no one reads a 500), one line, no traceback.

    def app(environ: dict[str, Any], start_response: Any) -> Any:
        raise ClientDisconnected("request body ended 5 bytes short of CONTENT_LENGTH")

    out = respond(app)
    assert out.sent == []
    assert out.logs == [
        "client went away while the app read the request body "
        "(request body ended 5 bytes short of CONTENT_LENGTH)"
    ]


def test_an_oserror_of_the_apps_own_is_still_a_500() -> None:
    def app(environ: dict[str, Any], start_response: Any) -> Any:
        raise ConnectionRefusedError("the database is down")

    out = respond(app)
    assert b"".join(out.sent) == GENERIC_500
    assert any("ConnectionRefusedError" in line for line in out.logs)
