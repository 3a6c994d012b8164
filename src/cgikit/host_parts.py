"""The pieces of ``CGIHost`` that touch the disk or the request body.

- ``find_script``: the normalised path segments (``cgi_paths.normalize_target``) walked
  on the disk to the script (research cgi-anchors.md §5c P1-P3, P7, P11).
- ``RequestBody``: the request body as ``run_script`` pulls it, streamed from
  ``wsgi.input`` or spooled when its length is unknown (research G9).
- ``NphOutput``: an NPH script's status line turned into a ``Status:`` field.
- ``request_body``: the request's body taken from a WSGI environ (``Refused`` when the
  body cannot be taken: 400, 413).
"""

from __future__ import annotations

import os
import stat
import sys
import tempfile
from dataclasses import dataclass
from typing import IO, Any

from cgikit.cgi_output import ScriptOutput, ScriptOutputError
from cgikit.cgi_paths import UnsafePath, is_inside

READ_SIZE = 65536
SPOOL_MEMORY = 1 << 20  # a spooled body moves to a temporary file past this
MAX_STATUS_LINE = 8192


# Read-only by convention, not frozen (here and below): made per request, and a frozen
# dataclass's __init__ costs three times as much (an object.__setattr__ call a field,
# in the compiled build too).
@dataclass(slots=True)
class Script:
    """A script found for a request: how to run it and how the path splits at it."""

    argv: tuple[str, ...]
    filename: str  # SCRIPT_FILENAME: the path under the directory (symlinks not resolved)
    count: int  # how many segments below the mount point name the script
    name: str  # the path below the directory, for log lines


def find_script(root: str, segments: list[str], run_python: bool) -> Script:
    """The first segment that is a regular file is the script; the rest is PATH_INFO.

    ``root`` is the real path of the host's directory; ``segments`` are those below
    the mount point (no ``.``, ``..``, ``/`` or NUL in them: cgi_paths). Every step is
    resolved (``lstat``; ``os.path.realpath`` for a symlink) and must stay under
    ``root``: a symlink that
    leaves the directory is a 403 (Apache's ``SymLinksIfOwnerMatch`` spirit, research
    §3 row 5). A directory or a missing name is a 404 (P4: ``cgi.pl%20`` is no file;
    the source of a script is never served). A file that is not executable is a 403
    unless ``run_python`` and its name ends in ``.py`` (http.server's rule); anything
    that is not a regular file (a FIFO, a device) is a 403.

    Raises:
        UnsafePath: 403 or 404 as above.
    """
    # Joined with "/" by hand (per request; os.path.join costs more): a segment holds no
    # "/", and only the root "/" ends with one, so it is taken off ("" + "/x").
    path = real = root.rstrip("/")
    for index, segment in enumerate(segments):
        if segment == "":  # the trailing-slash marker: the path named a directory
            break
        path += "/" + segment
        step = real + "/" + segment
        try:
            info = os.lstat(step)
        except OSError:
            raise UnsafePath(404, f"no such script: {path!r}") from None
        if stat.S_ISLNK(info.st_mode):  # only a symlink can lead elsewhere: resolve it
            real = os.path.realpath(path)
            if not is_inside(root, real):
                raise UnsafePath(403, f"{path!r} leads outside the CGI directory")
            try:
                info = os.stat(real)
            except OSError:
                raise UnsafePath(404, f"no such script: {path!r}") from None
        else:  # ``real`` stays real: a plain name below a real directory
            real = step
        if stat.S_ISDIR(info.st_mode):
            continue
        name = "/".join(segments[: index + 1])  # the path below the directory
        if not stat.S_ISREG(info.st_mode):
            raise UnsafePath(403, f"not a regular file: {name!r}")
        return Script(_argv(real, path, name, run_python), path, index + 1, name)
    raise UnsafePath(404, f"no script in {path or '/'!r}")


def _argv(real: str, path: str, name: str, run_python: bool) -> tuple[str, ...]:
    if os.access(real, os.X_OK):
        return (path,)
    if run_python and path.endswith(".py"):
        return (sys.executable, path)
    raise UnsafePath(403, f"not executable: {name!r}")


