"""FastCGI 1.0 on the wire: records, name-value pairs and the fixed bodies, no I/O.

Owns the byte layouts of the FastCGI specification (Open Market, 1996) that both sides
of a connection share: the constants of §8, the 8-byte record header (§3.3), the
name-value pair encoding (§3.4), the bodies of BEGIN_REQUEST (§5.1), END_REQUEST (§5.5),
GET_VALUES / GET_VALUES_RESULT (§4.1) and UNKNOWN_TYPE (§4.2), and ``RecordReader``, an
incremental splitter of received bytes into records. What the records mean on a
connection (which request is active, which stream is open) is ``fastcgi_connection``'s.

Choices (research: shared/research/fastcgi-anchors.md §5, §8):

- Every record built here is padded with zero bytes to a multiple of 8 (§3.3
  recommends aligned records; Go and nginx do the same): 65535 content bytes get 1 byte
  of padding, 465 get 7. Received padding (0-255 bytes, any value) is skipped unread.
- Stream data is cut into records of at most 65535 content bytes (the 16-bit length),
  joined into one bytes object so that a chunk of output goes out in one send.
- Name-value lengths over 127 are written in the 4-byte form (§3.4); the reader also
  accepts the 4-byte form for small lengths (§5 item 11 of the research). A length is
  checked against the bytes present before anything is sliced, so a declared 2**31-1
  allocates nothing. A repeated name keeps its last value (as Go, flup and PHP-FPM).
- Malformed input raises ``FastCGIError``; a bad argument from our own caller raises
  ``ValueError``.
"""

from __future__ import annotations

import functools
import struct
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass
from typing import Final

FCGI_LISTENSOCK_FILENO: Final = 0  # §2.2: a web server hands the listening socket as fd 0
VERSION_1: Final = 1
HEADER_LEN: Final = 8
MAX_CONTENT: Final = 0xFFFF  # contentLength is 16 bits (§3.3)
MAX_RECORD: Final = HEADER_LEN + MAX_CONTENT + 0xFF  # the largest record a peer can send
NULL_REQUEST_ID: Final = 0  # management records (§3.3)

# Record types (§8).
BEGIN_REQUEST: Final = 1
ABORT_REQUEST: Final = 2
END_REQUEST: Final = 3
PARAMS: Final = 4
STDIN: Final = 5
STDOUT: Final = 6
STDERR: Final = 7
DATA: Final = 8
GET_VALUES: Final = 9
GET_VALUES_RESULT: Final = 10
UNKNOWN_TYPE: Final = 11

KEEP_CONN: Final = 1  # BEGIN_REQUEST flags (§5.1)

# Roles (§5.1).
RESPONDER: Final = 1
AUTHORIZER: Final = 2
FILTER: Final = 3

# END_REQUEST protocolStatus values (§5.5).
REQUEST_COMPLETE: Final = 0
CANT_MPX_CONN: Final = 1
OVERLOADED: Final = 2
UNKNOWN_ROLE: Final = 3

# The variables of GET_VALUES (§4.1).
MAX_CONNS: Final = b"FCGI_MAX_CONNS"
MAX_REQS: Final = b"FCGI_MAX_REQS"
MPXS_CONNS: Final = b"FCGI_MPXS_CONNS"

TYPE_NAMES: Final = {
    BEGIN_REQUEST: "BEGIN_REQUEST",
    ABORT_REQUEST: "ABORT_REQUEST",
    END_REQUEST: "END_REQUEST",
    PARAMS: "PARAMS",
    STDIN: "STDIN",
    STDOUT: "STDOUT",
    STDERR: "STDERR",
    DATA: "DATA",
    GET_VALUES: "GET_VALUES",
    GET_VALUES_RESULT: "GET_VALUES_RESULT",
    UNKNOWN_TYPE: "UNKNOWN_TYPE",
}

_HEADER: Final = struct.Struct("!BBHHBx")  # version, type, requestId, contentLength, padding
_BEGIN: Final = struct.Struct("!HB5x")  # role, flags, reserved (§5.1)
HEADER_STRUCT: Final[struct.Struct] = _HEADER  # for fastcgi_whole's one-pass reading
BEGIN_STRUCT: Final[struct.Struct] = _BEGIN
_END: Final = struct.Struct("!IB3x")  # appStatus, protocolStatus, reserved (§5.5)
_LONG: Final = struct.Struct("!I")
_MAX_PAIR_LENGTH: Final = 0x7FFFFFFF  # 31 bits (§3.4)
_ZEROS: Final = bytes(7)


