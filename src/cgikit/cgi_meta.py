"""RFC 3875 §4.1 meta-variables for one request (the host side): pure, no I/O.

``build_meta`` turns what the HTTP server knows about one request (method, the split
path, the headers as received, the connection's addresses) into the environment of the
CGI script. It owns every rule the research found a host getting wrong
(cgi-anchors.md §1a, §2a, §3):

- Only an allow-list of the server's own environment reaches the script (row 11:
  CPython's http.server deep-copied ``os.environ``, so MY_SECRET leaked, §5d).
- ``Proxy:`` never becomes HTTP_PROXY (httpoxy, CVE-2016-5386/-5387/-1000110; row 1).
- Header names other than letters, digits and ``-`` are dropped, as Apache's
  ``http2env`` does: ``X_Forwarded_For`` would otherwise become HTTP_X_FORWARDED_FOR
  and override what a proxy set (row 3, P16). ``reject_underscore_headers=True`` raises
  instead (lighttpd commit 170db8fe; the caller answers 400).
- Authorization and Proxy-Authorization are hidden unless ``pass_auth`` (RFC 3875 §9.2;
  Apache ``CGIPassAuth``; row 4). REMOTE_USER/AUTH_TYPE come only from the server's own
  authentication (``remote_user``/``auth_type``), never from the client's header (P17:
  http.server decoded Basic auth unchecked).

Decisions where the RFC leaves room:

- SERVER_NAME is the Host header without its port, lower-cased (Apache's
  ``fix_hostname``); an IPv6 literal keeps its brackets, ``[::1]:8080`` gives ``[::1]``:
  RFC 3875 §4.1.14's grammar is ``"[" ipv6-address "]"`` and Apache 2.4 adds them
  (``ap_get_server_name_for_url``); Go gives ``::1`` with a port and ``[::1]`` without.
  No or an empty Host: the configured ``server_name``. Two Host fields or an invalid
  one (reg-name limited to RFC 3986 unreserved characters) raise UnsafeHeader: RFC 9112
  §3.2 says 400.
- SERVER_PORT is the port the request arrived on (RFC 3875 §4.1.15 MUST), not Host's.
- Header values are decoded as latin-1 (every byte kept) with surrounding SP/HTAB
  removed. A value with NUL, CR or LF raises UnsafeHeader (400): RFC 9110 §5.5 says
  reject or replace, and none of them can sit in an environment safely.
- CONTENT_LENGTH is set iff ``content_length`` is not None (the body's length after
  de-chunking: RFC 3875 §4.1.2, §4.2); HTTP_TRANSFER_ENCODING is then dropped, since
  the transfer-coding is gone. CONTENT_TYPE comes from a non-empty Content-Type header;
  two different ones raise UnsafeHeader.
- Inherited from ``server_environ``: PATH (``DEFAULT_PATH`` when absent or empty), LANG,
  LC_*, TZ, LD_LIBRARY_PATH (Apache, Go and lighttpd all pass it), then the names in
  ``pass_env``. Computed variables beat inherited ones (a stale SERVER_NAME in the
  server's environment must not shadow the request's); ``env`` entries beat everything,
  last entry wins (G11, G13).

Strings are "bytes as str" (latin-1, PEP 3333) throughout: a runner encodes the result
with ``to_environb``; callers holding ``os.environ`` or ``sys.argv`` strings (decoded with
the filesystem encoding) convert them with ``os.fsencode(s).decode("latin-1")`` first.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping

DEFAULT_PATH = "/usr/local/bin:/usr/bin:/bin"
_INHERITED = frozenset({"LANG", "TZ", "LD_LIBRARY_PATH"})  # plus PATH and LC_*

_ALNUM = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789"
_NAME_BYTES = frozenset(_ALNUM + b"-")  # Apache http2env: anything else is dropped
_TCHAR = frozenset((_ALNUM + b"!#$%&'*+-.^_`|~").decode())  # RFC 9110 §5.6.2
_REG_NAME = frozenset((_ALNUM + b"-._~").decode())  # RFC 3986 unreserved
_IPV6 = frozenset("0123456789abcdefABCDEF:.")
_DIGITS = frozenset("0123456789")

# Never emitted from a header: httpoxy; copies of CONTENT_LENGTH/CONTENT_TYPE
# (RFC 3875 §4.1.18 SHOULD); credentials unless pass_auth (RFC 3875 §9.2).
_NEVER = frozenset({"HTTP_PROXY", "HTTP_CONTENT_LENGTH", "HTTP_CONTENT_TYPE"})
_AUTH = frozenset({"HTTP_AUTHORIZATION", "HTTP_PROXY_AUTHORIZATION"})


class UnsafeHeader(ValueError):
    """The request's header fields cannot be passed on; ``status`` is the answer (400)."""

    def __init__(self, status: int, reason: str) -> None:
        super().__init__(reason)
        self.status = status
        self.reason = reason


