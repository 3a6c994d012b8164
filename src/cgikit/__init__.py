"""cgikit: the Common Gateway Interface (RFC 3875) done right for modern Python.

Public API, and the choice of gateway. ``import cgikit`` stays cheap because a CGI
script pays for every import on every request: no ``re``, ``typing``, ``dataclasses``
or ``from __future__`` on this path, and the CGI child is four flat modules besides
this one (each module costs a CGI request ~100 us to import; see bench/RESULTS.md). So
this module also holds the one options table (``RUN_OPTIONS``), which feeds ``run``'s
keywords, the CLI flags (cgikit.cli) and the docs (docs/options.md):

    cgi_headers    protocol core: check and serialize a CGI header block (pure)
    wsgi_request   WSGI seam, request side: environ and bounded wsgi.input (no I/O)
    wsgi_response  WSGI seam, response side: the start_response/iterable driver (no I/O)
    cgi_child      gateway: one request from this process's environment and stdio
    terminal       gateway: one request emulated from a terminal's argv
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
    "RUN_OPTIONS",
    "CGIHandler",
    "FileWrapper",
    "IISCGIHandler",
    "Option",
    "__version__",
    "run",
    "run_auto",
]

TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Mapping

    from cgikit._typing import WSGIApp
    from cgikit.wsgi_response import FileWrapper


# -- the options table ----------------------------------------------------------------
# Each option has a keyword name, an environment variable (how a CGI host that cannot
# pass arguments, such as Apache's SetEnv, sets it), a default and a help line. Clients
# cannot set these variables: a request header only ever becomes HTTP_*.


class Option:
    """One setting: keyword ``name``, ``env`` variable, ``kind`` (bool or str), ``default``."""

    __slots__ = ("default", "env", "help", "kind", "name")

    def __init__(
        self, name: str, env: str, kind: type, default: bool | str | None, help: str
    ) -> None:
        self.name = name
        self.env = env
        self.kind = kind
        self.default = default
        self.help = help

    @property
    def flag(self) -> str:
        """The command-line flag, ``--log-file`` for ``log_file``."""
        return "--" + self.name.replace("_", "-")

    def parse(self, text: str) -> bool | str:
        """The value of the environment variable's text."""
        if self.kind is bool:
            return text.strip().lower() in ("1", "true", "yes", "on")
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

    Under a CGI server (``GATEWAY_INTERFACE`` set) it answers exactly one request. From a
    terminal it emulates one request from ``argv`` (``./app.cgi [METHOD] [PATH?QUERY]``).

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
    app: "WSGIApp", args: list[str] | None = None, script: str | None = None, **given: object
) -> int:
    """Serve ``app`` with the gateway that started this process; return an exit status.

    A CGI server sets GATEWAY_INTERFACE (RFC 3875 §4.1.4); anyone else is a person at a
    terminal, who gets one request emulated from ``args`` (default ``sys.argv[1:]``) for
    ``script`` (default ``sys.argv[0]``).
    ``given`` holds option keywords (cgikit.options); None means "not given".
    """
    options = resolve(RUN_OPTIONS, given, os.environ)
    if "GATEWAY_INTERFACE" in os.environ:
        from cgikit.cgi_child import serve_process

        serve_process(app, options)
        return 0
    from cgikit.terminal import emulate

    return emulate(app, sys.argv[1:] if args is None else args, options, script)


class CGIHandler:
    """Drop-in for ``wsgiref.handlers.CGIHandler``: ``CGIHandler().run(app)``."""

    def __init__(self, **options: object) -> None:
        self.options = options

    def run(self, application: "WSGIApp") -> None:
        """Serve one request with ``application`` (same as ``cgikit.run``)."""
        status = run_auto(application, None, None, **self.options)
        if status:
            raise SystemExit(status)


# IIS's habit of repeating SCRIPT_NAME in PATH_INFO is repaired whenever SERVER_SOFTWARE
# names IIS, so the IIS variant needs no code of its own.
IISCGIHandler = CGIHandler


def __getattr__(name: str) -> object:
    if name == "FileWrapper":
        from cgikit.wsgi_response import FileWrapper

        return FileWrapper
    raise AttributeError(f"module 'cgikit' has no attribute {name!r}")
