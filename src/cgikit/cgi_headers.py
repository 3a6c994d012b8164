"""The header block a CGI script prints: check a WSGI status and headers, then serialize them.

Owns RFC 3875 §6.3 (response header fields) and §5.2 (the NPH status line) on the script
side. Pure code over ``str`` and ``bytes``: no I/O, no clock (callers pass the time), and
no ``re`` (it costs a CGI script ~3 ms per request to import).

Every check is an explicit ``raise``, never ``assert``: ``python -O`` strips asserts, and a
CR or LF that reaches the output splits the response (CPython gh-143916, gh-150726).
"""

TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Iterable


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
