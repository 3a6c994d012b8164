"""Terminal emulation: run one made-up request when no web server started us.

``./app.cgi [METHOD] [PATH?QUERY]`` builds the CGI variables a server would, takes the
body from stdin when stdin is not a terminal, and prints the raw CGI response: how people
debug CGI scripts. Variables already in the environment (``CONTENT_TYPE``,
``HTTP_COOKIE``, ...) are kept, so ``HTTP_COOKIE=a=1 ./app.cgi`` works too.
"""

from __future__ import annotations

import io
import os
import sys
from urllib.parse import unquote_to_bytes

import cgikit

TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Mapping

    from cgikit._typing import WSGIApp

USAGE = "usage: SCRIPT [METHOD] [PATH[?QUERY]]  (request body on stdin, if not a terminal)"


def parse_args(args: list[str]) -> tuple[str, str]:
    """``(method, target)`` from ``[METHOD] [PATH?QUERY]``; GET and / by default."""
    method, target = "GET", ""
    rest = list(args)
    # A method is a word in capitals, or any word followed by a target ("get /x");
    # a lone lowercase word ("about") is a path.
    if rest and rest[0].isalpha() and (rest[0].isupper() or len(rest) > 1):
        method = rest.pop(0).upper()
    if rest:
        target = rest.pop(0)
    if rest:
        raise ValueError(f"unexpected arguments {rest!r}; {USAGE}")
    if target and not target.startswith(("/", "?")):
        target = "/" + target
    return method, target


def emulated_meta(
    method: str, target: str, script: str, environ: Mapping[str, str], body_length: int | None
) -> dict[str, str]:
    """The CGI variables a server would pass for ``method target`` to ``script``."""
    path, _, query = target.partition("?")
    meta = dict(environ)
    name = "/" + os.path.basename(script) if script else ""
    request = {
        "GATEWAY_INTERFACE": "CGI/1.1",
        "REQUEST_METHOD": method,
        "SCRIPT_NAME": name,
        # Servers hand PATH_INFO over percent-decoded (RFC 3875 §4.1.5), bytes as latin-1.
        "PATH_INFO": unquote_to_bytes(path).decode("latin-1"),
        "QUERY_STRING": query,
        "REQUEST_URI": (name + target) or "/",
        "SCRIPT_FILENAME": os.path.abspath(script) if script else "",
    }
    meta.update(request)
    for key, value in (
        ("SERVER_SOFTWARE", "cgikit-terminal"),
        ("SERVER_NAME", "localhost"),
        ("SERVER_PORT", "80"),
        ("SERVER_PROTOCOL", "HTTP/1.1"),
        ("REMOTE_ADDR", "127.0.0.1"),
        ("HTTP_HOST", "localhost"),
    ):
        meta.setdefault(key, value)
    if body_length is not None:
        meta["CONTENT_LENGTH"] = str(body_length)
        meta.setdefault("CONTENT_TYPE", "application/x-www-form-urlencoded")
    return meta


def emulate(
    app: WSGIApp, args: list[str], options: Mapping[str, object], script: str | None = None
) -> int:
    """Run one emulated request; returns the process exit status.

    ``script`` names the script the request is for (default ``sys.argv[0]``; "" mounts
    the app at the root, as ``cgikit run module:app`` does).
    """
    if args[:1] in (["-h"], ["--help"]):
        print(USAGE)
        return 0
    try:
        method, target = parse_args(args)
    except ValueError as exc:
        sys.stderr.write(f"cgikit: {exc}\n")
        return 2
    body = None if sys.stdin is None or sys.stdin.isatty() else sys.stdin.buffer.read()
    script = sys.argv[0] if script is None else script
    meta = emulated_meta(method, target, script, os.environ, len(body) if body else None)
    sys.stderr.write(
        f"cgikit: not started by a web server (no GATEWAY_INTERFACE): emulating {method} "
        f"{meta['REQUEST_URI']}; the raw CGI response follows. {USAGE}\n"
    )
    errors, stamped = cgikit.open_errors(options["log_file"])
    log = cgikit.make_log(errors, meta["SCRIPT_NAME"] or "app", stamped)
    cgikit.serve(app, meta, errors, log, options, io.BytesIO(body or b"").read)
    return 0
