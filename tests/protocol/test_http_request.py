"""Vectors for the HTTP/1.1 request parser (http_request, http_chunked; RFC 9112).

Every vector is fed whole, byte by byte and at every two-chunk split point, then EOF, and
must give the same events each time (Data events merged). After each EndOfMessage the
harness calls ``start_next_request``, as a keep-alive server does. Errors appear as
``error(status, reason)`` at the end of the list.
"""

from __future__ import annotations

from collections.abc import Iterable

import pytest

from cgikit.http_request import (
    NEED_DATA,
    BadRequest,
    ConnectionClosed,
    Data,
    EndOfMessage,
    Request,
    RequestParser,
)
from splitting import splits

EOM = EndOfMessage()
CLOSED = ConnectionClosed()
HOST = (b"host", b"h")


def error(status: int, reason: str) -> tuple[str, int, str]:
    return ("error", status, reason)


def run(chunks: Iterable[bytes], **limits: int | None) -> list[object]:
    """Feed ``chunks`` then EOF; the events (Data merged), ending in CLOSED or an error."""
    parser = RequestParser(**limits)  # type: ignore[arg-type]
    events: list[object] = []
    try:
        for chunk in filter(None, chunks):  # b"" would be EOF
            parser.receive_data(chunk)
            _drain(parser, events)
        parser.receive_data(b"")
        _drain(parser, events)
    except BadRequest as exc:
        assert str(exc) == exc.reason
        events.append(error(exc.status, exc.reason))
    return merge(events)


def _drain(parser: RequestParser, events: list[object]) -> None:
    """Take events until NEED_DATA or CLOSED; start the next request after each EOM."""
    while (event := parser.next_event()) is not NEED_DATA:
        events.append(event)
        if isinstance(event, EndOfMessage):
            parser.start_next_request()
        elif isinstance(event, ConnectionClosed):
            assert parser.next_event() == CLOSED  # repeated
            return


def merge(events: list[object]) -> list[object]:
    merged: list[object] = []
    for event in events:
        if isinstance(event, Data):
            assert event.data, "an empty Data event"
            if merged and isinstance(merged[-1], Data):
                event = Data(merged[-1].data + event.data)
                merged.pop()
        merged.append(event)
    return merged


def check(data: bytes, expected: list[object], **limits: int | None) -> None:
    for chunks in splits(data):
        assert run(chunks, **limits) == expected, chunks


def req(
    method: str = "GET",
    target: bytes = b"/",
    headers: list[tuple[bytes, bytes]] | None = None,
    version: tuple[int, int] = (1, 1),
    **kw: object,
) -> Request:
    """The expected Request; ``headers`` default to ``Host: h``."""
    return Request(method, target, version, [HOST] if headers is None else headers, **kw)  # type: ignore[arg-type]


def post(body: bytes, framing: bytes, *, extra: bytes = b"") -> bytes:
    return b"POST /p HTTP/1.1\r\nHost: h\r\n" + framing + b"\r\n" + extra + b"\r\n" + body


CL5 = [HOST, (b"content-length", b"5")]
TE = [HOST, (b"transfer-encoding", b"chunked")]
CHUNKED = req("POST", b"/p", TE, chunked=True)