def header_fields(
    headers: Iterable[tuple[bytes, bytes]], *, reject_underscore: bool = False
) -> dict[str, list[str]]:
    """Group header values by their HTTP_* name, in the order received.

    Raises:
        UnsafeHeader: a value holds NUL, CR or LF; or, with ``reject_underscore``, a
            name holds ``_``.
    """
    fields: dict[str, list[str]] = {}
    for raw_name, raw_value in headers:
        if b"\x00" in raw_value or b"\r" in raw_value or b"\n" in raw_value:
            raise UnsafeHeader(400, f"NUL, CR or LF in the value of {raw_name!r}")
        if not raw_name or not _NAME_BYTES.issuperset(raw_name):
            if reject_underscore and b"_" in raw_name:
                raise UnsafeHeader(400, f"underscore in header name {raw_name!r}")
            continue  # research row 3 / P16: dropped, as Apache does
        key = "HTTP_" + raw_name.decode("ascii").upper().replace("-", "_")
        fields.setdefault(key, []).append(raw_value.strip(b" \t").decode("latin-1"))
    return fields


_KEY_CHARS = frozenset("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789_-")


def environ_fields(environ: Mapping[str, object]) -> dict[str, list[str]]:
    """``header_fields`` of the header fields a WSGI environ (or CGI variables) holds,
    read straight from its HTTP_* keys and CONTENT_TYPE.

    The same as ``header_fields`` of the fields rebuilt from the keys (``HTTP_X_FOO``
    sent as ``X-FOO``): a key is kept iff its name is letters, digits, ``_`` and ``-``
    (each stands for a ``-``), and upper-cased; HTTP_CONTENT_TYPE and
    HTTP_CONTENT_LENGTH are not fields of a WSGI environ (PEP 3333: CONTENT_TYPE is).
    A WSGI server has joined repeated fields: a name has one value, unless two keys
    differ only in case.

    Raises:
        UnsafeHeader: a value holds NUL, CR or LF.
    """
    fields: dict[str, list[str]] = {}
    for key, value in environ.items():
        if key[:5] != "HTTP_" or not isinstance(value, str) or key in _PEP3333_DROPPED:
            continue
        value = _field_value(key, value)  # first, as header_fields: even a dropped one's
        if len(key) > 5 and _KEY_CHARS.issuperset(key[5:]):  # else dropped, as there
            fields.setdefault("HTTP_" + key[5:].upper().replace("-", "_"), []).append(value)
    content_type = environ.get("CONTENT_TYPE", "")
    if content_type and isinstance(content_type, str):
        value = _field_value("CONTENT_TYPE", content_type)
        fields.setdefault("HTTP_CONTENT_TYPE", []).append(value)
    return fields


_PEP3333_DROPPED = frozenset({"HTTP_CONTENT_TYPE", "HTTP_CONTENT_LENGTH"})


def _field_value(key: str, value: str) -> str:
    if "\x00" in value or "\r" in value or "\n" in value:
        raw = key[5:].replace("_", "-") if key.startswith("HTTP_") else "Content-Type"
        raise UnsafeHeader(400, f"NUL, CR or LF in the value of {raw.encode('latin-1')!r}")
    return value.strip(" \t")


def server_name_from_host(host_values: list[str], default: str) -> str:
    """SERVER_NAME from the Host field values (RFC 3875 §4.1.14; module docstring)."""
    if len(host_values) > 1:
        raise UnsafeHeader(400, "more than one Host header field (RFC 9112 §3.2)")
    host = host_values[0] if host_values else ""
    if not host:
        return default
    if host.startswith("["):
        inside, bracket, port = host[1:].partition("]")
        name = f"[{inside}]"
        valid = bool(bracket and inside) and _IPV6.issuperset(inside)
    else:
        name, colon, digits = host.partition(":")
        port = colon + digits
        valid = bool(name) and _REG_NAME.issuperset(name)
    if not valid or (port and (port[0] != ":" or not _DIGITS.issuperset(port[1:]))):
        raise UnsafeHeader(400, f"invalid Host header field: {host!r}")
    return name.lower()


