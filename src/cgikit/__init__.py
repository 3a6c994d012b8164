"""cgikit: the Common Gateway Interface (RFC 3875) done right for modern Python.

Owns the public API, the one options table (``RUN_OPTIONS``, which feeds ``run``'s
keywords, the CLI flags in cgikit.cli and docs/options.md), the choice of gateway, and
the CGI gateway itself: one request from this process's environment and stdio.

A CGI script pays for every import on every request, and on the machines measured
each module costs it ~100 us of file-system calls (bench/RESULTS.md). So the CGI path is
this module plus two, none of them importing ``re``, ``typing``, ``dataclasses`` or
``__future__``:

    wsgi_request   WSGI seam, request side: the CGI variables checked and turned into
                   an environ, and the bounded wsgi.input (no I/O)
    wsgi_response  WSGI seam, response side: the CGI header block (check, serialize)
                   and the start_response/iterable driver (no I/O)

and, off that path, ``terminal`` (one request emulated from a terminal's argv) and
``cli``. The long-running gateways (FastCGI, SCGI, HTTP: ``run_gateway``) have modules
of their own, ``gateway_run`` first, imported only when there is no CGI environment and
a launcher handed this process a listening socket (``run_auto``), or when asked for.
"""

import os
import sys

__version__ = "0.1.0"

# httpoxy (CVE-2016-5386 and siblings): under CGI a client's "Proxy:" header arrives as
# HTTP_PROXY, which HTTP libraries read as the outbound proxy. Scripts import cgikit
# before their app, so removing it here protects the app's module-level code too.
if "GATEWAY_INTERFACE" in os.environ:
    os.environ.pop("HTTP_PROXY", None)
__all__ = [
    "GATEWAY_OPTIONS",
    "RUN_OPTIONS",
    "CGIHandler",
    "CGIHost",
    "FileWrapper",
    "IISCGIHandler",
    "Option",
    "__version__",
    "run",
    "run_auto",
    "run_gateway",
    "warm_up",
]

# What ``run`` imports only when it runs (so that ``import cgikit`` stays cheap for a
# cold CGI script): a warm-mode zygote that preloads cgikit imports these too, since
# each forked child would otherwise import them again (docs/warm.md).
__cgikit_preload__ = ("cgikit.wsgi_request", "cgikit.wsgi_response")

TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Callable, Mapping
    from typing import TextIO

    from cgikit._typing import Headers, WSGIApp
    from cgikit.cgi_host import CGIHost
    from cgikit.gateway_options import GATEWAY_OPTIONS
    from cgikit.gateway_run import run_gateway
    from cgikit.wsgi_response import FileWrapper, Response


# -- the options table ----------------------------------------------------------------
# Each option has a keyword name, an environment variable (how a CGI host that cannot
# pass arguments, such as Apache's SetEnv, sets it), a default and a help line. Clients
# cannot set these variables: a request header only ever becomes HTTP_*.


class Option:
    """One setting: keyword ``name``, ``env`` variable, ``kind``, ``default``.

    ``kind`` is bool, str, int, float or list (a list's variable is comma-separated).
    """

    __slots__ = ("default", "env", "help", "kind", "name")

    def __init__(self, name: str, env: str, kind: type, default: object, help: str) -> None:
        self.name = name
        self.env = env
        self.kind = kind
        self.default = default
        self.help = help

    @property
    def flag(self) -> str:
        """The command-line flag, ``--log-file`` for ``log_file``."""
        return "--" + self.name.replace("_", "-")

    def parse(self, text: str) -> object:
        """The value of the environment variable's text.

        Raises:
            ValueError: not a number, for an int or float option.
        """
        if self.kind is bool:
            return text.strip().lower() in ("1", "true", "yes", "on")
        if self.kind is list:
            return [item.strip() for item in text.split(",") if item.strip()]
        if self.kind is int or self.kind is float:
            return self.kind(text.strip())
        return text


