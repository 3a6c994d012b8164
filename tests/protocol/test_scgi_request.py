"""Vectors and properties for the SCGI request parser (scgi_request; research §8.4).

Every vector is fed whole, byte by byte and at every two-chunk split point, then EOF,
and must give the same events each time (Body events merged). Errors appear as
``error(kind, reason)`` at the end of the list, ``kind`` the exception class.

Properties (hypothesis): arbitrary bytes and mutated valid requests only ever give
events or SCGIError, in the order Headers, Body..., EndOfBody, the same for any split;
a valid generated request round-trips whatever the split.
"""

from __future__ import annotations

import ast
import re
from collections.abc import Iterable
from itertools import pairwise

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from cgikit import scgi_request
from cgikit.scgi_request import (
    NEED_DATA,
    Body,
    EndOfBody,
    Headers,
    IncompleteRequest,
    SCGIError,
    SCGIRequestParser,
)
from compiled import is_compiled, source_of
from splitting import splits

END = EndOfBody()


def error(kind: type[SCGIError], reason: str) -> tuple[str, str, str]:
    return ("error", kind.__name__, reason)


def larger(limit: int, digits: str) -> tuple[str, str, str]:
    """The error for a LEN whose first ``digits`` are over ``limit``."""
    return error(SCGIError, f"header netstring larger than {limit} bytes (length {digits}...)")


def run(chunks: Iterable[bytes], **limits: int) -> list[object]:
    """Feed ``chunks`` then EOF; the events (Body merged), ending in END or an error."""
    parser = SCGIRequestParser(**limits)
    events: list[object] = []
    try:
        for chunk in filter(None, chunks):  # b"" would be EOF
            parser.receive_data(chunk)  # after the end too: dropped
            _drain(parser, events)
        parser.receive_data(b"")
        _drain(parser, events)
    except SCGIError as exc:
        assert str(exc) == exc.reason
        with pytest.raises(type(exc), match="^" + re.escape(exc.reason) + "$"):
            parser.next_event()  # every later call raises it again
        events.append(error(type(exc), exc.reason))
    return merge(events)


def _drain(parser: SCGIRequestParser, events: list[object]) -> None:
    """Take events until NEED_DATA or EndOfBody (repeated: taken once)."""
    if events and events[-1] == END:
        assert parser.next_event() == END
        return
    while (event := parser.next_event()) is not NEED_DATA:
        events.append(event)
        if event == END:
            assert parser.next_event() == END
            return


def merge(events: list[object]) -> list[object]:
    merged: list[object] = []
    for event in events:
        if isinstance(event, Body):
            assert event.data, "an empty Body event"
            if merged and isinstance(merged[-1], Body):
                event = Body(merged[-1].data + event.data)
                merged.pop()
        merged.append(event)
    return merged


def check(data: bytes, expected: list[object], **limits: int) -> None:
    for chunks in splits(data):
        assert run(chunks, **limits) == expected, chunks


def raw(block: bytes) -> bytes:
    """``block`` as a netstring."""
    return str(len(block)).encode("ascii") + b":" + block + b","


def netstring(*pairs: tuple[bytes, bytes]) -> bytes:
    """The header netstring of ``pairs``, as a web server sends it."""
    return raw(b"".join(name + b"\0" + value + b"\0" for name, value in pairs))


def headers(*pairs: tuple[bytes, bytes]) -> Headers:
    return Headers(dict(pairs), int(pairs[0][1]))


CL0, CL5, SCGI = (b"CONTENT_LENGTH", b"0"), (b"CONTENT_LENGTH", b"5"), (b"SCGI", b"1")
GET = (b"REQUEST_METHOD", b"GET")
MIN = netstring(CL0, SCGI)  # 24:CONTENT_LENGTH\0 0\0 SCGI\0 1\0,

# The spec's example: a 70-byte header block, then a 27-byte body.
SPEC = (
    b"70:"
    b"CONTENT_LENGTH\x0027\x00"
    b"SCGI\x001\x00"
    b"REQUEST_METHOD\x00POST\x00"
    b"REQUEST_URI\x00/deepthought\x00"
    b","
    b"What is the answer to life?"
)
SPEC_HEADERS = Headers(
    {
        b"CONTENT_LENGTH": b"27",
        b"SCGI": b"1",
        b"REQUEST_METHOD": b"POST",
        b"REQUEST_URI": b"/deepthought",
    },
    27,
)

