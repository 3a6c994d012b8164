"""The CGI output parser as a stream: the header limit, its states, and properties.

Properties (hypothesis): arbitrary bytes only ever give events or ScriptOutputError, the
same for any split, with the Body a suffix of the input; a valid generated response
round-trips (status, headers, body) whatever the split.
"""

from __future__ import annotations

from http import HTTPStatus
from itertools import pairwise

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from cgikit import cgi_output
from cgikit.cgi_output import (
    CLIENT_REDIRECT,
    DOCUMENT,
    LOCAL_REDIRECT,
    NEED_DATA,
    NO_BODY_STATUSES,
    Body,
    EndOfOutput,
    Head,
    NeedData,
    ScriptOutput,
    ScriptOutputError,
)
from cgikit.wsgi_response import HOP_BY_HOP
from compiled import is_compiled
from protocol.test_cgi_output import END, check, error, run

AB = ("Content-Type", "a/b")
HEAD_AB = Head(200, "OK", [AB], DOCUMENT)


# -- rule 6: the header block limit ----------------------------------------------------


@pytest.mark.parametrize(
    ("data", "limit", "expected"),
    [
        (b"Content-Type: a/b\n\nxy", 19, [HEAD_AB, Body(b"xy"), END]),  # exactly at the limit
        (b"Content-Type: a/b\n\nxy", 18, [error("header block larger than 18 bytes")]),
        (b"Content-Type: a/b\r\n\r\n", 21, [HEAD_AB, END]),
        (b"Content-Type: a/b\r\n\r\n", 20, [error("header block larger than 20 bytes")]),
        (b"Content-Type: a/b\n", 5, [error("header block larger than 5 bytes")]),  # before EOF
        (b"no colon here\n\n", 5, [error("header block larger than 5 bytes")]),  # before syntax
        (b"no colon here\n\n", 14, [error("line 1 is not a header field: 'no colon here'")]),
        (b"\n", 1, [error("the output starts with an empty line: no header fields")]),
    ],
)
def test_header_limit(data: bytes, limit: int, expected: list[object]) -> None:
    check(data, expected, max_header_bytes=limit)


def test_default_limit_is_64_kib() -> None:
    line = b"Content-Type: a/b\nX-Big: "
    fill = 65536 - len(line) - 2  # the line's LF and the empty line
    head = [Head(200, "OK", [AB, ("X-Big", "a" * fill)], DOCUMENT)]
    assert run([line + b"a" * fill + b"\n\nok"]) == [*head, Body(b"ok"), END]
    assert run([line + b"a" * (fill + 1) + b"\n\n"]) == [
        error("header block larger than 65536 bytes")
    ]


def test_limit_raises_at_once_without_eof() -> None:
    parser = ScriptOutput()
    parser.receive_data(b"X-A: " + b"a" * 65531)
    assert parser.next_event() is NEED_DATA  # 65536 bytes: still within the limit
    parser.receive_data(b"a")
    with pytest.raises(ScriptOutputError, match=r"^header block larger than 65536 bytes$"):
        parser.next_event()


@pytest.mark.parametrize("limit", [0, -1, 1.5, "64"])
def test_bad_limit(limit: object) -> None:
    if type(limit) is not int and is_compiled(cgi_output):  # mypyc refuses it at the call
        with pytest.raises(TypeError):
            ScriptOutput(limit)  # type: ignore[arg-type]
        return
    with pytest.raises(ValueError, match="max_header_bytes"):
        ScriptOutput(limit)  # type: ignore[arg-type]


# -- the state machine -----------------------------------------------------------------


def test_body_is_handed_out_as_it_arrives() -> None:
    parser = ScriptOutput()
    assert parser.next_event() is NEED_DATA
    parser.receive_data(b"Content-Type: a/b\r\n")
    assert parser.next_event() is NEED_DATA
    parser.receive_data(b"\r\nfirst")
    assert parser.next_event() == HEAD_AB
    assert parser.next_event() == Body(b"first")
    assert parser.next_event() is NEED_DATA
    reused = bytearray(b"second")
    parser.receive_data(reused)
    reused[:] = b"XXXXXX"  # the parser copied the bytes
    parser.receive_data(memoryview(b"third"))
    assert parser.next_event() == Body(b"secondthird")
    assert parser.next_event() is NEED_DATA
    parser.receive_data(b"")
    assert parser.next_event() == EndOfOutput()
    assert parser.next_event() == EndOfOutput()  # and again
    with pytest.raises(RuntimeError, match="after EOF"):
        parser.receive_data(b"late")


def test_error_state_is_sticky() -> None:
    parser = ScriptOutput()
    parser.receive_data(b"Status: 30 FooBar\n\n")
    for _ in range(2):
        with pytest.raises(ScriptOutputError) as caught:
            parser.next_event()
        assert caught.value.reason == "invalid Status '30 FooBar'"
        assert str(caught.value) == caught.value.reason
    parser.receive_data(b"Content-Type: a/b\n\nmore")  # the host drains stdout: ignored
    parser.receive_data(b"")
    with pytest.raises(ScriptOutputError, match=r"^invalid Status '30 FooBar'$"):
        parser.next_event()


