"""The heads of cgikit's HTTP/1.1 server, pure: request variables, response framing.

Shared by the threaded connection (``http_connection``) and the event loop's fast
path (``loop_exchange``), so both frame a response the same way: ``request_meta``
(a parsed request as CGI-style variables, RFC 3875 §4.1), ``frame_head`` (the status
line and fields with the framing the server adds, RFC 9112 §6.3), ``error_response``
(the server's own short refusals) and ``date_now`` (the Date field, RFC 9110 §6.6.1).
No I/O.
"""

from __future__ import annotations

import time
from http import HTTPStatus
from typing import Final
from urllib.parse import unquote_to_bytes

from cgikit.http_request import BadRequest, Request
from cgikit.wsgi_response import NO_BODY_STATUSES, find_header, http_date

TYPE_CHECKING = False
if TYPE_CHECKING:
    from cgikit._typing import Headers

__all__ = [
    "SERVER_SOFTWARE",
    "date_now",
    "error_response",
    "frame_head",
    "request_meta",
    "status_phrase",
]

SERVER_SOFTWARE: Final = "cgikit"

_date_cache: tuple[int, str] = (0, "")


def date_now() -> str:
    """The Date field's value now (RFC 9110 §6.6.1), formatted once per second."""
    global _date_cache
    second = int(time.time())
    if _date_cache[0] != second:
        _date_cache = (second, http_date(time.gmtime(second)[:7]))
    return _date_cache[1]


def status_phrase(status: int) -> str:
    try:
        return HTTPStatus(status).phrase
    except ValueError:
        return "Error"


def error_response(status: int, reason: str, *, close: bool = True) -> bytes:
    """A complete short plain-text response for a request the server refuses."""
    body = f"{status} {status_phrase(status)}\n{reason}\n".encode("latin-1", "replace")
    connection = "Connection: close\r\n" if close else ""
    return (
        f"HTTP/1.1 {status} {status_phrase(status)}\r\n"
        f"Date: {date_now()}\r\nServer: {SERVER_SOFTWARE}\r\n"
        "Content-Type: text/plain; charset=utf-8\r\n"
        f"Content-Length: {len(body)}\r\n{connection}\r\n"
    ).encode("latin-1") + body


def frame_head(
    status: str, headers: Headers, method: str, version: tuple[int, int], keep_alive: bool
) -> tuple[bytes, str, bool, int | None]:
    """A response head with the framing this server adds (RFC 9112 §6.3), and that
    framing: ``(head, framing, keep_alive, expected)``.

    ``framing`` is "length" (the fields' Content-Length, ``expected``), "chunked"
    (HTTP/1.1, §7.1), "close" (HTTP/1.0: the close delimits the body, §6.3 rule 8) or
    "none" (HEAD, 1xx, 204, 304: RFC 9110 §6.4.1). Date and Server are added when the
    fields lack them (RFC 9110 §6.6.1: an origin MUST send Date).
    """
    fields = list(headers)
    length = find_header(fields, "content-length")
    expected: int | None = None
    if method == "HEAD" or int(status[:3]) in NO_BODY_STATUSES:
        framing = "none"
    elif length is not None:
        framing, expected = "length", int(length)
    elif version == (1, 1):
        framing = "chunked"
        fields.append(("Transfer-Encoding", "chunked"))
    else:
        framing = "close"
    if framing == "close" or not keep_alive:
        keep_alive = False
        fields.append(("Connection", "close"))
    elif version == (1, 0):
        fields.append(("Connection", "keep-alive"))
    if find_header(fields, "date") is None:
        fields.insert(0, ("Date", date_now()))
    if find_header(fields, "server") is None:
        fields.insert(1, ("Server", SERVER_SOFTWARE))
    lines = "".join(f"{name}: {value}\r\n" for name, value in fields)
    return f"HTTP/1.1 {status}\r\n{lines}\r\n".encode("latin-1"), framing, keep_alive, expected


def request_meta(
    request: Request, remote: tuple[str, int], server: tuple[str, int]
) -> dict[str, str]:
    """The CGI-style variables of a request (RFC 3875 §4.1), for ``build_environ``.

    Raises:
        BadRequest: a request-target that is neither origin- nor absolute-form.
    """
    target, authority = _origin_form(request.target)
    path, query = _split_target(target)
    meta = {
        "REQUEST_METHOD": request.method,
        "SCRIPT_NAME": "",
        "PATH_INFO": path,
        "QUERY_STRING": query,
        "REQUEST_URI": target.decode("latin-1"),
        "SERVER_NAME": server[0],
        "SERVER_PORT": str(server[1]),
        "SERVER_PROTOCOL": f"HTTP/{request.version[0]}.{request.version[1]}",
        "SERVER_SOFTWARE": SERVER_SOFTWARE,
        "REMOTE_ADDR": remote[0],
        "REMOTE_PORT": str(remote[1]),
        "GATEWAY_INTERFACE": "CGI/1.1",
    }
    meta.update(_header_variables(request.headers))
    if authority is not None:  # RFC 9112 §3.2.2: the target's host, not Host's
        meta["HTTP_HOST"] = authority.decode("latin-1")
    return meta


def _origin_form(target: bytes) -> tuple[bytes, bytes | None]:
    """The origin-form of a request-target and, for absolute-form, its authority.

    RFC 9112 §3.2.2: a server MUST accept absolute-form (``http://host/path?q``), and
    then MUST take the host from it, ignoring any Host field. Asterisk-form (§3.2.4,
    OPTIONS only) comes back as is.
    """
    if target.startswith(b"/") or target == b"*":
        return target, None
    lowered = target[:8].lower()
    if not lowered.startswith((b"http://", b"https://")):
        raise BadRequest(400, "request target is not origin- or absolute-form")
    rest = target.split(b"//", 1)[1]
    end = min((i for i in (rest.find(b"/"), rest.find(b"?")) if i >= 0), default=len(rest))
    authority, origin = rest[:end], rest[end:]
    if not origin.startswith(b"/"):
        origin = b"/" + origin
    return origin, authority.rpartition(b"@")[2]  # userinfo is not part of the host


def _split_target(target: bytes) -> tuple[str, str]:
    """PATH_INFO (percent-decoded, latin-1) and QUERY_STRING (raw) of an origin-form."""
    if target == b"*":  # RFC 9112 §3.2.4: asterisk-form, OPTIONS only
        return "*", ""
    path, _, query = target.partition(b"?")
    path = path.partition(b"#")[0]
    return unquote_to_bytes(path).decode("latin-1"), query.decode("latin-1")


def _header_variables(headers: list[tuple[bytes, bytes]]) -> dict[str, str]:
    """HTTP_* variables (RFC 3875 §4.1.18), CONTENT_TYPE; repeats joined (RFC 9110 §5.3)."""
    joined: dict[str, list[str]] = {}
    for name, value in headers:
        if b"_" in name:  # HTTP_X_A would be ambiguous between X-A and X_A: dropped
            continue
        key = name.decode("ascii").upper().replace("-", "_")
        joined.setdefault(key, []).append(value.decode("latin-1"))
    meta: dict[str, str] = {}
    for key, values in joined.items():
        if key == "CONTENT_LENGTH":
            continue  # the parser's checked length is CONTENT_LENGTH
        if key == "CONTENT_TYPE":
            meta["CONTENT_TYPE"] = values[0]
            continue
        meta["HTTP_" + key] = ("; " if key == "COOKIE" else ", ").join(values)
    return meta
