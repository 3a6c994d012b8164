"""Echo the request body read line by line: ``readline()``, then iteration, then
``readlines()`` (which must find nothing left)."""

from __future__ import annotations

from collections.abc import Iterable
from wsgiref.types import StartResponse, WSGIEnvironment
from wsgiref.validate import validator


def _app(environ: WSGIEnvironment, start_response: StartResponse) -> Iterable[bytes]:
    stream = environ["wsgi.input"]
    lines = [stream.readline()]
    lines.extend(stream)  # iteration, one line at a time
    leftover = stream.readlines()
    body = b"".join(lines)
    headers = [
        ("Content-Type", "application/octet-stream"),
        ("Content-Length", str(len(body))),
        ("X-Lines", str(len(lines))),
        ("X-Leftover-Lines", str(len(leftover))),
    ]
    start_response("200 OK", headers)
    return [body]


app = validator(_app)
