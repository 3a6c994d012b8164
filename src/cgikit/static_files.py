"""``StaticFiles``: a WSGI app serving the files under a directory (``cgikit serve``'s other half).

What it does, and the decisions:

- The path comes from ``REQUEST_URI`` when the environ has it (cgikit's server passes the
  raw request-target), else from SCRIPT_NAME + PATH_INFO re-quoted, and goes through
  ``cgi_paths.normalize_target``, the same rules as the CGI host: ``..`` above the root is
  a 400, an encoded slash or a backslash a 404, a malformed escape a 400.
- The file's real path (symlinks resolved) must stay under the root's: else 403, so a
  symlink cannot publish ``/etc``.
- GET and HEAD only (405 with ``Allow`` otherwise). HEAD sends the GET's headers.
- Content-Type from ``mimetypes`` by name, never sniffed; ``text/*`` types get
  ``; charset=utf-8`` (the files of a site are UTF-8 today; a wrong guess is visible and
  fixable, a missing charset lets old browsers guess). A compressed file (``x.tar.gz``)
  is ``application/gzip``, never its inner type without Content-Encoding. Unknown:
  ``application/octet-stream``.
- Content-Length and Last-Modified from ``fstat`` of the opened file (no stat/open race);
  ``If-Modified-Since`` not before the file's mtime (whole seconds) is a 304. No ETag.
- A directory: its ``index.html``; requested without its trailing slash, a 301 to the
  slash form (so relative links in the page resolve); without ``index.html``, a 403.
  **No directory listings**, ever: a listing publishes names a site did not link.
- A missing file, or a file named with a trailing slash, is a 404; not a regular file
  (FIFO, device) a 403.
- The body is ``wsgi.file_wrapper`` when the server offers one (a server may send it
  with ``sendfile``; cgikit's reads it in blocks today), else 64 KiB blocks; either way
  the file is closed by ``close()``.

It knows nothing of CGI: that a CGI directory's scripts are never sent as files is the
job of the dispatcher in front of it (``cgikit.site_server.Dispatcher``), which never
routes such paths here.
"""

from __future__ import annotations

import mimetypes
import os
import stat
import sys
from collections.abc import Iterable, Iterator
from email.utils import formatdate, parsedate_to_datetime
from http import HTTPStatus
from typing import IO, Any
from urllib.parse import quote

from cgikit._typing import StartResponse
from cgikit.cgi_paths import (
    PATH_SAFE,
    UnsafePath,
    is_inside,
    normalize_target,
    raw_target,
    split_target,
)

__all__ = ["StaticFiles", "content_type"]

BLOCK = 65536
INDEX = "index.html"
_ENCODED = {"gzip": "application/gzip", "bzip2": "application/x-bzip2", "xz": "application/x-xz"}
_TEXTUAL = ("application/javascript", "application/json", "image/svg+xml")


class _Answer(Exception):
    """The request gets ``status`` with a short text body; ``headers`` are added."""

    def __init__(self, status: int, reason: str, headers: list[tuple[str, str]] | None = None):
        super().__init__(reason)
        self.status, self.reason, self.headers = status, reason, headers or []


def content_type(name: str) -> str:
    """The Content-Type sent for a file called ``name`` (module docstring)."""
    kind, encoding = mimetypes.guess_type(name, strict=False)
    if encoding is not None:
        return _ENCODED.get(encoding, "application/octet-stream")
    if kind is None:
        return "application/octet-stream"
    if kind.startswith("text/") or kind in _TEXTUAL:
        return f"{kind}; charset=utf-8"
    return kind


def _not_modified(environ: dict[str, Any], mtime: float) -> bool:
    text = environ.get("HTTP_IF_MODIFIED_SINCE")
    if not text:
        return False
    try:
        since = parsedate_to_datetime(text)
    except (TypeError, ValueError, IndexError):
        return False  # an invalid date is ignored (RFC 9110 §13.1.3)
    if since.tzinfo is None:
        return False
    return int(mtime) <= since.timestamp()