class FastCGIError(ValueError):
    """The peer broke the FastCGI protocol; the connection cannot go on and is closed."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


def type_name(record_type: int) -> str:
    """A record type for messages: its §8 name, or its number."""
    return TYPE_NAMES.get(record_type, f"type {record_type}")


# -- the record header (§3.3) ---------------------------------------------------------


# Read-only by convention, not frozen (here and below): made per request, and a frozen
# dataclass's __init__ costs three times as much (an object.__setattr__ call a field,
# in the compiled build too).
@dataclass(slots=True)
class RecordHeader:
    """The fields of one record header; the reserved byte is not kept."""

    version: int
    type: int
    request_id: int
    content_length: int
    padding_length: int


def encode_header(
    record_type: int, request_id: int, content_length: int, padding_length: int = 0
) -> bytes:
    """The 8 header bytes of a version 1 record."""
    try:
        return _HEADER.pack(VERSION_1, record_type, request_id, content_length, padding_length)
    except struct.error as exc:
        raise ValueError(f"record header field out of range: {exc}") from None


def decode_header(data: bytes | bytearray | memoryview) -> RecordHeader:
    """Read 8 header bytes.

    Raises:
        FastCGIError: the version is not 1 (§3.3: the only version there is).
        ValueError: ``data`` is not 8 bytes long.
    """
    if len(data) != HEADER_LEN:
        raise ValueError(f"a record header is {HEADER_LEN} bytes, not {len(data)}")
    header = RecordHeader(*_HEADER.unpack(data))
    if header.version != VERSION_1:
        raise FastCGIError(f"unsupported FastCGI version {header.version}")
    return header


def padding_for(content_length: int) -> int:
    """The padding that ends a record on a multiple of 8 (§3.3 recommends it)."""
    return -content_length % 8


def encode_record(
    record_type: int, request_id: int, content: bytes | bytearray | memoryview = b""
) -> bytes:
    """One record with at most 65535 content bytes, zero-padded to a multiple of 8.

    With no content this is the empty record that ends a stream (§3.3).
    """
    length = len(content)
    if length > MAX_CONTENT:
        raise ValueError(f"record content of {length} bytes is over {MAX_CONTENT}")
    padding = padding_for(length)
    return b"".join(
        (encode_header(record_type, request_id, length, padding), content, _ZEROS[:padding])
    )


@functools.lru_cache(maxsize=256)
def end_of_stream(record_type: int, request_id: int) -> bytes:
    """The empty record that ends a stream (§3.3); remembered, as ``end_request_record``."""
    return encode_record(record_type, request_id)


def encode_stream(record_type: int, request_id: int, data: bytes | bytearray | memoryview) -> bytes:
    """Stream data as records of at most 65535 content bytes each, joined into one bytes.

    ``b""`` gives ``b""``: the empty record that ends a stream is written on purpose,
    with ``encode_record(record_type, request_id)``, never by accident of an empty write.
    """
    length = len(data)
    if 0 < length <= MAX_CONTENT:  # one record: the usual case, without a view
        return encode_record(record_type, request_id, data)
    encode_header(record_type, request_id, 0)  # a bad id fails here, before any view exists
    view = memoryview(data).cast("B")
    parts: list[bytes | memoryview] = []
    for start in range(0, len(view), MAX_CONTENT):
        chunk = view[start : start + MAX_CONTENT]
        padding = padding_for(len(chunk))
        parts += (encode_header(record_type, request_id, len(chunk), padding), chunk)
        if padding:
            parts.append(_ZEROS[:padding])
    return b"".join(parts)


# -- name-value pairs (§3.4) ----------------------------------------------------------


def encode_length(length: int) -> bytes:
    """A name or value length: 1 byte up to 127, else 4 bytes with the high bit set."""
    if length < 0 or length > _MAX_PAIR_LENGTH:
        raise ValueError(f"a name-value length is 0 to {_MAX_PAIR_LENGTH}, not {length}")
    if length <= 0x7F:
        return bytes((length,))
    return _LONG.pack(length | 0x80000000)


def decode_length(data: bytes | bytearray | memoryview, offset: int) -> tuple[int, int] | None:
    """The length at ``offset`` and the offset after it, or None if it is cut short."""
    if offset >= len(data):
        return None
    first = data[offset]
    if first < 0x80:
        return first, offset + 1
    if offset + 4 > len(data):
        return None
    return _LONG.unpack_from(data, offset)[0] & _MAX_PAIR_LENGTH, offset + 4


def encode_params(pairs: Mapping[bytes, bytes] | Iterable[tuple[bytes, bytes]]) -> bytes:
    """Name-value pairs as the content of a PARAMS or GET_VALUES stream."""
    items = pairs.items() if isinstance(pairs, Mapping) else pairs
    parts: list[bytes] = []
    for name, value in items:
        parts += (encode_length(len(name)), encode_length(len(value)), name, value)
    return b"".join(parts)


def iter_params(data: bytes | bytearray | memoryview) -> Iterator[tuple[bytes, bytes]]:
    """The pairs of a complete name-value block, in order, repeats included.

    Raises:
        FastCGIError: the block ends inside a pair (§3.4 pairs never straddle the end
            of a stream), or a length points past its end.
    """
    block = bytes(data)
    return iter([(block[a:b], block[b:c]) for a, b, c in _spans(block)])


def decode_params(data: bytes | bytearray | memoryview) -> dict[bytes, bytes]:
    """A complete name-value block as a dict; a repeated name keeps its last value."""
    block = bytes(data)
    return {block[a:b]: block[b:c] for a, b, c in _spans(block)}


def decode_meta(data: bytes | bytearray | memoryview) -> dict[str, str]:
    """``decode_params`` with names and values decoded as latin-1, as CGI variables are
    (one decode of the block, not one per name and value: this is per request). Latin-1
    has one character per byte, so the byte offsets cut the text too."""
    block = bytes(data)
    text = block.decode("latin-1")
    return {text[a:b]: text[b:c] for a, b, c in _spans(block)}


def _spans(block: bytes) -> list[tuple[int, int, int]]:
    """Where each pair's name starts, its value starts and the value ends. One loop over
    bytes, no view, no generator: a request's PARAMS are decoded on every request."""
    spans = []
    end, offset = len(block), 0
    while offset < end:
        at, name = offset, block[offset]
        if name < 0x80 and offset + 1 < end and (value := block[offset + 1]) < 0x80:
            offset += 2  # both lengths in one byte: the usual case
        else:
            name, value, offset = _long_lengths(block, offset)
        split = offset + name
        stop = split + value
        if stop > end:  # checked before slicing: no huge allocation
            raise FastCGIError(
                f"name-value pair at byte {at} declares {name}+{value} bytes, "
                f"only {end - offset} remain"
            )
        spans.append((offset, split, stop))
        offset = stop
    return spans


