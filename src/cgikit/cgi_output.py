"""The host side's reading of a CGI script's output: one response head, then the body.

Owns the parsing of what a script writes to stdout (RFC 3875 §6), sans-IO in the style
of h11: the caller feeds bytes with ``ScriptOutput.receive_data`` (``b""`` when the
script's stdout closes) and pulls events with ``next_event``: ``NEED_DATA``, one
``Head``, ``Body`` chunks as they arrive (the body is never buffered), then
``EndOfOutput``. Malformed output raises ``ScriptOutputError``; the host answers 502 and
logs its reason. No I/O, no clock, no threads. NPH scripts (§5) are passed through by
the host and never reach this parser; HEAD requests are the host's business too.

RFC 3875 sections: §6.2 the four response kinds, §6.3 the header fields (§6.3.1
Content-Type, §6.3.2 Location, §6.3.3 Status, §6.3.4 protocol fields), §6.4 the body.
Where the RFC leaves room (research: shared/research/cgi-anchors.md §1c, §3, §5b):

- Lines end in LF or CRLF, mixed (§7.2 via §6.3.4); the first empty line ends the
  header block (R11). A bare CR, NUL, a folded line or a name that is not a token is an
  error, not a skipped line (Go and lighttpd skip; Apache fails): the output is broken.
- At least one of Content-Type, Location, Status (§6.3), each at most once, non-empty.
  A block with none (R2: only Content-Length), an empty block (R3), no output (R1), a
  line that is not a field (R4) or EOF before the empty line is an error. A document
  without Content-Type is passed on without one (§6.3.1: the server SHOULD NOT guess).
- Status is ``3DIGIT`` or ``3DIGIT SP reason`` with a code in 100-599 (RFC 9110 §15),
  matched in any case (R10); a missing reason becomes the standard phrase.
- Kinds (§6.2): a Location that is a local path (``/`` then URI characters, not ``//``
  or ``/\\``, no fragment) and no Status is a local redirect, whatever other fields
  come with it (as Apache; §6.2.2 forbids them, the host ignores them) and its body is
  discarded: the response comes from the re-dispatched GET (``Head.status`` 302 is the
  answer for a host that re-dispatches none). Any other Location without
  Status (``http://...``, ``//evil/x``, ``/\\evil``, ``x.html``) is a client redirect,
  302: never re-dispatched (CVE-2024-38476, research §3 row 7), and a client redirect
  gives a script nothing it lacks (it can write ``http://evil/x``). A client redirect
  with Content-Type, or a Location with a 3xx Status, is a client redirect with
  document (§6.2.4), its status 302 unless given. A Location with a non-3xx Status (201
  Created) is a document that carries a Location field.
- Bodies are passed on as written, also after a client redirect without Content-Type
  (Go and lighttpd do; Apache drops it), except after a local redirect and for 1xx, 204
  and 304 (RFC 9110 §6.4.1), whose body bytes are discarded.
- Content-Length and Transfer-Encoding from the script never frame anything (Apache
  CVE-2024-24795, research §3 row 6): both are removed from ``Head.headers``, as are
  the other hop-by-hop fields (§6.3.4, RFC 9110 §7.6.1). A chunked body (R14) is not
  de-chunked: its raw bytes are the body, and the host frames the response itself.
- The header block, empty line included, is at most ``max_header_bytes`` (default
  64 KiB as lighttpd, research §3 row 12); the error comes as soon as more bytes than
  that are buffered without its end, not at EOF.
- Values: spaces and tabs around them are stripped; bytes are decoded as latin-1 so
  every byte survives. Other control characters are kept (RFC 9110 §5.5).
"""

from __future__ import annotations

from dataclasses import dataclass
from http import HTTPStatus
from typing import Final, Literal, TypeAlias

from cgikit.wsgi_response import HOP_BY_HOP, TOKEN_CHARS