class StaticFiles:
    """A WSGI app serving the files under ``root`` (module docstring).

    Raises:
        NotADirectoryError: ``root`` is not a directory.
    """

    def __init__(self, root: str | os.PathLike[str]) -> None:
        self.root = os.path.realpath(root)
        if not os.path.isdir(self.root):
            raise NotADirectoryError(f"not a directory: {self.root!r}")

    def __call__(self, environ: dict[str, Any], start_response: StartResponse) -> Iterable[bytes]:
        method = environ.get("REQUEST_METHOD", "GET")
        try:
            if method not in ("GET", "HEAD"):
                raise _Answer(405, f"method {method}", [("Allow", "GET, HEAD")])
            path, query = split_target(raw_target(environ))
            segments = normalize_target(path)
            filename, file = self._open(segments, query)
        except UnsafePath as exc:
            return _error(environ, start_response, _Answer(exc.status, exc.reason))
        except _Answer as answer:
            return _error(environ, start_response, answer)
        return self._send(environ, start_response, filename, file, method)

    def path_of(self, segments: list[str]) -> str:
        """The file-system path the normalised ``segments`` name under the root."""
        names = [os.fsdecode(s.encode("latin-1")) for s in segments if s]
        return os.path.join(self.root, *names)

    def _open(self, segments: list[str], query: bytes) -> tuple[str, IO[bytes]]:
        """The file to send, opened; a directory means its index.html."""
        path = self.path_of(segments)
        real = os.path.realpath(path)
        if not is_inside(self.root, real):
            raise _Answer(403, f"{path!r} leads outside the root")
        try:
            info = os.stat(real)
        except OSError:
            raise _Answer(404, f"no such file: {path!r}") from None
        if stat.S_ISDIR(info.st_mode):
            if segments[-1] != "":
                location = "".join(
                    "/" + quote(s.encode("latin-1"), safe=PATH_SAFE) for s in segments
                )
                location += "/" + ("?" + query.decode("latin-1") if query else "")
                raise _Answer(301, "a directory", [("Location", location)])
            real = os.path.join(real, INDEX)
            if not os.path.isfile(real):
                raise _Answer(403, f"no {INDEX} in {path!r} (no directory listings)")
        elif segments[-1] == "":
            raise _Answer(404, f"a file named as a directory: {path!r}")
        try:
            file = open(real, "rb")  # noqa: SIM115 -- closed by the response body
        except OSError as exc:
            raise _Answer(403, f"cannot open {path!r}: {exc.strerror}") from None
        if not stat.S_ISREG(os.fstat(file.fileno()).st_mode):
            file.close()
            raise _Answer(403, f"not a regular file: {path!r}")
        return real, file

    @staticmethod
    def _send(
        environ: dict[str, Any],
        start_response: StartResponse,
        filename: str,
        file: IO[bytes],
        method: str,
    ) -> Iterable[bytes]:
        try:
            info = os.fstat(file.fileno())
            modified = formatdate(info.st_mtime, usegmt=True)
            if _not_modified(environ, info.st_mtime):
                file.close()
                start_response("304 Not Modified", [("Last-Modified", modified)])
                return []
            start_response(
                "200 OK",
                [
                    ("Content-Type", content_type(os.path.basename(filename))),
                    ("Content-Length", str(info.st_size)),
                    ("Last-Modified", modified),
                ],
            )
        except BaseException:
            file.close()
            raise
        if method == "HEAD":
            file.close()
            return []
        wrapper = environ.get("wsgi.file_wrapper")
        if wrapper is not None:
            return wrapper(file, BLOCK)  # type: ignore[no-any-return]
        return _Blocks(file)


class _Blocks:
    """The file in BLOCK-sized pieces; ``close()`` closes it (PEP 3333)."""

    def __init__(self, file: IO[bytes]) -> None:
        self._file = file

    def __iter__(self) -> Iterator[bytes]:
        while block := self._file.read(BLOCK):
            yield block

    def close(self) -> None:
        self._file.close()


def _error(environ: dict[str, Any], start_response: StartResponse, answer: _Answer) -> list[bytes]:
    errors = environ.get("wsgi.errors") or sys.stderr
    if answer.status >= 400:
        errors.write(f"cgikit: static: {answer.reason} ({answer.status})\n")
    phrase = HTTPStatus(answer.status).phrase
    body = f"{answer.status} {phrase}\n".encode("ascii")
    headers = [
        ("Content-Type", "text/plain; charset=utf-8"),
        ("Content-Length", str(len(body))),
        *answer.headers,
    ]
    start_response(f"{answer.status} {phrase}", headers)
    return [] if environ.get("REQUEST_METHOD") == "HEAD" else [body]
