"""Error vectors for the HTTP/1.1 request parser: every BadRequest status and its reason.

Fed like the vectors of test_http_request (whole, byte by byte, every two-chunk split):
request line (400, 505), field lines (400), Host (400), request smuggling shapes (400,
413, 501), chunk framing (400) and EOF inside a request (400).
"""

from __future__ import annotations

import pytest

from cgikit.http_request import Data
from protocol.test_http_request import CHUNKED, CL5, EOM, check, error, post, req


def head(request_line: bytes, *fields: bytes) -> bytes:
    """A head from its lines, CRLF-terminated, with the empty line."""
    return b"".join(line + b"\r\n" for line in (request_line, *fields)) + b"\r\n"


def bad(status: int, reason: str, *before: object) -> list[object]:
    return [*before, error(status, reason)]


GET = b"GET / HTTP/1.1"
MID = bad(400, "client closed mid-request")

ERRORS = {
    # Request line (RFC 9112 §3).
    "double space": (head(b"GET  / HTTP/1.1"), bad(400, "invalid request line: 'GET  / HTTP/1.1'")),
    "trailing space": (
        head(b"GET / HTTP/1.1 "),
        bad(400, "invalid request line: 'GET / HTTP/1.1 '"),
    ),
    "tab separator": (
        head(b"GET\t/ HTTP/1.1"),
        bad(400, "invalid request line: 'GET\\t/ HTTP/1.1'"),
    ),
    "HTTP/0.9 request": (b"GET /\r\n\r\n", bad(400, "invalid request line: 'GET /'")),
    "method not a token": (
        head(b"G(T / HTTP/1.1"),
        bad(400, "method is not a token: 'G(T / HTTP/1.1'"),
    ),
    "non-ASCII target": (
        head(b"GET /caf\xe9 HTTP/1.1"),
        bad(400, "request target is not visible ASCII: 'GET /caf\xe9 HTTP/1.1'"),
    ),
    "DEL in target": (
        head(b"GET /\x7f HTTP/1.1"),
        bad(400, "request target is not visible ASCII: 'GET /\\x7f HTTP/1.1'"),
    ),
    "lower-case version": (head(b"GET / http/1.1"), bad(400, "invalid HTTP version: 'http/1.1'")),
    "HTTP/1.10": (head(b"GET / HTTP/1.10"), bad(400, "invalid HTTP version: 'HTTP/1.10'")),
    "HTTP/1": (head(b"GET / HTTP/1"), bad(400, "invalid HTTP version: 'HTTP/1'")),
    "HTTP/2.0 (505)": (head(b"GET / HTTP/2.0"), bad(505, "HTTP version HTTP/2.0 not supported")),
    "HTTP/0.9 (505)": (head(b"GET / HTTP/0.9"), bad(505, "HTTP version HTTP/0.9 not supported")),
    "HTTP/1.2 (505)": (head(b"GET / HTTP/1.2"), bad(505, "HTTP version HTTP/1.2 not supported")),
    "505 before the head ends": (
        b"GET / HTTP/3.0\r\n",
        bad(505, "HTTP version HTTP/3.0 not supported"),
    ),
    "NUL in request line": (
        head(b"GET /\0 HTTP/1.1"),
        bad(400, "request line contains NUL or a bare CR: 'GET /\\x00 HTTP/1.1'"),
    ),
    "bare CR in request line": (
        head(b"GET /\r HTTP/1.1"),
        bad(400, "request line contains NUL or a bare CR: 'GET /\\r HTTP/1.1'"),
    ),
    "bare CR as a line end": (
        b"GET / HTTP/1.1\rHost: h\r\r\n",
        bad(400, "request line contains NUL or a bare CR: 'GET / HTTP/1.1\\rHost: h\\r'"),
    ),
    # Field lines (RFC 9112 §5, RFC 9110 §5.5).
    "obs-fold": (
        head(GET, b"Host: h", b"X-A: 1", b" more"),
        bad(400, "line 4 starts with whitespace (obs-fold): ' more'"),
    ),
    "whitespace before the first field (§2.2)": (
        head(GET, b"\tHost: h"),
        bad(400, "line 2 starts with whitespace (obs-fold): '\\tHost: h'"),
    ),
    "space before colon (§5.1)": (
        head(GET, b"Host : h"),
        bad(400, "line 2 has whitespace before the colon: 'Host : h'"),
    ),
    "tab before colon": (
        head(GET, b"Host: h", b"Content-Length\t: 5"),
        bad(400, "line 3 has whitespace before the colon: 'Content-Length\\t: 5'"),
    ),
    "no colon": (head(GET, b"Host h"), bad(400, "line 2 is not a field: 'Host h'")),
    "empty name": (head(GET, b": h"), bad(400, "line 2 has an empty field name: ': h'")),
    "name not a token": (
        head(GET, b"X[A]: 1"),
        bad(400, "line 2: field name is not a token: 'X[A]: 1'"),
    ),
    "NUL in value": (head(GET, b"Host: h\0"), bad(400, "line 2 contains NUL: 'Host: h\\x00'")),
    "bare CR in value": (
        head(GET, b"Host: h", b"X-A: a\rb"),
        bad(400, "line 3 contains a bare CR: 'X-A: a\\rb'"),
    ),
    "CR CR LF": (
        b"GET / HTTP/1.1\r\nHost: h\r\r\n\r\n",
        bad(400, "line 2 contains a bare CR: 'Host: h\\r'"),
    ),
    "control in value": (
        head(GET, b"Host: h", b"X-A: \x1b[31m"),
        bad(400, "line 3: control character in the value: 'X-A: \\x1b[31m'"),
    ),
    "DEL in value": (
        head(GET, b"Host: h\x7f"),
        bad(400, "line 2: control character in the value: 'Host: h\\x7f'"),
    ),
    "bad line before the end of the head": (
        b"GET / HTTP/1.1\r\nbad\r\n",
        bad(400, "line 2 is not a field: 'bad'"),
    ),
    # Host (RFC 9112 §3.2).
    "1.1 without Host": (head(GET, b"X-A: 1"), bad(400, "HTTP/1.1 request without Host")),
    "two Hosts": (head(GET, b"Host: a", b"host: b"), bad(400, "2 Host fields")),
    "two identical Hosts": (head(GET, b"Host: a", b"Host: a"), bad(400, "2 Host fields")),
    "two Hosts in 1.0": (
        head(b"GET / HTTP/1.0", b"Host: a", b"Host: b"),
        bad(400, "2 Host fields"),
    ),
    # Request smuggling (RFC 9112 §6.1, §6.3; RFC 9110 §8.6).
    "CL + TE": (
        post(b"0\r\n\r\n", b"Content-Length: 5\r\nTransfer-Encoding: chunked"),
        bad(400, "both Content-Length and Transfer-Encoding"),
    ),
    "TE + CL": (
        post(b"hello", b"Transfer-Encoding: chunked\r\nContent-Length: 5"),
        bad(400, "both Content-Length and Transfer-Encoding"),
    ),
    "TE + bad CL": (
        post(b"hello", b"Transfer-Encoding: chunked\r\nContent-Length: +5"),
        bad(400, "both Content-Length and Transfer-Encoding"),
    ),
    "TE chunked then TE identity": (
        post(b"0\r\n\r\n", b"Transfer-Encoding: chunked\r\nTransfer-Encoding: identity"),
        bad(400, "Transfer-Encoding does not end in chunked: 'chunked, identity'"),
    ),
    "TE chunked twice": (
        post(b"0\r\n\r\n", b"Transfer-Encoding: chunked\r\nTransfer-Encoding: chunked"),
        bad(400, "Transfer-Encoding names chunked more than once"),
    ),
    "TE: chunked, chunked": (
        post(b"0\r\n\r\n", b"Transfer-Encoding: chunked, chunked"),
        bad(400, "Transfer-Encoding names chunked more than once"),
    ),
    "TE: xchunked": (
        post(b"0\r\n\r\n", b"Transfer-Encoding: xchunked"),
        bad(400, "Transfer-Encoding does not end in chunked: 'xchunked'"),
    ),
    "TE: chunked with a parameter": (
        post(b"0\r\n\r\n", b"Transfer-Encoding: chunked;q=1"),
        bad(400, "Transfer-Encoding does not end in chunked: 'chunked;q=1'"),
    ),
    "TE: identity": (
        post(b"hello", b"Transfer-Encoding: identity"),
        bad(400, "Transfer-Encoding does not end in chunked: 'identity'"),
    ),
    "TE: chunked, gzip": (
        post(b"0\r\n\r\n", b"Transfer-Encoding: chunked, gzip"),
        bad(400, "Transfer-Encoding does not end in chunked: 'chunked, gzip'"),
    ),
    "empty TE": (
        post(b"hello", b"Transfer-Encoding:"),
        bad(400, "Transfer-Encoding does not end in chunked: ''"),
    ),
    "TE: gzip, chunked (501)": (
        post(b"0\r\n\r\n", b"Transfer-Encoding: gzip, chunked"),
        bad(501, "unsupported transfer coding: 'gzip'"),
    ),
    "TE in HTTP/1.0": (
        b"POST / HTTP/1.0\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n",
        bad(400, "Transfer-Encoding in an HTTP/1.0 request"),
    ),
    "CL: +5": (post(b"hello", b"Content-Length: +5"), bad(400, "invalid Content-Length: '+5'")),
    "CL: -1": (post(b"hello", b"Content-Length: -1"), bad(400, "invalid Content-Length: '-1'")),
    "CL: 5x": (post(b"hello", b"Content-Length: 5x"), bad(400, "invalid Content-Length: '5x'")),
    "CL: 0x5": (post(b"hello", b"Content-Length: 0x5"), bad(400, "invalid Content-Length: '0x5'")),
    "CL: 5 5": (post(b"hello", b"Content-Length: 5 5"), bad(400, "invalid Content-Length: '5 5'")),
    "CL: empty": (post(b"hello", b"Content-Length:"), bad(400, "invalid Content-Length: ''")),
    "CL: 5,,5": (
        post(b"hello", b"Content-Length: 5,,5"),
        bad(400, "invalid Content-Length: '5,,5'"),
    ),
    "CL: superscript digit": (
        post(b"hello", b"Content-Length: \xb2"),
        bad(400, "invalid Content-Length: '\xb2'"),
    ),
    "CL: 5, 6": (
        post(b"hello", b"Content-Length: 5, 6"),
        bad(400, "different Content-Length values: [5, 6]"),
    ),
    "two CL fields 5 and 6": (
        post(b"hello", b"Content-Length: 5\r\nContent-Length: 6"),
        bad(400, "different Content-Length values: [5, 6]"),
    ),
    "CL: 19 digits (413)": (
        post(b"", b"Content-Length: 1000000000000000000"),
        bad(413, "Content-Length too large: '1000000000000000000'"),
    ),
    "CL: 5000 digits (413, no int() limit)": (
        post(b"", b"Content-Length: " + b"9" * 5000),
        bad(413, f"Content-Length too large: {'9' * 60!r}..."),
    ),
    # Chunk framing (RFC 9112 §7.1).
    "chunk size 0x5": (
        post(b"0x5\r\nhello\r\n0\r\n\r\n", b"Transfer-Encoding: chunked"),
        bad(400, "invalid chunk size line: '0x5'", CHUNKED),
    ),
    "chunk size with 100 hex digits": (
        post(b"f" * 100 + b"\r\nx\r\n0\r\n\r\n", b"Transfer-Encoding: chunked"),
        bad(400, "chunk size longer than 16 hex digits", CHUNKED),
    ),
    "chunk size with 17 digits": (
        post(b"0" * 16 + b"1\r\nx\r\n0\r\n\r\n", b"Transfer-Encoding: chunked"),
        bad(400, "chunk size longer than 16 hex digits", CHUNKED),
    ),
    "negative chunk size": (
        post(b"-1\r\nx\r\n0\r\n\r\n", b"Transfer-Encoding: chunked"),
        bad(400, "invalid chunk size line: '-1'", CHUNKED),
    ),
    "empty chunk size": (
        post(b"\r\nx\r\n0\r\n\r\n", b"Transfer-Encoding: chunked"),
        bad(400, "invalid chunk size line: ''", CHUNKED),
    ),
    "space before chunk size": (
        post(b" 1\r\nx\r\n0\r\n\r\n", b"Transfer-Encoding: chunked"),
        bad(400, "invalid chunk size line: ' 1'", CHUNKED),
    ),
    "space after chunk size, no extension": (
        post(b"1 \r\nx\r\n0\r\n\r\n", b"Transfer-Encoding: chunked"),
        bad(400, "invalid chunk size line: '1 '", CHUNKED),
    ),
    "control in a chunk extension": (
        post(b"1;a=\x01\r\nx\r\n0\r\n\r\n", b"Transfer-Encoding: chunked"),
        bad(400, "control character in a chunk size line: '1;a=\\x01'", CHUNKED),
    ),
    "bare CR in a chunk size line": (
        post(b"1\r;a\r\nx\r\n0\r\n\r\n", b"Transfer-Encoding: chunked"),
        bad(400, "control character in a chunk size line: '1\\r;a'", CHUNKED),
    ),
    "missing CRLF after chunk data": (
        post(b"5\r\nhelloX\r\n0\r\n\r\n", b"Transfer-Encoding: chunked"),
        bad(400, "chunk data not followed by CRLF", CHUNKED, Data(b"hello")),
    ),
    "chunk longer than its size": (
        post(b"3\r\nhello\r\n0\r\n\r\n", b"Transfer-Encoding: chunked"),
        bad(400, "chunk data not followed by CRLF", CHUNKED, Data(b"hel")),
    ),
    "CR then not LF after chunk data": (
        post(b"5\r\nhello\rX0\r\n\r\n", b"Transfer-Encoding: chunked"),
        bad(400, "chunk data not followed by CRLF", CHUNKED, Data(b"hello")),
    ),
    "LF-only chunk lines": (
        post(b"5\nhello\n0\n\n", b"Transfer-Encoding: chunked"),
        bad(400, "chunk size line ends in a bare LF, not CRLF: '5'", CHUNKED),
    ),
    "LF after chunk data": (
        post(b"5\r\nhello\n0\r\n\r\n", b"Transfer-Encoding: chunked"),
        bad(400, "chunk data not followed by CRLF", CHUNKED, Data(b"hello")),
    ),
    "LF-only last chunk": (
        post(b"5\r\nhello\r\n0\n\r\n", b"Transfer-Encoding: chunked"),
        bad(400, "chunk size line ends in a bare LF, not CRLF: '0'", CHUNKED, Data(b"hello")),
    ),
    "LF-only end of trailers": (
        post(b"0\r\nX-A: 1\r\n\n", b"Transfer-Encoding: chunked"),
        bad(400, "trailer section ends in a bare LF, not CRLF: ''", CHUNKED),
    ),
    "LF-only trailer line": (
        post(b"0\r\nX-A: 1\n\r\n", b"Transfer-Encoding: chunked"),
        bad(400, "trailer section ends in a bare LF, not CRLF: 'X-A: 1'", CHUNKED),
    ),
    "trailer obs-fold": (
        post(b"0\r\nX-A: 1\r\n 2\r\n\r\n", b"Transfer-Encoding: chunked"),
        bad(400, "trailer line 2 starts with whitespace (obs-fold): ' 2'", CHUNKED),
    ),
    "trailer space before colon": (
        post(b"0\r\nX-A : 1\r\n\r\n", b"Transfer-Encoding: chunked"),
        bad(400, "trailer line 1 has whitespace before the colon: 'X-A : 1'", CHUNKED),
    ),
    "trailer NUL": (
        post(b"0\r\nX-A: \0\r\n\r\n", b"Transfer-Encoding: chunked"),
        bad(400, "trailer line 1 contains NUL: 'X-A: \\x00'", CHUNKED),
    ),
    "trailer not a field": (
        post(b"0\r\nhello\r\n\r\n", b"Transfer-Encoding: chunked"),
        bad(400, "trailer line 1 is not a field: 'hello'", CHUNKED),
    ),
    # EOF inside a request.
    "EOF in the request line": (b"GET / HT", MID),
    "EOF in the head": (b"GET / HTTP/1.1\r\nHost: h\r\n", MID),
    "EOF after a stray CR": (b"\r\n\r", MID),
    "EOF in a Content-Length body": (
        post(b"hell", b"Content-Length: 5"),
        bad(
            400,
            "client closed mid-request",
            req("POST", b"/p", CL5, content_length=5),
            Data(b"hell"),
        ),
    ),
    "EOF in a chunk": (
        post(b"5\r\nhel", b"Transfer-Encoding: chunked"),
        bad(400, "client closed mid-request", CHUNKED, Data(b"hel")),
    ),
    "EOF before the last chunk": (
        post(b"5\r\nhello\r\n", b"Transfer-Encoding: chunked"),
        bad(400, "client closed mid-request", CHUNKED, Data(b"hello")),
    ),
    "EOF in the trailers": (
        post(b"0\r\nX-A: 1\r\n", b"Transfer-Encoding: chunked"),
        bad(400, "client closed mid-request", CHUNKED),
    ),
    "EOF in a second request": (
        head(GET, b"Host: h") + b"GET /2 HTTP/1.1\r\n",
        bad(400, "client closed mid-request", req(), EOM),
    ),
    "TLS handshake after a request": (
        head(GET, b"Host: h") + b"\x16\x03\x01\x00\xa5\x01\r\n",
        bad(
            400,
            "request line contains NUL or a bare CR: " + repr("\x16\x03\x01\x00\xa5\x01"),
            req(),
            EOM,
        ),
    ),
}


@pytest.mark.parametrize(("data", "expected"), ERRORS.values(), ids=ERRORS.keys())
def test_error_vectors(data: bytes, expected: list[object]) -> None:
    check(data, expected)