RUN_OPTIONS = (
    Option(
        "debug",
        "CGIKIT_DEBUG",
        bool,
        False,
        "On an error, show an HTML page with the traceback, local variables and environ "
        "(the job cgitb did). Never in production.",
    ),
    Option(
        "log_file",
        "CGIKIT_LOG_FILE",
        str,
        None,
        "Append cgikit's log lines and wsgi.errors to this file instead of stderr, "
        "for hosts where stderr is lost.",
    ),
    Option(
        "default_content_type",
        "CGIKIT_DEFAULT_CONTENT_TYPE",
        str,
        "application/octet-stream",
        "Content-Type sent (with X-Content-Type-Options: nosniff) when the app gives a "
        "body without one; a warning is logged. Never sniffed, never text/html.",
    ),
    Option(
        "script_name",
        "CGIKIT_SCRIPT_NAME",
        str,
        None,
        "The app's mount point, replacing the server's SCRIPT_NAME (a trailing / is "
        "dropped, so / means the root): for URLs a rewrite rule sends to the script, so "
        "that the links the app builds leave out its file name. PATH_INFO is unchanged.",
    ),
)


def resolve(
    options: tuple[Option, ...], given: "Mapping[str, object]", environ: "Mapping[str, str]"
) -> dict[str, object]:
    """Each option's value: the keyword if not None, else its variable, else the default."""
    values: dict[str, object] = {}
    for option in options:
        value = given.get(option.name)
        if value is None:
            text = environ.get(option.env)
            value = option.default if text is None or text == "" else option.parse(text)
        values[option.name] = value
    return values


# -- running an app ---------------------------------------------------------------------


def run(
    app: "WSGIApp",
    *,
    debug: bool | None = None,
    log_file: str | None = None,
    default_content_type: str | None = None,
    script_name: str | None = None,
) -> None:
    """Serve ``app`` through whatever gateway started this process.

    Under a CGI server (``GATEWAY_INTERFACE`` set) it answers exactly one request.
    Started on a listening socket (fd 0, as mod_fcgid, lighttpd's ``bin-path`` and
    spawn-fcgi do, or by systemd socket activation) it serves FastCGI there until
    SIGTERM (``CGIKIT_GATEWAY=scgi`` or ``http`` for another protocol; the
    ``GATEWAY_OPTIONS`` from their ``CGIKIT_*`` variables). From a terminal it emulates
    one request from ``argv`` (``./app.cgi [METHOD] [PATH?QUERY]``).

    Args:
        app: a PEP 3333 application.
        debug: show an HTML traceback page on errors (default: env ``CGIKIT_DEBUG``).
        log_file: append log lines and ``wsgi.errors`` here instead of stderr
            (default: env ``CGIKIT_LOG_FILE``).
        default_content_type: sent when the app gives a body but no Content-Type
            (default: env ``CGIKIT_DEFAULT_CONTENT_TYPE``, else ``application/octet-stream``).
        script_name: the app's mount point, replacing SCRIPT_NAME, for when a rewrite
            rule hides the script's name from URLs (default: env ``CGIKIT_SCRIPT_NAME``).
    Raises:
        SystemExit: only when terminal emulation was given bad arguments.
    """
    status = run_auto(
        app,
        debug=debug,
        log_file=log_file,
        default_content_type=default_content_type,
        script_name=script_name,
    )
    if status:
        raise SystemExit(status)


def run_auto(
    app: "WSGIApp",
    args: list[str] | None = None,
    script: str | None = None,
    gateway: "Mapping[str, object] | None" = None,
    **given: object,
) -> int:
    """Serve ``app`` with the gateway that started this process; return an exit status.

    A CGI server sets GATEWAY_INTERFACE (RFC 3875 §4.1.4): one request. Else a launcher
    may have handed over a listening socket (fd 0 as FastCGI's spawners do, or systemd's
    LISTEN_FDS): a server on it until SIGTERM, with the ``gateway`` options
    (cgikit.gateway_run). Anyone else is a person at a terminal, who gets one request
    emulated from ``args`` (default ``sys.argv[1:]``) for ``script`` (default
    ``sys.argv[0]``). ``given`` holds ``RUN_OPTIONS`` keywords; None means "not given".
    """
    options = resolve(RUN_OPTIONS, given, os.environ)
    if "GATEWAY_INTERFACE" in os.environ:
        serve_process(app, options)
        return 0
    if _maybe_launched_on_socket():
        from cgikit.gateway_run import serve_inherited

        status = serve_inherited(app, gateway or {})
        if status is not None:
            return status
    from cgikit.terminal import emulate

    return emulate(app, sys.argv[1:] if args is None else args, options, script)


