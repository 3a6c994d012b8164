"""Vectors for the FastCGI record layer (fastcgi_records; FastCGI 1.0 §3, §4, §5).

The exact bytes are the tables of research §8.1 and §8.2, written in its notation by
``x``: hex pairs, ``"quoted"`` ASCII, brackets around header bytes for the eye. Every
record vector is built by the encoders and read back by ``RecordReader`` fed whole,
byte by byte and at every two-chunk split. Properties (hypothesis): name-value blocks
and streams of any size round-trip; arbitrary bytes give records or FastCGIError only.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from itertools import pairwise

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from cgikit.fastcgi_records import (
    ABORT_REQUEST,
    BEGIN_REQUEST,
    CANT_MPX_CONN,
    END_REQUEST,
    FCGI_LISTENSOCK_FILENO,
    GET_VALUES,
    HEADER_LEN,
    KEEP_CONN,
    MAX_CONNS,
    MAX_CONTENT,
    MAX_RECORD,
    MAX_REQS,
    MPXS_CONNS,
    OVERLOADED,
    PARAMS,
    REQUEST_COMPLETE,
    RESPONDER,
    STDERR,
    STDIN,
    STDOUT,
    UNKNOWN_ROLE,
    UNKNOWN_TYPE,
    FastCGIError,
    Record,
    RecordHeader,
    RecordReader,
    begin_request_body,
    decode_begin_request,
    decode_end_request,
    decode_header,
    decode_length,
    decode_params,
    encode_header,
    encode_length,
    encode_params,
    encode_record,
    encode_stream,
    end_request_body,
    end_request_record,
    get_values_result_record,
    iter_params,
    padding_for,
    unknown_type_body,
    unknown_type_record,
)
from splitting import splits


def x(text: str) -> bytes:
    """Research §8 notation to bytes: hex pairs and "ASCII", brackets ignored."""
    tokens = re.findall(r'"[^"]*"|[0-9A-Fa-f]{2}|\S', text.replace("[", " ").replace("]", " "))
    out = bytearray()
    for token in tokens:
        if token.startswith('"'):
            out += token[1:-1].encode("ascii")
        else:
            assert len(token) == 2, f"not a hex pair: {token!r}"
            out.append(int(token, 16))
    return bytes(out)


def rec(
    kind: int, request_id: int, content: bytes = b"", padding: int | None = None, fill: int = 0
) -> bytes:
    """A record with any padding (default: to a multiple of 8) of ``fill`` bytes."""
    pad = padding_for(len(content)) if padding is None else padding
    return encode_header(kind, request_id, len(content), pad) + content + bytes([fill]) * pad


def read_all(chunks: Iterable[bytes]) -> tuple[list[Record], int]:
    """Records read from ``chunks``, and the bytes left over."""
    reader, records = RecordReader(), []
    for chunk in chunks:
        reader.feed(chunk)
        while (record := reader.next_record()) is not None:
            records.append(record)
        assert reader.buffered < MAX_RECORD
    return records, reader.buffered


def test_constants() -> None:
    assert FCGI_LISTENSOCK_FILENO == 0
    assert (HEADER_LEN, MAX_CONTENT, MAX_RECORD) == (8, 65535, 8 + 65535 + 255)
    assert (REQUEST_COMPLETE, CANT_MPX_CONN, OVERLOADED, UNKNOWN_ROLE) == (0, 1, 2, 3)
    assert (MAX_CONNS, MAX_REQS, MPXS_CONNS) == (
        b"FCGI_MAX_CONNS",
        b"FCGI_MAX_REQS",
        b"FCGI_MPXS_CONNS",
    )


def test_notation() -> None:
    assert x('[01 02] 0B "ab"') == b"\x01\x02\x0bab"
    with pytest.raises(AssertionError):
        x("0")


PARAMS_80 = encode_params({b"SERVER_PORT": b"80"})
THREE_NAMES = encode_params([(MAX_CONNS, b""), (MAX_REQS, b""), (MPXS_CONNS, b"")])
RESULT = {MAX_CONNS: b"10", MAX_REQS: b"10", MPXS_CONNS: b"0"}

# Research §8.1: (built by the encoders, exact bytes, the record read back).
RECORDS = {
    "BEGIN_REQUEST id 1, responder, KEEP_CONN": (
        encode_record(BEGIN_REQUEST, 1, begin_request_body(RESPONDER, KEEP_CONN)),
        "[01 01 00 01 00 08 00 00] 00 01 01 00 00 00 00 00",
        Record(BEGIN_REQUEST, 1, x("00 01 01 00 00 00 00 00")),
    ),
    "BEGIN_REQUEST id 300, responder, no keep": (
        encode_record(BEGIN_REQUEST, 300, begin_request_body(RESPONDER)),
        "[01 01 01 2C 00 08 00 00] 00 01 00 00 00 00 00 00",
        Record(BEGIN_REQUEST, 300, x("00 01 00 00 00 00 00 00")),
    ),
    "PARAMS id 1, SERVER_PORT=80": (
        encode_record(PARAMS, 1, PARAMS_80),
        '[01 04 00 01 00 0F 01 00] 0B 02 "SERVER_PORT" "80" 00',
        Record(PARAMS, 1, x('0B 02 "SERVER_PORT" "80"')),
    ),
    "empty PARAMS id 1": (
        encode_record(PARAMS, 1),
        "01 04 00 01 00 00 00 00",
        Record(PARAMS, 1, b""),
    ),
    "STDIN id 1 hello": (
        encode_stream(STDIN, 1, b"hello"),
        "[01 05 00 01 00 05 03 00] 68 65 6C 6C 6F 00 00 00",
        Record(STDIN, 1, b"hello"),
    ),
    "empty STDIN id 1": (encode_record(STDIN, 1), "01 05 00 01 00 00 00 00", Record(STDIN, 1, b"")),
    "ABORT id 1": (
        encode_record(ABORT_REQUEST, 1),
        "01 02 00 01 00 00 00 00",
        Record(ABORT_REQUEST, 1, b""),
    ),
    "END_REQUEST id 1, app 0, COMPLETE": (
        end_request_record(1),
        "[01 03 00 01 00 08 00 00] 00 00 00 00 00 00 00 00",
        Record(END_REQUEST, 1, bytes(8)),
    ),
    "END_REQUEST id 2, CANT_MPX_CONN": (
        end_request_record(2, 0, CANT_MPX_CONN),
        "[01 03 00 02 00 08 00 00] 00 00 00 00 01 00 00 00",
        Record(END_REQUEST, 2, x("00 00 00 00 01 00 00 00")),
    ),
    "END_REQUEST id 1, UNKNOWN_ROLE": (
        end_request_record(1, 0, UNKNOWN_ROLE),
        "[01 03 00 01 00 08 00 00] 00 00 00 00 03 00 00 00",
        Record(END_REQUEST, 1, x("00 00 00 00 03 00 00 00")),
    ),
    "GET_VALUES, 3 names": (
        encode_record(GET_VALUES, 0, THREE_NAMES),
        '[01 09 00 00 00 30 00 00] 0E 00 "FCGI_MAX_CONNS" 0D 00 "FCGI_MAX_REQS" '
        '0F 00 "FCGI_MPXS_CONNS"',
        Record(GET_VALUES, 0, THREE_NAMES),
    ),
    "GET_VALUES_RESULT 10/10/0": (
        get_values_result_record(RESULT),
        '[01 0A 00 00 00 35 03 00] 0E 02 "FCGI_MAX_CONNS" "10" 0D 02 "FCGI_MAX_REQS" "10" '
        '0F 01 "FCGI_MPXS_CONNS" "0" 00 00 00',
        Record(10, 0, encode_params(RESULT)),
    ),
    "UNKNOWN_TYPE for type 12": (
        unknown_type_record(12),
        "[01 0B 00 00 00 08 00 00] 0C 00 00 00 00 00 00 00",
        Record(UNKNOWN_TYPE, 0, x("0C 00 00 00 00 00 00 00")),
    ),
}


@pytest.mark.parametrize(("built", "expected", "record"), RECORDS.values(), ids=list(RECORDS))
def test_record_vectors(built: bytes, expected: str, record: Record) -> None:
    assert built == x(expected)
    assert len(built) % 8 == 0
    for chunks in splits(built):
        assert read_all(chunks) == ([record], 0), chunks


def test_all_vectors_in_one_stream() -> None:
    data = b"".join(built for built, _, _ in RECORDS.values())
    expected = [record for _, _, record in RECORDS.values()]
    for chunks in splits(data):
        assert read_all(chunks) == (expected, 0)


def test_max_size_stdout_header() -> None:
    data = encode_stream(STDOUT, 1, b"\xaa" * MAX_CONTENT)
    assert data[:8] == x("01 06 00 01 FF FF 01 00")
    assert len(data) == 8 + 65535 + 1 and data[-1:] == b"\0"


def test_66000_byte_stream() -> None:  # research §8.3 item 5 (Go's vector)
    payload = bytes(range(256)) * 257 + bytes(208)
    assert len(payload) == 66000
    data = encode_stream(STDOUT, 1, payload)
    first, second = 8 + 65535 + 1, 8 + 465 + 7
    assert len(data) == first + second
    assert data[:8] == x("01 06 00 01 FF FF 01 00")
    assert data[8 : 8 + 65535] == payload[:65535] and data[first - 1 : first] == b"\0"
    assert data[first : first + 8] == x("01 06 00 01 01 D1 07 00")
    assert data[first + 8 : first + 8 + 465] == payload[65535:]
    assert data[-7:] == bytes(7)
    assert encode_record(STDOUT, 1) == x("01 06 00 01 00 00 00 00")  # the terminator


@pytest.mark.parametrize(
    ("size", "headers"),
    [
        (0, []),
        (1, ["01 06 00 01 00 01 07 00"]),
        (8, ["01 06 00 01 00 08 00 00"]),
        (65535, ["01 06 00 01 FF FF 01 00"]),
        (65536, ["01 06 00 01 FF FF 01 00", "01 06 00 01 00 01 07 00"]),
        (131070, ["01 06 00 01 FF FF 01 00"] * 2),
    ],
)
def test_stream_split_points(size: int, headers: list[str]) -> None:
    data = encode_stream(STDOUT, 1, bytearray(size))  # bytearray and memoryview work too
    records, rest = read_all([data])
    assert rest == 0 and sum(len(r.content) for r in records) == size
    at, found = 0, []
    for record in records:
        found.append(data[at : at + 8])
        at += 8 + len(record.content) + padding_for(len(record.content))
    assert found == [x(h) for h in headers]
    assert encode_stream(STDERR, 2, memoryview(b"ab")) == x(
        '[01 07 00 02 00 02 06 00] "ab" '
    ) + bytes(6)


# -- name-value pairs (research §8.2) --------------------------------------------------

LENGTHS = [
    (0, "00"),
    (1, "01"),
    (127, "7F"),
    (128, "80 00 00 80"),
    (1000, "80 00 03 E8"),
    (33554431, "81 FF FF FF"),
    (2**31 - 1, "FF FF FF FF"),
]


@pytest.mark.parametrize(("length", "expected"), LENGTHS)
def test_length_codec(length: int, expected: str) -> None:
    assert encode_length(length) == x(expected)
    data = b"\x99" + x(expected) + b"\x99"
    assert decode_length(data, 1) == (length, 1 + len(x(expected)))


@pytest.mark.parametrize("length", [-1, 2**31, 2**32])
def test_length_out_of_range(length: int) -> None:
    with pytest.raises(ValueError, match="name-value length"):
        encode_length(length)


def test_length_non_minimal_and_cut_short() -> None:
    assert decode_length(x("80 00 00 05"), 0) == (5, 4)  # §3.4: accepted for small lengths
    for cut in ("", "80", "80 00", "80 00 00"):
        assert decode_length(x(cut), 0) is None


@pytest.mark.parametrize(
    ("name", "value", "prefix", "total"),
    [
        (b"SERVER_PORT", b"80", "0B 02", 2 + 13),
        (b"HTTP_COOKIE", b"c" * 200, "0B 80 00 00 C8", 5 + 211),
        (b"N" * 128, b"v", "80 00 00 80 01", 5 + 129),
        (b"N" * 128, b"v" * 1000, "80 00 00 80 80 00 03 E8", 8 + 1128),
    ],
    ids=["1-1", "1-4", "4-1", "4-4"],
)
def test_pair_encodings(name: bytes, value: bytes, prefix: str, total: int) -> None:
    data = encode_params([(name, value)])
    assert data == x(prefix) + name + value
    assert len(data) == total
    assert decode_params(data) == {name: value}


PARAM_ERRORS = {
    "length byte at the very end": ('0B 02 "SERVER_PORT" "80" 01', "inside a length, at byte 15"),
    "only a name length": ("05", "inside a length, at byte 0"),
    "4-byte length cut after 1": ("80", "inside a length, at byte 0"),
    "4-byte length cut after 2": ("80 00", "inside a length, at byte 0"),
    "4-byte length cut after 3": ("80 00 00", "inside a length, at byte 0"),
    "4-byte value length cut": ("01 80 00", "inside a length, at byte 0"),
    "Go issue 11824: 50/50 with 8 bytes left": (
        '32 32 "abcdefgh"',
        "declares 50+50 bytes, only 8 remain",
    ),
    "maximum length, nothing behind": ("FF FF FF FF 00", "declares 2147483647+0 bytes, only 0"),
    "value one byte short": ('01 02 "a" "b"', "declares 1+2 bytes, only 2 remain"),
}


@pytest.mark.parametrize(("data", "reason"), PARAM_ERRORS.values(), ids=list(PARAM_ERRORS))
def test_params_errors(data: str, reason: str) -> None:
    with pytest.raises(FastCGIError, match=re.escape(reason)) as info:
        decode_params(x(data))
    assert info.value.reason == str(info.value)


PARAM_CASES = {
    "empty block": ("", {}),
    "empty name": ('00 01 "v"', {b"": b"v"}),
    "empty value (HTTP_X=)": ('06 00 "HTTP_X"', {b"HTTP_X": b""}),
    "duplicate: last wins": ('01 01 "a" "1" 01 01 "b" "2" 01 01 "a" "3"', {b"a": b"3", b"b": b"2"}),
    "NUL inside a value": ('01 03 "a" 78 00 79', {b"a": b"x\0y"}),
    "non-UTF-8 bytes": ("02 02 C3 28 FF FE", {b"\xc3(": b"\xff\xfe"}),
    "non-minimal lengths": ('80 00 00 01 80 00 00 01 "a" "b"', {b"a": b"b"}),
}


@pytest.mark.parametrize(("data", "expected"), PARAM_CASES.values(), ids=list(PARAM_CASES))
def test_params_cases(data: str, expected: dict[bytes, bytes]) -> None:
    assert decode_params(x(data)) == expected
    assert decode_params(bytearray(x(data))) == expected


def test_iter_params_keeps_order_and_repeats() -> None:
    data = encode_params([(b"b", b"1"), (b"a", b"2"), (b"b", b"3")])
    assert list(iter_params(data)) == [(b"b", b"1"), (b"a", b"2"), (b"b", b"3")]


def test_params_buffer_is_released_after_an_error() -> None:
    buffer = bytearray(x("05"))
    with pytest.raises(FastCGIError):
        decode_params(buffer)
    buffer += b"more"  # no view left pinning its size


# -- fixed bodies and headers -------------------------------------------------------------


def test_begin_request_body() -> None:
    assert begin_request_body(RESPONDER, KEEP_CONN) == x("00 01 01 00 00 00 00 00")
    assert decode_begin_request(x("00 02 FF 01 02 03 04 05")) == (2, 0xFF)
    for size in (0, 7, 9):
        with pytest.raises(FastCGIError, match=f"BEGIN_REQUEST body of {size} bytes, not 8"):
            decode_begin_request(bytes(size))
    with pytest.raises(ValueError, match="out of range"):
        begin_request_body(70000)


@pytest.mark.parametrize(
    ("app_status", "protocol_status", "expected"),
    [
        (0, REQUEST_COMPLETE, "00 00 00 00 00 00 00 00"),
        (3, OVERLOADED, "00 00 00 03 02 00 00 00"),
        (0xFFFFFFFF, REQUEST_COMPLETE, "FF FF FF FF 00 00 00 00"),
        (-9, REQUEST_COMPLETE, "FF FF FF F7 00 00 00 00"),  # a signal, as subprocess says
    ],
)
def test_end_request_body(app_status: int, protocol_status: int, expected: str) -> None:
    body = end_request_body(app_status, protocol_status)
    assert body == x(expected)
    assert decode_end_request(body) == (app_status & 0xFFFFFFFF, protocol_status)


def test_end_request_body_ranges() -> None:
    for bad in (2**32, -(2**31) - 1):
        with pytest.raises(ValueError, match="app_status"):
            end_request_body(bad)
    for bad in (-1, 256):
        with pytest.raises(ValueError, match="protocol_status"):
            end_request_body(0, bad)
    with pytest.raises(FastCGIError, match="END_REQUEST body of 4 bytes"):
        decode_end_request(bytes(4))


def test_unknown_type_body() -> None:
    assert unknown_type_body(200) == x("C8 00 00 00 00 00 00 00")
    with pytest.raises(ValueError, match="a record type is a byte"):
        unknown_type_body(256)


def test_get_values_result_empty_query() -> None:  # research §8.3 item 10
    assert get_values_result_record({}) == x("01 0A 00 00 00 00 00 00")


def test_header_codec() -> None:
    assert encode_header(STDIN, 0xFFFF, 5, 255) == x("01 05 FF FF 00 05 FF 00")
    assert decode_header(x("01 05 FF FF 00 05 FF 09")) == RecordHeader(1, 5, 0xFFFF, 5, 255)
    with pytest.raises(FastCGIError, match="unsupported FastCGI version 2"):
        decode_header(x("02 05 00 01 00 00 00 00"))
    with pytest.raises(ValueError, match="8 bytes, not 7"):
        decode_header(bytes(7))
    with pytest.raises(ValueError, match="out of range"):
        encode_header(STDIN, 0x10000, 0)
    with pytest.raises(ValueError, match="over 65535"):
        encode_record(STDOUT, 1, bytes(65536))
    with pytest.raises(ValueError, match="out of range"):
        encode_stream(STDOUT, -1, b"x")


# -- the reader: padding variants (research §8.3 item 4) ------------------------------------

PADDINGS = {
    "content 5, padding 255": (rec(STDIN, 1, b"hello", 255), Record(STDIN, 1, b"hello")),
    "content 5, padding 0": (rec(STDIN, 1, b"hello", 0), Record(STDIN, 1, b"hello")),
    "empty record with padding 7": (x("01 05 00 01 00 00 07 00") + bytes(7), Record(STDIN, 1, b"")),
    "non-zero padding bytes": (rec(STDIN, 1, b"abc", 13, 0xEE), Record(STDIN, 1, b"abc")),
    "reserved byte set": (x('01 05 00 01 00 01 00 FF "z"'), Record(STDIN, 1, b"z")),
}


@pytest.mark.parametrize(("data", "record"), PADDINGS.values(), ids=list(PADDINGS))
def test_reader_paddings(data: bytes, record: Record) -> None:
    for chunks in splits(data + encode_record(STDIN, 1)):
        assert read_all(chunks) == ([record, Record(STDIN, 1, b"")], 0)


def test_reader_partial_and_bad_version() -> None:
    data = encode_record(STDIN, 1, b"hello")
    for cut in range(len(data)):
        assert read_all([data[:cut]]) == ([], cut)
    reader = RecordReader()
    reader.feed(x("09 01 00 01 00 00 00 00"))
    for _ in range(2):  # it stays on the bad header
        with pytest.raises(FastCGIError, match="version 9"):
            reader.next_record()


# -- properties ---------------------------------------------------------------------------

_BYTES = st.binary(max_size=300)


@settings(max_examples=300, deadline=None)
@given(st.lists(st.tuples(_BYTES, _BYTES), max_size=8))
def test_params_round_trip(pairs: list[tuple[bytes, bytes]]) -> None:
    data = encode_params(pairs)
    assert list(iter_params(data)) == pairs
    assert decode_params(data) == dict(pairs)


@settings(max_examples=60, deadline=None)
@given(st.integers(0, 3 * MAX_CONTENT + 10), st.integers(1, 0xFFFF), st.binary(max_size=16))
def test_stream_round_trip(size: int, request_id: int, seed: bytes) -> None:
    payload = (seed or b"\x01") * (size // max(len(seed), 1) + 1)
    payload = payload[:size]
    data = encode_stream(STDOUT, request_id, payload)
    assert len(data) % 8 == 0
    records, rest = read_all([data])
    assert rest == 0
    assert all(0 < len(r.content) <= MAX_CONTENT for r in records)
    assert {(r.type, r.request_id) for r in records} <= {(STDOUT, request_id)}
    assert b"".join(r.content for r in records) == payload


@settings(max_examples=400, deadline=None)
@given(st.binary(max_size=600), st.lists(st.integers(0, 600), max_size=5))
def test_arbitrary_bytes_give_records_or_fastcgi_error(data: bytes, cuts: list[int]) -> None:
    points = sorted({0, len(data), *(c for c in cuts if c < len(data))})
    chunks = [data[a:b] for a, b in pairwise(points)]
    try:
        read_all(chunks)
    except FastCGIError:
        pass
    try:
        decode_params(data)
    except FastCGIError:
        pass