def inherited_environ(
    server_environ: Mapping[str, str], pass_env: Iterable[str] = ()
) -> dict[str, str]:
    """The part of the server's own environment a script may see (research row 11)."""
    inherited = {"PATH": server_environ.get("PATH") or DEFAULT_PATH}
    for name, value in server_environ.items():
        if name in _INHERITED or name.startswith("LC_"):
            inherited[name] = value
    for name in pass_env:
        if name in server_environ:
            inherited[name] = server_environ[name]
    return inherited


def _http_vars(
    fields: Mapping[str, list[str]], *, pass_auth: bool, has_length: bool
) -> dict[str, str]:
    """HTTP_* variables (RFC 3875 §4.1.18): repeated fields joined, ``; `` for Cookie."""
    out: dict[str, str] = {}
    for key, values in fields.items():
        if key in _NEVER or (key in _AUTH and not pass_auth):
            continue
        if key == "HTTP_TRANSFER_ENCODING" and has_length:
            continue  # de-chunked: RFC 3875 §4.2
        out[key] = ("; " if key == "HTTP_COOKIE" else ", ").join(values)
    return out


def _content_type(fields: Mapping[str, list[str]]) -> str:
    values = fields.get("HTTP_CONTENT_TYPE", [])
    if len(set(values)) > 1:
        raise UnsafeHeader(400, "more than one Content-Type header field")
    return values[0] if values else ""


def _check_request(
    method: str, script_name: str, path_info: str, scheme: str, length: int | None
) -> None:
    """Refuse arguments no HTTP parser or script lookup should produce."""
    if not method or not _TCHAR.issuperset(method):
        raise ValueError(f"REQUEST_METHOD must be a token (RFC 3875 §4.1.12): {method!r}")
    for name, value in (("SCRIPT_NAME", script_name), ("PATH_INFO", path_info)):
        if value and not value.startswith("/"):
            raise ValueError(f"{name} must be empty or start with '/': {value!r}")
    if scheme not in ("http", "https"):
        raise ValueError(f"scheme must be http or https: {scheme!r}")
    if length is not None and length < 0:
        raise ValueError(f"negative content_length: {length}")


def _unbracket(address: str) -> str:
    """RFC 3875 §4.1.8: an IPv6 REMOTE_ADDR has no brackets (G2)."""
    if address.startswith("[") and address.endswith("]"):
        return address[1:-1]
    return address


def _apply_overrides(meta: dict[str, str], env: Iterable[tuple[str, str]]) -> None:
    """Configured entries replace computed ones; the last one wins (G11, G13)."""
    for name, value in env:
        if not name or "=" in name or "\x00" in name:
            raise ValueError(f"invalid environment variable name: {name!r}")
        meta.pop(name, None)  # the entry moves to the end, as Go's removeLeadingDuplicates
        meta[name] = value