def test_discarded_body_gives_no_events() -> None:
    parser = ScriptOutput()
    parser.receive_data(b"Location: /next\n\nignored")
    head = parser.next_event()
    assert isinstance(head, Head) and head.kind == LOCAL_REDIRECT and not head.body_allowed
    parser.receive_data(b"x" * 100_000)
    assert parser.next_event() is NEED_DATA
    parser.receive_data(b"")
    assert parser.next_event() == EndOfOutput()


def test_head_helpers() -> None:
    head = Head(302, "Found", [AB, ("location", "http://x/")], CLIENT_REDIRECT)
    assert head.location == "http://x/" and head.body_allowed
    assert HEAD_AB.location is None and HEAD_AB.body_allowed
    assert not Head(204, "No Content", [], DOCUMENT).body_allowed
    assert not Head(101, "Switching Protocols", [], DOCUMENT).body_allowed
    assert issubclass(ScriptOutputError, ValueError)
    assert repr(NEED_DATA) == "NEED_DATA"


# -- properties ------------------------------------------------------------------------

_PIECES = [b"\n", b"\r\n", b"\r", b"\0", b":", b" ", b"\t", b"\xe9", b"Status: ", b"status:"]
_PIECES += [b"Location: ", b"Content-Type: a", b"Content-Length: 5", b"Transfer-Encoding: x"]
_PIECES += [b"200 OK", b"30 x", b"204", b"304", b"/x", b"//e", b"http://h/", b"X-A: 1"]
_OUTPUT = st.one_of(
    st.binary(max_size=120),
    st.lists(st.one_of(st.sampled_from(_PIECES), st.binary(max_size=6)), max_size=30).map(b"".join),
)
_CUTS = st.lists(st.integers(0, 400), max_size=6)


def _chunks(data: bytes, cuts: list[int]) -> list[bytes]:
    points = [0, *sorted(c for c in cuts if 0 < c < len(data)), len(data)]
    return [data[a:b] for a, b in pairwise(points) if a < b]


@settings(max_examples=500, deadline=None)
@given(_OUTPUT, _CUTS, st.sampled_from([65536, 1, 8, 40]))
def test_any_bytes_give_events_or_script_output_error(
    data: bytes, cuts: list[int], limit: int
) -> None:
    events = run(_chunks(data, cuts), limit)  # any other exception fails the test
    assert events == run([data], limit)  # the split never matters
    *middle, last = events
    assert last == END or (isinstance(last, tuple) and last[0] == "error")
    assert all(isinstance(e, (Head, Body)) for e in middle)
    assert not any(isinstance(e, NeedData) for e in events)
    if middle:
        assert isinstance(middle[0], Head) and all(isinstance(e, Body) for e in middle[1:])
    body = b"".join(e.data for e in middle if isinstance(e, Body))
    assert data.endswith(body)


_RESERVED = {"status", "location", "content-type", "content-length"} | HOP_BY_HOP
_NAME = st.text("!#$%&'*+-.^_`|~09AZaz", min_size=1, max_size=8).filter(
    lambda name: name.lower() not in _RESERVED
)
_VALUE = st.text(st.characters(max_codepoint=0xFF, exclude_characters="\r\n\x00"), max_size=12)
_PAD = st.sampled_from(["", " ", "\t", " \t "])
_EOL = st.sampled_from([b"\n", b"\r\n"])
_REASON = st.lists(st.text("abXY\xe9-", min_size=1, max_size=5), max_size=3).map(" ".join)
_PHRASES = {status.value: status.phrase for status in HTTPStatus}


@st.composite
def responses(draw: st.DrawFn) -> tuple[bytes, Head, bytes]:
    """A valid document: its bytes, the Head it must give and the body it must pass."""
    lines, headers = [], []
    for name, before, value, after in draw(st.lists(st.tuples(_NAME, _PAD, _VALUE, _PAD))):
        lines.append(f"{name}:{before}{value}{after}")
        headers.append((name, value.strip(" \t")))
    status = draw(st.none() | st.integers(100, 599))
    reason = draw(_REASON)
    if status is None or draw(st.booleans()):
        at = draw(st.integers(0, len(lines)))
        lines.insert(at, "content-TYPE:  text/plain; charset=x")
        headers.insert(at, ("content-TYPE", "text/plain; charset=x"))
    if status is not None:
        lines.insert(draw(st.integers(0, len(lines))), f"Status: {status} {reason}")
    block = b"".join(line.encode("latin-1") + draw(_EOL) for line in lines) + draw(_EOL)
    body = draw(st.binary(max_size=64))
    code = 200 if status is None else status
    phrase = reason if status is not None and reason else _PHRASES.get(code, "")
    head = Head(code, phrase, headers, DOCUMENT)
    return block + body, head, b"" if code in NO_BODY_STATUSES else body


@settings(max_examples=400, deadline=None)
@given(responses(), _CUTS)
def test_valid_response_round_trips(response: tuple[bytes, Head, bytes], cuts: list[int]) -> None:
    data, head, body = response
    assert run(_chunks(data, cuts)) == [head, *([Body(body)] if body else []), END]
