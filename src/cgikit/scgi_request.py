"""The application side's reading of one SCGI request from one connection.

Owns the parsing of what a web server sends an SCGI application (SCGI, Neil
Schemenauer, 2008-06-23 text; research: shared/research/fastcgi-anchors.md §4, §5,
§8.4): a netstring ``LEN ":" HEADERS ","`` whose HEADERS are NUL-terminated name and
value strings, then CONTENT_LENGTH bytes of body. Sans-IO in the style of h11: the
server feeds what the socket gave with ``SCGIRequestParser.receive_data`` (``b""`` when
the web server closed) and pulls events with ``next_event``: ``NEED_DATA``, one
``Headers``, ``Body`` chunks as they arrive (never accumulated), then ``EndOfBody``.
A connection carries one request; the application ends its response by closing. A
malformed request raises ``SCGIError``; EOF before the request's end raises its
subclass ``IncompleteRequest``. No I/O, no clock, no threads.

Where the spec leaves room (research §5 SCGI checklist):

- LEN is 1*DIGIT without leading zeros (item 1): ``070`` is an error, and so is ``0``
  (a request without headers has no CONTENT_LENGTH). LEN is at most
  ``max_header_bytes`` (default 64 KiB, as the HTTP and CGI parsers; nginx sends about
  half a KiB plus the client's headers, research §4), checked digit by digit: a length
  over the limit is an error as soon as its digits show it, before any header byte is
  buffered (item 8), so the header phase never holds more than the limit. A first byte
  that is not a digit (``GET / HTTP/1.1``) is "not an SCGI request". A reason names
  no byte past the one at fault, so it is the same however the bytes were split.
- The netstring must end in ``,``; the header block must end in NUL and hold an even
  number of strings. Names are non-empty; values may be empty (item 2: the 2008 text
  allows it, and nginx sends ``SERVER_NAME`` empty, research §4). Bytes are kept as
  sent: decoding and environ fixups are the WSGI layer's.
- The first name is CONTENT_LENGTH (item 3), 1 to 18 ASCII digits (leading zeros are
  still decimal; more digits than an exabyte's are refused, also because ``int()`` of
  thousands of digits raises ValueError). ``SCGI`` must be present and be ``1`` (item 4).
- Duplicate names (item 5): an error, since two readers that pick different copies of
  CONTENT_LENGTH or REQUEST_METHOD disagree about the request, except for ``HTTP_*``.
  nginx before 1.23.0 (Debian 12 ships 1.22.1) passes a header the client repeated as
  repeated ``HTTP_*`` pairs; 1.23.0 and later join the values with ", " ("; " for
  Cookie). Those are joined the same way, so the application sees the same params
  whichever nginx sent them, and a client cannot get the request refused by repeating
  a header.
- The body is exactly CONTENT_LENGTH bytes after the comma (item 6): Body events never
  carry more, so ``wsgi.input`` ends there (research §1 item 6; flup handed the raw
  socket over and ``read()`` hung, bug B5). Bytes after the body are dropped: the
  connection carries one request (research §8.4).
- EOF before EndOfBody raises ``IncompleteRequest``; it is never an event. nginx tells
  an application that its client went away by closing (research §4), and research §9
  item 3 makes that EOF an abort: ``wsgi.input`` must raise rather than hand out a
  short body as if it were whole, and an exception cannot be mistaken for the end of
  the body by a loop that reads Body events until something else comes. ``received``
  is 0 when the connection closed before a byte (a port probe: nothing to log).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Final, TypeAlias

from cgikit.cgi_output import NEED_DATA, NeedData
from cgikit.http_chunked import show, take

__all__ = [
    "NEED_DATA",
    "Body",
    "EndOfBody",
    "Event",
    "Headers",
    "IncompleteRequest",
    "NeedData",
    "SCGIError",
    "SCGIRequestParser",
]

_DIGITS: Final = frozenset(b"0123456789")
_COLON, _ZERO = ord(":"), ord("0")
_MAX_LENGTH_DIGITS: Final = 18  # below 2**63: no int() of a 5000-digit string
# nginx 1.23.0+ joins a repeated request header with ", ", Cookie with "; " (RFC 6265 §5.4).
_COOKIE: Final = b"HTTP_COOKIE"


# Read-only by convention, not frozen (here and below): made per request, and a frozen
# dataclass's __init__ costs three times as much (an object.__setattr__ call a field,
# in the compiled build too).
@dataclass(slots=True)
class Headers:
    """The request's headers, checked (SCGI spec; research §5 SCGI items 1-5).

    ``params`` maps each name to its value, bytes as sent, in the order sent
    (CONTENT_LENGTH first); repeated ``HTTP_*`` names are joined as nginx 1.23 does.
    ``content_length`` is CONTENT_LENGTH as a number: the body's exact length.
    """

    params: dict[bytes, bytes]
    content_length: int


@dataclass(slots=True)
class Body:
    """Body bytes, as many as have arrived since the last event (never past the end)."""

    data: bytes


@dataclass(slots=True)
class EndOfBody:
    """All CONTENT_LENGTH bytes of the body have been handed out."""


Event: TypeAlias = Headers | Body | EndOfBody | NeedData


class SCGIError(ValueError):
    """The bytes are not a valid SCGI request; the server closes the connection."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


