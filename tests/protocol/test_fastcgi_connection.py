"""The FastCGI connection state machine (fastcgi_connection; research §8.3).

Every input is fed whole, byte by byte and at every two-chunk split point, then EOF,
and must give the same events and the same bytes written each time. The harness plays
a minimal app: at ``StdinEnded`` (or ``Params``, or nothing) it writes ``hi`` and ends
the request, and at ``RequestAborted`` it ends the request; ``("end", close)`` in the
events is ``end_request``'s verdict. It also checks the memory bounds after every
NEED_DATA. Properties (hypothesis): valid conversations with any params, bodies,
paddings and management records give the expected events whatever the split; arbitrary
records, mutated conversations and random bytes give events or FastCGIError only.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from itertools import pairwise
from typing import Literal

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from cgikit import fastcgi_connection
from cgikit.fastcgi_connection import (
    NEED_DATA,
    Connection,
    ConnectionClosed,
    FastCGIError,
    Params,
    RequestAborted,
    RequestEnd,
    RequestRejected,
    RequestStarted,
    StdinData,
    StdinEnded,
)
from cgikit.fastcgi_records import (
    ABORT_REQUEST,
    AUTHORIZER,
    BEGIN_REQUEST,
    CANT_MPX_CONN,
    DATA,
    FILTER,
    GET_VALUES,
    KEEP_CONN,
    MAX_CONNS,
    MAX_RECORD,
    MAX_REQS,
    MPXS_CONNS,
    OVERLOADED,
    PARAMS,
    RESPONDER,
    STDERR,
    STDIN,
    STDOUT,
    UNKNOWN_ROLE,
    begin_request_body,
    encode_params,
    encode_record,
    encode_stream,
    end_request_record,
    get_values_result_record,
    unknown_type_record,
)
from compiled import is_compiled
from protocol.test_fastcgi_records import rec, x
from splitting import splits


def params_event(request_id: int, pairs: dict[bytes, bytes]) -> Params:
    """The Params event of ``pairs`` as sent (its ``meta`` is their latin-1 decoding)."""
    event = Params(request_id, {k.decode("latin-1"): v.decode("latin-1") for k, v in pairs.items()})
    assert event.params == pairs
    return event


App = Literal["stdin", "params", "none"]
CLOSED = ConnectionClosed()
SP80 = {b"SERVER_PORT": b"80"}
STARTED = RequestStarted(1, RESPONDER, True)
P80 = params_event(1, SP80)


def error(reason: str) -> tuple[str, str]:
    return ("error", reason)


def end(close: bool) -> tuple[str, bool]:
    return ("end", close)


def run(chunks: Iterable[bytes], app: App = "stdin", **limits: int) -> tuple[list[object], bytes]:
    """Feed ``chunks`` then EOF; the events, then the bytes the app side wrote."""
    conn = Connection(**limits)
    events: list[object] = []
    sent = bytearray()
    fed = replies = 0
    try:
        for chunk in [*filter(None, chunks), b""]:  # b"" would be EOF
            conn.receive_data(chunk)
            fed += len(chunk)
            replies += _drain(conn, app, events, sent)
            assert replies <= 2 * fed  # the replies to management records stay bounded
    except FastCGIError as exc:
        assert str(exc) == exc.reason
        events.append(error(exc.reason))
        sent += conn.data_to_send()  # replies made before the bad record are still there
        with pytest.raises(FastCGIError, match="^" + re.escape(exc.reason)):
            conn.next_event()  # raised again
        conn.receive_data(b"dropped")
    return events, bytes(sent)


def _drain(conn: Connection, app: App, events: list[object], sent: bytearray) -> int:
    """Take events until NEED_DATA or CLOSED, answering as the app; the reply bytes."""
    replies = 0
    while True:
        event = conn.next_event()
        reply = conn.data_to_send()
        sent += reply
        replies += len(reply)
        if event is NEED_DATA:  # what a peer can make us hold (module docstring)
            assert conn.buffered_bytes < MAX_RECORD + conn.max_params_bytes
            return replies
        events.append(event)
        if isinstance(event, ConnectionClosed):
            assert conn.next_event() == CLOSED  # repeated
            return replies
        request_id = _app_ends(app, event)
        if request_id is not None and conn.active_request == request_id:
            _respond(conn, request_id, events, sent)


def _app_ends(app: App, event: object) -> int | None:
    """The request the app ends at ``event``: after its body, its params, or an abort."""
    if isinstance(event, RequestAborted) and app != "none":
        return event.request_id
    if isinstance(event, StdinEnded) and app == "stdin":
        return event.request_id
    if isinstance(event, Params) and app == "params":
        return event.request_id
    return None


def _respond(conn: Connection, request_id: int, events: list[object], sent: bytearray) -> None:
    sent += conn.send_stdout(request_id, b"hi")  # dropped after RequestAborted
    ending = conn.end_request(request_id)
    sent += ending.data
    events.append(end(ending.close_connection))


def check(
    data: bytes, events: list[object], sent: bytes | None = None, app: App = "stdin", **limits: int
) -> None:
    expected = run([data], app, **limits)
    assert expected[0] == events
    if sent is not None:
        assert expected[1] == sent
    for chunks in splits(data):
        assert run(chunks, app, **limits) == expected, chunks


# -- conversation pieces -----------------------------------------------------------------


def begin(request_id: int = 1, keep: bool = True, role: int = RESPONDER) -> bytes:
    return rec(BEGIN_REQUEST, request_id, begin_request_body(role, KEEP_CONN if keep else 0))


def params(request_id: int = 1, pairs: dict[bytes, bytes] = SP80) -> bytes:
    return rec(PARAMS, request_id, encode_params(pairs)) + rec(PARAMS, request_id)


def stdin(request_id: int = 1, *bodies: bytes) -> bytes:
    return b"".join(rec(STDIN, request_id, body) for body in bodies) + rec(STDIN, request_id)


def ok(request_id: int = 1) -> bytes:
    """What the harness app writes: ``hi``, the empty STDOUT, END_REQUEST."""
    return (
        encode_stream(STDOUT, request_id, b"hi")
        + encode_record(STDOUT, request_id)
        + end_request_record(request_id)
    )


def aborted(request_id: int = 1) -> bytes:
    """What the harness app writes after RequestAborted: its ``hi`` is dropped."""
    return encode_record(STDOUT, request_id) + end_request_record(request_id)


def get_values(*names: bytes) -> bytes:
    return rec(GET_VALUES, 0, encode_params([(name, b"") for name in names]))


GET = begin() + params() + stdin()
OK1 = x(
    '[01 06 00 01 00 02 06 00] "hi" 00 00 00 00 00 00  01 06 00 01 00 00 00 00 '
    "[01 03 00 01 00 08 00 00] 00 00 00 00 00 00 00 00"
)
POST_HELLO = x(  # research §8.1, record by record: a POST of "hello"
    "[01 01 00 01 00 08 00 00] 00 01 01 00 00 00 00 00 "
    '[01 04 00 01 00 0F 01 00] 0B 02 "SERVER_PORT" "80" 00  01 04 00 01 00 00 00 00 '
    "[01 05 00 01 00 05 03 00] 68 65 6C 6C 6F 00 00 00  01 05 00 01 00 00 00 00"
)
VALUES_RESULT = x(
    '[01 0A 00 00 00 35 03 00] 0E 02 "FCGI_MAX_CONNS" "10" 0D 02 "FCGI_MAX_REQS" "10" '
    '0F 01 "FCGI_MPXS_CONNS" "0" 00 00 00'
)
THREE = get_values(MAX_CONNS, MAX_REQS, MPXS_CONNS)
BIG = {b"HTTP_COOKIE": b"c" * 300, b"N" * 130: b"v" * 140, b"A": b"B"}
# research §8.3 item 15: what nginx 1.22.1 sent (one PARAMS record of 553 bytes).
NGINX = {
    k.encode(): v.encode()
    for k, v in [
        ("QUERY_STRING", ""),
        ("REQUEST_METHOD", "POST"),
        ("CONTENT_TYPE", "application/x-www-form-urlencoded"),
        ("CONTENT_LENGTH", "11"),
        ("SCRIPT_NAME", "/keep/p"),
        ("REQUEST_URI", "/keep/p"),
        ("DOCUMENT_URI", "/keep/p"),
        ("DOCUMENT_ROOT", "/usr/share/nginx"),
        ("SERVER_PROTOCOL", "HTTP/1.1"),
        ("REQUEST_SCHEME", "http"),
        ("GATEWAY_INTERFACE", "CGI/1.1"),
        ("SERVER_SOFTWARE", "nginx/1.22.1"),
        ("REMOTE_ADDR", "127.0.0.1"),
        ("REMOTE_PORT", "51234"),
        ("REMOTE_USER", ""),
        ("SERVER_ADDR", "127.0.0.1"),
        ("SERVER_PORT", "8080"),
        ("SERVER_NAME", "localhost"),
        ("REDIRECT_STATUS", "200"),
        ("HTTP_HOST", "127.0.0.1:8080"),
        ("HTTP_USER_AGENT", "curl/7.88.1"),
        ("HTTP_CONTENT_LENGTH", "11"),
        ("HTTP_CONTENT_TYPE", "application/x-www-form-urlencoded"),
    ]
}


def test_pieces() -> None:
    assert ok() == OK1
    assert begin() + params() + stdin(1, b"hello") == POST_HELLO
    assert get_values_result_record({MAX_CONNS: b"10", MAX_REQS: b"10", MPXS_CONNS: b"0"}) == (
        VALUES_RESULT
    )
    assert len(encode_params(NGINX)) == 553
    assert params(1, NGINX)[:8] == x("01 04 00 01 02 29 07 00")


# -- conversations (research §8.3) --------------------------------------------------------

VALID = {
    "GET, keep_conn (nginx)": (GET, [STARTED, P80, StdinEnded(1), end(False), CLOSED], OK1),
    "GET, no keep_conn": (
        begin(keep=False) + params() + stdin(),
        [RequestStarted(1, RESPONDER, False), P80, StdinEnded(1), end(True), CLOSED],
        OK1,
    ),
    "POST hello, research §8.1 bytes": (
        POST_HELLO,
        [STARTED, P80, StdinData(1, b"hello"), StdinEnded(1), end(False), CLOSED],
        OK1,
    ),
    "id 300 is echoed": (
        begin(300) + params(300) + stdin(300),
        [
            RequestStarted(300, RESPONDER, True),
            params_event(300, SP80),
            StdinEnded(300),
            end(False),
            CLOSED,
        ],
        ok(300),
    ),
    "body in three records, passed through as they come": (
        begin() + params() + stdin(1, b"a", b"bc" * 100, b"d"),
        [
            STARTED,
            P80,
            StdinData(1, b"a"),
            StdinData(1, b"bc" * 100),
            StdinData(1, b"d"),
            StdinEnded(1),
            end(False),
            CLOSED,
        ],
        OK1,
    ),
    "params in two records (§8.3 item 1)": (
        begin()
        + rec(PARAMS, 1, encode_params({b"A": b"1"}))
        + rec(PARAMS, 1, encode_params(SP80))
        + rec(PARAMS, 1)
        + stdin(1, b"x"),
        [
            STARTED,
            params_event(1, {b"A": b"1", **SP80}),
            StdinData(1, b"x"),
            StdinEnded(1),
            end(False),
            CLOSED,
        ],
        OK1,
    ),
    "no params at all": (
        begin() + rec(PARAMS, 1) + stdin(),
        [STARTED, params_event(1, {}), StdinEnded(1), end(False), CLOSED],
        OK1,
    ),
    "nginx capture (§8.3 item 15)": (
        begin() + params(1, NGINX) + rec(STDIN, 1, b"a=1&b=2&c=3") + rec(STDIN, 1),
        [
            STARTED,
            params_event(1, NGINX),
            StdinData(1, b"a=1&b=2&c=3"),
            StdinEnded(1),
            end(False),
            CLOSED,
        ],
        OK1,
    ),
    "padding variants (§8.3 item 4)": (
        begin()
        + rec(PARAMS, 1, encode_params(SP80), 255, 0xEE)
        + x("01 04 00 01 00 00 07 00")
        + bytes(7)
        + rec(STDIN, 1, b"hello", 0)
        + rec(STDIN, 1, b"", 8, 0xFF),
        [STARTED, P80, StdinData(1, b"hello"), StdinEnded(1), end(False), CLOSED],
        OK1,
    ),
    "keep_conn: two requests with id 1 (§8.3 item 6)": (
        GET + GET,
        [STARTED, P80, StdinEnded(1), end(False)] * 2 + [CLOSED],
        OK1 * 2,
    ),
    "second BEGIN while active: CANT_MPX_CONN (§8.3 item 7)": (
        begin() + begin(2) + params() + params(2) + rec(STDIN, 2, b"x") + stdin(),
        [STARTED, RequestRejected(2, CANT_MPX_CONN, False), P80, StdinEnded(1), end(False), CLOSED],
        x("[01 03 00 02 00 08 00 00] 00 00 00 00 01 00 00 00") + OK1,
    ),
    "CANT_MPX_CONN ignores the rejected request's flags": (
        begin() + begin(2, keep=False, role=FILTER) + params() + stdin(),
        [STARTED, RequestRejected(2, CANT_MPX_CONN, False), P80, StdinEnded(1), end(False), CLOSED],
        end_request_record(2, 0, CANT_MPX_CONN) + OK1,
    ),
    "role Authorizer, no keep_conn: UNKNOWN_ROLE, close": (
        begin(keep=False, role=AUTHORIZER) + params() + stdin(),
        [RequestRejected(1, UNKNOWN_ROLE, True), CLOSED],
        x("[01 03 00 01 00 08 00 00] 00 00 00 00 03 00 00 00"),
    ),
    "role Filter, keep_conn: UNKNOWN_ROLE, then a responder": (
        begin(role=FILTER) + params() + rec(DATA, 1, b"d") + GET,
        [RequestRejected(1, UNKNOWN_ROLE, False), STARTED, P80, StdinEnded(1), end(False), CLOSED],
        end_request_record(1, 0, UNKNOWN_ROLE) + OK1,
    ),
    "ABORT mid-body (§8.3 item 8)": (
        begin() + params() + rec(STDIN, 1, b"hel") + rec(ABORT_REQUEST, 1),
        [STARTED, P80, StdinData(1, b"hel"), RequestAborted(1), end(False), CLOSED],
        x("01 06 00 01 00 00 00 00 [01 03 00 01 00 08 00 00] 00 00 00 00 00 00 00 00"),
    ),
    "ABORT without keep_conn: close": (
        begin(keep=False) + params() + rec(ABORT_REQUEST, 1) + rec(STDIN, 1, b"late"),
        [RequestStarted(1, RESPONDER, False), P80, RequestAborted(1), end(True), CLOSED],
        aborted(),
    ),
    "ABORT during PARAMS": (
        begin() + rec(PARAMS, 1, b"\x01") + rec(ABORT_REQUEST, 1) + GET,
        [STARTED, RequestAborted(1), end(False), STARTED, P80, StdinEnded(1), end(False), CLOSED],
        aborted() + OK1,
    ),
    "EOF while active is an abort (§8.3 item 9)": (
        begin() + params() + rec(STDIN, 1, b"hel"),
        [STARTED, P80, StdinData(1, b"hel"), RequestAborted(1), end(True), CLOSED],
        aborted(),
    ),
    "EOF mid-record drops the partial record": (
        begin() + params() + rec(STDIN, 1, b"hello")[:-4],
        [STARTED, P80, RequestAborted(1), end(True), CLOSED],
        aborted(),
    ),
    "EOF mid-header with no request": (
        GET + x("01 01 00"),
        [STARTED, P80, StdinEnded(1), end(False), CLOSED],
        OK1,
    ),
    "nothing, then EOF": (b"", [CLOSED], b""),
    "GET_VALUES mid-request, answered at once (§8.3 item 10)": (
        begin() + params() + rec(STDIN, 1, b"a") + THREE + stdin(),
        [STARTED, P80, StdinData(1, b"a"), StdinEnded(1), end(False), CLOSED],
        VALUES_RESULT + OK1,
    ),
    "GET_VALUES: unknown names omitted, repeats once": (
        get_values(b"FCGI_UNKNOWN", MPXS_CONNS, MPXS_CONNS, b""),
        [CLOSED],
        x('[01 0A 00 00 00 12 06 00] 0F 01 "FCGI_MPXS_CONNS" "0" 00 00 00 00 00 00'),
    ),
    "GET_VALUES: empty query, empty result": (
        rec(GET_VALUES, 0),
        [CLOSED],
        x("01 0A 00 00 00 00 00 00"),
    ),
    "GET_VALUES: values sent are ignored": (
        rec(GET_VALUES, 0, encode_params({MAX_REQS: b"99"})),
        [CLOSED],
        get_values_result_record({MAX_REQS: b"10"}),
    ),
    "unknown management type 12 (§8.3 item 11)": (
        rec(12, 0),
        [CLOSED],
        x("[01 0B 00 00 00 08 00 00] 0C 00 00 00 00 00 00 00"),
    ),
    "application types with id 0 are unknown management types": (
        rec(BEGIN_REQUEST, 0, begin_request_body(RESPONDER)) + rec(ABORT_REQUEST, 0) + rec(0, 0),
        [CLOSED],
        unknown_type_record(1) + unknown_type_record(2) + unknown_type_record(0),
    ),
    "unknown type, DATA and GET_VALUES with an id are ignored": (
        begin() + params() + rec(12, 1, b"?") + rec(DATA, 1, b"d") + rec(GET_VALUES, 1) + stdin(),
        [STARTED, P80, StdinEnded(1), end(False), CLOSED],
        OK1,
    ),
    "records for inactive ids are ignored (§8.3 item 12)": (
        params(5) + stdin(5, b"x") + rec(ABORT_REQUEST, 5) + rec(DATA, 5),
        [CLOSED],
        b"",
    ),
    "records for another id during a request are ignored": (
        begin() + params(2) + params() + stdin(2, b"x") + rec(ABORT_REQUEST, 2) + stdin(),
        [STARTED, P80, StdinEnded(1), end(False), CLOSED],
        OK1,
    ),
    "double empty PARAMS and STDIN are tolerated (research B21)": (
        begin() + params() + rec(PARAMS, 1) + rec(STDIN, 1) + rec(STDIN, 1) + rec(PARAMS, 1),
        [STARTED, P80, StdinEnded(1), end(False), CLOSED],
        OK1,
    ),
    "a pair with 4-byte lengths": (
        begin() + params(1, BIG) + stdin(),
        [STARTED, params_event(1, BIG), StdinEnded(1), end(False), CLOSED],
        OK1,
    ),
}


@pytest.mark.parametrize(("data", "events", "sent"), VALID.values(), ids=list(VALID))
def test_conversations(data: bytes, events: list[object], sent: bytes) -> None:
    check(data, events, sent, max_conns=10, max_reqs=10)


def test_limits_reported_by_get_values() -> None:
    events, sent = run([THREE], max_conns=3, max_reqs=70)
    assert events == [CLOSED]
    assert sent == get_values_result_record({MAX_CONNS: b"3", MAX_REQS: b"70", MPXS_CONNS: b"0"})
    assert run([THREE])[1] == get_values_result_record(  # the defaults
        {MAX_CONNS: b"1", MAX_REQS: b"1", MPXS_CONNS: b"0"}
    )


def test_app_may_start_at_params_without_empty_stdin() -> None:  # research §5 P5
    data = begin() + params() + GET  # hiawatha, haproxy: no empty STDIN for a GET
    events = [STARTED, P80, end(False), STARTED, P80, end(False), CLOSED]
    check(data, events, OK1 * 2, app="params")


def test_unread_body_of_an_ended_request_is_ignored() -> None:
    data = begin() + rec(PARAMS, 1) + stdin(1, b"unread") + GET
    events = [STARTED, params_event(1, {}), end(False), STARTED, P80, end(False), CLOSED]
    check(data, events, OK1 * 2, app="params")


def test_repeated_empty_stdin_while_the_app_runs() -> None:  # yaws#283, research B21
    data = begin() + params() + stdin() + rec(STDIN, 1)
    check(data, [STARTED, P80, StdinEnded(1), RequestAborted(1), CLOSED], b"", app="none")


def test_after_abort_nothing_more_is_reported() -> None:
    data = begin() + params() + rec(ABORT_REQUEST, 1) + rec(STDIN, 1, b"x") + rec(ABORT_REQUEST, 1)
    check(data, [STARTED, P80, RequestAborted(1), CLOSED], b"", app="none")  # no 2nd at EOF


@pytest.mark.parametrize("cut", [1, 2, 3, 5, 15, 200, 305, 310, 500, 590])
def test_pair_straddling_records(cut: int) -> None:  # research §8.3 item 2
    content = encode_params(BIG)  # cut 1-3: inside a 4-byte length; 5, 15: the name...
    data = (
        begin()
        + rec(PARAMS, 1, content[:cut])
        + rec(PARAMS, 1, content[cut:])
        + rec(PARAMS, 1)
        + stdin()
    )
    check(data, [STARTED, params_event(1, BIG), StdinEnded(1), end(False), CLOSED], OK1)


def test_pair_in_one_byte_records() -> None:
    content = encode_params({b"N" * 130: b"v" * 3})
    data = begin() + b"".join(rec(PARAMS, 1, content[i : i + 1]) for i in range(len(content)))
    events, _ = run([data + rec(PARAMS, 1) + stdin()])
    assert events == [
        STARTED,
        params_event(1, {b"N" * 130: b"vvv"}),
        StdinEnded(1),
        end(False),
        CLOSED,
    ]


# -- errors (research §8.3 item 13) ---------------------------------------------------------

ERRORS = {
    "version 2": (x("02 01 00 01 00 08 00 00") + bytes(8), "unsupported FastCGI version 2"),
    "version 0 mid-request": (begin() + x("00 05 00 01 00 00 00 00"), "version 0"),
    "BEGIN_REQUEST body of 7 bytes": (
        rec(BEGIN_REQUEST, 1, bytes(7)),
        "BEGIN_REQUEST body of 7 bytes, not 8",
    ),
    "BEGIN_REQUEST body of 0 bytes": (rec(BEGIN_REQUEST, 1), "body of 0 bytes"),
    "STDIN before the end of PARAMS": (
        begin() + rec(PARAMS, 1, encode_params(SP80)) + rec(STDIN, 1, b"x"),
        "STDIN before the end of the PARAMS stream",
    ),
    "empty STDIN before the end of PARAMS": (
        begin() + rec(STDIN, 1),
        "STDIN before the end of the PARAMS stream",
    ),
    "PARAMS after their end": (
        begin() + params() + rec(PARAMS, 1, b"\x00\x00"),
        "PARAMS data after the end of the PARAMS stream",
    ),
    "STDIN data after its end": (
        begin() + params() + stdin() + rec(STDIN, 1, b"x"),
        "STDIN data after the end of the STDIN stream",
    ),
    "PARAMS end mid-pair": (
        begin() + rec(PARAMS, 1, x('0B 02 "SERVER_PORT"')) + rec(PARAMS, 1),
        "declares 11+2 bytes, only 11 remain",
    ),
    "PARAMS end inside a 4-byte length": (
        begin() + rec(PARAMS, 1, x("01 80 00")) + rec(PARAMS, 1),
        "ends inside a length",
    ),
    "PARAMS declaring 2**31-1 bytes": (
        begin() + rec(PARAMS, 1, x("FF FF FF FF 00")) + rec(PARAMS, 1),
        "declares 2147483647+0 bytes",
    ),
    "GET_VALUES cut mid-pair": (rec(GET_VALUES, 0, x("0E 00 46")), "declares 14+0 bytes"),
    "BEGIN_REQUEST for the active id": (begin() + begin(), "request 1, which is active"),
    "BEGIN_REQUEST for the active, aborted id": (
        begin() + rec(ABORT_REQUEST, 1) + begin(),
        "request 1, which is active",
    ),
    "END_REQUEST from the web server": (rec(3, 1, bytes(8)), "END_REQUEST record from the web"),
    "STDOUT from the web server": (begin() + rec(STDOUT, 1), "STDOUT record from the web server"),
    "STDERR with id 0": (rec(STDERR, 0, b"x"), "STDERR record from the web server"),
    "GET_VALUES_RESULT": (rec(10, 0), "GET_VALUES_RESULT record from the web server"),
    "UNKNOWN_TYPE": (rec(11, 0, bytes(8)), "UNKNOWN_TYPE record from the web server"),
}


@pytest.mark.parametrize(("data", "reason"), ERRORS.values(), ids=list(ERRORS))
def test_errors(data: bytes, reason: str) -> None:
    events, _ = run([data], app="none")
    assert events[-1][0] == "error" and reason in events[-1][1]  # type: ignore[index]
    for chunks in splits(data):
        assert run(chunks, app="none") == run([data], app="none")


def test_params_limit() -> None:  # 15 content bytes of SERVER_PORT=80
    check(GET, [STARTED, P80, StdinEnded(1), end(False), CLOSED], OK1, max_params_bytes=15)
    too_large = [STARTED, error("PARAMS larger than 14 bytes")]
    check(GET, too_large, b"", max_params_bytes=14)
    split = begin() + rec(PARAMS, 1, b"\x01\x01ab") + rec(PARAMS, 1, b"\x01\x01cd")
    check(split, [STARTED, error("PARAMS larger than 7 bytes")], max_params_bytes=7)
    two = params_event(1, {b"a": b"b", b"c": b"d"})
    check(
        split + rec(PARAMS, 1) + stdin(),
        [STARTED, two, StdinEnded(1), end(False), CLOSED],
        max_params_bytes=8,
    )


def test_params_limit_per_request() -> None:
    check(GET * 3, [STARTED, P80, StdinEnded(1), end(False)] * 3 + [CLOSED], max_params_bytes=15)


def test_error_is_sticky_and_drops_data() -> None:
    conn = Connection()
    conn.receive_data(x("02 01 00 01 00 08 00 00"))
    for _ in range(2):
        with pytest.raises(FastCGIError, match="version 2"):
            conn.next_event()
    conn.receive_data(GET)
    assert conn.buffered_bytes == 0
    conn.receive_data(b"")
    with pytest.raises(FastCGIError, match="version 2"):
        conn.next_event()


def test_receive_after_eof_is_a_caller_bug() -> None:
    conn = Connection()
    conn.receive_data(b"")
    assert conn.next_event() == CLOSED
    with pytest.raises(RuntimeError, match="after EOF"):
        conn.receive_data(b"x")


@pytest.mark.parametrize(
    "limits",
    [{"max_conns": 0}, {"max_reqs": -1}, {"max_params_bytes": 0}, {"max_conns": True}],
)
def test_constructor_checks(limits: dict[str, int]) -> None:
    if True in limits.values() and is_compiled(fastcgi_connection):
        pytest.skip("mypyc passes a bool on as the int it is")
    with pytest.raises(ValueError, match="must be a positive int"):
        Connection(**limits)


# -- output ---------------------------------------------------------------------------------


def started(data: bytes = begin() + params(), **limits: int) -> Connection:
    """A connection that has taken ``data``; its events are drained."""
    conn = Connection(**limits)
    conn.receive_data(data)
    while conn.next_event() is not NEED_DATA:
        pass
    return conn


def test_66000_byte_output() -> None:  # research §8.3 item 5
    conn = started()
    data = conn.send_stdout(1, b"\xab" * 66000)
    first = 8 + 65535 + 1
    assert len(data) == first + 8 + 465 + 7
    assert data[:8] == x("01 06 00 01 FF FF 01 00")
    assert data[first : first + 8] == x("01 06 00 01 01 D1 07 00")
    assert data[first - 1 : first] == b"\0" and data[-7:] == bytes(7)
    ending = conn.end_request(1)
    assert ending == RequestEnd(x("01 06 00 01 00 00 00 00") + end_request_record(1), False)


def test_empty_writes_send_nothing() -> None:
    conn = started()
    assert conn.send_stdout(1, b"") == b""  # never the stream's end
    assert conn.send_stderr(1, b"") == b""
    assert conn.end_request(1).data == encode_record(STDOUT, 1) + end_request_record(1)


def test_stderr_is_ended_only_when_used() -> None:
    conn = started()
    assert conn.send_stderr(1, bytearray(b"oops")) == rec(STDERR, 1, b"oops")
    assert conn.send_stdout(1, memoryview(b"out")) == rec(STDOUT, 1, b"out")
    ending = conn.end_request(1, app_status=2)
    assert ending.data == (
        encode_record(STDOUT, 1) + encode_record(STDERR, 1) + end_request_record(1, 2)
    )


def test_end_request_with_another_status() -> None:
    conn = started()
    assert conn.end_request(1, 0, OVERLOADED).data == end_request_record(1, 0, OVERLOADED)
    conn = started()  # once STDOUT was sent, its stream is ended whatever the status
    conn.send_stdout(1, b"x")
    assert conn.end_request(1, -15, OVERLOADED).data == (
        encode_record(STDOUT, 1) + x("[01 03 00 01 00 08 00 00] FF FF FF F1 02 00 00 00")
    )


def test_end_request_exactly_once() -> None:
    conn = started()
    conn.end_request(1)
    assert conn.active_request is None
    for call in (conn.end_request, lambda i: conn.send_stdout(i, b"x")):
        with pytest.raises(RuntimeError, match="request 1 is not active"):
            call(1)


def test_bad_status_leaves_the_request_active() -> None:
    conn = started()
    with pytest.raises(ValueError, match="app_status"):
        conn.end_request(1, 2**40)
    assert conn.active_request == 1
    assert conn.end_request(1).close_connection is False


def test_output_before_params_end_is_refused() -> None:  # §6.2
    conn = started(begin() + rec(PARAMS, 1, b"\x01\x01ab"))
    with pytest.raises(RuntimeError, match="before its PARAMS ended"):
        conn.send_stdout(1, b"x")
    with pytest.raises(RuntimeError, match="before its PARAMS ended"):
        conn.send_stderr(1, b"x")
    with pytest.raises(RuntimeError, match="request 2 is not active"):
        conn.send_stdout(2, b"x")
    assert conn.end_request(1, 0, OVERLOADED).data == end_request_record(1, 0, OVERLOADED)


def test_output_after_abort_is_dropped() -> None:
    conn = started(begin() + params() + rec(ABORT_REQUEST, 1))
    assert conn.send_stdout(1, b"x") == conn.send_stderr(1, b"y") == b""
    assert conn.end_request(1) == RequestEnd(aborted(), False)


@pytest.mark.parametrize(
    ("keep", "eof", "close"), [(True, False, False), (False, False, True), (True, True, True)]
)
def test_close_connection(keep: bool, eof: bool, close: bool) -> None:
    conn = started(begin(keep=keep) + params())
    if eof:
        conn.receive_data(b"")
        assert conn.next_event() == RequestAborted(1)
    assert conn.end_request(1).close_connection is close


def test_data_to_send_empties_the_queue() -> None:
    conn = started(THREE + rec(12, 0))
    defaults = get_values_result_record({MAX_CONNS: b"1", MAX_REQS: b"1", MPXS_CONNS: b"0"})
    assert conn.buffered_bytes == len(defaults) + 16
    assert conn.data_to_send().endswith(unknown_type_record(12))
    assert conn.data_to_send() == b""
    assert conn.buffered_bytes == 0


# -- properties -----------------------------------------------------------------------------

_CUTS = st.lists(st.integers(0, 3000), max_size=6)
_PAIRS = st.dictionaries(st.binary(max_size=140), st.binary(max_size=200), max_size=6)


def _chunks(data: bytes, cuts: list[int]) -> list[bytes]:
    points = [0, *sorted(c for c in cuts if 0 < c < len(data)), len(data)]
    return [data[a:b] for a, b in pairwise(points) if a < b]


def _pieces(draw: st.DrawFn, data: bytes, limit: int) -> list[bytes]:
    """``data`` cut into non-empty pieces of at most ``limit`` bytes."""
    cuts = draw(st.lists(st.integers(1, max(len(data) - 1, 1)), max_size=4))
    pieces = _chunks(data, cuts)
    return [p[i : i + limit] for p in pieces for i in range(0, len(p), limit)]


@st.composite
def conversations(draw: st.DrawFn) -> tuple[bytes, list[object], bytes]:
    """A valid request or two, with management records mixed in; events and output."""
    data, events, sent = bytearray(), [], bytearray()
    for _ in range(draw(st.integers(1, 2))):
        request_id, keep = draw(st.integers(1, 0xFFFF)), draw(st.booleans())
        pairs, body = draw(_PAIRS), draw(st.binary(max_size=300))
        pad = st.integers(0, 255)
        data += rec(BEGIN_REQUEST, request_id, begin_request_body(RESPONDER, keep), draw(pad))
        for piece in _pieces(draw, encode_params(pairs), 65535):
            data += rec(PARAMS, request_id, piece, draw(pad), draw(st.integers(0, 255)))
        if draw(st.booleans()):  # a management record anywhere
            data += THREE
            sent += get_values_result_record({MAX_CONNS: b"1", MAX_REQS: b"1", MPXS_CONNS: b"0"})
        data += rec(PARAMS, request_id, b"", draw(pad))
        stdin_events = []
        for piece in _pieces(draw, body, 65535) if body else []:
            data += rec(STDIN, request_id, piece, draw(pad))
            stdin_events.append(StdinData(request_id, piece))
        data += rec(STDIN, request_id, b"", draw(pad))
        events += [RequestStarted(request_id, RESPONDER, keep), params_event(request_id, pairs)]
        events += [*stdin_events, StdinEnded(request_id), end(not keep)]
        sent += ok(request_id)
    return bytes(data), [*events, CLOSED], bytes(sent)


@settings(max_examples=300, deadline=None)
@given(conversations(), _CUTS)
def test_valid_conversations(
    conversation: tuple[bytes, list[object], bytes], cuts: list[int]
) -> None:
    data, events, sent = conversation
    assert run(_chunks(data, cuts)) == (events, sent)


@st.composite
def records(draw: st.DrawFn) -> bytes:
    """One record of any type, usually well-formed, sometimes not."""
    kind = draw(st.integers(0, 13))
    request_id = draw(st.sampled_from([0, 1, 1, 2]))
    content = draw(
        st.one_of(
            st.binary(max_size=40),
            st.just(b""),
            _PAIRS.map(encode_params),
            st.tuples(st.integers(0, 4), st.integers(0, 3)).map(lambda rf: begin_request_body(*rf)),
        )
    )
    return rec(kind, request_id, content, draw(st.integers(0, 12)), draw(st.integers(0, 255)))


@st.composite
def mutated(draw: st.DrawFn) -> bytes:
    """A stream of records, or a valid conversation, with bytes flipped, cut or added."""
    if draw(st.booleans()):
        data = bytearray(b"".join(draw(st.lists(records(), max_size=12))))
    else:
        data = bytearray(draw(conversations())[0])
    for _ in range(draw(st.integers(0, 3))):
        at = draw(st.integers(0, len(data)))
        how = draw(st.sampled_from(["flip", "insert", "delete", "truncate"]))
        if how == "flip" and at < len(data):
            data[at] ^= draw(st.integers(1, 255))
        elif how == "insert":
            data[at:at] = draw(st.binary(min_size=1, max_size=8))
        elif how == "delete":
            del data[at : at + draw(st.integers(1, 8))]
        elif how == "truncate":
            del data[at:]
    return bytes(data)


@settings(max_examples=500, deadline=None)
@given(
    st.one_of(mutated(), st.binary(max_size=200)),
    _CUTS,
    st.sampled_from(["stdin", "params", "none"]),
    st.sampled_from([1 << 20, 16]),
)
def test_any_bytes_give_events_or_fastcgi_error(
    data: bytes, cuts: list[int], app: App, limit: int
) -> None:
    result = run(_chunks(data, cuts), app, max_params_bytes=limit)  # bounds checked inside
    assert result == run([data], app, max_params_bytes=limit)  # the split never matters
    events = result[0]
    assert events[-1] == CLOSED or events[-1][0] == "error"  # type: ignore[index]
    assert NEED_DATA not in events
    assert sum(isinstance(e, RequestAborted) for e in events) <= sum(
        isinstance(e, RequestStarted) for e in events
    )


def test_records_of_the_largest_size() -> None:
    body = bytes(range(256)) * 256
    data = begin() + params() + rec(STDIN, 1, body[:65535], 255) + stdin(1, body[:3])
    events = [STARTED, P80, StdinData(1, body[:65535]), StdinData(1, body[:3])]
    for cuts in ([], [7], [100, 65000, 65600, 65800]):
        result = run(_chunks(data, cuts))
        assert result == ([*events, StdinEnded(1), end(False), CLOSED], OK1)


def test_many_management_records_in_one_chunk() -> None:
    data = (THREE + rec(12, 0)) * 2000 + GET  # the replies wait in data_to_send, bounded
    events, sent = run([data])
    assert events == [STARTED, P80, StdinEnded(1), end(False), CLOSED]
    assert len(sent) <= 2 * len(data)