# What nginx sends with the stock scgi_params (research §4; ngx_http_scgi_module):
# its own CONTENT_LENGTH first ("0" without a body), the params in file order (HTTPS
# left out when empty, SERVER_NAME empty without server_name), then every request
# header as HTTP_*, Content-Length and Content-Type included.
NGINX_POST = (
    b"445:"
    b"CONTENT_LENGTH\x0011\x00"
    b"REQUEST_METHOD\x00POST\x00"
    b"REQUEST_URI\x00/app/echo?x=1\x00"
    b"QUERY_STRING\x00x=1\x00"
    b"CONTENT_TYPE\x00application/x-www-form-urlencoded\x00"
    b"DOCUMENT_URI\x00/app/echo\x00"
    b"DOCUMENT_ROOT\x00/var/www/html\x00"
    b"SCGI\x001\x00"
    b"SERVER_PROTOCOL\x00HTTP/1.1\x00"
    b"REQUEST_SCHEME\x00http\x00"
    b"REMOTE_ADDR\x00127.0.0.1\x00"
    b"REMOTE_PORT\x0051234\x00"
    b"SERVER_PORT\x008080\x00"
    b"SERVER_NAME\x00\x00"
    b"HTTP_HOST\x00127.0.0.1:8080\x00"
    b"HTTP_USER_AGENT\x00curl/7.88.1\x00"
    b"HTTP_ACCEPT\x00*/*\x00"
    b"HTTP_CONTENT_LENGTH\x0011\x00"
    b"HTTP_CONTENT_TYPE\x00application/x-www-form-urlencoded\x00"
    b","
    b"hello world"
)
NGINX_POST_PARAMS = {
    b"CONTENT_LENGTH": b"11",
    b"REQUEST_METHOD": b"POST",
    b"REQUEST_URI": b"/app/echo?x=1",
    b"QUERY_STRING": b"x=1",
    b"CONTENT_TYPE": b"application/x-www-form-urlencoded",
    b"DOCUMENT_URI": b"/app/echo",
    b"DOCUMENT_ROOT": b"/var/www/html",
    b"SCGI": b"1",
    b"SERVER_PROTOCOL": b"HTTP/1.1",
    b"REQUEST_SCHEME": b"http",
    b"REMOTE_ADDR": b"127.0.0.1",
    b"REMOTE_PORT": b"51234",
    b"SERVER_PORT": b"8080",
    b"SERVER_NAME": b"",
    b"HTTP_HOST": b"127.0.0.1:8080",
    b"HTTP_USER_AGENT": b"curl/7.88.1",
    b"HTTP_ACCEPT": b"*/*",
    b"HTTP_CONTENT_LENGTH": b"11",
    b"HTTP_CONTENT_TYPE": b"application/x-www-form-urlencoded",
}
# A GET: CONTENT_LENGTH "0" and CONTENT_TYPE empty; nginx < 1.23 passes the repeated
# X-Tag and Cookie header lines of the client as repeated pairs (nginx 1.23.0 CHANGES).
NGINX_GET = (
    b"180:"
    b"CONTENT_LENGTH\x000\x00"
    b"REQUEST_METHOD\x00GET\x00"
    b"REQUEST_URI\x00/\x00"
    b"QUERY_STRING\x00\x00"
    b"CONTENT_TYPE\x00\x00"
    b"SCGI\x001\x00"
    b"SERVER_NAME\x00\x00"
    b"HTTP_HOST\x00h\x00"
    b"HTTP_X_TAG\x00a\x00"
    b"HTTP_COOKIE\x00a=1\x00"
    b"HTTP_X_TAG\x00b\x00"
    b"HTTP_COOKIE\x00b=2\x00"
    b"HTTP_X_TAG\x00\x00"
    b","
)
NGINX_GET_PARAMS = {
    b"CONTENT_LENGTH": b"0",
    b"REQUEST_METHOD": b"GET",
    b"REQUEST_URI": b"/",
    b"QUERY_STRING": b"",
    b"CONTENT_TYPE": b"",
    b"SCGI": b"1",
    b"SERVER_NAME": b"",
    b"HTTP_HOST": b"h",
    b"HTTP_X_TAG": b"a, b, ",  # as nginx 1.23.0 and later join them
    b"HTTP_COOKIE": b"a=1; b=2",
}