ResponseKind: TypeAlias = Literal[
    "document", "local redirect", "client redirect", "client redirect with document"
]
DOCUMENT: Final = "document"  # §6.2.1
LOCAL_REDIRECT: Final = "local redirect"  # §6.2.2
CLIENT_REDIRECT: Final = "client redirect"  # §6.2.3
CLIENT_REDIRECT_WITH_DOCUMENT: Final = "client redirect with document"  # §6.2.4

# RFC 9110 §6.4.1: these statuses never carry a body.
NO_BODY_STATUSES: Final = frozenset({204, 304}) | frozenset(range(100, 200))

_PHRASES: Final = {status.value: status.phrase for status in HTTPStatus}
_TOKEN_BYTES: Final = frozenset("".join(sorted(TOKEN_CHARS)).encode("ascii"))
# RFC 3986 §2: the characters of a URI path and query (no "#": §6.2.2's local-pathquery
# has no fragment). A space, a control, "\" or non-ASCII never make a local redirect.
_PATH_BYTES: Final = frozenset(
    b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-._~:/?[]@!$&'()*+,;=%"
)
# The CGI fields of §6.3, each allowed once, with the spelling used in error messages.
_CGI_FIELDS: Final = {"status": "Status", "location": "Location", "content-type": "Content-Type"}
# Removed from Head.headers: the host frames the response (CVE-2024-24795, §6.3.4).
_DROPPED: Final = HOP_BY_HOP | {"content-length"}


class NeedData:
    """The type of ``NEED_DATA``: feed more bytes, or EOF, before the next event."""

    __slots__ = ()

    def __repr__(self) -> str:
        return "NEED_DATA"


NEED_DATA: Final = NeedData()


# Read-only by convention, not frozen (here and below): made per request, and a frozen
# dataclass's __init__ costs three times as much (an object.__setattr__ call a field,
# in the compiled build too).
@dataclass(slots=True)
class Head:
    """The response head a script gave, checked and classified (RFC 3875 §6.2, §6.3).

    ``headers`` are the fields in order (Status and the dropped fields left out),
    names as written, values stripped and latin-1-decoded; repeats such as Set-Cookie
    are kept. ``claimed_length`` is the script's first numeric Content-Length, for the
    log only; ``dropped`` names the fields removed (Content-Length, hop-by-hop).
    """

    status: int
    reason: str
    headers: list[tuple[str, str]]
    kind: ResponseKind
    claimed_length: int | None = None
    dropped: tuple[str, ...] = ()

    @property
    def location(self) -> str | None:
        """The Location value, or None."""
        for name, value in self.headers:
            if name.lower() == "location":
                return value
        return None

    @property
    def body_allowed(self) -> bool:
        """Whether Body events can follow (not for a local redirect, 1xx, 204 or 304)."""
        return self.kind != LOCAL_REDIRECT and self.status not in NO_BODY_STATUSES


@dataclass(slots=True)
class Body:
    """Body bytes, as many as have arrived since the last event."""

    data: bytes


@dataclass(slots=True)
class EndOfOutput:
    """The script's stdout closed after a complete head: the response is whole."""


Event: TypeAlias = Head | Body | EndOfOutput | NeedData