def _maybe_launched_on_socket() -> bool:
    """Cheap, importing nothing: LISTEN_PID names this process, or fd 0 is a socket."""
    if os.environ.get("LISTEN_PID") == str(os.getpid()):
        return True
    try:
        return (os.fstat(0).st_mode & 0o170000) == 0o140000  # S_IFMT, S_IFSOCK
    except OSError:  # no fd 0 at all
        return False


class CGIHandler:
    """Drop-in for ``wsgiref.handlers.CGIHandler``: ``CGIHandler().run(app)``."""

    def __init__(self, **options: object) -> None:
        self.options = options

    def run(self, application: "WSGIApp") -> None:
        """Serve one request with ``application`` (same as ``cgikit.run``)."""
        status = run_auto(application, None, None, None, **self.options)
        if status:
            raise SystemExit(status)


# IIS's habit of repeating SCRIPT_NAME in PATH_INFO is repaired whenever SERVER_SOFTWARE
# names IIS, so the IIS variant needs no code of its own.
IISCGIHandler = CGIHandler


def warm_up(app: "WSGIApp", path: str = "/", *, script_name: str = "") -> bool:
    """Warm mode: GETs of ``path`` through ``app`` in the zygote (``warm_request.REQUESTS``,
    16, so that its code is specialized too), at import of the app module it preloads,
    so that every child is forked with the framework's first-request work done (routing
    built, caches filled). Anywhere else: nothing.

    Returns whether the requests were made and answered below 400 (a failure is logged
    on stderr, never raised). Their side effects are every child's: choose a harmless
    path (cgikit.warm_request, docs/warm.md).
    """
    if os.environ.get("CGIKIT_ZYGOTE") != "1":  # set by warm_preload in a zygote
        return False
    from cgikit.warm_request import warm_request

    return warm_request(app, path, script_name)


def __getattr__(name: str) -> object:
    # Imported on first use: none is on the CGI child's path.
    if name == "FileWrapper":
        from cgikit.wsgi_response import FileWrapper

        return FileWrapper
    if name == "CGIHost":
        from cgikit.cgi_host import CGIHost

        return CGIHost
    if name == "run_gateway":
        from cgikit.gateway_run import run_gateway

        return run_gateway
    if name == "GATEWAY_OPTIONS":
        from cgikit.gateway_options import GATEWAY_OPTIONS

        return GATEWAY_OPTIONS
    raise AttributeError(f"module 'cgikit' has no attribute {name!r}")


# -- the CGI gateway (RFC 3875): one request, from this process ------------------------
# Read the meta-variables from the process environment as bytes, bound stdin, write the
# response to fd 1 unbuffered (so each chunk reaches the server at once), and pick the
# framing: a Status: header block, or a whole HTTP response for scripts named nph-*
# (RFC 3875 §5). Terminal emulation reuses serve() with variables it made up.

STDIN, STDOUT = 0, 1


