"""Request-target paths to segments that are safe to map onto a directory (the host side).

The HTTP server reads a request-target such as ``/cgi-bin/app.cgi/a%20b?x=1``; the script
lookup walks a directory with it. Between the two, this module decides which paths may
reach the disk at all. Every rule here is a bug that a CGI host has shipped (research
cgi-anchors.md §3 row 5, §5c P8-P15):

- CVE-2011-1015 (CPython, bpo-2254): a target without a leading ``/`` got round the CGI
  directory check. Refused: 400 (P9 allows it).
- CVE-2014-4650 (CPython): ``%2F`` decoded before the check made ``/cgi-bin%2ffile.py``
  a path under ``/cgi-bin``. An encoded slash never becomes a path boundary: 404, as
  Apache's default ``AllowEncodedSlashes Off`` (P10; RFC 3875 §4.1.5 lets the server
  reject a decoded ``/`` as "a loss of information").
- CVE-2021-41773 / CVE-2021-42013 (Apache 2.4.49/2.4.50, RCE with CGI on): ``.%2e`` and
  double-encoded dots escaped the root. Each segment is percent-decoded exactly once,
  *then* dot-segments are removed, so ``%2e%2e`` is ``..`` and ``%252e`` is the literal
  name ``%2e``. A ``..`` that would climb above the root is a 400 (CPython raises
  IndexError for those: P15; RFC 3875 §9.8: resolve ``..`` before splitting the path).
- NUL (``%00``) cannot be in a file name or an environment variable: 400. A backslash
  is a separator on Windows (gh-104711 family): refused, 404.
- ``:`` (``C:``, NTFS ``::$DATA``, gh-104711/gh-104712) means something only on Windows;
  cgikit's host is POSIX-only, and MediaWiki-style PATH_INFO (``/index.php/Help:Intro``)
  needs it, so it is kept unless ``refuse_colon=True`` (then 404).

RFC 3875 §8.1 asks the server to document its path rules. ``normalize_target`` follows
RFC 3986 §5.2.4 (remove_dot_segments) on decoded segments, except that climbing above
the root is refused rather than clamped, and empty segments (``//``) are collapsed as
CPython's ``_url_collapse_path`` and Apache's ``MergeSlashes On`` do.

**The trailing-slash marker**: the returned list ends with ``""`` exactly when the
normalised path ends with ``/``: ``/`` is ``[""]``, ``/cgi.pl/`` is ``["cgi.pl", ""]``
(P3: the script still runs, with PATH_INFO ``/``), ``/a/b/.`` and ``/a/b/c/..`` are
``["a", "b", ""]``. No other segment is empty, so ``"/" + "/".join(segments)`` is the
normalised path and ``split_script`` turns the list into SCRIPT_NAME and PATH_INFO.

Segments are latin-1 decoded ("bytes as str", PEP 3333), so every byte survives and
``segment.encode("latin-1")`` is the file name on disk. ``/cgi.pl%20%20%20`` (P4) is
the name ``cgi.pl   ``: the lookup finds no such file and answers 404.

No I/O: pure functions over bytes.
"""

from __future__ import annotations

import functools
from collections.abc import Mapping
from typing import Final
from urllib.parse import quote

_HEX = frozenset(b"0123456789abcdefABCDEF")
# Never raw in a request-target (RFC 9112 §3.2): controls, space, DEL, and "#" (a
# fragment is not sent). "?" ends the path: split_target cuts there first.
_RAW_REFUSED = frozenset(range(0x21)) | {0x7F, ord("#"), ord("?")}
# Cannot be put in an environment variable (RFC 3875 §7.2, execve strings).
_TARGET_REFUSED = (b"\x00", b"\r", b"\n")


class UnsafePath(ValueError):
    """The request-target must not be mapped onto a directory; ``status`` is the answer."""

    def __init__(self, status: int, reason: str) -> None:
        super().__init__(reason)
        self.status = status
        self.reason = reason


def split_target(raw_target: bytes) -> tuple[bytes, bytes]:
    """Split an origin-form request-target at the first ``?``.

    The query is kept byte for byte, still URL-encoded (RFC 3875 §4.1.7): P12
    ``/x?a=b?c=d`` gives ``a=b?c=d``, P13 keeps ``%2F%2F`` and ``//``. No ``?`` and a
    bare ``?`` both give an empty query (QUERY_STRING is ``""`` either way).

    Raises:
        UnsafePath: 400 when the target holds NUL, CR or LF (no conforming HTTP parser
            lets them through; none can be put in the environment).
    """
    for byte in _TARGET_REFUSED:
        if byte in raw_target:
            raise UnsafePath(400, f"control character in the request-target: {raw_target!r}")
    path, _, query = raw_target.partition(b"?")
    return path, query


def _unquote(segment: bytes) -> bytes:
    """Percent-decode one segment, once. A malformed escape is a 400 (as Apache)."""
    if b"%" not in segment:
        return segment
    first, *rest = segment.split(b"%")
    out = bytearray(first)
    for part in rest:
        pair = part[:2]
        if len(pair) < 2 or not _HEX.issuperset(pair):
            raise UnsafePath(400, f"malformed percent-escape in {segment!r}")
        out.append(int(pair, 16))
        out += part[2:]
    return bytes(out)


