"""What a client sees when the application fails, and what the log gets.

Owns the generic 500 page (no detail: tracebacks leak paths and secrets) and the opt-in
debug page, the job ``cgitb`` did before Python 3.13 removed it: the traceback with
every frame's local variables, HTML-escaped so that nothing from the request can inject
markup. Imported only when something failed.
"""

from __future__ import annotations

import html
import traceback

TYPE_CHECKING = False
if TYPE_CHECKING:
    from cgikit._typing import Environ, Headers

GENERIC_BODY = (
    b"500 Internal Server Error\n\n"
    b"The application failed. The details are in the server's error log.\n"
)


def format_traceback(exc: BaseException) -> str:
    """The full traceback of ``exc`` as one log message."""
    return "app failed:\n" + "".join(traceback.format_exception(exc)).rstrip("\n")


def generic_page() -> tuple[str, Headers, bytes]:
    """The 500 response shown when debug mode is off."""
    headers = [
        ("Content-Type", "text/plain; charset=utf-8"),
        ("Content-Length", str(len(GENERIC_BODY))),
    ]
    return "500 Internal Server Error", headers, GENERIC_BODY


def _frame_html(frame: traceback.FrameSummary) -> str:
    esc = html.escape
    rows = "".join(
        f"<tr><th>{esc(name)}</th><td><code>{esc(value)}</code></td></tr>"
        for name, value in sorted((frame.locals or {}).items())
    )
    return (
        f"<li><p><b>{esc(frame.filename)}</b>, line {frame.lineno}, in "
        f"<b>{esc(frame.name)}</b></p><pre>{esc(frame.line or '')}</pre>"
        f"<table>{rows}</table></li>"
    )


def debug_page(exc: BaseException, environ: Environ) -> tuple[str, Headers, bytes]:
    """The 500 response shown in debug mode: traceback, locals and the CGI environ."""
    esc = html.escape
    summary = traceback.TracebackException.from_exception(exc, capture_locals=True)
    frames = "".join(_frame_html(frame) for frame in summary.stack)
    message = "".join(summary.format_exception_only())
    env_rows = "".join(
        f"<tr><th>{esc(key)}</th><td><code>{esc(repr(environ[key]))}</code></td></tr>"
        for key in sorted(environ)
    )
    page = (
        "<!DOCTYPE html><html><head><meta charset=utf-8><title>500: "
        f"{esc(type(exc).__name__)}</title><style>body{{font-family:sans-serif}}"
        "th{text-align:left;vertical-align:top;padding-right:1em}pre{background:#eee}"
        "</style></head><body><h1>500 Internal Server Error</h1>"
        f"<p>cgikit debug mode is on: turn it off in production.</p><pre>{esc(message)}</pre>"
        f"<h2>Traceback, most recent call last</h2><ol>{frames}</ol>"
        f"<h2>Environment</h2><table>{env_rows}</table></body></html>\n"
    )
    body = page.encode("utf-8", "replace")
    headers = [
        ("Content-Type", "text/html; charset=utf-8"),
        ("Content-Length", str(len(body))),
    ]
    return "500 Internal Server Error", headers, body
