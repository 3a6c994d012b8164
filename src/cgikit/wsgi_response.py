"""The response side of the WSGI seam: one application call turned into a CGI response.

Owns two layers that only ever work together:

- The header block a CGI script prints (RFC 3875 §6.3, and §5.2 for the NPH status
  line): check a WSGI status and headers, then serialize them. Every check is an
  explicit ``raise``, never ``assert``: ``python -O`` strips asserts, and a CR or LF
  that reaches the output splits the response (CPython gh-143916, gh-150726).
- The response driver: PEP 3333's ``start_response``/``write``/iterable/``close``
  contract and the rules that make the output a correct CGI response: headers go out
  with the first non-empty chunk, Content-Length when the length is known, files through
  ``wsgi.file_wrapper`` without reading them into memory, a safe Content-Type when the
  app gave none, no body for HEAD/204/304, and a 500 (or a debug page) when the app
  fails before its headers went out. Shared by every gateway that frames responses with
  a ``Status:`` field (CGI, and later FastCGI and SCGI).

No I/O and no clock: the gateway passes ``send`` (write all bytes, now), optionally
``send_file`` (copy a span of a file descriptor), ``log`` (one message) and, for NPH, a
serializer that knows the date. No ``re`` either: it would cost a CGI script ~3 ms per
request to import. (One module, not two, because each import costs a CGI request
~100 us; see cgikit/__init__.py.)
"""

import os
import sys

TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Callable, Iterable, Iterator
    from typing import IO

    from cgikit._typing import Environ, Headers, OptExcInfo, WriteBody, WSGIApp


# -- the CGI header block ------------------------------------------------------------


class HeaderError(ValueError):
    """The application gave a status or header that must not reach the output."""


# RFC 9110 §5.6.2: a field name is a token.
TOKEN_CHARS = frozenset(
    "!#$%&'*+-.^_`|~0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz"
)

# RFC 3875 §6.3.4 and PEP 3333: a script must not send fields that govern the client
# connection; the server frames the response itself. (RFC 9110 §7.6.1 lists them.)
HOP_BY_HOP = frozenset(
    {
        "connection",
        "keep-alive",
        "proxy-authenticate",
        "proxy-authorization",
        "proxy-connection",
        "te",
        "trailer",
        "transfer-encoding",
        "upgrade",
    }
)

# RFC 3875 §6.3: each CGI field appears at most once. Content-Length is not a CGI field,
# but two different values in it are a request-smuggling hazard (RFC 9110 §8.6).
_SINGLE_FIELDS = ("content-type", "location", "content-length")

# RFC 9110 §6.4.1: these statuses never carry a body.
NO_BODY_STATUSES = frozenset({204, 304}) | frozenset(range(100, 200))


def _check_text(value: str, what: str) -> None:
    if "\r" in value or "\n" in value or "\0" in value:
        raise HeaderError(f"{what} contains CR, LF or NUL: {value!r}")
    if not value.isascii():
        try:
            value.encode("latin-1")
        except UnicodeEncodeError:
            raise HeaderError(f"{what} is not latin-1 (PEP 3333): {value!r}") from None


def check_status(status: object) -> int:
    """Check a WSGI status string such as ``"200 OK"``.

    Returns:
        The status code.
    Raises:
        HeaderError: not a ``str``, not ``3DIGIT SP reason`` (RFC 3875 §6.3.3), a code
            outside 100-599, or a forbidden character.
    """
    if type(status) is not str:
        raise HeaderError(f"status must be str, not {type(status).__name__}: {status!r}")
    code = status[:3]
    if len(status) < 4 or status[3] != " " or not (code.isascii() and code.isdigit()):
        raise HeaderError(f"status must be '3DIGIT reason', like '200 OK': {status!r}")
    number = int(code)
    if not 100 <= number <= 599:
        raise HeaderError(f"status code out of range 100-599: {status!r}")
    _check_text(status, "status")
    return number


