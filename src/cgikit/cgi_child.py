"""Run a WSGI application as a CGI script: one request, from this process (RFC 3875).

The thin layer around the shared seam: read the meta-variables from the process
environment as bytes, bound stdin, write the response to fd 1 unbuffered (so each chunk
reaches the server at once), and pick the framing: a ``Status:`` header block, or a whole
HTTP response for scripts named ``nph-*`` (RFC 3875 §5). Terminal emulation reuses
``serve`` with variables it made up.
"""

import os
import sys

from cgikit.cgi_headers import serialize_cgi
from cgikit.wsgi_request import BoundedInput, EnvironError, build_environ, content_length
from cgikit.wsgi_response import ClientGone, FileWrapper, Response

TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Callable, Mapping
    from typing import TextIO

    from cgikit._typing import Headers, WSGIApp

STDIN, STDOUT = 0, 1


def read_meta() -> dict[str, str]:
    """The process environment, every byte kept: PEP 3333 "bytes as latin-1" strings."""
    environb = getattr(os, "environb", None)
    if environb is None:  # Windows: the variables only exist as str
        return dict(os.environ)
    return {k.decode("latin-1"): v.decode("latin-1") for k, v in environb.items()}


def send_all(data: bytes, fd: int = STDOUT) -> None:
    """Write all of ``data`` to ``fd``; no buffer, so it reaches the server now."""
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view) :]


def send_file(fd: int, offset: int, count: int, out: int = STDOUT) -> int:
    """Copy ``count`` bytes of ``fd`` from ``offset`` to ``out``; returns bytes copied."""
    sent = 0
    sendfile = getattr(os, "sendfile", None)
    while sendfile is not None and sent < count:
        try:
            n = sendfile(out, fd, offset + sent, count - sent)
        except OSError as exc:
            # EINVAL/ENOSYS/ENOTSOCK...: this kind of stdout cannot take sendfile; copy.
            if sent or isinstance(exc, (BrokenPipeError, ConnectionError)):
                raise
            break
        if n == 0:
            return sent  # the file shrank under us
        sent += n
    while sent < count:
        block = os.pread(fd, min(65536, count - sent), offset + sent)
        if not block:
            break
        send_all(block, out)
        sent += len(block)
    return sent


def make_log(stream: "TextIO", script: str, stamped: bool) -> "Callable[[str], None]":
    """A function that writes one message, prefixed with cgikit and the script name."""

    def log(message: str) -> None:
        prefix = f"cgikit: {script}: "
        if stamped:
            import time

            prefix = time.strftime("[%Y-%m-%d %H:%M:%S] ") + prefix
        stream.write(prefix + message.replace("\n", "\n" + prefix) + "\n")
        stream.flush()

    return log


def _nph_serializer(meta: "Mapping[str, str]") -> "Callable[[str, Headers], bytes]":
    import time

    from cgikit import __version__
    from cgikit.cgi_headers import http_date, serialize_nph

    protocol = meta.get("SERVER_PROTOCOL", "HTTP/1.0")

    def serialize(status: str, headers: "Headers") -> bytes:
        date = http_date(time.gmtime()[:7])
        return serialize_nph(protocol, status, headers, date, f"cgikit/{__version__}")

    return serialize


def is_nph(meta: "Mapping[str, str]") -> bool:
    """RFC 3875 §5: a script whose name starts with ``nph-`` speaks HTTP itself."""
    name = os.path.basename(sys.argv[0] if sys.argv and sys.argv[0] else "")
    if not name:
        name = meta.get("SCRIPT_NAME", "").rpartition("/")[2]
    return name.startswith("nph-")


def serve(
    app: "WSGIApp",
    meta: "Mapping[str, str]",
    errors: "TextIO",
    log: "Callable[[str], None]",
    options: "Mapping[str, object]",
    read: "Callable[[int], bytes] | None" = None,
) -> None:
    """Answer the one request that ``meta`` describes with ``app``; never raises for it."""
    environ: dict[str, object] = {"REQUEST_METHOD": meta.get("REQUEST_METHOD", "GET")}
    serialize = _nph_serializer(meta) if is_nph(meta) else None
    try:
        length = content_length(meta)
        body = BoundedInput(read or (lambda n: os.read(STDIN, n)), length)
        environ = build_environ(meta, body, errors, length)
        environ["wsgi.file_wrapper"] = FileWrapper
        if options["script_name"] is not None:
            environ["SCRIPT_NAME"] = str(options["script_name"]).rstrip("/")
    except EnvironError as exc:
        log(f"cannot serve this request: {exc.reason}")
        _answer(Response(environ, send_all, log, serialize=serialize or serialize_cgi), exc.status)
        return
    response = Response(
        environ,
        send_all,
        log,
        debug=bool(options["debug"]),
        default_content_type=str(options["default_content_type"]),
        send_file=send_file,
        serialize=serialize or serialize_cgi,
    )
    # A stray print() in the app would corrupt the response on stdout: send it to the
    # error stream while the app runs. The response itself goes to fd 1 directly.
    stdout, sys.stdout = sys.stdout, errors
    try:
        response.run(app)
    finally:
        sys.stdout = stdout


def _answer(response: Response, status: str) -> None:
    body = status.encode("latin-1") + b"\n"
    headers = [("Content-Type", "text/plain; charset=utf-8"), ("Content-Length", str(len(body)))]
    response.start_response(status, headers)
    try:
        response.write(body)
        response.finish()
    except ClientGone:
        pass  # the client is gone; the log already says why we refused it


def open_errors(log_file: object) -> "tuple[TextIO, bool]":
    """The error stream: ``log_file`` opened for appending, else stderr."""
    if log_file:
        try:
            # Closed by serve_process once the request is done.
            stream = open(str(log_file), "a", encoding="utf-8", errors="backslashreplace")  # noqa: SIM115
            return stream, True
        except OSError as exc:
            sys.stderr.write(f"cgikit: cannot open log file, using stderr: {exc}\n")
    return sys.stderr, False


def serve_process(app: "WSGIApp", options: "Mapping[str, object]") -> None:
    """Serve the CGI request this process was started for."""
    # httpoxy: a client's "Proxy:" header must not become this process's proxy either.
    os.environ.pop("HTTP_PROXY", None)
    meta = read_meta()
    errors, stamped = open_errors(options["log_file"])
    script = meta.get("SCRIPT_NAME") or sys.argv[0]
    try:
        serve(app, meta, errors, make_log(errors, script, stamped), options)
    finally:
        if errors is not sys.stderr:
            errors.close()