def _check_segment(name: bytes, refuse_colon: bool) -> None:
    """Refuse a decoded segment that would not name one entry of one directory."""
    if b"/" in name:
        raise UnsafePath(404, "encoded slash in the path (CVE-2014-4650; research P10)")
    if b"\x00" in name:
        raise UnsafePath(400, "NUL in the path")
    if b"\\" in name:
        raise UnsafePath(404, "backslash in the path (a Windows separator)")
    if refuse_colon and b":" in name:
        raise UnsafePath(404, "colon in the path (Windows drive or NTFS stream)")


def normalize_target(raw_path: bytes, *, refuse_colon: bool = False) -> list[str]:
    """Decode and normalise the path part of a request-target into safe segments.

    Args:
        raw_path: the request-target before ``?`` (``split_target(target)[0]``), as
            received: percent-encoded bytes starting with ``/``.
        refuse_colon: also refuse ``:`` in a segment (for a Windows file store).
    Returns:
        The segments, latin-1 decoded; never ``.``, ``..``, or one holding ``/``, NUL or
        ``\\``. The last is ``""`` exactly when the path ends with ``/`` (the module
        docstring explains the marker); the list is never empty.
    Raises:
        UnsafePath: 400 for a path not starting with ``/``, a raw control byte, space,
            ``#`` or ``?``, a malformed ``%`` escape, NUL, or ``..`` above the root;
            404 for an encoded slash, a backslash, or (``refuse_colon``) a colon.
    """
    if len(raw_path) <= _MEMO_PATH:
        return list(_normalize_memo(raw_path, refuse_colon))
    return _normalize(raw_path, refuse_colon)


# A request's path is normalised twice (routing, then the host) and most requests ask
# for a few paths: short ones are remembered (an unsafe one raises again each time).
_MEMO_PATH: Final = 256


@functools.lru_cache(maxsize=512)
def _normalize_memo(raw_path: bytes, refuse_colon: bool) -> tuple[str, ...]:
    return tuple(_normalize(raw_path, refuse_colon))


def _normalize(raw_path: bytes, refuse_colon: bool) -> list[str]:
    """``normalize_target``'s work."""
    if not raw_path.startswith(b"/"):
        raise UnsafePath(400, f"the path does not start with '/': {raw_path[:64]!r}")
    if not _RAW_REFUSED.isdisjoint(raw_path):
        raise UnsafePath(400, f"a byte that is invalid in a request-target: {raw_path[:64]!r}")
    stack: list[bytes] = []
    trailing = False
    for raw in raw_path[1:].split(b"/"):
        name = _unquote(raw)
        _check_segment(name, refuse_colon)
        # A segment that is empty, "." or ".." leaves the path ending in "/"
        # (RFC 3986 §5.2.4: "/a/b/." and "/a/b/c/.." are "/a/b/").
        trailing = name in (b"", b".", b"..")
        if name == b"..":
            if not stack:
                raise UnsafePath(400, "'..' above the root (RFC 3875 §9.8; research P15)")
            stack.pop()
        elif not trailing:
            stack.append(name)
    segments = [name.decode("latin-1") for name in stack]
    if trailing:
        segments.append("")
    return segments


def split_script(segments: list[str], count: int) -> tuple[str, str]:
    """SCRIPT_NAME and PATH_INFO when the first ``count`` segments name the script.

    ``(["cgi.pl", "x"], 1)`` gives ``("/cgi.pl", "/x")``; ``(["cgi.pl", ""], 1)``
    gives ``("/cgi.pl", "/")`` (P3); ``(["bar"], 0)`` gives ``("", "/bar")`` (a handler
    mounted at the root, G5). Neither part is URL-encoded (RFC 3875 §4.1.5, §4.1.13).

    Raises:
        ValueError: ``count`` out of range, or the script part includes the trailing
            ``""`` marker (a script name ending in ``/`` is a directory).
    """
    if not 0 <= count <= len(segments) or "" in segments[:count]:
        raise ValueError(f"cannot split {segments!r} after {count} segments")
    script_name = "".join("/" + name for name in segments[:count])
    path_info = "".join("/" + name for name in segments[count:])
    return script_name, path_info


# RFC 3986 pchar sub-delims kept raw when a decoded path is quoted again.
PATH_SAFE = "/!$&'()*+,;=:@~"


def raw_target(environ: Mapping[str, object]) -> bytes:
    """The request-target of a WSGI request, for ``split_target``.

    REQUEST_URI when the server gives it (cgikit's server does: the raw bytes, so an
    encoded slash or dot is still visible); otherwise SCRIPT_NAME + PATH_INFO quoted
    again, which cannot show a ``%2F`` the server already decoded.
    """
    uri = environ.get("REQUEST_URI")
    if uri:
        return str(uri).encode("latin-1")
    path = str(environ.get("SCRIPT_NAME", "")) + str(environ.get("PATH_INFO", ""))
    query = str(environ.get("QUERY_STRING", ""))
    quoted = quote(path.encode("latin-1"), safe=PATH_SAFE) or "/"
    return (quoted + ("?" + query if query else "")).encode("latin-1")


def is_inside(root: str, path: str) -> bool:
    """Whether the real ``path`` is ``root`` or below it (both already realpath'd)."""
    return path == root or path.startswith(root.rstrip("/") + "/")
