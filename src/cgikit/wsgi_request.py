"""The request side of the WSGI seam every gateway shares: environ and ``wsgi.input``.

Owns the mapping from RFC 3875 §4.1 variables (already decoded as latin-1 "bytes as
str", PEP 3333 §"Unicode Issues") to the WSGI environ: defaults, the web-server quirks
that need repair, and the checks whose failure means the request cannot be served. And
owns ``BoundedInput``, the request body:

RFC 3875 §4.2: the script MUST NOT read more than CONTENT_LENGTH bytes, even when more
is there (wsgiref's CGIHandler hands over raw stdin and reads past it). This stream
never asks its source for a byte past the limit, and every PEP 3333 read method
(``read``, ``read(n)``, ``readline``, ``readlines``, iteration) stops there.

The source is a ``read(n) -> bytes`` callable (``os.read`` on fd 0 for CGI, a socket
or a record stream for later gateways); b"" from it means the peer is gone.

No I/O: callers pass the variables, the body source and the error stream in.
"""

from cgikit.wsgi_response import TOKEN_CHARS
from cgikit.wsgi_response import ClientDisconnected as ClientDisconnected  # re-export

TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Callable, Iterator, Mapping

    from cgikit._typing import Environ, ErrorStream


class EnvironError(Exception):
    """The request's variables cannot be served; ``status`` is the answer to give."""

    def __init__(self, status: str, reason: str) -> None:
        super().__init__(reason)
        self.status = status
        self.reason = reason


# Removed before the app sees them:
# - HTTP_PROXY: a client's "Proxy:" header, read by HTTP libraries as the outbound
#   proxy (httpoxy, CVE-2016-5386 and siblings).
# - HTTP_CONTENT_LENGTH/HTTP_CONTENT_TYPE: copies some servers add; PEP 3333 says the
#   unprefixed variables are the ones that count.
DROPPED = ("HTTP_PROXY", "HTTP_CONTENT_LENGTH", "HTTP_CONTENT_TYPE")

_TRUE_HTTPS = ("on", "1", "yes")


def url_scheme(meta: "Mapping[str, str]") -> str:
    """``https`` when HTTPS is on/1/yes (any case), else REQUEST_SCHEME, else ``http``."""
    https = meta.get("HTTPS")
    if https is not None:
        return "https" if https.lower() in _TRUE_HTTPS else "http"
    scheme = meta.get("REQUEST_SCHEME", "").lower()
    return scheme if scheme in ("http", "https") else "http"


def content_length(meta: "Mapping[str, str]") -> int | None:
    """The request body length from CONTENT_LENGTH (RFC 3875 §4.1.2).

    Returns:
        The length, 0 when the variable is absent or empty, or None when the body is
        chunked and its end is the end of stdin (Apache passes a chunked body with no
        CONTENT_LENGTH).
    Raises:
        EnvironError: ``400 Bad Request`` when CONTENT_LENGTH is not a decimal number.
    """
    raw = meta.get("CONTENT_LENGTH", "")
    if not raw:
        te = meta.get("HTTP_TRANSFER_ENCODING", "")
        return None if "chunked" in te.lower() else 0
    # int() would also take "+5", " 5" and "5_0"; RFC 3875 says 1*digit.
    if not (raw.isascii() and raw.isdigit()):
        raise EnvironError("400 Bad Request", f"CONTENT_LENGTH is not a number: {raw!r}")
    return int(raw)


def _host_name(host: str) -> str:
    # "example.com:8080" -> "example.com"; "[::1]:8080" -> "::1"
    if host.startswith("["):
        return host[1:].partition("]")[0]
    return host.partition(":")[0]


def _repair_iis_path(env: "Environ") -> None:
    # IIS puts SCRIPT_NAME in front of PATH_INFO (/app.py, /app.py/x); wsgiref's
    # IISCGIHandler rule: strip it when PATH_INFO + "/" starts with SCRIPT_NAME + "/".
    script = env["SCRIPT_NAME"]
    path = env["PATH_INFO"]
    if script and (path + "/").startswith(script + "/"):
        env["PATH_INFO"] = path[len(script) :]


