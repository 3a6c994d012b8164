"""The HTTP/1.1 request parser as a stream: limits, its states, and properties.

Properties (hypothesis): arbitrary bytes only ever give events or BadRequest, the same
for any split, in the order Request, Data..., EndOfMessage; a valid generated
connection (pipelined requests with random fields, bodies and chunking) round-trips
whatever the split.
"""

from __future__ import annotations

from itertools import pairwise

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from cgikit import cgi_output, http_request
from cgikit.http_request import (
    NEED_DATA,
    BadRequest,
    ConnectionClosed,
    Data,
    EndOfMessage,
    NeedData,
    Request,
    RequestParser,
)
from compiled import is_compiled
from protocol.test_http_request import (
    CHUNKED,
    CL5,
    CLOSED,
    EOM,
    HOST,
    check,
    error,
    post,
    req,
    run,
)

GET = b"GET / HTTP/1.1\r\nHost: h\r\n\r\n"  # 27 bytes


# -- limits ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("data", "limit", "expected"),
    [
        (GET, 27, [req(), EOM, CLOSED]),  # exactly at the limit
        (GET, 26, [error(431, "header block larger than 26 bytes")]),
        (b"GET / HTTP/1.1\nHost: h\n\n", 24, [req(), EOM, CLOSED]),
        (b"GET / HTTP/1.1\nHost: h\n\n", 23, [error(431, "header block larger than 23 bytes")]),
        (b"\r\n" + GET, 28, [error(431, "header block larger than 28 bytes")]),  # leading CRLF
        (b"GET / HTTP/1.1\r\n", 5, [error(431, "header block larger than 5 bytes")]),  # no EOF
        (b"GET /  HTTP/1.1\r\n\r\n", 5, [error(431, "header block larger than 5 bytes")]),
        (GET + GET, 27, [req(), EOM, req(), EOM, CLOSED]),  # the limit is per request
        (GET + b"\r\n" + GET, 27, [req(), EOM, error(431, "header block larger than 27 bytes")]),
        (
            post(b"0\r\nX-A: 1\r\n\r\n", b"Transfer-Encoding: chunked"),
            10,
            [error(431, "header block larger than 10 bytes")],
        ),
    ],
)
def test_header_limit(data: bytes, limit: int, expected: list[object]) -> None:
    check(data, expected, max_header_bytes=limit)


def test_trailer_limit() -> None:
    head = b"POST / HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: chunked\r\n\r\n"
    limit = len(head)  # the trailer section has a limit of its own, the same size
    request = req("POST", headers=[HOST, (b"transfer-encoding", b"chunked")], chunked=True)
    value = b"v" * (limit - len(b"X-A: \r\n\r\n"))
    trailers = EndOfMessage([(b"x-a", value)])
    body = b"0\r\nX-A: " + value + b"\r\n\r\n"
    check(head + body, [request, trailers, CLOSED], max_header_bytes=limit)
    too_large = error(431, f"trailer section larger than {limit} bytes")
    check(head + body.replace(b"X-A", b"X-AB"), [request, too_large], max_header_bytes=limit)
    parser = RequestParser(max_header_bytes=limit)
    parser.receive_data(head + b"0\r\nX-A: " + value + b"vvvv")  # the limit, no line end
    assert parser.next_event() == request
    assert parser.next_event() is NEED_DATA
    parser.receive_data(b"v")  # one more byte: raised at once
    with pytest.raises(BadRequest, match=f"^trailer section larger than {limit} bytes$"):
        parser.next_event()


def test_default_limit_is_64_kib() -> None:
    line = b"GET / HTTP/1.1\r\nHost: h\r\nX-Big: "
    fill = 65536 - len(line) - 4  # the line's CRLF and the empty line
    request = req(headers=[HOST, (b"x-big", b"a" * fill)])
    parser = RequestParser()
    parser.receive_data(line + b"a" * fill + b"\r\n\r")
    assert parser.next_event() is NEED_DATA
    parser.receive_data(b"\n")
    assert parser.next_event() == request
    parser = RequestParser()
    parser.receive_data(line + b"a" * (fill + 1) + b"\r\n\r\n")
    with pytest.raises(BadRequest, match=r"^header block larger than 65536 bytes$"):
        parser.next_event()


