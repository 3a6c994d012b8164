"""The response driver: one WSGI application call turned into a CGI response.

Owns PEP 3333's ``start_response``/``write``/iterable/``close`` contract and the rules
that make the output a correct CGI response (RFC 3875 §6): headers go out with the first
non-empty chunk, Content-Length when the length is known, files through
``wsgi.file_wrapper`` without reading them into memory, a safe Content-Type when the
app gave none, no body for HEAD/204/304, and a 500 (or a debug page) when the app fails
before its headers went out. Shared by every gateway that frames responses with a
``Status:`` field (CGI, and later FastCGI and SCGI).

No I/O of its own: the gateway passes ``send`` (write all bytes, now), optionally
``send_file`` (copy a span of a file descriptor) and ``log`` (one message).
"""

import os
import sys

from cgikit.cgi_headers import (
    HOP_BY_HOP,
    NO_BODY_STATUSES,
    HeaderError,
    check_headers,
    check_status,
    find_header,
    serialize_cgi,
)

TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Callable, Iterator
    from typing import IO

    from cgikit._typing import Environ, Headers, OptExcInfo, WriteBody, WSGIApp


class ClientGone(Exception):
    """Sending failed: the client (or the server in between) went away."""


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
        default_content_type: str = DEFAULT_CONTENT_TYPE,
        debug: bool = False,
        send_file: "Callable[[int, int, int], int] | None" = None,
        serialize: "Callable[[str, Headers], bytes]" = serialize_cgi,
    ) -> None:
        self.environ = environ
        self._send = send
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
            except ClientGone:
                raise
            except (Exception, SystemExit):  # the app's fault: a 500 and a log entry
                self.fail(sys.exc_info())  # type: ignore[arg-type]
        except ClientGone as exc:
            # Only a failed send lands here; an OSError of the app's own (its database
            # refused a connection, say) is an app error above, with its traceback.
            self._log(f"client went away before the response was complete ({exc.__cause__})")

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
            if type(result) is FileWrapper and self._send_file is not None:
                self._send_wrapper(result, self._send_file)
            else:
                for chunk in result:
                    self.write(chunk)
            self.finish()
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
            if has_body and find_header(headers, "content-type") is None:
                # RFC 3875 §6.3.1: a body MUST come with a Content-Type.
                self._log(f"app sent a body without Content-Type; sent {self._default_type}")
                headers.append(("Content-Type", self._default_type))
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