VALID = {
    "spec example": (SPEC, [SPEC_HEADERS, Body(b"What is the answer to life?"), END]),
    "nginx POST (research §4)": (
        NGINX_POST,
        [Headers(NGINX_POST_PARAMS, 11), Body(b"hello world"), END],
    ),
    "nginx < 1.23 GET, repeated HTTP_* joined": (
        NGINX_GET,
        [Headers(NGINX_GET_PARAMS, 0), END],
    ),
    "smallest request": (MIN, [headers(CL0, SCGI), END]),
    "empty values (2008 text)": (
        netstring(CL0, SCGI, (b"A", b""), (b"B", b"")),
        [headers(CL0, SCGI, (b"A", b""), (b"B", b"")), END],
    ),
    "SCGI anywhere after the first": (
        netstring(CL0, GET, (b"X", b"y"), SCGI),
        [headers(CL0, GET, (b"X", b"y"), SCGI), END],
    ),
    "CONTENT_LENGTH leading zeros are decimal": (
        netstring((b"CONTENT_LENGTH", b"007"), SCGI) + b"abcdefg",
        [Headers({b"CONTENT_LENGTH": b"007", b"SCGI": b"1"}, 7), Body(b"abcdefg"), END],
    ),
    "bytes kept as sent": (
        netstring(CL0, SCGI, (b"caf\xe9 =\x01", b"\xff\r\n,:")),
        [headers(CL0, SCGI, (b"caf\xe9 =\x01", b"\xff\r\n,:")), END],
    ),
    "bytes after the body dropped": (
        netstring(CL5, SCGI) + b"12345" + b"6789,GET / HTTP/1.1\r\n",
        [headers(CL5, SCGI), Body(b"12345"), END],
    ),
    "bytes after an empty body dropped": (MIN + b"x", [headers(CL0, SCGI), END]),
    "a body that holds SCGI framing": (
        netstring(CL5, SCGI) + b"1:\0,,",
        [headers(CL5, SCGI), Body(b"1:\0,,"), END],
    ),
}

