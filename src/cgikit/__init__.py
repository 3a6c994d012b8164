"""cgikit: the Common Gateway Interface (RFC 3875) done right for modern Python.

Public API, and the choice of gateway. ``import cgikit`` stays cheap because a CGI
script pays for every import on every request: no ``re``, ``typing``, ``dataclasses``
or ``from __future__`` on this path, and the CGI child is a handful of flat modules
(each module costs a CGI request ~85 us to import here; see bench/RESULTS.md):

    options        the one options table (API keywords, CLI flags, env vars, docs)
    cgi_headers    protocol core: check and serialize a CGI header block (pure)
    wsgi_request   WSGI seam, request side: environ and bounded wsgi.input (no I/O)
    wsgi_response  WSGI seam, response side: the start_response/iterable driver (no I/O)
    cgi_child      gateway: one request from this process's environment and stdio
    terminal       gateway: one request emulated from a terminal's argv
"""

import os
import sys

__version__ = "0.1.0"
__all__ = ["CGIHandler", "FileWrapper", "IISCGIHandler", "__version__", "run", "run_auto"]

TYPE_CHECKING = False
if TYPE_CHECKING:
    from cgikit._typing import WSGIApp
    from cgikit.wsgi_response import FileWrapper


def run(
    app: "WSGIApp",
    *,
    debug: bool | None = None,
    log_file: str | None = None,
    default_content_type: str | None = None,
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
    Raises:
        SystemExit: only when terminal emulation was given bad arguments.
    """
    status = run_auto(
        app, debug=debug, log_file=log_file, default_content_type=default_content_type
    )
    if status:
        raise SystemExit(status)


def run_auto(app: "WSGIApp", args: list[str] | None = None, **given: object) -> int:
    """Serve ``app`` with the gateway that started this process; return an exit status.

    A CGI server sets GATEWAY_INTERFACE (RFC 3875 §4.1.4); anyone else is a person at a
    terminal, who gets one request emulated from ``args`` (default ``sys.argv[1:]``).
    ``given`` holds option keywords (cgikit.options); None means "not given".
    """
    from cgikit.options import RUN_OPTIONS, resolve

    options = resolve(RUN_OPTIONS, given, os.environ)
    if "GATEWAY_INTERFACE" in os.environ:
        from cgikit.cgi_child import serve_process

        serve_process(app, options)
        return 0
    from cgikit.terminal import emulate

    return emulate(app, sys.argv[1:] if args is None else args, options)


class CGIHandler:
    """Drop-in for ``wsgiref.handlers.CGIHandler``: ``CGIHandler().run(app)``."""

    def __init__(self, **options: object) -> None:
        self.options = options

    def run(self, application: "WSGIApp") -> None:
        """Serve one request with ``application`` (same as ``cgikit.run``)."""
        status = run_auto(application, None, **self.options)
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