def check_headers(headers: object) -> list[str]:
    """Check WSGI response headers in place.

    Returns:
        The names of hop-by-hop headers found; the caller drops them with a warning.
    Raises:
        HeaderError: not a list of ``(str, str)`` tuples, a name that is not a token, a
            value with CR/LF/NUL or outside latin-1, a ``Status`` header (the gateway
            writes that field itself), or a repeated Content-Type/Location/Content-Length.
    """
    if type(headers) is not list:
        raise HeaderError(f"headers must be a list, not {type(headers).__name__}")
    hop: list[str] = []
    seen: set[str] = set()
    for item in headers:
        if type(item) is not tuple or len(item) != 2:
            raise HeaderError(f"each header must be a (name, value) tuple: {item!r}")
        name, value = item
        if type(name) is not str or type(value) is not str:
            raise HeaderError(f"header name and value must be str: {item!r}")
        if not name or not TOKEN_CHARS.issuperset(name):
            raise HeaderError(f"header name is not an RFC 9110 token: {name!r}")
        _check_text(value, f"value of header {name!r}")
        lower = name.lower()
        if lower == "status":
            raise HeaderError("a 'Status' header is not allowed; pass the status instead")
        if lower in HOP_BY_HOP:
            hop.append(name)
        elif lower in _SINGLE_FIELDS:
            if lower in seen:
                raise HeaderError(f"header {name!r} given more than once (RFC 3875 §6.3)")
            seen.add(lower)
    return hop


def find_header(headers: "Iterable[tuple[str, str]]", lower_name: str) -> str | None:
    """Return the value of the first header called ``lower_name`` (lower case), or None."""
    for name, value in headers:
        if name.lower() == lower_name:
            return value
    return None


def _field_lines(headers: "Iterable[tuple[str, str]]") -> str:
    return "".join(f"{name}: {value}\r\n" for name, value in headers)


def serialize_cgi(status: str, headers: "Iterable[tuple[str, str]]") -> bytes:
    """The CGI header block (RFC 3875 §6.3): a ``Status:`` field, the headers, a blank line.

    Inputs must already have passed ``check_status``/``check_headers``.
    """
    return f"Status: {status}\r\n{_field_lines(headers)}\r\n".encode("latin-1")


def serialize_nph(
    protocol: str, status: str, headers: "Iterable[tuple[str, str]]", date: str, server: str
) -> bytes:
    """A complete HTTP response head for a non-parsed-header script (RFC 3875 §5.2).

    The script talks to the client directly, so it adds Date and Server, and it must not
    offer a persistent connection: ``Connection: close`` ends the body.
    """
    if protocol not in ("HTTP/1.0", "HTTP/1.1"):
        protocol = "HTTP/1.0"
    fields = _field_lines(headers)
    return (
        f"{protocol} {status}\r\nDate: {date}\r\nServer: {server}\r\n"
        f"{fields}Connection: close\r\n\r\n"
    ).encode("latin-1")


_DAYS = ("Mon", "Tue", "Wed", "Thu", "Fri", "Sat", "Sun")
_MONTHS = ("Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec")


def http_date(parts: tuple[int, int, int, int, int, int, int]) -> str:
    """RFC 9110 §5.6.7 IMF-fixdate from ``(year, month, day, hour, min, sec, weekday)``.

    The first seven fields of ``time.gmtime()``; no locale is involved.
    """
    year, month, day, hour, minute, second, weekday = parts
    return (
        f"{_DAYS[weekday]}, {day:02d} {_MONTHS[month - 1]} {year:04d} "
        f"{hour:02d}:{minute:02d}:{second:02d} GMT"
    )


# -- the response driver --------------------------------------------------------------


class ClientGone(Exception):
    """Sending failed: the client (or the server in between) went away."""


class ClientDisconnected(OSError):
    """The request body ended early (short of CONTENT_LENGTH, or the peer aborted): the
    client went away. Raised by ``wsgi.input``; lives here so that ``Response`` can tell
    it from the app's own errors (wsgi_request re-exports it)."""


# Never text/html: CVE-2020-24553 (Go's child defaulted to it and served attacker HTML).
DEFAULT_CONTENT_TYPE = "application/octet-stream"


class FileWrapper:
    """Iterate ``filelike`` in ``blksize`` blocks; ``close()`` closes it."""

    __slots__ = ("blksize", "filelike")

    def __init__(self, filelike: "IO[bytes]", blksize: int = 65536) -> None:
        self.filelike = filelike
        self.blksize = blksize

    def __iter__(self) -> "Iterator[bytes]":
        read = self.filelike.read
        while block := read(self.blksize):
            yield block

    def span(self) -> tuple[int, int, int] | None:
        """``(fd, offset, count)`` still to send from a regular file, or None if unknown."""
        try:
            fd = self.filelike.fileno()
            offset = self.filelike.tell()
            info = os.fstat(fd)
        except (AttributeError, OSError, ValueError):
            return None
        if info.st_mode & 0o170000 != 0o100000:  # not S_ISREG (stat is not imported)
            return None
        return fd, offset, max(0, info.st_size - offset)

    def close(self) -> None:
        close = getattr(self.filelike, "close", None)
        if close is not None:
            close()