INVALID = {
    "nothing, then EOF": (b"", [error(IncompleteRequest, "connection closed before a request")]),
    "EOF inside LEN": (
        b"25",
        [error(IncompleteRequest, "connection closed after 2 bytes, inside the header netstring")],
    ),
    "EOF inside the header block": (
        MIN[:-1],
        [error(IncompleteRequest, "connection closed after 27 bytes, inside the header netstring")],
    ),
    "body shorter than CONTENT_LENGTH, then EOF (abort)": (
        SPEC[:-7],
        [
            SPEC_HEADERS,
            Body(b"What is the answer t"),
            error(IncompleteRequest, "connection closed after 20 of the body's 27 bytes"),
        ],
    ),
    "no body at all, then EOF": (
        netstring(CL5, SCGI),
        [
            headers(CL5, SCGI),
            error(IncompleteRequest, "connection closed after 0 of the body's 5 bytes"),
        ],
    ),
    "an HTTP request": (
        b"GET / HTTP/1.1\r\nHost: h\r\n\r\n",
        [error(SCGIError, "not an SCGI request: it starts with 'G', not a digit")],
    ),
    "leading zero in LEN": (
        b"070:" + SPEC[3:],
        [error(SCGIError, "netstring length with a leading zero: '07'")],
    ),
    "LEN 00": (b"00:,", [error(SCGIError, "netstring length with a leading zero: '00'")]),
    "LEN 0: no headers": (
        b"0:,",
        [error(SCGIError, "header netstring of length 0: no CONTENT_LENGTH")],
    ),
    "empty LEN": (b":,", [error(SCGIError, "empty netstring length before ':'")]),
    "non-digit in LEN": (
        b"7x:" + SPEC[3:],
        [error(SCGIError, "netstring length '7' followed by 'x', not ':'")],
    ),
    "sign in LEN": (
        b"+70:",
        [error(SCGIError, "not an SCGI request: it starts with '+', not a digit")],
    ),
    "space in LEN": (b"70 :", [error(SCGIError, "netstring length '70' followed by ' ', not ':'")]),
    "missing ':'": (
        b"70" + SPEC[3:],
        [error(SCGIError, "netstring length '70' followed by 'C', not ':'")],
    ),
    "',' for ':'": (b"70,", [error(SCGIError, "netstring length '70' followed by ',', not ':'")]),
    "missing trailing ','": (
        SPEC.replace(b"\x00,What", b"\x00What"),
        [error(SCGIError, "header netstring of 70 bytes followed by 'W', not ','")],
    ),
    "';' for the trailing ','": (
        SPEC.replace(b"\x00,What", b"\x00;What"),
        [error(SCGIError, "header netstring of 70 bytes followed by ';', not ','")],
    ),
    "LEN one too small": (
        b"69:" + SPEC[3:],
        [error(SCGIError, "header netstring of 69 bytes followed by '\\x00', not ','")],
    ),
    "headers not ending in NUL": (
        raw(b"CONTENT_LENGTH\x000\x00SCGI\x001"),
        [
            error(
                SCGIError, "header block does not end in NUL: ...'TENT_LENGTH\\x000\\x00SCGI\\x001'"
            )
        ],
    ),
    "odd number of strings": (
        raw(b"CONTENT_LENGTH\x000\x00SCGI\x001\x00X\x00"),
        [
            error(
                SCGIError,
                "header block holds an odd number of strings (5): the last, 'X', has no value",
            )
        ],
    ),
    "a lone NUL": (
        b"1:\x00,",
        [
            error(
                SCGIError,
                "header block holds an odd number of strings (1): the last, '', has no value",
            )
        ],
    ),
    "empty name": (
        netstring(CL0, SCGI, (b"", b"v")),
        [error(SCGIError, "header 3 has an empty name")],
    ),
    "duplicate name": (
        netstring(CL0, SCGI, GET, GET),
        [error(SCGIError, "duplicate header 'REQUEST_METHOD'")],
    ),
    "duplicate CONTENT_LENGTH": (
        netstring(CL0, SCGI, CL5),
        [error(SCGIError, "duplicate header 'CONTENT_LENGTH'")],
    ),
    "duplicate SCGI": (
        netstring(CL0, SCGI, SCGI),
        [error(SCGIError, "duplicate header 'SCGI'")],
    ),
    "CONTENT_LENGTH not first": (
        netstring(SCGI, CL0),
        [error(SCGIError, "CONTENT_LENGTH is header 2, not the first")],
    ),
    "CONTENT_LENGTH missing": (
        netstring(SCGI, GET),
        [error(SCGIError, "no CONTENT_LENGTH first (the first header is 'SCGI')")],
    ),
    "CONTENT_LENGTH in lower case": (
        netstring((b"content_length", b"0"), SCGI),
        [error(SCGIError, "no CONTENT_LENGTH first (the first header is 'content_length')")],
    ),
    "CONTENT_LENGTH empty": (
        netstring((b"CONTENT_LENGTH", b""), SCGI),
        [error(SCGIError, "CONTENT_LENGTH is not a decimal integer: ''")],
    ),
    "CONTENT_LENGTH signed": (
        netstring((b"CONTENT_LENGTH", b"+5"), SCGI),
        [error(SCGIError, "CONTENT_LENGTH is not a decimal integer: '+5'")],
    ),
    "CONTENT_LENGTH negative": (
        netstring((b"CONTENT_LENGTH", b"-1"), SCGI),
        [error(SCGIError, "CONTENT_LENGTH is not a decimal integer: '-1'")],
    ),
    "CONTENT_LENGTH with spaces": (
        netstring((b"CONTENT_LENGTH", b" 5"), SCGI),
        [error(SCGIError, "CONTENT_LENGTH is not a decimal integer: ' 5'")],
    ),
    "CONTENT_LENGTH hex": (
        netstring((b"CONTENT_LENGTH", b"0x5"), SCGI),
        [error(SCGIError, "CONTENT_LENGTH is not a decimal integer: '0x5'")],
    ),
    "CONTENT_LENGTH non-ASCII digit": (
        netstring((b"CONTENT_LENGTH", "\u0665".encode()), SCGI),
        [error(SCGIError, "CONTENT_LENGTH is not a decimal integer: 'Ù¥'")],
    ),
    "CONTENT_LENGTH of 19 digits": (
        netstring((b"CONTENT_LENGTH", b"1" + b"0" * 18), SCGI),
        [error(SCGIError, "CONTENT_LENGTH too large: '1000000000000000000'")],
    ),
    "SCGI missing": (
        netstring(CL0, GET),
        [error(SCGIError, "no SCGI header (SCGI=1 is required)")],
    ),
    "SCGI not 1": (
        netstring(CL0, (b"SCGI", b"2")),
        [error(SCGIError, "SCGI is '2', not '1'")],
    ),
    "SCGI empty": (netstring(CL0, (b"SCGI", b"")), [error(SCGIError, "SCGI is '', not '1'")]),
    "scgi in lower case": (
        netstring(CL0, (b"scgi", b"1")),
        [error(SCGIError, "no SCGI header (SCGI=1 is required)")],
    ),
}