def build_environ(
    meta: "Mapping[str, str]", wsgi_input: object, errors: "ErrorStream", length: int | None
) -> "Environ":
    """Build the WSGI environ for one request.

    Args:
        meta: CGI variables, values decoded as latin-1. Not modified.
        wsgi_input: the already bounded ``wsgi.input`` stream.
        errors: ``wsgi.errors``.
        length: what ``content_length(meta)`` returned.
    Raises:
        EnvironError: ``500`` when REQUEST_METHOD is missing or not a token (the server
            did not start us as a CGI script per RFC 3875 §4.1.12).
    """
    env: Environ = dict(meta)
    for name in DROPPED:
        env.pop(name, None)
    method = meta.get("REQUEST_METHOD", "")
    if not method or not TOKEN_CHARS.issuperset(method):  # RFC 3875 §4.1.12: a token
        raise EnvironError(
            "500 Internal Server Error", f"REQUEST_METHOD is missing or invalid: {method!r}"
        )
    if length == 0:
        # Empty means no body; an app doing int(environ["CONTENT_LENGTH"]) must not
        # crash on "" (PEP 3333 allows it to be absent).
        env.pop("CONTENT_LENGTH", None)
    elif length is not None:
        env["CONTENT_LENGTH"] = str(length)
    if not meta.get("CONTENT_TYPE"):
        env.pop("CONTENT_TYPE", None)
    env.setdefault("SCRIPT_NAME", "")
    env.setdefault("PATH_INFO", "")
    env.setdefault("QUERY_STRING", "")
    scheme = url_scheme(meta)
    # PEP 3333 requires these; empty counts as missing (lighttpd passes SERVER_NAME=""
    # for an HTTP/1.0 request without Host, and URLs rebuilt from it lose their host).
    if not meta.get("SERVER_NAME"):
        env["SERVER_NAME"] = _host_name(meta.get("HTTP_HOST", "")) or "localhost"
    if not meta.get("SERVER_PORT"):
        env["SERVER_PORT"] = "443" if scheme == "https" else "80"
    if not meta.get("SERVER_PROTOCOL"):
        env["SERVER_PROTOCOL"] = "HTTP/1.0"
    if meta.get("SERVER_SOFTWARE", "").startswith("Microsoft-IIS"):
        _repair_iis_path(env)
    env["wsgi.version"] = (1, 0)
    env["wsgi.url_scheme"] = scheme
    env["wsgi.input"] = wsgi_input
    if length is None:
        # Only when true: Werkzeug takes the key's mere presence to mean "read to EOF".
        env["wsgi.input_terminated"] = True
    env["wsgi.errors"] = errors
    env["wsgi.multithread"] = False
    env["wsgi.multiprocess"] = True
    env["wsgi.run_once"] = True
    return env


_CHUNK = 65536


class BoundedInput:
    """A read-only byte stream over at most ``length`` bytes of ``read``.

    ``length=None`` means "until the source says EOF" (a chunked body that the server
    de-chunks and ends by closing stdin; ``wsgi.input_terminated`` is then true).
    """

    __slots__ = ("_buffer", "_read", "_remaining")

    def __init__(self, read: "Callable[[int], bytes]", length: int | None) -> None:
        self._read = read
        self._remaining = length  # bytes not yet taken from the source
        # Taken from the source, not yet given to the app. A bytearray: appends are
        # amortized O(1) and deleting from the front is O(1) in CPython.
        self._buffer = bytearray()

    def _pull(self, want: int) -> bytes:
        """Up to ``want`` new bytes from the source (b"" at the end of the body)."""
        if self._remaining is None:
            data = self._read(min(want, _CHUNK))
            if not data:
                self._remaining = 0
            return data
        if self._remaining <= 0:
            return b""
        # Capped: os.read allocates what it is asked for, and CONTENT_LENGTH can lie.
        data = self._read(min(want, self._remaining, _CHUNK))
        if not data:
            missing = self._remaining
            self._remaining = 0
            raise ClientDisconnected(f"request body ended {missing} bytes short of CONTENT_LENGTH")
        self._remaining -= len(data)
        return data

    def read(self, size: int | None = -1) -> bytes:
        """Read ``size`` bytes, or all that is left when ``size`` is negative or None."""
        if size is None or size < 0:
            parts = [bytes(self._buffer)]
            self._buffer.clear()
            while data := self._pull(_CHUNK if self._remaining is None else self._remaining):
                parts.append(data)
            return b"".join(parts)
        return self._take(size)

    def _take(self, size: int) -> bytes:
        while len(self._buffer) < size:
            data = self._pull(size - len(self._buffer))
            if not data:
                break
            self._buffer += data
        out = bytes(self._buffer[:size])
        del self._buffer[:size]
        return out

    def readline(self, size: int | None = -1) -> bytes:
        """Read up to and including the next b"\\n", at most ``size`` bytes when given."""
        limit = -1 if size is None else size
        start = 0
        while True:
            end = self._buffer.find(b"\n", start)
            if end >= 0:
                cut = end + 1
                break
            if 0 <= limit <= len(self._buffer):
                cut = limit
                break
            start = len(self._buffer)
            data = self._pull(_CHUNK)
            if not data:
                cut = len(self._buffer)
                break
            self._buffer += data
        if 0 <= limit < cut:
            cut = limit
        out = bytes(self._buffer[:cut])
        del self._buffer[:cut]
        return out

    def readlines(self, hint: int | None = -1) -> list[bytes]:
        """Read lines until the end, or until their total size reaches ``hint``."""
        lines: list[bytes] = []
        total = 0
        while line := self.readline():
            lines.append(line)
            total += len(line)
            if hint is not None and 0 < hint <= total:
                break
        return lines

    def __iter__(self) -> "Iterator[bytes]":
        return self

    def __next__(self) -> bytes:
        line = self.readline()
        if not line:
            raise StopIteration
        return line

    def close(self) -> None:
        """Nothing to release; present because some apps call it."""
