"""The one-pass reading of a whole request (fastcgi_whole) against Connection's own.

A table of shapes, each taken or left; every proper prefix of a taken request left (a
request cut anywhere is ``Connection``'s to wait for); and, on generated requests (any
params, bodies, record cuts and paddings) and on mutated and random bytes, the
property of the module docstring: whatever ``whole_request`` takes, ``Connection`` fed
the same bytes reads as the same request, and ``Connection.receive_whole`` leaves it
in the state those events leave.
"""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from cgikit import fastcgi_records as wire
from cgikit.fastcgi_connection import (
    NEED_DATA,
    Connection,
    FastCGIError,
    Params,
    RequestStarted,
    StdinData,
    StdinEnded,
)
from cgikit.fastcgi_whole import WholeRequest, whole_request
from protocol.test_fastcgi_records import rec

LIMIT = 1 << 20
PAIRS = {b"REQUEST_METHOD": b"POST", b"REQUEST_URI": b"/cgi-bin/x?\xe9", b"EMPTY": b""}
META = {k.decode("latin-1"): v.decode("latin-1") for k, v in PAIRS.items()}


def record(kind: int, content: bytes = b"", rid: int = 1, padding: int | None = None) -> bytes:
    """``rec`` with request 1 by default, the shape this file's table needs."""
    return rec(kind, rid, content, padding)


def begin(rid: int = 1, role: int = wire.RESPONDER, flags: int = 0) -> bytes:
    return record(wire.BEGIN_REQUEST, wire.begin_request_body(role, flags), rid)


def build(
    rid: int = 1,
    flags: int = 0,
    params: bytes | None = None,
    stdin: bytes = b"body",
    cut: int = 5,
) -> bytes:
    """A request as a web server writes it: PARAMS and STDIN each cut every ``cut`` bytes."""
    block = wire.encode_params(PAIRS) if params is None else params
    parts = [begin(rid, flags=flags)]
    parts += [record(wire.PARAMS, block[i : i + cut], rid) for i in range(0, len(block), cut)]
    parts.append(record(wire.PARAMS, rid=rid))
    parts += [record(wire.STDIN, stdin[i : i + cut], rid) for i in range(0, len(stdin), cut)]
    parts.append(record(wire.STDIN, rid=rid))
    return b"".join(parts)


PLAIN = build()
TAKEN: dict[str, tuple[bytes, WholeRequest]] = {
    "nginx's shape": (PLAIN, WholeRequest(1, False, META, b"body")),
    "keep-conn, id 513": (build(513, wire.KEEP_CONN), WholeRequest(513, True, META, b"body")),
    "no body": (build(stdin=b""), WholeRequest(1, False, META, b"")),
    "no params": (build(params=b"", stdin=b""), WholeRequest(1, False, {}, b"")),
    "padding up to 255": (
        begin() + record(wire.PARAMS, wire.encode_params(PAIRS), padding=255)
        + record(wire.PARAMS, padding=3) + record(wire.STDIN, padding=8),
        WholeRequest(1, False, META, b""),
    ),
    "a repeated name": (
        build(params=wire.encode_params([(b"A", b"1"), (b"A", b"2")])),
        WholeRequest(1, False, {"A": "2"}, b"body"),
    ),
}  # fmt: skip
LEFT: dict[str, bytes] = {
    "empty": b"",
    "a management record first": record(wire.GET_VALUES, wire.encode_params({b"X": b""}), 0)
    + PLAIN,
    "request id 0": build(rid=0),
    "the Authorizer role": begin(role=wire.AUTHORIZER) + PLAIN[16:],
    "a BEGIN_REQUEST body of 7 bytes": record(wire.BEGIN_REQUEST, bytes(7)) + PLAIN[16:],
    "version 2": b"\x02" + PLAIN[1:],
    "version 2 further on": PLAIN[:16] + b"\x02" + PLAIN[17:],
    "a record of another id": PLAIN[:16] + record(wire.PARAMS, b"\x01\x01ab", 2) + PLAIN[16:],
    "an abort": PLAIN[:-8] + record(wire.ABORT_REQUEST),
    "STDIN before the end of PARAMS": begin() + record(wire.STDIN, b"x") + PLAIN[16:],
    "a repeated end of PARAMS (yaws)": begin() + record(wire.PARAMS) + record(wire.PARAMS)
    + record(wire.STDIN),
    "a repeated end of STDIN": PLAIN + record(wire.STDIN),
    "a second request behind": PLAIN + build(2),
    "a stray byte behind": PLAIN + b"\x01",
    "no end of STDIN": PLAIN[:-8],
    "params cut inside a pair": build(params=wire.encode_params(PAIRS)[:-3]),
    "params over the limit": build(params=wire.encode_params({b"N": b"v" * LIMIT})),
    "a DATA record": PLAIN[:-8] + record(wire.DATA, b"d") + record(wire.STDIN),
}  # fmt: skip


@pytest.mark.parametrize("name", list(TAKEN))
def test_a_whole_request_is_taken(name: str) -> None:
    data, expected = TAKEN[name]
    assert whole_request(data, LIMIT) == expected
    assert_connection_agrees(data, expected)


