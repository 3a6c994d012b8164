"""What ``cgikit.warm_up(app)`` does in warm mode's zygote: one request through the app.

A framework does work on its first request in a process and keeps it for the next:
Flask builds its URL matcher, ``abc`` and ``typing`` fill their caches, a template is
compiled. In warm mode every request is a new process, forked from a zygote that has
never answered one, so every request paid for a first request (0.1-0.2 ms of a
Flask hello's 1.3 ms in a child, measured in bench/RESULTS.md). An app module that the
zygote preloads calls ``cgikit.warm_up(app)`` once the app is built: in the zygote, one
GET goes through the app and through the same code a CGI child runs (``cgikit.serve``),
and its response is thrown away; every child is forked with that work done.

Anywhere else the call does nothing (a cold CGI script, a warm child, a FastCGI or
HTTP server: their first request is a real one, and costs no more than once), and
imports nothing (``cgikit.warm_up`` looks before it imports this module). The zygote
says where it is by ``CGIKIT_ZYGOTE=1`` in its environment while it imports the
preloads (``warm_zygote``); a child's environment is its request's.

The request's side effects happen once, in the zygote, and every child inherits them:
the path should be one whose handling changes nothing (a health check, a static page).
A warm-up that fails, or answers 4xx/5xx, is logged on stderr (the server's log) and
otherwise ignored: it never stops the zygote (docs/warm.md).
"""

from __future__ import annotations

import os
import sys
import tempfile
from typing import TYPE_CHECKING

from cgikit import RUN_OPTIONS, resolve, serve

if TYPE_CHECKING:
    from cgikit._typing import WSGIApp

__all__ = ["warm_request"]

_HEAD = 256  # bytes of the response read back for its status line


def warm_request(app: WSGIApp, path: str, script_name: str) -> bool:
    """A GET of ``path`` (with its ``?query``) through ``app`` mounted at
    ``script_name``, its response discarded; whether it was answered below 400.
    Never raises for the app: what went wrong is logged on stderr.
    """
    target, _, query = path.partition("?")
    meta = {
        "GATEWAY_INTERFACE": "CGI/1.1",
        "REQUEST_METHOD": "GET",
        "SCRIPT_NAME": script_name,
        "PATH_INFO": target,
        "QUERY_STRING": query,
        "SERVER_NAME": "localhost",
        "SERVER_PORT": "80",
        "SERVER_PROTOCOL": "HTTP/1.1",
        "REMOTE_ADDR": "127.0.0.1",
        "HTTP_HOST": "localhost",
        "HTTP_USER_AGENT": "cgikit-warm-up",
    }
    where = f"cgikit: warm-up GET {script_name}{path}"

    def log(line: str) -> None:
        sys.stderr.write(f"{where}: {line}\n")

    options = resolve(RUN_OPTIONS, {}, {})  # the defaults: no CGIKIT_* of the zygote's
    with tempfile.TemporaryFile() as out:  # a file: a large answer cannot block
        try:
            serve(app, meta, sys.stderr, log, options, read=lambda _n: b"", out=out.fileno())
        except Exception as exc:  # serve answers the app's errors itself: this is ours
            log(f"failed: {type(exc).__name__}: {exc}")
            return False
        head = os.pread(out.fileno(), _HEAD, 0)
    status = head.partition(b"\r\n")[0].removeprefix(b"Status: ").decode("latin-1")
    if not (status[:3].isdigit() and int(status[:3]) < 400):
        log(f"answered {status or 'nothing'}")
        return False
    return True
