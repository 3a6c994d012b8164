"""Echo the request body with one ``read(n)`` call (or read to EOF for a chunked body).

The validator allows only ``read(size)`` (PEP 3333), so this is how an app reads a body
of known length. The headers report what the app saw, for the test to check.
"""

from __future__ import annotations

from collections.abc import Iterable
from wsgiref.types import StartResponse, WSGIEnvironment
from wsgiref.validate import validator


def _app(environ: WSGIEnvironment, start_response: StartResponse) -> Iterable[bytes]:
    stream = environ["wsgi.input"]
    length = environ.get("CONTENT_LENGTH", "")
    if length:
        body = stream.read(int(length))
    else:  # no length: a chunked upload that ends at EOF (wsgi.input_terminated)
        parts = []
        while part := stream.read(65536):
            parts.append(part)
        body = b"".join(parts)
    past_end = stream.read(1)  # cgikit must give EOF here, never a byte past the body
    headers = [
        ("Content-Type", "application/octet-stream"),
        ("Content-Length", str(len(body))),
        ("X-Seen-Content-Length", length or "absent"),
        ("X-Input-Terminated", str(environ.get("wsgi.input_terminated"))),
        ("X-Read-Past-End", str(len(past_end))),
    ]
    start_response("200 OK", headers)
    return [body]


app = validator(_app)