def test_header_limit_raises_at_once_without_eof() -> None:
    parser = RequestParser(max_header_bytes=100)
    line = b"GET / HTTP/1.1\r\nX-A: "
    parser.receive_data(line + b"a" * (100 - len(line)))
    assert parser.next_event() is NEED_DATA  # 100 bytes: still within the limit
    parser.receive_data(b"a")
    with pytest.raises(BadRequest) as caught:
        parser.next_event()
    assert (caught.value.status, caught.value.reason) == (431, "header block larger than 100 bytes")


def test_chunk_line_limit() -> None:
    framing = b"Transfer-Encoding: chunked"
    ext = b"1;" + b"e" * 4092  # 4096 bytes with CRLF: the limit
    check(post(ext + b"\r\nx\r\n0\r\n\r\n", framing), [CHUNKED, Data(b"x"), EOM, CLOSED])
    too_long = [CHUNKED, error(400, "chunk size line larger than 4096 bytes")]
    check(post(ext + b"e\r\nx\r\n0\r\n\r\n", framing), too_long)
    parser = RequestParser()
    parser.receive_data(post(b"1;" + b"e" * 5000, framing))  # no line end: raised at once
    assert parser.next_event() == CHUNKED
    with pytest.raises(BadRequest, match="chunk size line larger than 4096 bytes"):
        parser.next_event()


def test_max_body_bytes_by_content_length() -> None:
    data = post(b"hello", b"Content-Length: 5")
    request = req("POST", b"/p", CL5, content_length=5)
    check(data, [request, Data(b"hello"), EOM, CLOSED], max_body_bytes=5)
    # Refused up front: no Request event, no body byte read.
    check(data, [error(413, "Content-Length 5 larger than 4 bytes")], max_body_bytes=4)
    empty = req("POST", b"/p", [HOST, (b"content-length", b"0")], content_length=0)
    check(post(b"", b"Content-Length: 0"), [empty, EOM, CLOSED], max_body_bytes=0)
    check(GET, [req(), EOM, CLOSED], max_body_bytes=0)


def test_max_body_bytes_by_running_total() -> None:
    data = post(b"3\r\nabc\r\n2\r\nde\r\n0\r\n\r\n", b"Transfer-Encoding: chunked")
    check(data, [CHUNKED, Data(b"abcde"), EOM, CLOSED], max_body_bytes=5)
    expected = [CHUNKED, Data(b"abc"), error(413, "chunked body larger than 4 bytes")]
    check(data, expected, max_body_bytes=4)
    parser = RequestParser(max_body_bytes=10)  # raised at the size line, before the data
    parser.receive_data(post(b"b\r\n", b"Transfer-Encoding: chunked"))
    assert parser.next_event() == CHUNKED
    with pytest.raises(BadRequest, match="chunked body larger than 10 bytes"):
        parser.next_event()


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"max_header_bytes": 0}, "max_header_bytes"),
        ({"max_header_bytes": 1.5}, "max_header_bytes"),
        ({"max_body_bytes": -1}, "max_body_bytes"),
        ({"max_body_bytes": "5"}, "max_body_bytes"),
        ({"max_body_bytes": True}, "max_body_bytes"),
    ],
)
def test_bad_limits(kwargs: dict[str, object], message: str) -> None:
    wrong_type = any(type(v) is not int for v in kwargs.values())
    if wrong_type and is_compiled(http_request):  # mypyc refuses it at the call
        if any(isinstance(v, bool) for v in kwargs.values()):
            pytest.skip("mypyc passes a bool on as the int it is")
        with pytest.raises(TypeError):
            RequestParser(**kwargs)  # type: ignore[arg-type]
        return
    with pytest.raises(ValueError, match=message):
        RequestParser(**kwargs)  # type: ignore[arg-type]


# -- the state machine -----------------------------------------------------------------


