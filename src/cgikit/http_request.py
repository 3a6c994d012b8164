"""The server side's reading of HTTP/1.1 requests from one connection (RFC 9112).

Sans-IO in the style of h11: the server feeds what the socket gave with
``RequestParser.receive_data`` (``b""`` when the client closed) and pulls events with
``next_event``: ``NEED_DATA``, one ``Request`` (the checked head), ``Data`` body bytes
as they arrive (de-chunked, never buffered whole), then ``EndOfMessage`` with the
trailer fields; ``start_next_request`` then reads the next request on a keep-alive
connection (pipelined bytes already received are kept). ``ConnectionClosed`` means the
client closed between two requests. A bad request raises ``BadRequest`` carrying the
status to answer; the parser stays in error and the server closes after answering.
No I/O, no clock, no threads; ``http_chunked`` holds the chunked body decoder.

Where the RFCs leave room, a server at the edge takes the strict reading (h11, Go):

- Lines of the head end in CRLF or a bare LF (RFC 9112 §2.2 MAY), never a bare CR.
  Empty lines before the request line are skipped (§2.2 SHOULD) and count toward
  ``max_header_bytes``; EOF after nothing but such lines is ``ConnectionClosed``.
- Request line (§3): exactly ``method SP target SP version``, single spaces. The method
  is a token, the target a non-empty run of visible ASCII (the server checks it
  further; absolute-form and ``*`` come out as sent), the version ``HTTP/DIGIT.DIGIT``
  (case-sensitive, §2.3). A well-formed version other than 1.0 or 1.1 is 505 (RFC 9110
  §2.5 would treat ``HTTP/1.2`` as 1.1; no client sends it, and 505 is unambiguous).
- Field lines (§5): the name a token right before the colon (whitespace there is 400,
  §5.1), the value stripped of SP/HTAB. obs-fold and whitespace before the first field
  are 400 (§5.2, §2.2 allow rejecting), as are NUL, a bare CR and every other control
  but HTAB in the head (RFC 9110 §5.5: Go and h11 refuse them too). obs-text is kept.
- The head, leading empty lines included, is at most ``max_header_bytes``: 431 as soon
  as more bytes than that are buffered without its end.
- Host (§3.2): more than one is 400 for any version; HTTP/1.1 without one is 400. Its
  value is the server's to check (``cgi_meta``).
- Framing (§6.1, §6.3): Content-Length together with Transfer-Encoding is 400 (§6.1
  allows rejecting, and it is the classic smuggling shape), and so is any
  Transfer-Encoding in HTTP/1.0 (§6.1: treat the framing as faulty). Transfer-Encoding
  is a list over all its fields: it must end in ``chunked`` (else 400, §6.3 rule 4),
  name ``chunked`` once (§7.1) and nothing else (other codings are not implemented:
  501, §6.1). Content-Length is ``1*DIGIT``; a list or repeats of one value are merged
  (RFC 9110 §8.6), different values or anything else (``+5``, ``5x``, empty) are 400;
  more than 18 significant digits (an exabyte) is 413; over ``max_body_bytes`` is 413
  before the body is read. Neither field: no body (§6.3 rule 6).
- Chunked bodies (§7.1, see ``http_chunked``): every line ends in CRLF, a bare LF is
  400 (the line-terminator smuggling of CVE-2025-22871); sizes have 1 to 16 hex
  digits; extensions are skipped; the running total over ``max_body_bytes`` is 413 as
  soon as a chunk size announces it. Trailers follow the field rules above and are
  handed out in ``EndOfMessage``, never merged into the head (RFC 9110 §6.5.1).
- ``keep_alive`` (§9.3): HTTP/1.1 unless Connection lists ``close``; HTTP/1.0 only if it
  lists ``keep-alive`` and not ``close``. ``expect_continue``: HTTP/1.1 with Expect
  listing ``100-continue`` (RFC 9110 §10.1.1: a 1.0 client's expectation is ignored).
- EOF inside a request, head or body, is 400 ``client closed mid-request``.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Final, TypeAlias

from cgikit.cgi_output import NEED_DATA, NeedData
from cgikit.http_chunked import (
    BadRequest,
    ChunkedBody,
    LineReader,
    parse_field_line,
    show,
    take,
)
from cgikit.wsgi_response import TOKEN_CHARS

__all__ = [
    "NEED_DATA",
    "BadRequest",
    "ConnectionClosed",
    "Data",
    "EndOfMessage",
    "Event",
    "NeedData",
    "Request",
    "RequestParser",
]

_TOKEN: Final = frozenset("".join(sorted(TOKEN_CHARS)).encode("ascii"))
_VISIBLE: Final = frozenset(range(0x21, 0x7F))  # VCHAR, RFC 5234
_SUPPORTED: Final = ((1, 0), (1, 1))
_MAX_LENGTH_DIGITS: Final = 18  # below 2**63: no int() of a 5000-digit string


# Read-only by convention, not frozen (here and below): made per request, and a frozen
# dataclass's __init__ costs three times as much (an object.__setattr__ call a field,
# in the compiled build too).
@dataclass(slots=True)
class Request:
    """A request head, checked (RFC 9112 §3, §5, §6).

    ``method`` is a token (ASCII); ``target`` the raw request-target bytes; ``headers``
    the fields in order, names lower-cased, values stripped of SP/HTAB, repeats kept.
    ``content_length`` is the body's length when Content-Length frames it (None when
    chunked or when there is no body); ``chunked`` when Transfer-Encoding does.
    """

    method: str
    target: bytes
    version: tuple[int, int]
    headers: list[tuple[bytes, bytes]]
    content_length: int | None = None
    chunked: bool = False
    keep_alive: bool = True
    expect_continue: bool = False


@dataclass(slots=True)
class Data:
    """Body bytes (de-chunked), as many as have arrived since the last event."""

    data: bytes


@dataclass(slots=True)
class EndOfMessage:
    """The request's body is complete; ``trailers`` are a chunked body's trailer fields."""

    trailers: list[tuple[bytes, bytes]] = field(default_factory=list)


@dataclass(slots=True)
class ConnectionClosed:
    """The client closed the connection between two requests."""


Event: TypeAlias = Request | Data | EndOfMessage | ConnectionClosed | NeedData

_HEAD, _LENGTH, _CHUNKED, _DONE, _CLOSED, _ERROR = (
    "head",
    "length",
    "chunked",
    "done",
    "closed",
    "error",
)


class RequestParser:
    """Incremental parser of the requests on one connection; see the module docstring."""

    __slots__ = (
        "_buffer",
        "_chunked",
        "_end",
        "_eof",
        "_error",
        "_fields",
        "_lines",
        "_remaining",
        "_start",
        "_state",
        "max_body_bytes",
        "max_header_bytes",
    )

    def __init__(self, max_header_bytes: int = 65536, max_body_bytes: int | None = None) -> None:
        if type(max_header_bytes) is not int or max_header_bytes < 1:
            raise ValueError(f"max_header_bytes must be a positive int: {max_header_bytes!r}")
        if max_body_bytes is not None and (type(max_body_bytes) is not int or max_body_bytes < 0):
            raise ValueError(f"max_body_bytes must be None or an int >= 0: {max_body_bytes!r}")
        self.max_header_bytes = max_header_bytes
        self.max_body_bytes = max_body_bytes
        self._buffer = bytearray()  # received bytes not yet consumed
        self._eof = False
        self._error: tuple[int, str] | None = None
        self._end = EndOfMessage()
        self._start_request()

    def _start_request(self) -> None:
        self._state = _HEAD
        self._lines = LineReader(self._buffer, self.max_header_bytes, 431, "header block")
        self._start: tuple[str, bytes, tuple[int, int]] | None = None  # the request line
        self._fields: list[tuple[bytes, bytes]] = []
        self._remaining = 0  # Content-Length bytes still to hand out
        self._chunked: ChunkedBody | None = None

    def receive_data(self, data: bytes | bytearray | memoryview) -> None:
        """Feed bytes the client sent; ``b""`` means it closed its side (EOF).

        The bytes are copied, so the caller may reuse its buffer. After an error they
        are dropped: the server answers and closes.

        Raises:
            RuntimeError: bytes after EOF (a bug in the caller, not in the client).
        """
        if self._eof:
            raise RuntimeError("receive_data() called after EOF (b'')")
        if not data:
            self._eof = True
        elif self._state != _ERROR:
            self._buffer += data

    def next_event(self) -> Event:
        """The next event: NEED_DATA, a Request, Data, EndOfMessage or ConnectionClosed.

        EndOfMessage is repeated until ``start_next_request``; ConnectionClosed is
        repeated for ever. NEED_DATA never follows EOF.

        Raises:
            BadRequest: the request is invalid; ``status`` is the answer (400, 413,
                431, 501 or 505). Every later call raises it again.
        """
        if self._error is not None:
            raise BadRequest(*self._error)
        try:
            return self._step()
        except BadRequest as exc:
            self._state, self._error = _ERROR, (exc.status, exc.reason)
            self._buffer.clear()
            raise

    @property
    def buffered(self) -> int:
        """Bytes received and not yet handed out (after a Request: body bytes, and any
        pipelined request after them)."""
        return len(self._buffer)

    def start_next_request(self) -> None:
        """After EndOfMessage, read the next request on the connection (keep-alive).

        Bytes already received after the message (pipelining) are parsed next. The
        server should close instead when ``Request.keep_alive`` was false.

        Raises:
            RuntimeError: the current request has not ended (no EndOfMessage yet).
        """
        if self._state != _DONE:
            raise RuntimeError(f"start_next_request() in state {self._state!r}, not after EOM")
        self._start_request()

    def _step(self) -> Event:
        state = self._state
        if state == _DONE:
            return self._end
        if state == _CLOSED:
            return ConnectionClosed()
        event: Event
        if state == _HEAD:
            event = self._read_head()
        elif state == _LENGTH:
            event = self._read_length()
        else:
            event = self._read_chunked()
        if event is not NEED_DATA or not self._eof:
            return event
        if state == _HEAD and self._start is None and not self._buffer:
            self._state = _CLOSED  # only empty lines, if anything, since the last request
            return ConnectionClosed()
        raise BadRequest(400, "client closed mid-request")

    def _read_head(self) -> Request | NeedData:
        while (line := self._lines.next_line()) is not None:
            if self._start is None:
                if line:  # RFC 9112 §2.2: empty lines before the request line are skipped
                    self._start = _parse_request_line(line)
            elif line:
                self._fields.append(parse_field_line(line, f"line {len(self._fields) + 2}"))
            else:
                return self._begin_body(self._make_request())
        return NEED_DATA

    def _make_request(self) -> Request:
        if self._start is None:  # _read_head calls this only after a request line
            raise RuntimeError("no request line")
        method, target, version = self._start
        fields = self._fields
        _check_host(fields, version)
        length, chunked = _framing(fields, version)
        limit = self.max_body_bytes
        if length is not None and limit is not None and length > limit:
            raise BadRequest(413, f"Content-Length {length} larger than {limit} bytes")
        connection = _list(fields, b"connection")
        keep_alive = b"close" not in connection and (
            version == (1, 1) or b"keep-alive" in connection
        )
        expect = version == (1, 1) and b"100-continue" in _list(fields, b"expect")
        return Request(method, target, version, fields, length, chunked, keep_alive, expect)

    def _begin_body(self, request: Request) -> Request:
        if request.chunked:
            self._state = _CHUNKED
            self._chunked = ChunkedBody(self._buffer, self.max_header_bytes, self.max_body_bytes)
        else:  # no Content-Length: no body (RFC 9112 §6.3 rule 6); EOM comes next
            self._state, self._remaining = _LENGTH, request.content_length or 0
        return request

    def _finish(self, trailers: list[tuple[bytes, bytes]]) -> EndOfMessage:
        self._state, self._end = _DONE, EndOfMessage(trailers)
        return self._end

    def _read_length(self) -> Data | EndOfMessage | NeedData:
        if not self._remaining:
            return self._finish([])
        buffer = self._buffer
        if not buffer:
            return NEED_DATA
        data = take(buffer, self._remaining)
        self._remaining -= len(data)
        return Data(data)

    def _read_chunked(self) -> Data | EndOfMessage | NeedData:
        if self._chunked is None:
            raise RuntimeError("chunked state without a decoder")
        result = self._chunked.next_piece()
        if result is None:
            return NEED_DATA
        if isinstance(result, bytes):
            return Data(result)
        return self._finish(result)


def _parse_request_line(line: bytes) -> tuple[str, bytes, tuple[int, int]]:
    """``method SP request-target SP HTTP-version`` (RFC 9112 §3)."""
    if b"\0" in line or b"\r" in line:  # RFC 9112 §2.2, RFC 9110 §5.5
        raise BadRequest(400, f"request line contains NUL or a bare CR: {show(line)}")
    parts = line.split(b" ")
    if len(parts) != 3 or not all(parts):
        raise BadRequest(400, f"invalid request line: {show(line)}")
    method, target, version = parts
    if not _TOKEN.issuperset(method):
        raise BadRequest(400, f"method is not a token: {show(line)}")
    if not _VISIBLE.issuperset(target):  # §3.2: no controls, spaces or non-ASCII
        raise BadRequest(400, f"request target is not visible ASCII: {show(line)}")
    return method.decode("ascii"), target, _parse_version(version)


def _parse_version(version: bytes) -> tuple[int, int]:
    """``HTTP/DIGIT.DIGIT``, case-sensitive (RFC 9112 §2.3); 505 unless 1.0 or 1.1."""
    major, minor = version[5:6], version[7:8]
    well_formed = len(version) == 8 and version[:5] == b"HTTP/" and version[6:7] == b"."
    if not (well_formed and major.isdigit() and minor.isdigit()):
        raise BadRequest(400, f"invalid HTTP version: {show(version)}")
    number = (int(major), int(minor))
    if number not in _SUPPORTED:  # RFC 9110 §15.6.6
        raise BadRequest(505, f"HTTP version {version.decode('ascii')} not supported")
    return number


def _values(fields: list[tuple[bytes, bytes]], name: bytes) -> list[bytes]:
    return [value for key, value in fields if key == name]


def _list(fields: list[tuple[bytes, bytes]], name: bytes) -> list[bytes]:
    """The elements of a list field over all its lines, lower-cased (RFC 9110 §5.6.1).

    Empty elements are dropped, as §5.6.1 asks of recipients.
    """
    items = b",".join(_values(fields, name)).split(b",")
    return [item.strip(b" \t").lower() for item in items if item.strip(b" \t")]


def _check_host(fields: list[tuple[bytes, bytes]], version: tuple[int, int]) -> None:
    """RFC 9112 §3.2: exactly one Host in HTTP/1.1, at most one in HTTP/1.0."""
    hosts = len(_values(fields, b"host"))
    if hosts > 1:
        raise BadRequest(400, f"{hosts} Host fields")
    if hosts == 0 and version == (1, 1):
        raise BadRequest(400, "HTTP/1.1 request without Host")


def _framing(
    fields: list[tuple[bytes, bytes]], version: tuple[int, int]
) -> tuple[int | None, bool]:
    """The body's framing (RFC 9112 §6.1, §6.3): (Content-Length, chunked)."""
    lengths = _values(fields, b"content-length")
    if not any(key == b"transfer-encoding" for key, _ in fields):
        return (_content_length(lengths) if lengths else None), False
    if version == (1, 0):  # §6.1: an HTTP/1.0 message's framing is then faulty
        raise BadRequest(400, "Transfer-Encoding in an HTTP/1.0 request")
    if lengths:  # §6.1, §6.3 rule 3: request smuggling
        raise BadRequest(400, "both Content-Length and Transfer-Encoding")
    codings = _list(fields, b"transfer-encoding")
    if not codings or codings[-1] != b"chunked":  # §6.3 rule 4
        shown = b", ".join(_values(fields, b"transfer-encoding"))
        raise BadRequest(400, f"Transfer-Encoding does not end in chunked: {show(shown)}")
    if b"chunked" in codings[:-1]:  # §7.1: chunked is applied at most once
        raise BadRequest(400, "Transfer-Encoding names chunked more than once")
    if len(codings) > 1:  # §6.1: a transfer coding the server does not implement
        raise BadRequest(501, f"unsupported transfer coding: {show(codings[0])}")
    return None, True


def _content_length(values: list[bytes]) -> int:
    """Content-Length = 1*DIGIT; identical repeats merged (RFC 9110 §8.6)."""
    numbers = set()
    for value in values:
        for item in value.split(b","):
            digits = item.strip(b" \t")
            if not digits.isdigit():  # bytes.isdigit is ASCII-only: no "+5", "5x", ""
                raise BadRequest(400, f"invalid Content-Length: {show(value)}")
            if len(digits.lstrip(b"0")) > _MAX_LENGTH_DIGITS:
                raise BadRequest(413, f"Content-Length too large: {show(value)}")
            numbers.add(int(digits))
    if len(numbers) > 1:
        raise BadRequest(400, f"different Content-Length values: {sorted(numbers)}")
    return numbers.pop()
