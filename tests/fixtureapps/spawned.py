"""The app a web server spawns itself (lighttpd ``bin-path``, Apache mod_fcgid): app.fcgi.

The same script serves as a plain CGI script and as a FastCGI app on the listening socket
its launcher hands it (tests/integration/test_spawned_fastcgi.py). It mounts fixture apps
one path segment deep, as integration.backend does: /app/echo_environ/x reaches
echo_environ with SCRIPT_NAME /app/echo_environ and PATH_INFO /x. ``process`` answers
with the process id that served the request (the same one across requests means one
long-lived FastCGI process; a new one each time, a process per request: CGI) and the
environ's wsgi.multiprocess and wsgi.multithread, as JSON.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterable
from wsgiref.types import StartResponse, WSGIApplication, WSGIEnvironment
from wsgiref.util import shift_path_info
from wsgiref.validate import validator

from fixtureapps import echo_body, echo_environ, hello, raise_before
from fixtureapps._common import plain


def _process(environ: WSGIEnvironment, start_response: StartResponse) -> Iterable[bytes]:
    report = {
        "pid": os.getpid(),
        "multiprocess": environ["wsgi.multiprocess"],
        "multithread": environ["wsgi.multithread"],
    }
    return plain(start_response, "200 OK", json.dumps(report).encode())


ROUTES: dict[str, WSGIApplication] = {
    "echo_environ": echo_environ.app,
    "echo_body": echo_body.app,
    "raise_before": raise_before.app,
    "hello": hello.app,
    "process": validator(_process),
}


def app(environ: WSGIEnvironment, start_response: StartResponse) -> Iterable[bytes]:
    """Dispatch on the first PATH_INFO segment, which moves to SCRIPT_NAME."""
    target = ROUTES.get(shift_path_info(environ) or "")
    if target is None:
        return plain(start_response, "404 Not Found", b"no such fixture app\n")
    return target(environ, start_response)
