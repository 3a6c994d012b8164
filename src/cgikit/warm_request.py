"""Warm mode's warm-up requests in the zygote: GETs through an app, answers thrown away.

A framework does work on its first request in a process and keeps it for the next:
Flask builds its URL matcher, ``abc`` and ``typing`` fill their caches, a template is
compiled. In warm mode every request is a new process, forked from a zygote that has
never answered one, so every request paid for a first request (0.1-0.2 ms of a
Flask hello's 1.3 ms in a child, measured in bench/RESULTS.md). An app module that the
zygote preloads calls ``cgikit.warm_up(app)`` once the app is built: in the zygote, a
GET goes through the app and through the same code a CGI child runs (``cgikit.serve``),
and its response is thrown away; every child is forked with that work done. A
framework's own warm-up (``cgikit.warm_flask``) sends one GET through each of the
throwaway apps it builds (``warm_apps``).

``cgikit.warm_up`` makes its GET ``REQUESTS`` times, not once: CPython's specializing
interpreter (PEP 659) rewrites a function's bytecode for what it meets only after the
function has run a few times (eight calls before 3.12), and a child forked from a
zygote that has run the request path that often starts with it specialized, where each
child used to run it generic and write its warm-up counters into the code objects'
pages (copies). Measured in a child, paced: 0.08 ms less a Flask request
(bench/RESULTS.md).

Anywhere else the call does nothing (a cold CGI script, a warm child, a FastCGI or
HTTP server: their first request is a real one, and costs no more than once), and
imports nothing (``cgikit.warm_up`` looks before it imports this module). The zygote
says where it is by ``CGIKIT_ZYGOTE=1`` in its environment while it imports the
preloads (``warm_zygote``); a child's environment is its request's.

The requests' side effects happen in the zygote, and every child inherits them: the path
should be one whose handling changes nothing (a health check, a static page). A warm-up
that fails, or answers 4xx/5xx, is logged on stderr (the server's log) once, is not
made again, and is otherwise ignored: it never stops the zygote (docs/warm.md).
"""

from __future__ import annotations

import itertools
import os
import sys
import tempfile
from typing import TYPE_CHECKING, Final

from cgikit import RUN_OPTIONS, resolve, serve

if TYPE_CHECKING:
    from collections.abc import Callable, Iterable, Mapping

    from cgikit._typing import WSGIApp

__all__ = ["REQUESTS", "warm_apps", "warm_request"]

REQUESTS: Final = 16  # GETs made (module docstring: the interpreter's specialization)
_HEAD = 256  # bytes of the response read back for its status line


def warm_request(app: WSGIApp, path: str, script_name: str) -> bool:
    """``REQUESTS`` GETs of ``path`` (with its ``?query``) through ``app`` mounted at
    ``script_name``, their responses discarded; whether they were answered below 400.
    The first that is not ends the warm-up. Never raises for the app: what went wrong
    is logged on stderr.
    """
    return warm_apps(itertools.repeat(app, REQUESTS), path, script_name)


def warm_apps(apps: Iterable[WSGIApp], path: str, script_name: str) -> bool:
    """One GET of ``path`` through each app of ``apps``, as ``warm_request``; an app that
    cannot be built (``apps`` raising) is logged and ends the warm-up too."""
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
    each = iter(apps)
    with tempfile.TemporaryFile() as out:  # a file: a large answer cannot block
        while True:
            try:
                app = next(each, None)
            except Exception as exc:  # the framework's app-building code failed
                log(f"failed to build the app: {type(exc).__name__}: {exc}")
                return False
            if app is None:
                return True
            if not _get(app, meta, options, log, out.fileno()):
                return False


def _get(
    app: WSGIApp,
    meta: Mapping[str, str],
    options: Mapping[str, object],
    log: Callable[[str], None],
    out: int,
) -> bool:
    """One GET into the file ``out`` (emptied first); whether it was answered below
    400 (else logged)."""
    os.ftruncate(out, 0)
    os.lseek(out, 0, os.SEEK_SET)
    try:
        serve(app, meta, sys.stderr, log, options, read=lambda _n: b"", out=out)
    except Exception as exc:  # serve answers the app's errors itself: this is ours
        log(f"failed: {type(exc).__name__}: {exc}")
        return False
    head = os.pread(out, _HEAD, 0)
    status = head.partition(b"\r\n")[0].removeprefix(b"Status: ").decode("latin-1")
    if not (status[:3].isdigit() and int(status[:3]) < 400):
        log(f"answered {status or 'nothing'}")
        return False
    return True
