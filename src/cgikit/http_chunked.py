"""The pieces of an HTTP/1.1 request below the head: lines, field lines, chunked bodies.

``http_request`` owns the request and its events; this module owns what it reads with:
``LineReader`` (lines out of the shared receive buffer, with a byte limit checked as
soon as it is passed), ``parse_field_line`` (RFC 9112 §5, RFC 9110 §5 for header and
trailer fields alike) and ``ChunkedBody`` (RFC 9112 §7.1, de-chunking as bytes arrive).
``BadRequest`` lives here so that both modules raise it; import it from
``cgikit.http_request``. Pure: no I/O, no clock.

Chunked decisions (see also the ``http_request`` docstring):

- Every line of a chunked body ends in CRLF: the chunk-size line, the CRLF after the
  chunk data, the trailer lines and the last empty line. A bare LF there is 400: a
  proxy and a server that disagree on line ends in chunked framing disagree on where
  the body ends (CVE-2025-22871 in Go, "funky chunks"). The head is more lenient
  (RFC 9112 §2.2 names only the start-line and fields).
- ``chunk-size`` is 1 to 16 hex digits (``0x5`` and a 100-digit size are 400); the size
  may be followed by ``BWS ";"`` and extensions, which are skipped but may not contain
  controls other than HTAB. The whole line is at most 4096 bytes, so an endless
  extension cannot fill memory (CVE-2024-22019 in Node.js).
- The trailer section obeys the field rules of the head and its own
  ``max_header_bytes`` limit (431).
"""

from __future__ import annotations

from typing import Final

from cgikit.wsgi_response import TOKEN_CHARS

_TOKEN: Final = frozenset("".join(sorted(TOKEN_CHARS)).encode("ascii"))
_HEX: Final = frozenset(b"0123456789abcdefABCDEF")
# Controls other than HTAB (RFC 9110 §5.5): never accepted in a field value or chunk line.
_CONTROLS: Final = (frozenset(range(0x20)) - {0x09}) | {0x7F}
_MAX_CHUNK_LINE: Final = 4096  # chunk-size line with extensions, CRLF included
_MAX_HEX_DIGITS: Final = 16  # 2**64 - 1: no int() of a huge string


class BadRequest(ValueError):
    """The client's request is invalid; ``status`` is the response to send, then close."""

    def __init__(self, status: int, reason: str) -> None:
        super().__init__(reason)
        self.status = status
        self.reason = reason


def show(data: bytes) -> str:
    """Bytes for an error message: the repr of their latin-1 text, cut to 60 characters."""
    text = data.decode("latin-1")
    return repr(text) if len(text) <= 60 else repr(text[:60]) + "..."


def take(buffer: bytearray, count: int) -> bytes:
    """Remove and return up to ``count`` bytes from the front of ``buffer`` (one copy)."""
    if count >= len(buffer):
        data = bytes(buffer)
        buffer.clear()
        return data
    data = bytes(buffer[:count])
    del buffer[:count]
    return data


class LineReader:
    """Lines from the front of a shared buffer, consumed as they are returned.

    ``limit`` bounds the bytes read since the reader was made (or ``restart``): more
    than that without the end of the current line raises ``BadRequest(status, ...)``
    at once, not when the line ends. ``strict`` asks for CRLF; otherwise a bare LF
    ends a line too (RFC 9112 §2.2).
    """

    __slots__ = ("_buffer", "_scan", "_used", "limit", "status", "strict", "what")

    def __init__(
        self, buffer: bytearray, limit: int, status: int, what: str, *, strict: bool = False
    ) -> None:
        self._buffer = buffer
        self.limit, self.status, self.what, self.strict = limit, status, what, strict
        self._used = 0  # bytes consumed since the start
        self._scan = 0  # the buffer before this offset holds no LF

    def restart(self) -> None:
        """Count the limit from here."""
        self._used = 0

    def next_line(self) -> bytes | None:
        """The next line without its line end, or None until one is complete.

        Raises:
            BadRequest: over the limit, or a bare LF when strict.
        """
        buffer = self._buffer
        end = buffer.find(b"\n", self._scan)
        if end < 0:
            self._scan = len(buffer)
            if self._used + len(buffer) > self.limit:
                raise self._too_large()
            return None
        if self._used + end >= self.limit:  # this line would end past the limit
            raise self._too_large()
        line = bytes(buffer[:end])
        del buffer[: end + 1]
        self._used += end + 1
        self._scan = 0
        if line.endswith(b"\r"):
            return line[:-1]
        if self.strict:
            raise BadRequest(400, f"{self.what} ends in a bare LF, not CRLF: {show(line)}")
        return line

    def _too_large(self) -> BadRequest:
        return BadRequest(self.status, f"{self.what} larger than {self.limit} bytes")