def read_meta() -> dict[str, str]:
    """The process environment, every byte kept: PEP 3333 "bytes as latin-1" strings."""
    environb = getattr(os, "environb", None)
    if environb is None:  # Windows: the variables only exist as str
        return dict(os.environ)
    # Its own dict of bytes, read directly: the mapping's methods cost a few Python
    # calls a variable, a tenth of what cgikit.run costs a warm child before the app.
    data = getattr(environb, "_data", None)
    items = data.items() if type(data) is dict else environb.items()
    return {k.decode("latin-1"): v.decode("latin-1") for k, v in items}


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

    from cgikit.wsgi_response import http_date, serialize_nph

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
    out: int = STDOUT,
    finished: "Callable[[], object] | None" = None,
) -> None:
    """Answer the one request that ``meta`` describes with ``app``; never raises for it.

    The body comes from ``read`` (default: stdin), the response goes to fd ``out``;
    ``finished`` is called once it is whole, before the app's iterable is closed.
    """
    from cgikit.wsgi_request import BoundedInput, EnvironError, build_environ, content_length
    from cgikit.wsgi_response import FileWrapper, Response, serialize_cgi

    environ: dict[str, object] = {"REQUEST_METHOD": meta.get("REQUEST_METHOD", "GET")}
    serialize = _nph_serializer(meta) if is_nph(meta) else None

    def send(data: bytes) -> None:
        send_all(data, out)

    try:
        length = content_length(meta)
        body = BoundedInput(read or (lambda n: os.read(STDIN, n)), length)
        environ = build_environ(meta, body, errors, length)
        environ["wsgi.file_wrapper"] = FileWrapper
        if options["script_name"] is not None:
            environ["SCRIPT_NAME"] = str(options["script_name"]).rstrip("/")
    except EnvironError as exc:
        log(f"cannot serve this request: {exc.reason}")
        _answer(Response(environ, send, log, serialize=serialize or serialize_cgi), exc.status)
        return
    response = Response(
        environ,
        send,
        log,
        debug=bool(options["debug"]),
        default_content_type=str(options["default_content_type"]),
        send_file=lambda fd, offset, count: send_file(fd, offset, count, out),
        serialize=serialize or serialize_cgi,
        finished=finished,
    )
    # A stray print() in the app would corrupt the response on stdout: send it to the
    # error stream while the app runs. The response itself goes to fd 1 directly.
    stdout, sys.stdout = sys.stdout, errors
    try:
        response.run(app)
    finally:
        sys.stdout = stdout


def _answer(response: "Response", status: str) -> None:
    from cgikit.wsgi_response import ClientGone

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


def claim_stdout() -> int:
    """Keep the response pipe for the response alone; point fd 1 at stderr instead.

    Returns the descriptor to write the response to. Anything else that writes to
    stdout then lands in the error log, not in the response: a print() made before
    cgikit.run (still in sys.stdout's buffer, flushed at exit), a C extension, a
    subprocess the app starts. And since os.dup's copy is not inheritable (PEP 446),
    no child the app leaves running keeps the server waiting for the end of the output.
    """
    try:
        out = os.dup(STDOUT)
    except OSError:
        return STDOUT  # no stdout at all: writes will fail and be logged
    try:
        os.dup2(2, STDOUT)
    except OSError:  # no stderr to point at: keep the plain descriptor
        os.close(out)
        return STDOUT
    return out


def yield_cpu() -> None:
    """Let the server run first, once it has the response's end. Linux wakes a pipe's
    reader as the writer is expected to sleep next, often on the writer's CPU; this
    process goes on to its teardown instead, and the server waited for a CPU behind
    it (measured in warm mode: about a third of requests took 1.5 ms longer)."""
    sched_yield = getattr(os, "sched_yield", None)
    if sched_yield is not None:
        sched_yield()


def serve_process(app: "WSGIApp", options: "Mapping[str, object]") -> None:
    """Serve the CGI request this process was started for."""
    # httpoxy: a client's "Proxy:" header must not become this process's proxy either.
    os.environ.pop("HTTP_PROXY", None)
    meta = read_meta()
    errors, stamped = open_errors(options["log_file"])
    script = meta.get("SCRIPT_NAME") or sys.argv[0]
    out = claim_stdout()
    ended = out == STDOUT  # no copy of our own to close (claim_stdout could not dup)

    def end_output() -> None:
        # The response is whole: the server sees its end now, not at the exit (an
        # app's teardown takes a while, an interpreter's finalization milliseconds).
        nonlocal ended
        if not ended:
            ended = True
            os.close(out)
            yield_cpu()

    try:
        log = make_log(errors, script, stamped)
        serve(app, meta, errors, log, options, out=out, finished=end_output)
    finally:
        end_output()
        if errors is not sys.stderr:
            errors.close()
