"""An app that answers HEAD with its GET body, as most apps do: cgikit must drop the
body but keep the Content-Length a GET would get."""

from __future__ import annotations

from collections.abc import Iterable
from wsgiref.types import StartResponse, WSGIEnvironment
from wsgiref.validate import validator

BODY = b"a body for GET; HEAD must not see it\n" * 10


def _app(environ: WSGIEnvironment, start_response: StartResponse) -> Iterable[bytes]:
    headers = [
        ("Content-Type", "text/plain"),
        ("Content-Length", str(len(BODY))),
        ("X-Method", environ["REQUEST_METHOD"]),
    ]
    start_response("200 OK", headers)
    return [BODY]


app = validator(_app)