class ScriptOutputError(ValueError):
    """The script's output is not a valid CGI response; the host answers 502."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


_HEADERS, _BODY, _DISCARD, _ERROR = "headers", "body", "discard", "error"


class ScriptOutput:
    """Incremental parser of one script's stdout; see the module docstring."""

    __slots__ = (
        "_body",
        "_buffer",
        "_claimed",
        "_dropped",
        "_eof",
        "_error",
        "_fields",
        "_headers",
        "_line",
        "_pos",
        "_scan",
        "_state",
        "_status",
        "max_header_bytes",
    )

    def __init__(self, max_header_bytes: int = 65536) -> None:
        if type(max_header_bytes) is not int or max_header_bytes < 1:
            raise ValueError(f"max_header_bytes must be a positive int: {max_header_bytes!r}")
        self.max_header_bytes = max_header_bytes
        self._state = _HEADERS
        self._eof = False
        self._error: str | None = None
        self._buffer = bytearray()  # the header block while it is read
        self._pos = 0  # where the next header line starts in _buffer
        self._scan = 0  # _buffer before this offset holds no unread LF
        self._line = 0  # header lines read
        self._fields: dict[str, str] = {}  # the CGI fields seen (lower-case name: value)
        self._status: tuple[int, str] | None = None
        self._headers: list[tuple[str, str]] = []
        self._claimed: int | None = None
        self._dropped: list[str] = []
        self._body: list[bytes] = []  # body bytes not yet handed out

    def receive_data(self, data: bytes | bytearray | memoryview) -> None:
        """Feed bytes the script wrote; ``b""`` means its stdout closed (EOF).

        The bytes are copied, so the caller may reuse its buffer.

        After an error or during a discarded body the bytes are dropped, so the host
        can keep reading the script's output to EOF (RFC 3875 §6.4) without a check.

        Raises:
            RuntimeError: bytes after EOF (a bug in the caller, not in the script).
        """
        if self._eof:
            raise RuntimeError("receive_data() called after EOF (b'')")
        if not data:
            self._eof = True
        elif self._state == _HEADERS:
            self._buffer += data
        elif self._state == _BODY:
            self._body.append(bytes(data))

    def next_event(self) -> Event:
        """The next event: NEED_DATA, a Head, a Body, or EndOfOutput (repeated at the end).

        Raises:
            ScriptOutputError: the output is malformed; every later call raises again.
        """
        if self._error is not None:
            raise ScriptOutputError(self._error)
        if self._state == _HEADERS:
            try:
                return self._read_head()
            except ScriptOutputError as exc:
                self._state, self._error = _ERROR, exc.reason
                self._buffer.clear()
                raise
        if self._body:
            data = self._body[0] if len(self._body) == 1 else b"".join(self._body)
            self._body.clear()
            return Body(data)
        return EndOfOutput() if self._eof else NEED_DATA

    def _read_head(self) -> Head | NeedData:
        buffer, limit = self._buffer, self.max_header_bytes
        while True:
            end = buffer.find(b"\n", self._scan)
            if end < 0:
                self._scan = len(buffer)
                if len(buffer) > limit:  # at once, not at EOF (research §3 row 12)
                    raise ScriptOutputError(f"header block larger than {limit} bytes")
                if self._eof:
                    raise ScriptOutputError(self._eof_reason())
                return NEED_DATA
            if end >= limit:  # this line would end past the limit
                raise ScriptOutputError(f"header block larger than {limit} bytes")
            line = bytes(buffer[self._pos : end])
            self._pos = self._scan = end + 1
            self._line += 1
            if line.endswith(b"\r"):
                line = line[:-1]
            if line:
                self._add_field(line)
                continue
            if self._line == 1:  # R3
                raise ScriptOutputError("the output starts with an empty line: no header fields")
            head = self._make_head()
            if head.body_allowed and self._pos < len(buffer):
                self._body.append(bytes(buffer[self._pos :]))
            self._state = _BODY if head.body_allowed else _DISCARD
            buffer.clear()
            return head

    def _eof_reason(self) -> str:
        if not self._buffer:  # R1
            return "no output"
        return (
            f"output ended after {len(self._buffer)} bytes, "
            "before the empty line that ends the header block"
        )

    def _add_field(self, line: bytes) -> None:
        name, value = _split_field(line, self._line)
        lower = name.lower()
        if lower in _CGI_FIELDS:
            if lower in self._fields:  # §6.3: each CGI field at most once
                raise ScriptOutputError(f"{_CGI_FIELDS[lower]} given twice")
            if not value:
                raise ScriptOutputError(f"line {self._line}: empty {_CGI_FIELDS[lower]}")
            self._fields[lower] = value
            if lower == "status":
                self._status = _parse_status(value)
                return
        if lower not in _DROPPED:
            self._headers.append((name, value))
            return
        self._dropped.append(name)
        numeric = value.isascii() and value.isdigit()
        if lower == "content-length" and numeric and self._claimed is None:
            self._claimed = int(value)

    def _make_head(self) -> Head:
        if not self._fields:  # §6.3; R2
            raise ScriptOutputError("no Content-Type, Location or Status field")
        kind, status, reason = _classify(
            self._status, self._fields.get("location"), "content-type" in self._fields
        )
        return Head(status, reason, self._headers, kind, self._claimed, tuple(self._dropped))