def test_spec_example_block_is_70_bytes() -> None:
    assert SPEC.index(b",") - len(b"70:") == 70
    assert len(SPEC) - SPEC.index(b",") - 1 == 27


def test_nginx_vectors_are_netstrings() -> None:
    for data in (NGINX_POST, NGINX_GET):
        length, _, rest = data.partition(b":")
        assert rest[int(length)] == ord(",")
    assert netstring(*NGINX_POST_PARAMS.items()) + b"hello world" == NGINX_POST


@pytest.mark.parametrize(("data", "expected"), VALID.values(), ids=VALID.keys())
def test_valid(data: bytes, expected: list[object]) -> None:
    check(data, expected)


@pytest.mark.parametrize(("data", "expected"), INVALID.values(), ids=INVALID.keys())
def test_invalid(data: bytes, expected: list[object]) -> None:
    check(data, expected)


# -- limits ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("data", "limit", "expected"),
    [
        (MIN, 24, [headers(CL0, SCGI), END]),  # LEN exactly at the limit
        (MIN, 23, [larger(23, "24")]),
        (SPEC, 70, [SPEC_HEADERS, Body(b"What is the answer to life?"), END]),  # body: no limit
        (SPEC, 69, [larger(69, "70")]),
        (SPEC, 9, [larger(9, "70")]),
        (b"10", 9, [larger(9, "10")]),
        (
            b"99999999",
            65536,
            [larger(65536, "99999")],
        ),
        (
            b"65537:",
            65536,
            [larger(65536, "65537")],
        ),
        (
            b"100000",
            65536,
            [larger(65536, "100000")],
        ),
    ],
)
def test_header_limit(data: bytes, limit: int, expected: list[object]) -> None:
    check(data, expected, max_header_bytes=limit)


def test_limit_checked_on_the_digits_before_the_block() -> None:
    parser = SCGIRequestParser(max_header_bytes=100)
    parser.receive_data(b"10")
    assert parser.next_event() is NEED_DATA
    parser.receive_data(b"0")  # 100: could still be "100:" or "1000"
    assert parser.next_event() is NEED_DATA
    parser.receive_data(b"0")  # 1000 > 100 before a ':' or any header byte
    with pytest.raises(SCGIError, match="^" + re.escape(larger(100, "1000")[2]) + "$"):
        parser.next_event()
    parser = SCGIRequestParser()
    parser.receive_data(b"9" * 100_000)  # no int() of a 100,000-digit number
    with pytest.raises(SCGIError, match=re.escape(larger(65536, "99999")[2])):
        parser.next_event()


def test_default_limit_is_64_kib() -> None:
    assert SCGIRequestParser().max_header_bytes == 65536
    fill = 65536 - len(b"CONTENT_LENGTH\x000\x00SCGI\x001\x00X\x00\x00")
    big = netstring(CL0, SCGI, (b"X", b"v" * fill))
    assert big.startswith(b"65536:")
    assert run([big]) == [headers(CL0, SCGI, (b"X", b"v" * fill)), END]
    big = netstring(CL0, SCGI, (b"X", b"v" * (fill + 1)))
    assert run([big]) == [larger(65536, "65537")]


@pytest.mark.parametrize("bad", [0, -1, 1.5, "10", True, None])
def test_bad_limit(bad: object) -> None:
    if type(bad) is not int and is_compiled(scgi_request):  # mypyc checks it at the call
        if isinstance(bad, bool):
            pytest.skip("mypyc passes a bool on as the int it is")
        with pytest.raises(TypeError):
            SCGIRequestParser(max_header_bytes=bad)  # type: ignore[arg-type]
        return
    with pytest.raises(ValueError, match=r"^max_header_bytes must be a positive int"):
        SCGIRequestParser(max_header_bytes=bad)  # type: ignore[arg-type]