def _long_lengths(block: bytes, offset: int) -> tuple[int, int, int]:
    """The name and value lengths at ``offset`` (either in the 4-byte form), and the
    offset after them."""
    name = decode_length(block, offset)
    value = None if name is None else decode_length(block, name[1])
    if name is None or value is None:
        raise FastCGIError(f"name-value block ends inside a length, at byte {offset}")
    return name[0], value[0], value[1]


# -- fixed bodies (§4.1, §4.2, §5.1, §5.5) ---------------------------------------------


def begin_request_body(role: int, flags: int = 0) -> bytes:
    """The 8 content bytes of BEGIN_REQUEST (§5.1): role, flags, 5 reserved."""
    try:
        return _BEGIN.pack(role, flags)
    except struct.error as exc:
        raise ValueError(f"BEGIN_REQUEST field out of range: {exc}") from None


def decode_begin_request(content: bytes | bytearray | memoryview) -> tuple[int, int]:
    """The role and flags of a BEGIN_REQUEST body.

    Raises:
        FastCGIError: the body is not 8 bytes (§5.1).
    """
    if len(content) != _BEGIN.size:
        raise FastCGIError(f"BEGIN_REQUEST body of {len(content)} bytes, not 8")
    role, flags = _BEGIN.unpack(content)
    return role, flags