def _show(line: bytes) -> str:
    """A line for an error message: its repr, cut to 60 characters."""
    text = line.decode("latin-1")
    return repr(text) if len(text) <= 60 else repr(text[:60]) + "..."


def _split_field(line: bytes, number: int) -> tuple[str, str]:
    """Check one header line (line ending removed); return its name and stripped value."""
    where = f"line {number}"
    if b"\0" in line:  # RFC 9110 §5.5: CR, LF and NUL are invalid and dangerous
        raise ScriptOutputError(f"{where} contains NUL: {_show(line)}")
    if b"\r" in line:
        raise ScriptOutputError(f"{where} contains a bare CR: {_show(line)}")
    if line[:1] in (b" ", b"\t"):  # §6.3: every field on one line; RFC 9112 §5.2
        raise ScriptOutputError(f"{where} is a folded continuation line: {_show(line)}")
    colon = line.find(b":")
    if colon < 0:  # R4
        raise ScriptOutputError(f"{where} is not a header field: {_show(line)}")
    name = line[:colon]
    if not name:
        raise ScriptOutputError(f"{where} has an empty field name: {_show(line)}")
    if name[-1:] in (b" ", b"\t"):  # §6.3: no space between the name and the colon
        raise ScriptOutputError(f"{where} has whitespace before the colon: {_show(line)}")
    if not _TOKEN_BYTES.issuperset(name):  # RFC 9110 §5.1: a field name is a token
        raise ScriptOutputError(f"{where}: field name is not a token: {_show(line)}")
    return name.decode("ascii"), line[colon + 1 :].strip(b" \t").decode("latin-1")


def _parse_status(value: str) -> tuple[int, str]:
    """``3DIGIT [SP reason]`` (RFC 3875 §6.3.3) to the code and the reason phrase."""
    code = value[:3]
    well_formed = len(value) == 3 or value[3:4] == " "
    if not (well_formed and len(code) == 3 and code.isascii() and code.isdigit()):
        raise ScriptOutputError(f"invalid Status {value!r}")  # R8
    number = int(code)
    if not 100 <= number <= 599:  # RFC 9110 §15
        raise ScriptOutputError(f"invalid Status {value!r}: code not in 100-599")
    return number, value[4:] or _PHRASES.get(number, "")


def _is_local_path(location: str) -> bool:
    """§6.2.2 local-pathquery, never ``//host`` or ``/\\host`` (CVE-2024-38476)."""
    if not location.startswith("/") or location[1:2] in ("/", "\\"):
        return False
    return location.isascii() and _PATH_BYTES.issuperset(location.encode("ascii"))


def _classify(
    status: tuple[int, str] | None, location: str | None, has_type: bool
) -> tuple[ResponseKind, int, str]:
    """The response kind (§6.2) and the status it is sent with."""
    if location is None:
        code, reason = status or (200, "OK")  # §6.2.1: no Status means 200
        return DOCUMENT, code, reason
    if status is None:
        if _is_local_path(location):  # 302 is the host's answer if it re-dispatches none
            return LOCAL_REDIRECT, 302, "Found"
        kind: ResponseKind = CLIENT_REDIRECT_WITH_DOCUMENT if has_type else CLIENT_REDIRECT
        return kind, 302, "Found"  # §6.2.3: the server MUST send 302
    code, reason = status
    if 300 <= code <= 399:
        return CLIENT_REDIRECT_WITH_DOCUMENT, code, reason
    return DOCUMENT, code, reason