def parse_field_line(line: bytes, where: str) -> tuple[bytes, bytes]:
    """``field-name ":" OWS field-value OWS`` (RFC 9112 §5): (lower-case name, value).

    Raises:
        BadRequest: 400 for NUL, a bare CR or another control, obs-fold, no colon, an
            empty name, whitespace before the colon, or a name that is not a token.
    """
    if b"\0" in line:  # RFC 9110 §5.5: CR, LF and NUL are invalid and dangerous
        raise BadRequest(400, f"{where} contains NUL: {show(line)}")
    if b"\r" in line:  # RFC 9112 §2.2: a bare CR is never a line end
        raise BadRequest(400, f"{where} contains a bare CR: {show(line)}")
    if line[:1] in (b" ", b"\t"):  # RFC 9112 §5.2 obs-fold, §2.2 space before fields
        raise BadRequest(400, f"{where} starts with whitespace (obs-fold): {show(line)}")
    colon = line.find(b":")
    if colon < 0:
        raise BadRequest(400, f"{where} is not a field: {show(line)}")
    name, value = line[:colon], line[colon + 1 :].strip(b" \t")
    if not name:
        raise BadRequest(400, f"{where} has an empty field name: {show(line)}")
    if name[-1:] in (b" ", b"\t"):  # RFC 9112 §5.1: MUST be rejected with 400
        raise BadRequest(400, f"{where} has whitespace before the colon: {show(line)}")
    if not _TOKEN.issuperset(name):  # RFC 9110 §5.1
        raise BadRequest(400, f"{where}: field name is not a token: {show(line)}")
    if not _CONTROLS.isdisjoint(value):  # RFC 9110 §5.5 field-value grammar
        raise BadRequest(400, f"{where}: control character in the value: {show(line)}")
    return name.lower(), value


def parse_chunk_size(line: bytes) -> int:
    """``chunk-size [ chunk-ext ]`` (RFC 9112 §7.1, §7.1.1): the size; extensions skipped."""
    if not _CONTROLS.isdisjoint(line):
        raise BadRequest(400, f"control character in a chunk size line: {show(line)}")
    size, semicolon, _ = line.partition(b";")
    if semicolon:
        size = size.rstrip(b" \t")  # BWS before ";"
    if not size or not _HEX.issuperset(size):
        raise BadRequest(400, f"invalid chunk size line: {show(line)}")
    if len(size) > _MAX_HEX_DIGITS:
        raise BadRequest(400, f"chunk size longer than {_MAX_HEX_DIGITS} hex digits")
    return int(size, 16)


_SIZE, _DATA, _CRLF, _TRAILERS = "size", "data", "crlf", "trailers"


class ChunkedBody:
    """Decoder of one chunked body at the front of a shared buffer (RFC 9112 §7.1).

    ``next_piece`` returns body bytes, the trailer fields once the body has ended, or
    None until more bytes arrive. The caller handles EOF.
    """

    __slots__ = (
        "_buffer",
        "_lines",
        "_remaining",
        "_state",
        "_total",
        "_trailer_lines",
        "_trailers",
        "max_body",
    )

    def __init__(self, buffer: bytearray, max_trailer_bytes: int, max_body: int | None) -> None:
        self._buffer, self.max_body = buffer, max_body
        self._state = _SIZE
        self._lines = LineReader(buffer, _MAX_CHUNK_LINE, 400, "chunk size line", strict=True)
        self._remaining = 0  # bytes left in the current chunk
        self._total = 0  # body bytes announced so far
        self._trailers: list[tuple[bytes, bytes]] = []
        self._trailer_lines = LineReader(
            buffer, max_trailer_bytes, 431, "trailer section", strict=True
        )

    def next_piece(self) -> bytes | list[tuple[bytes, bytes]] | None:
        """Body bytes, the trailers at the end, or None (feed more bytes).

        Raises:
            BadRequest: broken framing (400), the body over ``max_body`` (413), the
                trailer section over its limit (431).
        """
        while True:
            if self._state == _SIZE:
                if not self._read_size():
                    return None
            elif self._state == _DATA:
                return self._read_data()
            elif self._state == _CRLF:
                if not self._read_crlf():
                    return None
            else:
                return self._read_trailers()

    def _read_size(self) -> bool:
        line = self._lines.next_line()
        if line is None:
            return False
        self._lines.restart()  # the limit is per line
        size = parse_chunk_size(line)
        if size == 0:  # last-chunk
            self._state = _TRAILERS
            return True
        self._total += size
        if self.max_body is not None and self._total > self.max_body:
            raise BadRequest(413, f"chunked body larger than {self.max_body} bytes")
        self._state, self._remaining = _DATA, size
        return True

    def _read_data(self) -> bytes | None:
        buffer = self._buffer
        if not buffer:
            return None
        data = take(buffer, self._remaining)
        self._remaining -= len(data)
        if not self._remaining:
            self._state = _CRLF
        return data

    def _read_crlf(self) -> bool:
        """The CRLF that ends chunk-data, checked byte by byte (same error for any split)."""
        head = bytes(self._buffer[:2])
        if head not in (b"\r\n", b"\r", b""):
            raise BadRequest(400, "chunk data not followed by CRLF")
        if head != b"\r\n":
            return False
        del self._buffer[:2]
        self._state = _SIZE
        return True

    def _read_trailers(self) -> list[tuple[bytes, bytes]] | None:
        while (line := self._trailer_lines.next_line()) is not None:
            if not line:
                return self._trailers
            where = f"trailer line {len(self._trailers) + 1}"
            self._trailers.append(parse_field_line(line, where))
        return None