def test_body_is_handed_out_as_it_arrives() -> None:
    parser = RequestParser()
    assert parser.next_event() is NEED_DATA
    parser.receive_data(post(b"he", b"Content-Length: 5", extra=b"Expect: 100-continue\r\n"))
    request = parser.next_event()
    assert isinstance(request, Request) and request.expect_continue  # before any body byte
    assert parser.next_event() == Data(b"he")
    assert parser.next_event() is NEED_DATA
    reused = bytearray(b"l")
    parser.receive_data(reused)
    reused[:] = b"X"  # the parser copied the bytes
    parser.receive_data(memoryview(b"lo"))
    assert parser.next_event() == Data(b"llo")
    assert parser.next_event() == EOM
    assert parser.next_event() == EOM  # repeated until start_next_request
    parser.start_next_request()
    assert parser.next_event() is NEED_DATA
    parser.receive_data(b"")
    assert parser.next_event() == ConnectionClosed()
    assert parser.next_event() == ConnectionClosed()
    with pytest.raises(RuntimeError, match="after EOF"):
        parser.receive_data(b"late")


def test_pipelined_bytes_wait_for_start_next_request() -> None:
    parser = RequestParser()
    parser.receive_data(GET + b"BAD REQUEST LINE\r\n")
    assert parser.next_event() == req()
    with pytest.raises(RuntimeError, match="start_next_request"):
        parser.start_next_request()  # EndOfMessage not handed out yet
    assert parser.next_event() == EOM
    assert parser.next_event() == EOM  # the bad line is not parsed before the server asks
    parser.start_next_request()
    with pytest.raises(BadRequest, match="invalid HTTP version: 'LINE'"):
        parser.next_event()


def test_error_state_is_sticky() -> None:
    parser = RequestParser()
    parser.receive_data(b"GET / HTTP/2.0\r\n")
    for _ in range(2):
        with pytest.raises(BadRequest) as caught:
            parser.next_event()
        assert caught.value.status == 505
        assert caught.value.reason == "HTTP version HTTP/2.0 not supported"
    parser.receive_data(GET)  # dropped
    parser.receive_data(b"")
    with pytest.raises(BadRequest, match=r"HTTP/2\.0"):
        parser.next_event()
    with pytest.raises(RuntimeError):
        parser.start_next_request()


def test_api_details() -> None:
    assert issubclass(BadRequest, ValueError)
    assert NEED_DATA is cgi_output.NEED_DATA  # one sentinel for every parser in cgikit
    assert repr(NEED_DATA) == "NEED_DATA" and isinstance(NEED_DATA, NeedData)
    assert EndOfMessage() == EndOfMessage([])
    exc = BadRequest(400, "x")
    assert (exc.status, exc.reason, str(exc)) == (400, "x", "x")


# -- properties ------------------------------------------------------------------------

_PIECES = [b"\r\n", b"\n", b"\r", b"\0", b":", b" ", b"\t", b"\xe9", b";", b"0", b"5"]
_PIECES += [b"GET / HTTP/1.1\r\n", b"POST /x HTTP/1.0\r\n", b"Host: h\r\n", b"HTTP/2.0"]
_PIECES += [b"Content-Length: 3\r\n", b"Transfer-Encoding: chunked\r\n", b"Connection: close"]
_PIECES += [b"3\r\nabc\r\n", b"0\r\n\r\n", b"X-A: 1\r\n", b"Expect: 100-continue\r\n"]
_INPUT = st.one_of(
    st.binary(max_size=120),
    st.lists(st.one_of(st.sampled_from(_PIECES), st.binary(max_size=6)), max_size=30).map(b"".join),
)
_CUTS = st.lists(st.integers(0, 600), max_size=6)


def _chunks(data: bytes, cuts: list[int]) -> list[bytes]:
    points = [0, *sorted(c for c in cuts if 0 < c < len(data)), len(data)]
    return [data[a:b] for a, b in pairwise(points) if a < b]


@settings(max_examples=500, deadline=None)
@given(_INPUT, _CUTS, st.sampled_from([65536, 1, 30]), st.sampled_from([None, 0, 4]))
def test_any_bytes_give_events_or_bad_request(
    data: bytes, cuts: list[int], header_limit: int, body_limit: int | None
) -> None:
    limits = {"max_header_bytes": header_limit, "max_body_bytes": body_limit}
    events = run(_chunks(data, cuts), **limits)  # any other exception fails the test
    assert events == run([data], **limits)  # the split never matters
    *middle, last = events
    assert last == CLOSED or (isinstance(last, tuple) and last[0] == "error")
    expect_request = True
    for event in middle:  # Request (Data) EndOfMessage, repeated
        assert isinstance(event, Request) == expect_request, events
        assert isinstance(event, (Request, Data, EndOfMessage)), events
        expect_request = isinstance(event, EndOfMessage)
    assert last != CLOSED or expect_request, "ConnectionClosed inside a request"