class RequestBody:
    """The request body, pulled by ``run_script`` with ``body(n)``.

    With a length (CONTENT_LENGTH, RFC 3875 §4.2), exactly that many bytes are
    streamed from ``wsgi.input``, never more (PEP 3333: reading past it may block).
    A client that sends fewer ends the body early (the script sees EOF; logged).
    Without one, ``spool`` reads the whole body first (lighttpd's answer to chunked
    uploads, research G9) so that CONTENT_LENGTH can be set.
    """

    def __init__(self, source: IO[bytes] | None, length: int) -> None:
        self._source = source
        self.length = length
        self._left = length
        self.short = False  # the input ended before ``length`` bytes

    def __call__(self, size: int) -> bytes:
        if self._source is None or self._left <= 0:
            return b""
        chunk = self._source.read(min(size, self._left))
        if not chunk:
            self.short, self._left = True, 0
            return b""
        self._left -= len(chunk)
        return bytes(chunk)

    def close(self) -> None:
        """Close a spool file (a streamed input belongs to the server)."""
        if isinstance(self._source, tempfile.SpooledTemporaryFile):
            self._source.close()

    @classmethod
    def spool(cls, source: IO[bytes], max_body: int, first: bytes = b"") -> RequestBody | None:
        """Read ``first`` and then ``source`` to its end into memory, then a temporary
        file past 1 MiB.

        Returns None (the caller answers 413) as soon as more than ``max_body`` bytes
        have arrived; the rest is not read.
        """
        spool: IO[bytes] = tempfile.SpooledTemporaryFile(max_size=SPOOL_MEMORY)  # noqa: SIM115
        total = 0
        try:
            while chunk := first or source.read(READ_SIZE):
                first = b""
                total += len(chunk)
                if total > max_body:
                    spool.close()
                    return None
                spool.write(chunk)
            spool.seek(0)
        except BaseException:
            spool.close()
            raise
        return cls(spool, total)


# Framing fields of an NPH script's own response: the WSGI server frames and dates the
# response it sends, so these are the server's (RFC 9110 §6.6.1 Date, §10.2.4 Server).
NPH_DROPPED = frozenset({"date", "server"})


class NphOutput(ScriptOutput):
    """The output of an ``nph-`` script (RFC 3875 §5) read as a parsed CGI response.

    A WSGI app cannot hand its server a raw response, so the script's first line,
    ``HTTP/1.x NNN reason``, becomes ``Status: NNN reason`` and the rest is parsed as
    for any script (hop-by-hop fields such as Connection and the script's
    Content-Length are dropped by the parser; Date and Server by the host).
    """

    __slots__ = ("_first",)

    def __init__(self, max_header_bytes: int = 65536) -> None:
        super().__init__(max_header_bytes)
        self._first: bytearray | None = bytearray()

    def receive_data(self, data: bytes | bytearray | memoryview) -> None:
        """Feed bytes; the status line is rewritten before the parser sees it.

        Raises:
            ScriptOutputError: the first line is not an HTTP/1.x status line.
        """
        if self._first is None:
            super().receive_data(data)
            return
        if not data:
            if self._first:
                raise ScriptOutputError("NPH output ended inside its status line")
            self._first = None
            super().receive_data(b"")  # no output at all: the parser reports it
            return
        self._first += data
        line, newline, rest = self._first.partition(b"\n")
        if not newline:
            if len(self._first) > MAX_STATUS_LINE:
                raise ScriptOutputError("NPH status line too long")
            return
        self._first = None
        super().receive_data(_status_field(bytes(line)) + bytes(rest))


def _status_field(line: bytes) -> bytes:
    line = line.removesuffix(b"\r")
    version, _, status = line.partition(b" ")
    if version not in (b"HTTP/1.0", b"HTTP/1.1") or not status[:3].isdigit():
        raise ScriptOutputError(f"NPH output does not start with a status line: {line[:80]!r}")
    return b"Status: " + status + b"\r\n"


class Refused(Exception):
    """The request gets an error response with ``status``; ``reason`` is logged."""

    def __init__(self, status: int, reason: str) -> None:
        super().__init__(reason)
        self.status, self.reason = status, reason


def request_body(environ: dict[str, Any], max_body: int) -> RequestBody:
    """Streamed with a CONTENT_LENGTH, else spooled when there is one (docstring)."""
    stream: IO[bytes] = environ["wsgi.input"]
    text = environ.get("CONTENT_LENGTH", "").strip()
    if text:
        if not (text.isascii() and text.isdigit()):
            raise Refused(400, f"invalid CONTENT_LENGTH {text!r}")
        if int(text) > max_body:
            raise Refused(413, f"a body of {text} bytes is over max_body ({max_body})")
        return RequestBody(stream, int(text))
    chunked = "chunked" in environ.get("HTTP_TRANSFER_ENCODING", "").lower()
    if not (chunked or environ.get("wsgi.input_terminated")):
        return RequestBody(None, -1)
    first = b""
    if not chunked:  # most such requests have no body: no spool file made for them
        first = stream.read(1)
        if not first:
            return RequestBody(None, -1)  # no body at all: no CONTENT_LENGTH (§4.1.2)
    body = RequestBody.spool(stream, max_body, first)
    if body is None:
        raise Refused(413, f"a chunked body over max_body ({max_body} bytes)")
    if body.length == 0 and not chunked:
        body.close()
        return RequestBody(None, -1)  # no body at all: no CONTENT_LENGTH (RFC 3875 §4.1.2)
    return body
