"""cgikit: the Common Gateway Interface (RFC 3875) done right for modern Python.

Public API only. ``import cgikit`` stays cheap (no ``re``, ``typing`` or ``dataclasses``)
because a CGI script pays for every import on every request; the gateways are imported
when ``run`` is called.
"""

from __future__ import annotations

__version__ = "0.1.0"
__all__ = ["CGIHandler", "FileWrapper", "IISCGIHandler", "__version__", "run"]

TYPE_CHECKING = False
if TYPE_CHECKING:
    from cgikit._typing import WSGIApp
    from cgikit.wsgi.filewrapper import FileWrapper


def run(
    app: WSGIApp,
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
    """
    from cgikit.gateways.auto import run_auto

    status = run_auto(
        app, debug=debug, log_file=log_file, default_content_type=default_content_type
    )
    if status:
        raise SystemExit(status)


class CGIHandler:
    """Drop-in for ``wsgiref.handlers.CGIHandler``: ``CGIHandler().run(app)``."""

    def __init__(self, **options: object) -> None:
        self.options = options

    def run(self, application: WSGIApp) -> None:
        """Serve one request with ``application`` (same as ``cgikit.run``)."""
        run(application, **self.options)  # type: ignore[arg-type]


# IIS's habit of repeating SCRIPT_NAME in PATH_INFO is repaired whenever SERVER_SOFTWARE
# names IIS, so the IIS variant needs no code of its own.
IISCGIHandler = CGIHandler


def __getattr__(name: str) -> object:
    if name == "FileWrapper":
        from cgikit.wsgi.filewrapper import FileWrapper

        return FileWrapper
    raise AttributeError(f"module 'cgikit' has no attribute {name!r}")