# -- streaming and states --------------------------------------------------------------


def test_body_is_handed_out_as_it_arrives() -> None:
    parser = SCGIRequestParser()
    parser.receive_data(SPEC[:40])
    assert parser.next_event() is NEED_DATA
    parser.receive_data(SPEC[40:78])  # the rest of the headers and "What"
    assert parser.next_event() == SPEC_HEADERS
    assert parser.next_event() == Body(b"What")
    assert parser.next_event() is NEED_DATA
    parser.receive_data(bytearray(b" is"))
    parser.receive_data(memoryview(b" the"))
    assert parser.next_event() == Body(b" is the")  # what arrived since the last event
    parser.receive_data(b" answer to life?EXTRA")
    assert parser.next_event() == Body(b" answer to life?")  # never past CONTENT_LENGTH
    assert parser.next_event() == END
    parser.receive_data(b"more")  # dropped
    assert parser.next_event() == END
    parser.receive_data(b"")
    assert parser.next_event() == END


def test_received_bytes_are_copied() -> None:
    parser = SCGIRequestParser()
    buffer = bytearray(netstring(CL5, SCGI) + b"abc")
    parser.receive_data(buffer)
    buffer[:] = b"x" * len(buffer)
    assert parser.next_event() == headers(CL5, SCGI)
    assert parser.next_event() == Body(b"abc")


def test_end_comes_before_eof() -> None:
    parser = SCGIRequestParser()
    parser.receive_data(MIN)
    assert parser.next_event() == headers(CL0, SCGI)
    assert parser.next_event() == END  # the server answers now; the web server waits


def test_incomplete_request_attributes() -> None:
    cases = [
        (b"", 0, None),
        (MIN[:10], 10, None),
        (SPEC[:-7], len(SPEC) - 7, 7),
        (netstring(CL5, SCGI), len(netstring(CL5, SCGI)), 5),
    ]
    for data, received, missing in cases:
        parser = SCGIRequestParser()
        if data:
            parser.receive_data(data)
        parser.receive_data(b"")
        with pytest.raises(IncompleteRequest) as caught:
            while parser.next_event() is not NEED_DATA:
                pass
        assert (caught.value.received, caught.value.missing) == (received, missing)
        assert isinstance(caught.value, SCGIError)


def test_error_is_repeated_and_later_bytes_dropped() -> None:
    parser = SCGIRequestParser()
    parser.receive_data(b"x")
    for _ in range(3):
        with pytest.raises(SCGIError, match=r"^not an SCGI request"):
            parser.next_event()
    parser.receive_data(MIN)  # dropped: the server closes
    with pytest.raises(SCGIError, match=r"^not an SCGI request"):
        parser.next_event()


def test_receive_after_eof_is_a_caller_bug() -> None:
    parser = SCGIRequestParser()
    parser.receive_data(b"")
    with pytest.raises(RuntimeError, match="after EOF"):
        parser.receive_data(b"1")
    with pytest.raises(RuntimeError, match="after EOF"):
        parser.receive_data(b"")


def test_need_data_never_follows_eof() -> None:
    for data in (b"", b"2", MIN[:-1], SPEC[:-1]):
        parser = SCGIRequestParser()
        if data:
            parser.receive_data(data)
        parser.receive_data(b"")
        with pytest.raises(IncompleteRequest):
            while parser.next_event() is not NEED_DATA:
                pass


def test_many_repeated_http_names_are_joined_in_linear_time() -> None:
    pairs = [CL0, SCGI] + [(b"HTTP_X", b"")] * 8000  # 8 bytes each: a 64 KiB block
    (event, end) = run([netstring(*pairs)])
    assert isinstance(event, Headers) and end == END
    assert event.params[b"HTTP_X"] == b", " * 7999


def test_module_does_no_io() -> None:
    """Sans-IO: the module imports nothing that could touch a socket, clock or process."""
    with open(source_of(scgi_request), encoding="utf-8") as source:
        tree = ast.parse(source.read())
    names = {a.name for n in ast.walk(tree) if isinstance(n, ast.Import) for a in n.names}
    names |= {n.module or "" for n in ast.walk(tree) if isinstance(n, ast.ImportFrom)}
    allowed = {"__future__", "dataclasses", "typing", "cgikit.cgi_output", "cgikit.http_chunked"}
    assert names <= allowed