def known_length(result: object) -> int | None:
    """The body length of a list or tuple of bytes, else None (a generator is unknown)."""
    if type(result) is not list and type(result) is not tuple:
        return None
    total = 0
    for chunk in result:
        if type(chunk) is not bytes:
            return None
        total += len(chunk)
    return total


class Response:
    """Drive one request's application call to ``send``."""

    def __init__(
        self,
        environ: "Environ",
        send: "Callable[[bytes], object]",
        log: "Callable[[str], object]",
        *,
        default_content_type: "str | None" = DEFAULT_CONTENT_TYPE,
        debug: bool = False,
        send_file: "Callable[[int, int, int], int] | None" = None,
        serialize: "Callable[[str, Headers], bytes]" = serialize_cgi,
        deferred: "Callable[[bytes], object] | None" = None,
        finished: "Callable[[], object] | None" = None,
    ) -> None:
        """``deferred``: where output goes instead of ``send`` once the app has returned
        its whole body in memory (a list or tuple of bytes): no app code runs before
        the response ends, so a gateway may hold it and write it with what follows
        (FastCGI's END_REQUEST) in one system call. ``finished``: called once the whole
        response is sent, before the app's iterable is closed (its close may take a
        while: a framework's teardown), so that a gateway can end the output first."""
        self.environ = environ
        self._send = send
        self._deferred = deferred
        self._finished = finished
        self._send_file = send_file
        self._log = log
        self._serialize = serialize
        self._default_type = default_content_type
        self._debug = debug
        self._head_request = environ.get("REQUEST_METHOD") == "HEAD"
        self._status: str | None = None
        self._code = 0
        self._headers: Headers = []
        self.headers_sent = False
        self._declared: int | None = None  # the app's Content-Length
        self._known: int | None = None  # a length we worked out before sending
        self.body_bytes = 0  # body bytes the app produced (sent, or counted for HEAD)
        self._dropped_body = False  # logged that a HEAD/204/304 body was dropped
        self._overflowed = False  # logged that the body outgrew its Content-Length

    # -- PEP 3333 callables ------------------------------------------------------------

    def start_response(
        self, status: str, headers: "Headers", exc_info: "OptExcInfo | None" = None
    ) -> "WriteBody":
        """PEP 3333 ``start_response``; checks the status and headers at once."""
        if exc_info is not None:
            try:
                if self.headers_sent:
                    raise exc_info[1].with_traceback(exc_info[2])  # type: ignore[union-attr]
            finally:
                exc_info = None  # break the frame cycle (PEP 3333)
        elif self._status is not None:
            raise HeaderError("start_response called a second time without exc_info")
        code = check_status(status)
        hop = check_headers(headers)
        if hop:
            self._log(f"dropped hop-by-hop header(s) from the app (RFC 3875 §6.3.4): {hop}")
            headers = [h for h in headers if h[0].lower() not in HOP_BY_HOP]
        declared = find_header(headers, "content-length")
        if declared is not None and not (declared.isascii() and declared.isdigit()):
            raise HeaderError(f"Content-Length is not a number: {declared!r}")
        self._status, self._code, self._headers = status, code, list(headers)
        self._declared = None if declared is None else int(declared)
        return self.write

    def write(self, data: bytes) -> None:
        """PEP 3333 ``write``: the chunk reaches the server before this returns."""
        if type(data) is not bytes:
            if not isinstance(data, (bytearray, memoryview)):
                raise TypeError(f"body chunks must be bytes, not {type(data).__name__}")
            data = bytes(data)
        if not data:
            return
        if self._status is None:
            raise HeaderError("the app sent body bytes before calling start_response")
        if self._head_request or self._code in NO_BODY_STATUSES:
            self._drop_body(len(data))
            return
        if self._declared is not None:
            room = self._declared - self.body_bytes
            if len(data) > room:
                if not self._overflowed:
                    self._overflowed = True
                    self._log(f"app sent more than its Content-Length {self._declared}; cut")
                data = data[:room]
                if not data:
                    return
        self.body_bytes += len(data)
        if self.headers_sent:
            self._out(data)
        else:
            self._out(self._head(self._known, has_body=True) + data)

    # -- driving the app ---------------------------------------------------------------

    def run(self, app: "WSGIApp") -> None:
        """Call ``app`` and send its whole response; never raises for app errors."""
        try:
            try:
                self._run(app)
            except (ClientGone, ClientDisconnected):
                raise
            except (Exception, SystemExit):  # the app's fault: a 500 and a log entry
                self.fail(sys.exc_info())  # type: ignore[arg-type]
        except ClientGone as exc:
            # Only a failed send lands here; an OSError of the app's own (its database
            # refused a connection, say) is an app error above, with its traceback.
            self._log(f"client went away before the response was complete ({exc.__cause__})")
        except ClientDisconnected as exc:
            # The app let wsgi.input's error through: no one is left to read a 500.
            self._log(f"client went away while the app read the request body ({exc})")

    def _out(self, data: bytes) -> None:
        try:
            self._send(data)
        except OSError as exc:
            raise ClientGone from exc

    def _run(self, app: "WSGIApp") -> None:
        result = app(self.environ, self.start_response)
        try:
            if not self.headers_sent and self.body_bytes == 0:
                self._known = known_length(result)
                if self._known is not None and self._deferred is not None:
                    self._send = self._deferred
            if type(result) is FileWrapper and self._send_file is not None:
                self._send_wrapper(result, self._send_file)
            else:
                for chunk in result:
                    self.write(chunk)
            self.finish()
            if self._finished is not None:
                self._finished()
        finally:
            close = getattr(result, "close", None)
            if close is not None:
                close()

    def _send_wrapper(
        self, wrapper: FileWrapper, send_file: "Callable[[int, int, int], int]"
    ) -> None:
        span = wrapper.span()
        if span is None or self._status is None:
            for chunk in wrapper:
                self.write(chunk)
            return
        fd, offset, count = span
        if self._declared is not None:
            count = min(count, self._declared - self.body_bytes)
        if self._head_request:
            self._known = count  # what a GET would send; HEAD reads nothing
            return
        if count <= 0 or self._code in NO_BODY_STATUSES:
            return
        if not self.headers_sent:
            self._out(self._head(count if self._declared is None else None, has_body=True))
        try:
            self.body_bytes += send_file(fd, offset, count)
        except OSError as exc:
            raise ClientGone from exc

    def finish(self) -> None:
        """Send the headers if no body chunk carried them, and check the length."""
        if self._status is None:
            raise HeaderError("the app returned without calling start_response")
        if not self.headers_sent:
            if self._head_request:
                length = self._known if self._known is not None else (self.body_bytes or None)
                self._out(self._head(length, has_body=bool(length)))
            else:
                self._out(self._head(0, has_body=False))
        short = self._declared is not None and self.body_bytes < self._declared
        if short and not self._head_request and self._code not in NO_BODY_STATUSES:
            self._log(f"app sent {self.body_bytes} of its Content-Length {self._declared}")

    def _drop_body(self, size: int) -> None:
        self.body_bytes += size
        if not self._head_request and not self._dropped_body:
            self._dropped_body = True
            self._log(f"dropped the body of a {self._code} response (RFC 9110 §6.4.1)")

    def _head(self, length: int | None, *, has_body: bool) -> bytes:
        """Serialize the header block, adding what RFC 3875 §6 needs, and mark it sent."""
        headers = self._headers
        if self._code not in NO_BODY_STATUSES:
            headers = list(headers)
            if length is not None and self._declared is None:
                headers.append(("Content-Length", str(length)))
            default = self._default_type
            if has_body and default and find_header(headers, "content-type") is None:
                # RFC 3875 §6.3.1: a body MUST come with a Content-Type.
                self._log(f"app sent a body without Content-Type; sent {default}")
                headers.append(("Content-Type", default))
                headers.append(("X-Content-Type-Options", "nosniff"))
        self.headers_sent = True
        return self._serialize(self._status or "500 Internal Server Error", headers)

    # -- errors ------------------------------------------------------------------------

    def fail(self, exc_info: tuple[type[BaseException], BaseException, object]) -> None:
        """Log an app failure; answer 500 (or the debug page) if no header went out yet."""
        from cgikit import errorpage

        exc = exc_info[1]
        if isinstance(exc, HeaderError):
            self._log(f"bad response from the app: {exc}")
        else:
            self._log(errorpage.format_traceback(exc))
        if self.headers_sent:
            self._log("the error came after the headers were sent: the response may be incomplete")
            return
        if self._debug:
            status, headers, body = errorpage.debug_page(exc, self.environ)
        else:
            status, headers, body = errorpage.generic_page()
        self._status, self._code, self._headers = status, 500, headers
        self._declared = len(body)
        self.body_bytes = 0
        if self._head_request:
            body = b""
        self._out(self._head(None, has_body=True) + body)