@pytest.mark.parametrize("name", list(LEFT))
def test_any_other_shape_is_left_to_the_connection(name: str) -> None:
    assert whole_request(LEFT[name], LIMIT) is None


@pytest.mark.parametrize("name", list(TAKEN))
def test_a_request_cut_anywhere_is_left(name: str) -> None:
    data = TAKEN[name][0]
    assert all(whole_request(data[:end], LIMIT) is None for end in range(len(data)))


def test_the_params_limit_is_the_connections() -> None:
    block = wire.encode_params(PAIRS)
    data = build(params=block)
    assert whole_request(data, len(block)) is not None
    assert whole_request(data, len(block) - 1) is None


def connection_reading(data: bytes) -> list[object]:
    """``Connection``'s events for ``data`` up to NEED_DATA, or the error it raised."""
    conn = Connection(max_params_bytes=LIMIT)
    conn.receive_data(data)
    events: list[object] = []
    try:
        while (event := conn.next_event()) is not NEED_DATA:
            events.append(event)
    except FastCGIError as exc:
        events.append(exc)
    return events


def assert_connection_agrees(data: bytes, taken: WholeRequest) -> None:
    events = connection_reading(data)
    rid = taken.request_id
    started = RequestStarted(rid, wire.RESPONDER, taken.keep_conn)
    assert events[:2] == [started, Params(rid, taken.meta)]
    assert events[-1] == StdinEnded(rid)
    body = events[2:-1]
    assert all(isinstance(e, StdinData) and e.request_id == rid for e in body)
    assert b"".join(e.data for e in body) == taken.stdin  # type: ignore[attr-defined]
    assert_same_state_after(data, taken)


def assert_same_state_after(data: bytes, taken: WholeRequest) -> None:
    """Taken by ``receive_whole`` or read event by event, the connection then frames the
    response, ends the request and reads the next one alike."""
    shortcut, parsed = Connection(), Connection()
    assert shortcut.receive_whole(data) == taken
    parsed.receive_data(data)
    while parsed.next_event() is not NEED_DATA:
        pass
    rid = taken.request_id
    for conn in (shortcut, parsed):
        assert conn.active_request == rid and conn.buffered_bytes == 0
    assert shortcut.send_stdout(rid, b"out") == parsed.send_stdout(rid, b"out")
    assert shortcut.send_stderr(rid, b"err") == parsed.send_stderr(rid, b"err")
    assert shortcut.end_request(rid) == parsed.end_request(rid)
    if taken.keep_conn:  # the next request, and a second shortcut cannot start mid-request
        assert shortcut.receive_whole(PLAIN) is not None
        assert shortcut.receive_whole(PLAIN) is None


def test_receive_whole_takes_only_an_idle_connection() -> None:
    started = Connection()
    started.receive_data(PLAIN[:16])
    assert started.next_event() == RequestStarted(1, wire.RESPONDER, False)
    assert started.receive_whole(build(2)) is None  # a request is active
    buffered = Connection()
    buffered.receive_data(b"\x01")
    assert buffered.next_event() is NEED_DATA
    assert buffered.receive_whole(PLAIN) is None  # a byte of a record is held
    replying = Connection()
    replying.receive_data(record(wire.GET_VALUES, rid=0))
    assert replying.next_event() is NEED_DATA
    assert replying.receive_whole(PLAIN) is None  # a reply not yet taken
    closed = Connection()
    closed.receive_data(b"")
    assert closed.receive_whole(PLAIN) is None
    broken = Connection()
    broken.receive_data(b"\x09" + bytes(7))
    with pytest.raises(FastCGIError):
        broken.next_event()
    assert broken.receive_whole(PLAIN) is None
    assert Connection().receive_whole(b"junk") is None


pairs_st = st.dictionaries(st.binary(max_size=140), st.binary(max_size=300), max_size=6)


@settings(max_examples=300, deadline=None)
@given(
    rid=st.integers(1, 0xFFFF),
    keep=st.booleans(),
    pairs=pairs_st,
    stdin=st.binary(max_size=600),
    cut=st.integers(1, 400),
)
def test_generated_requests_are_taken_as_connection_reads_them(
    rid: int, keep: bool, pairs: dict[bytes, bytes], stdin: bytes, cut: int
) -> None:
    data = build(rid, wire.KEEP_CONN if keep else 0, wire.encode_params(pairs), stdin, cut)
    taken = whole_request(data, LIMIT)
    assert taken is not None and taken.stdin == stdin
    assert {k.encode("latin-1"): v.encode("latin-1") for k, v in taken.meta.items()} == pairs
    assert_connection_agrees(data, taken)


@settings(max_examples=500, deadline=None)
@given(data=st.one_of(
    st.binary(max_size=200),
    st.builds(
        lambda at, byte: PLAIN[:at] + bytes([byte]) + PLAIN[at + 1 :],
        st.integers(0, len(PLAIN) - 1), st.integers(0, 255),
    ),
    st.builds(lambda at, junk: PLAIN[:at] + junk + PLAIN[at:],
              st.integers(0, len(PLAIN)), st.binary(min_size=1, max_size=16)),
))  # fmt: skip
def test_nothing_is_taken_that_connection_reads_otherwise(data: bytes) -> None:
    taken = whole_request(data, LIMIT)
    if taken is not None:
        assert_connection_agrees(data, taken)