def build_meta(
    *,
    method: str,
    script_name: str,
    path_info: str,
    query_string: str,
    request_uri: str,
    headers: Iterable[tuple[bytes, bytes]],
    content_length: int | None,
    server_name: str,
    server_port: int,
    remote_addr: str,
    document_root: str,
    script_filename: str,
    remote_port: int | None = None,
    server_addr: str | None = None,
    scheme: str = "http",
    protocol: str = "HTTP/1.1",
    server_software: str = "cgikit",
    remote_user: str | None = None,
    auth_type: str | None = None,
    pass_auth: bool = False,
    reject_underscore_headers: bool = False,
    server_environ: Mapping[str, str] | None = None,
    pass_env: Iterable[str] = (),
    env: Iterable[tuple[str, str]] = (),
    fields: Mapping[str, list[str]] | None = None,
) -> dict[str, str]:
    """The script's environment for one request (see the module docstring for the rules).

    Args:
        method, protocol: from the request line (SERVER_PROTOCOL is the request's).
        script_name, path_info: the decoded path split at the script
            (``cgi_paths.split_script``); trailing ``/`` on script_name is trimmed (G4).
        query_string, request_uri: the raw query and request-target, latin-1 decoded.
        headers: the header fields as received, names and values in bytes.
        fields: instead of ``headers``, what ``header_fields`` made of them (or
            ``environ_fields`` of a WSGI environ's).
        content_length: the body's length after de-chunking, None when there is none.
        server_name: used when the request has no Host (or an empty one).
        remote_user, auth_type: only from authentication the server itself did.
        server_environ, pass_env, env: see the module docstring.
    Raises:
        UnsafeHeader: the caller answers ``status`` (400).
        ValueError: an argument the caller should never pass (a bug, answer 500).
    """
    _check_request(method, script_name, path_info, scheme, content_length)
    if fields is None:
        fields = header_fields(headers, reject_underscore=reject_underscore_headers)
    meta = inherited_environ(server_environ or {}, pass_env)
    meta.update(
        GATEWAY_INTERFACE="CGI/1.1",  # §4.1.4
        SERVER_SOFTWARE=server_software,  # §4.1.17
        SERVER_NAME=server_name_from_host(fields.get("HTTP_HOST", []), server_name),
        SERVER_PORT=str(server_port),  # §4.1.15
        SERVER_PROTOCOL=protocol,  # §4.1.16
        REQUEST_METHOD=method,  # §4.1.12
        REQUEST_SCHEME=scheme,
        REQUEST_URI=request_uri,
        SCRIPT_NAME=script_name.rstrip("/"),  # §4.1.13
        SCRIPT_FILENAME=script_filename,
        PATH_INFO=path_info,  # §4.1.5
        QUERY_STRING=query_string,  # §4.1.7: always set
        DOCUMENT_ROOT=document_root.rstrip("/") or "/",
        REMOTE_ADDR=_unbracket(remote_addr),  # §4.1.8
        REMOTE_HOST=_unbracket(remote_addr),  # §4.1.9: MAY be REMOTE_ADDR (G1)
    )
    optional = {
        "PATH_TRANSLATED": document_root.rstrip("/") + path_info if path_info else None,
        "REMOTE_PORT": None if remote_port is None else str(remote_port),
        "SERVER_ADDR": None if server_addr is None else _unbracket(server_addr),
        "HTTPS": "on" if scheme == "https" else None,
        "CONTENT_LENGTH": None if content_length is None else str(content_length),
        "CONTENT_TYPE": _content_type(fields) or None,  # §4.1.3
        "REMOTE_USER": remote_user,  # §4.1.11
        "AUTH_TYPE": auth_type,  # §4.1.1
    }
    meta.update((name, value) for name, value in optional.items() if value is not None)
    meta.update(_http_vars(fields, pass_auth=pass_auth, has_length=content_length is not None))
    _apply_overrides(meta, env)
    if "\x00" in "".join(meta.values()):  # one scan; the loop only names the culprit
        for name, value in meta.items():
            if "\x00" in value:
                raise ValueError(f"NUL in {name}: an environment cannot hold it")
    return meta


def to_environb(meta: Mapping[str, str]) -> dict[bytes, bytes]:
    """Encode a ``build_meta`` result for ``execve`` (RFC 3875 §7.2: bytes on POSIX).

    Raises:
        ValueError: a name is empty or holds ``=`` or NUL, a value holds NUL, or a
            string is not latin-1 (UnicodeEncodeError is a ValueError).
    """
    _check_environment(meta)
    return {name.encode("latin-1"): value.encode("latin-1") for name, value in meta.items()}


def _check_environment(meta: Mapping[str, str]) -> None:
    """No empty name, no ``=`` in a name, no NUL anywhere; else ValueError."""
    names = "\n".join(meta)  # checked at once (per request); the loop names the culprit
    if "" in meta or "=" in names or "\x00" in names or "\x00" in "".join(meta.values()):
        for name, value in meta.items():
            if not name or "=" in name or "\x00" in name or "\x00" in value:
                raise ValueError(f"cannot put {name!r} in an environment")


# A script's environment as a runner takes it: ``to_environb``'s mapping, or the
# ``NAME=value`` strings of execve (``to_envp``, what the event-driven path makes).
Environment = Mapping[bytes, bytes] | list[bytes]


def to_envp(meta: Mapping[str, str]) -> list[bytes]:
    """``to_environb``'s environment as execve's ``NAME=value`` strings (per request:
    one encode a variable, where the mapping and then the strings take two and a join).

    Raises:
        ValueError: as ``to_environb``.
    """
    _check_environment(meta)
    return [(name + "=" + value).encode("latin-1") for name, value in meta.items()]


def envp_of(env: Environment) -> list[bytes]:
    """An ``Environment`` as execve's ``NAME=value`` strings."""
    if isinstance(env, list):
        return env
    return [name + b"=" + value for name, value in env.items()]


def environb_of(env: Environment) -> dict[bytes, bytes]:
    """An ``Environment`` as a mapping (Popen's ``env``)."""
    if isinstance(env, list):
        return dict(entry.split(b"=", 1) for entry in env)
    return dict(env)