_TOKEN = st.text("!#$%&'*+-.^_`|~09AZaz", min_size=1, max_size=8)
_RESERVED = {b"host", b"content-length", b"transfer-encoding", b"connection", b"expect"}
_NAME = _TOKEN.map(str.encode).filter(lambda name: name.lower() not in _RESERVED)
_VALUE = st.binary(max_size=10).map(lambda v: bytes(b for b in v if b >= 0x20 and b != 0x7F))
_PAD = st.sampled_from([b"", b" ", b"\t", b" \t "])
_TARGET = st.text("/abz09%?=&:@.~-", min_size=1, max_size=12).map(lambda t: b"/" + t.encode())


@st.composite
def requests(draw: st.DrawFn) -> tuple[bytes, list[object]]:
    """A valid request: its bytes and the events it must give."""
    version = draw(st.sampled_from([(1, 0), (1, 1)]))
    method, target = draw(_TOKEN), draw(_TARGET)
    eol = draw(st.sampled_from([b"\r\n", b"\n"]))
    lines, headers = [b"%s %s HTTP/%d.%d" % (method.encode(), target, *version)], []
    fields = [(draw(_NAME), draw(_VALUE).strip(b" \t")) for _ in range(draw(st.integers(0, 4)))]
    if version == (1, 1) or draw(st.booleans()):
        fields.insert(draw(st.integers(0, len(fields))), (b"Host", b"example.org"))
    connection = draw(st.sampled_from([None, b"close", b"Keep-Alive"]))
    if connection:
        fields.append((b"Connection", connection))
    body = draw(st.binary(max_size=40))
    framing = draw(st.sampled_from(["none", "length"] + (["chunked"] if version == (1, 1) else [])))
    if framing == "none":
        body = b""
    elif framing == "length":
        fields.append((b"Content-Length", str(len(body)).encode()))
    else:
        fields.append((b"Transfer-Encoding", b"chunked"))
    for name, value in fields:
        lines.append(name + b":" + draw(_PAD) + value + draw(_PAD))
        headers.append((name.lower(), value))
    wire = b"".join(line + eol for line in lines) + eol
    trailers: list[tuple[bytes, bytes]] = []
    if framing == "chunked":
        wire += draw(chunked(body, trailers))
    else:
        wire += body
    keep_alive = connection != b"close" and (version == (1, 1) or connection == b"Keep-Alive")
    length = len(body) if framing == "length" else None
    request = Request(
        method, target, version, headers, length, framing == "chunked", keep_alive, False
    )
    return wire, [request, *([Data(body)] if body else []), EndOfMessage(trailers)]


@st.composite
def chunked(draw: st.DrawFn, body: bytes, trailers: list[tuple[bytes, bytes]]) -> bytes:
    """``body`` in random chunks, sizes in any case with extensions; adds to ``trailers``."""
    cuts = draw(st.lists(st.integers(1, 40), max_size=4))
    wire = b""
    for a, b in pairwise(sorted({0, len(body), *(c for c in cuts if c < len(body))})):
        size = b"%x" % (b - a)
        size = draw(st.sampled_from([size, size.upper(), b"0" + size]))
        ext = draw(st.sampled_from([b"", b";a", b' ; a=b;c="d e"']))
        wire += size + ext + b"\r\n" + body[a:b] + b"\r\n"
    wire += b"0" + draw(st.sampled_from([b"", b";z"])) + b"\r\n"
    for name, value in draw(st.lists(st.tuples(_NAME, _VALUE), max_size=2)):
        wire += name + b": " + value + b"\r\n"
        trailers.append((name.lower(), value.strip(b" \t")))
    return wire + b"\r\n"


@settings(max_examples=300, deadline=None)
@given(st.lists(requests(), min_size=1, max_size=3), _CUTS)
def test_valid_requests_round_trip(
    connection: list[tuple[bytes, list[object]]], cuts: list[int]
) -> None:
    data = b"".join(wire for wire, _ in connection)
    expected = [event for _, events in connection for event in events]
    assert run(_chunks(data, cuts)) == [*expected, CLOSED]