# -- properties ------------------------------------------------------------------------

_NAME = st.binary(min_size=1, max_size=12).map(lambda b: b.replace(b"\0", b"n"))
_VALUE = st.binary(max_size=20).map(lambda b: b.replace(b"\0", b"v"))
_RESERVED = {b"CONTENT_LENGTH", b"SCGI"}


@st.composite
def requests(draw: st.DrawFn) -> tuple[bytes, dict[bytes, bytes], bytes]:
    """A valid request: its bytes, its params, its body."""
    body = draw(st.binary(max_size=40))
    extra = draw(st.dictionaries(_NAME.filter(lambda n: n not in _RESERVED), _VALUE, max_size=6))
    rest = draw(st.permutations([SCGI, *extra.items()]))
    pairs = [(b"CONTENT_LENGTH", str(len(body)).encode("ascii")), *rest]
    return netstring(*pairs) + body, dict(pairs), body


_CUTS = st.lists(st.integers(min_value=0, max_value=400), max_size=6)


def cut(data: bytes, points: list[int]) -> list[bytes]:
    """``data`` cut at ``points`` (taken modulo its length)."""
    edges = sorted({p % (len(data) + 1) for p in points} | {0, len(data)})
    return [data[a:b] for a, b in pairwise(edges)]


def _events_in_order(events: list[object]) -> None:
    """Headers, Body..., EndOfBody, or a prefix of that, then maybe an error."""
    if events and isinstance(events[-1], tuple):
        events = events[:-1]
    if not events:
        return
    first, *rest = events
    assert isinstance(first, Headers)
    total = sum(len(event.data) for event in rest if isinstance(event, Body))
    assert total <= first.content_length
    assert all(isinstance(event, Body) for event in rest[:-1])
    if rest and rest[-1] == END:
        assert total == first.content_length


@settings(max_examples=300, deadline=None)
@given(requests(), _CUTS)
def test_valid_requests_round_trip(
    request: tuple[bytes, dict[bytes, bytes], bytes], points: list[int]
) -> None:
    data, params, body = request
    expected: list[object] = [Headers(params, len(body))]
    expected += [Body(body)] if body else []
    assert run(cut(data, points)) == [*expected, END]
    assert run([data]) == [*expected, END]


_INPUT = st.one_of(
    st.binary(max_size=120),
    st.binary(max_size=60).map(lambda b: raw(b)),  # netstrings of any content
    st.binary(max_size=60).map(lambda b: raw(b) + b[:10]),
)


@settings(max_examples=500, deadline=None)
@given(_INPUT, _CUTS, st.sampled_from([65536, 1, 30]))
def test_arbitrary_bytes_only_raise_scgi_error(data: bytes, points: list[int], limit: int) -> None:
    whole = run([data], max_header_bytes=limit)  # only SCGIError is caught in run()
    _events_in_order(whole)
    assert run(cut(data, points), max_header_bytes=limit) == whole


_MUTATION = st.tuples(
    st.sampled_from(["flip", "insert", "delete", "truncate"]),
    st.integers(min_value=0, max_value=10_000),
    st.integers(min_value=0, max_value=255),
)


def mutate(data: bytes, mutation: tuple[str, int, int]) -> bytes:
    kind, where, byte = mutation
    where %= len(data) + 1
    if kind == "flip" and where < len(data):
        return data[:where] + bytes([data[where] ^ (byte or 1)]) + data[where + 1 :]
    if kind == "insert":
        return data[:where] + bytes([byte]) + data[where:]
    if kind == "delete":
        return data[:where] + data[where + 1 :]
    return data[:where]


@settings(max_examples=500, deadline=None)
@given(requests(), st.lists(_MUTATION, min_size=1, max_size=3), _CUTS)
def test_mutated_requests_only_raise_scgi_error(
    request: tuple[bytes, dict[bytes, bytes], bytes],
    mutations: list[tuple[str, int, int]],
    points: list[int],
) -> None:
    data = request[0]
    for mutation in mutations:
        data = mutate(data, mutation)
    whole = run([data])
    _events_in_order(whole)
    assert run(cut(data, points)) == whole
    assert run([data[i : i + 1] for i in range(len(data))]) == whole