class IncompleteRequest(SCGIError):
    """The web server closed before the request's end: an abort (research §9 item 3).

    ``received`` counts the bytes received on the connection (0: it closed before the
    first). ``missing`` is the number of body bytes that never came, or None when the
    connection closed before the headers were complete.
    """

    def __init__(self, reason: str, received: int, missing: int | None) -> None:
        super().__init__(reason)
        self.received = received
        self.missing = missing


_LENGTH, _NETSTRING, _BODY, _DONE, _ERROR = "length", "netstring", "body", "done", "error"
_END: Final = EndOfBody()


class SCGIRequestParser:
    """Incremental parser of the one request on a connection; see the module docstring."""

    __slots__ = (
        "_buffer",
        "_digits",
        "_eof",
        "_error",
        "_length",
        "_received",
        "_remaining",
        "_size",
        "_state",
        "max_header_bytes",
    )

    def __init__(self, max_header_bytes: int = 65536) -> None:
        if type(max_header_bytes) is not int or max_header_bytes < 1:
            raise ValueError(f"max_header_bytes must be a positive int: {max_header_bytes!r}")
        self.max_header_bytes = max_header_bytes
        self._digits = len(str(max_header_bytes))  # a longer LEN is over the limit
        self._state = _LENGTH
        self._buffer = bytearray()  # received bytes not yet consumed
        self._eof = False
        self._error: SCGIError | None = None
        self._received = 0  # bytes received on the connection, for IncompleteRequest
        self._size = 0  # LEN: the header block's size
        self._length = 0  # CONTENT_LENGTH
        self._remaining = 0  # body bytes still to hand out

    def receive_data(self, data: bytes | bytearray | memoryview) -> None:
        """Feed bytes the web server sent; ``b""`` means it closed its side (EOF).

        The bytes are copied, so the caller may reuse its buffer. After an error or
        the body's end they are dropped.

        Raises:
            RuntimeError: bytes after EOF (a bug in the caller, not in the web server).
        """
        if self._eof:
            raise RuntimeError("receive_data() called after EOF (b'')")
        if not data:
            self._eof = True
            return
        self._received += len(data)
        if self._state not in (_DONE, _ERROR):
            self._buffer += data

    def next_event(self) -> Event:
        """The next event: NEED_DATA, Headers, Body, or EndOfBody (repeated at the end).

        NEED_DATA never follows EOF.

        Raises:
            SCGIError: the request is malformed; every later call raises it again.
            IncompleteRequest: EOF before the body's end (a subclass of SCGIError).
        """
        if self._error is not None:
            raise self._error.with_traceback(None)
        try:
            return self._step()
        except SCGIError as exc:
            self._state, self._error = _ERROR, exc
            self._buffer.clear()
            raise

    def _step(self) -> Event:
        if self._state == _LENGTH:
            self._read_length()
        event: Event = NEED_DATA
        if self._state == _NETSTRING:
            event = self._read_netstring()
        elif self._state == _BODY:
            event = self._read_body()
        elif self._state == _DONE:
            return _END
        if event is NEED_DATA and self._eof:
            raise self._incomplete()
        return event

    def _read_length(self) -> None:
        """LEN and its colon; the state moves on once both are there."""
        buffer = self._buffer
        head = bytes(buffer[: self._digits + 1])  # enough to tell LEN over the limit
        size = _scan_length(head, self.max_header_bytes)
        if size is not None:
            self._size = size
            del buffer[: len(str(size)) + 1]
            self._state = _NETSTRING

    def _read_netstring(self) -> Headers | NeedData:
        buffer, size = self._buffer, self._size
        if len(buffer) <= size:
            return NEED_DATA
        if buffer[size] != ord(","):
            got = show(bytes(buffer[size : size + 1]))
            raise SCGIError(f"header netstring of {size} bytes followed by {got}, not ','")
        params = _parse_headers(bytes(buffer[:size]))
        del buffer[: size + 1]
        length = _content_length(params[b"CONTENT_LENGTH"])
        scgi = params.get(b"SCGI")
        if scgi is None:
            raise SCGIError("no SCGI header (SCGI=1 is required)")
        if scgi != b"1":
            raise SCGIError(f"SCGI is {show(scgi)}, not '1'")
        self._state, self._length, self._remaining = _BODY, length, length
        return Headers(params, length)

    def _read_body(self) -> Body | EndOfBody | NeedData:
        if not self._remaining:
            self._state = _DONE
            self._buffer.clear()  # bytes after the body: one request per connection
            return _END
        if not self._buffer:
            return NEED_DATA
        data = take(self._buffer, self._remaining)
        self._remaining -= len(data)
        return Body(data)

    def _incomplete(self) -> IncompleteRequest:
        received = self._received
        if self._state == _BODY:
            got = self._length - self._remaining
            reason = f"connection closed after {got} of the body's {self._length} bytes"
            return IncompleteRequest(reason, received, self._remaining)
        if not received:
            return IncompleteRequest("connection closed before a request", 0, None)
        reason = f"connection closed after {received} bytes, inside the header netstring"
        return IncompleteRequest(reason, received, None)