def end_request_body(app_status: int = 0, protocol_status: int = REQUEST_COMPLETE) -> bytes:
    """The 8 content bytes of END_REQUEST (§5.5).

    ``app_status`` is what a CGI process would exit with; a negative status (a
    signal number as Python's subprocess reports it) is sent in two's complement.
    """
    if not -0x80000000 <= app_status <= 0xFFFFFFFF:
        raise ValueError(f"app_status does not fit in 32 bits: {app_status}")
    if not 0 <= protocol_status <= 0xFF:
        raise ValueError(f"protocol_status does not fit in a byte: {protocol_status}")
    return _END.pack(app_status & 0xFFFFFFFF, protocol_status)


def decode_end_request(content: bytes | bytearray | memoryview) -> tuple[int, int]:
    """The appStatus and protocolStatus of an END_REQUEST body.

    Raises:
        FastCGIError: the body is not 8 bytes (§5.5).
    """
    if len(content) != _END.size:
        raise FastCGIError(f"END_REQUEST body of {len(content)} bytes, not 8")
    app_status, protocol_status = _END.unpack(content)
    return app_status, protocol_status


@functools.lru_cache(maxsize=256)
def end_request_record(
    request_id: int, app_status: int = 0, protocol_status: int = REQUEST_COMPLETE
) -> bytes:
    """The whole END_REQUEST record for ``request_id`` (remembered: a server ends every
    request with one of a few, web servers using ids 1, 2, ...)."""
    return encode_record(END_REQUEST, request_id, end_request_body(app_status, protocol_status))


def unknown_type_body(record_type: int) -> bytes:
    """The 8 content bytes of UNKNOWN_TYPE (§4.2): the type, 7 reserved."""
    if not 0 <= record_type <= 0xFF:
        raise ValueError(f"a record type is a byte, not {record_type}")
    return bytes((record_type,)) + _ZEROS


def unknown_type_record(record_type: int) -> bytes:
    """The whole UNKNOWN_TYPE management record answering ``record_type``."""
    return encode_record(UNKNOWN_TYPE, NULL_REQUEST_ID, unknown_type_body(record_type))


def get_values_result_record(values: Mapping[bytes, bytes]) -> bytes:
    """The single GET_VALUES_RESULT record (§4.1): one record, no empty one after it.

    Go follows it with a stray empty record (research §6 B9); a reader that takes the
    empty record as a second, empty answer is confused by it.
    """
    return encode_record(GET_VALUES_RESULT, NULL_REQUEST_ID, encode_params(values))


# -- reading records --------------------------------------------------------------------


@dataclass(slots=True)
class Record:
    """One received record: its type, request id and content (padding dropped)."""

    type: int
    request_id: int
    content: bytes


class RecordReader:
    """Splits received bytes into records; see the module docstring.

    Holds only bytes fed and not yet returned as records: once ``next_record`` has
    returned None, fewer than ``MAX_RECORD`` bytes (one record, padding included).
    """

    __slots__ = ("_buffer", "_pos")

    def __init__(self) -> None:
        self._buffer = bytearray()
        self._pos = 0  # the start of the next record in _buffer

    @property
    def buffered(self) -> int:
        """Bytes received and not yet returned in a record (a partial record at EOF)."""
        return len(self._buffer) - self._pos

    def feed(self, data: bytes | bytearray | memoryview) -> None:
        """Add received bytes (copied)."""
        if self._pos:  # drop what was handed out, at most once per feed: O(n) overall
            del self._buffer[: self._pos]
            self._pos = 0
        self._buffer += data

    def next_record(self) -> Record | None:
        """The next whole record, or None until more bytes arrive.

        Raises:
            FastCGIError: the header's version is not 1; the reader stays stuck on it.
        """
        buffer, pos = self._buffer, self._pos
        if len(buffer) - pos < HEADER_LEN:
            return None
        # decode_header's work, inline: this runs for every record of every request.
        version, kind, request_id, length, padding = _HEADER.unpack_from(buffer, pos)
        if version != VERSION_1:
            raise FastCGIError(f"unsupported FastCGI version {version}")
        start = pos + HEADER_LEN
        end = start + length
        if len(buffer) < end + padding:
            return None
        self._pos = end + padding  # §3.3: padding is skipped, unread
        if not length:
            return Record(kind, request_id, b"")
        with memoryview(buffer) as view:  # one copy of the content, not two
            content = bytes(view[start:end])
        return Record(kind, request_id, content)
