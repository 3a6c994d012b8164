"""Answer with every byte value, 0 to 255, sixteen times over."""

from __future__ import annotations

from collections.abc import Iterable
from wsgiref.types import StartResponse, WSGIEnvironment
from wsgiref.validate import validator

BODY = bytes(range(256)) * 16


def _app(environ: WSGIEnvironment, start_response: StartResponse) -> Iterable[bytes]:
    start_response("200 OK", [("Content-Type", "application/octet-stream")])
    # No Content-Length: the validator hides the list, so the body goes out as a stream.
    return [BODY]


app = validator(_app)