VALID = {
    "simple GET": (
        b"GET /index.html?a=b HTTP/1.1\r\nHost: example.com\r\n\r\n",
        [req(target=b"/index.html?a=b", headers=[(b"host", b"example.com")]), EOM, CLOSED],
    ),
    "HEAD": (b"HEAD / HTTP/1.1\r\nHost: h\r\n\r\n", [req("HEAD"), EOM, CLOSED]),
    "bare LF line ends (§2.2)": (b"GET / HTTP/1.1\nHost: h\n\n", [req(), EOM, CLOSED]),
    "mixed line ends": (b"GET / HTTP/1.1\r\nHost: h\n\r\n", [req(), EOM, CLOSED]),
    "leading empty lines skipped (§2.2)": (
        b"\r\n\n\r\nGET / HTTP/1.1\r\nHost: h\r\n\r\n",
        [req(), EOM, CLOSED],
    ),
    "only empty lines, then EOF": (b"\r\n\r\n\n", [CLOSED]),
    "nothing, then EOF": (b"", [CLOSED]),
    "extension method, absolute-form": (
        b"PROPFIND http://h/a?b HTTP/1.1\r\nHost: h\r\n\r\n",
        [req("PROPFIND", b"http://h/a?b"), EOM, CLOSED],
    ),
    "asterisk-form": (
        b"OPTIONS * HTTP/1.1\r\nHost: h\r\n\r\n",
        [req("OPTIONS", b"*"), EOM, CLOSED],
    ),
    "authority-form": (
        b"CONNECT h:443 HTTP/1.1\r\nHost: h:443\r\n\r\n",
        [req("CONNECT", b"h:443", [(b"host", b"h:443")]), EOM, CLOSED],
    ),
    "target bytes kept raw": (
        b"GET /a%2F..//%00?q=%ff&x HTTP/1.1\r\nHost: h\r\n\r\n",
        [req(target=b"/a%2F..//%00?q=%ff&x"), EOM, CLOSED],
    ),
    "fields: lower-cased, stripped, repeats kept, obs-text, empty": (
        b"GET / HTTP/1.1\r\nX-A:  1 \t\r\nHost:h\r\nx-a: 2\r\nX-B: caf\xe9\xff\r\n"
        b"X-Empty:\r\nX-Tab: a\tb\r\nCookie: a=1; b=2\r\n\r\n",
        [
            req(
                headers=[
                    (b"x-a", b"1"),
                    HOST,
                    (b"x-a", b"2"),
                    (b"x-b", b"caf\xe9\xff"),
                    (b"x-empty", b""),
                    (b"x-tab", b"a\tb"),
                    (b"cookie", b"a=1; b=2"),
                ]
            ),
            EOM,
            CLOSED,
        ],
    ),
    "HTTP/1.0 without Host": (
        b"GET / HTTP/1.0\r\n\r\n",
        [req(headers=[], version=(1, 0), keep_alive=False), EOM, CLOSED],
    ),
    "empty Host value (§3.2)": (
        b"GET / HTTP/1.1\r\nHost:\r\n\r\n",
        [req(headers=[(b"host", b"")]), EOM, CLOSED],
    ),
    # Bodies by Content-Length.
    "POST with Content-Length": (
        post(b"hello", b"Content-Length: 5"),
        [req("POST", b"/p", CL5, content_length=5), Data(b"hello"), EOM, CLOSED],
    ),
    "Content-Length: 0": (
        post(b"", b"Content-Length: 0"),
        [req("POST", b"/p", [HOST, (b"content-length", b"0")], content_length=0), EOM, CLOSED],
    ),
    "Content-Length: 5, 5 merged (RFC 9110 §8.6)": (
        post(b"hello", b"Content-Length: 5,5"),
        [
            req("POST", b"/p", [HOST, (b"content-length", b"5,5")], content_length=5),
            Data(b"hello"),
            EOM,
            CLOSED,
        ],
    ),
    "two identical Content-Length fields": (
        post(b"hello", b"Content-Length: 5", extra=b"content-length: 005\r\n"),
        [
            req("POST", b"/p", [*CL5, (b"content-length", b"005")], content_length=5),
            Data(b"hello"),
            EOM,
            CLOSED,
        ],
    ),
    "Content-Length with 100 leading zeros": (
        post(b"hello", b"Content-Length: " + b"0" * 100 + b"5"),
        [
            req("POST", b"/p", [HOST, (b"content-length", b"0" * 100 + b"5")], content_length=5),
            Data(b"hello"),
            EOM,
            CLOSED,
        ],
    ),
    "GET with a body": (
        b"GET / HTTP/1.1\r\nHost: h\r\nContent-Length: 2\r\n\r\nhi",
        [
            req(headers=[HOST, (b"content-length", b"2")], content_length=2),
            Data(b"hi"),
            EOM,
            CLOSED,
        ],
    ),
    "binary body": (
        post(bytes(range(256)), b"Content-Length: 256"),
        [
            req("POST", b"/p", [HOST, (b"content-length", b"256")], content_length=256),
            Data(bytes(range(256))),
            EOM,
            CLOSED,
        ],
    ),
    # Chunked bodies (RFC 9112 §7.1).
    "chunked": (
        post(b"5\r\nhello\r\n6\r\n world\r\n0\r\n\r\n", b"Transfer-Encoding: chunked"),
        [CHUNKED, Data(b"hello world"), EOM, CLOSED],
    ),
    "chunked with extensions and trailers": (
        post(
            b'5;name=value\r\nhello\r\n1 ; a ;b="q;\\"x"\r\n!\r\n'
            b"0;last\r\nX-Sum:  abc \r\nx-other: 1\r\n\r\n",
            b"Transfer-Encoding: chunked",
        ),
        [CHUNKED, Data(b"hello!"), EndOfMessage([(b"x-sum", b"abc"), (b"x-other", b"1")]), CLOSED],
    ),
    "chunk sizes in hex, any case, leading zeros": (
        post(
            b"A\r\n0123456789\r\n0000000000000001\r\nx\r\n00\r\n\r\n", b"Transfer-Encoding: chunked"
        ),
        [CHUNKED, Data(b"0123456789x"), EOM, CLOSED],
    ),
    "chunk data holding CRLF and hex": (
        post(b"5\r\n\r\n0\r\n\r\n0\r\n\r\n", b"Transfer-Encoding: chunked"),
        [CHUNKED, Data(b"\r\n0\r\n"), EOM, CLOSED],
    ),
    "empty chunked body": (
        post(b"0\r\n\r\n", b"Transfer-Encoding: chunked"),
        [CHUNKED, EOM, CLOSED],
    ),
    "Transfer-Encoding: Chunked, case and empty elements": (
        post(b"0\r\n\r\n", b"Transfer-Encoding: , CHUNKED ,"),
        [
            req("POST", b"/p", [HOST, (b"transfer-encoding", b", CHUNKED ,")], chunked=True),
            EOM,
            CLOSED,
        ],
    ),
    # Pipelining and keep-alive (RFC 9112 §9.3).
    "pipelined requests": (
        b"GET /1 HTTP/1.1\r\nHost: h\r\n\r\n"
        + post(b"hello", b"Content-Length: 5")
        + b"\r\n"  # a stray CRLF after a body, as old clients send (§2.2)
        + post(b"1\r\nx\r\n0\r\n\r\n", b"Transfer-Encoding: chunked")
        + b"GET /4 HTTP/1.0\r\nConnection: close\r\n\r\n",
        [
            req(target=b"/1"),
            EOM,
            req("POST", b"/p", CL5, content_length=5),
            Data(b"hello"),
            EOM,
            CHUNKED,
            Data(b"x"),
            EOM,
            req(
                target=b"/4", headers=[(b"connection", b"close")], version=(1, 0), keep_alive=False
            ),
            EOM,
            CLOSED,
        ],
    ),
    "1.1 Connection: close": (
        b"GET / HTTP/1.1\r\nHost: h\r\nConnection: close\r\n\r\n",
        [req(headers=[HOST, (b"connection", b"close")], keep_alive=False), EOM, CLOSED],
    ),
    "1.1 Connection list with Close": (
        b"GET / HTTP/1.1\r\nHost: h\r\nConnection: keep-alive\r\nConnection: x, Close\r\n\r\n",
        [
            req(
                headers=[HOST, (b"connection", b"keep-alive"), (b"connection", b"x, Close")],
                keep_alive=False,
            ),
            EOM,
            CLOSED,
        ],
    ),
    "1.1 other Connection tokens": (
        b"GET / HTTP/1.1\r\nHost: h\r\nConnection: Upgrade, closed\r\n\r\n",
        [req(headers=[HOST, (b"connection", b"Upgrade, closed")]), EOM, CLOSED],
    ),
    "1.0 Connection: Keep-Alive": (
        b"GET / HTTP/1.0\r\nConnection: Keep-Alive\r\n\r\n",
        [req(headers=[(b"connection", b"Keep-Alive")], version=(1, 0)), EOM, CLOSED],
    ),
    "1.0 keep-alive and close": (
        b"GET / HTTP/1.0\r\nConnection: keep-alive, close\r\n\r\n",
        [
            req(headers=[(b"connection", b"keep-alive, close")], version=(1, 0), keep_alive=False),
            EOM,
            CLOSED,
        ],
    ),
    # Expect (RFC 9110 §10.1.1).
    "Expect: 100-continue": (
        post(b"hello", b"Content-Length: 5", extra=b"Expect: 100-Continue\r\n"),
        [
            req(
                "POST",
                b"/p",
                [*CL5, (b"expect", b"100-Continue")],
                content_length=5,
                expect_continue=True,
            ),
            Data(b"hello"),
            EOM,
            CLOSED,
        ],
    ),
    "Expect ignored in HTTP/1.0": (
        b"POST / HTTP/1.0\r\nExpect: 100-continue\r\nContent-Length: 1\r\n\r\nx",
        [
            req(
                "POST",
                headers=[(b"expect", b"100-continue"), (b"content-length", b"1")],
                version=(1, 0),
                content_length=1,
                keep_alive=False,
            ),
            Data(b"x"),
            EOM,
            CLOSED,
        ],
    ),
    "other expectation": (
        b"GET / HTTP/1.1\r\nHost: h\r\nExpect: 200-ok\r\n\r\n",
        [req(headers=[HOST, (b"expect", b"200-ok")]), EOM, CLOSED],
    ),
}


@pytest.mark.parametrize(("data", "expected"), VALID.values(), ids=VALID.keys())
def test_valid_vectors(data: bytes, expected: list[object]) -> None:
    check(data, expected)