def _scan_length(head: bytes, limit: int) -> int | None:
    """LEN from the start of ``head``, or None until its colon (SCGI items 1, 8).

    Each byte is judged on the bytes before it alone, so a bad length gives the same
    reason however the bytes were split.
    """
    for index, byte in enumerate(head):
        digits = head[:index]
        if byte == _COLON:
            if not digits:
                raise SCGIError("empty netstring length before ':'")
            if digits == b"0":
                raise SCGIError("header netstring of length 0: no CONTENT_LENGTH")
            return int(digits)
        if byte not in _DIGITS:
            if not index:  # an HTTP request sent to the SCGI port, say
                shown = show(head[:1])
                raise SCGIError(f"not an SCGI request: it starts with {shown}, not a digit")
            shown = f"{show(digits)} followed by {show(head[index : index + 1])}"
            raise SCGIError(f"netstring length {shown}, not ':'")
        if index == 1 and head[0] == _ZERO:
            raise SCGIError(f"netstring length with a leading zero: {show(head[:2])}")
        if int(head[: index + 1]) > limit:  # at most len(str(limit)) + 1 digits: cheap
            number = head[: index + 1].decode("ascii")
            raise SCGIError(f"header netstring larger than {limit} bytes (length {number}...)")
    return None


def _parse_headers(block: bytes) -> dict[bytes, bytes]:
    """NUL-terminated name, value, name, value... (research §5 SCGI items 2, 3, 5)."""
    if not block.endswith(b"\0"):
        raise SCGIError(f"header block does not end in NUL: ...{show(block[-20:])}")
    strings = block[:-1].split(b"\0")
    if len(strings) % 2:
        raise SCGIError(
            f"header block holds an odd number of strings ({len(strings)}): "
            f"the last, {show(strings[-1])}, has no value"
        )
    names, values = strings[0::2], strings[1::2]
    if names[0] != b"CONTENT_LENGTH":
        if b"CONTENT_LENGTH" in names:
            where = names.index(b"CONTENT_LENGTH") + 1
            raise SCGIError(f"CONTENT_LENGTH is header {where}, not the first")
        raise SCGIError(f"no CONTENT_LENGTH first (the first header is {show(names[0])})")
    params: dict[bytes, bytes] = {}
    repeats: dict[bytes, list[bytes]] = {}
    for number, (name, value) in enumerate(zip(names, values, strict=True), 1):
        if not name:
            raise SCGIError(f"header {number} has an empty name")
        if name not in params:
            params[name] = value
        elif name.startswith(b"HTTP_"):  # nginx < 1.23 repeats them; see the docstring
            repeats.setdefault(name, [params[name]]).append(value)
        else:
            raise SCGIError(f"duplicate header {show(name)}")
    for name, parts in repeats.items():  # joined once: a quadratic += is a DoS
        params[name] = (b"; " if name == _COOKIE else b", ").join(parts)
    return params


def _content_length(value: bytes) -> int:
    """CONTENT_LENGTH: a non-empty run of ASCII digits (research §5 SCGI item 3)."""
    if not value.isdigit():  # no "", "+5", " 5", "-1", "5x"
        raise SCGIError(f"CONTENT_LENGTH is not a decimal integer: {show(value)}")
    if len(value.lstrip(b"0")) > _MAX_LENGTH_DIGITS:
        raise SCGIError(f"CONTENT_LENGTH too large: {show(value)}")
    return int(value)
