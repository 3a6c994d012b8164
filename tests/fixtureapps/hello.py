"""The smallest app: serves hello.cgi (the "still serving?" probe) and nph-hello.cgi."""

from __future__ import annotations

from collections.abc import Iterable
from wsgiref.types import StartResponse, WSGIEnvironment
from wsgiref.validate import validator

from fixtureapps._common import plain

BODY = b"Hello from cgikit\n"


def _app(environ: WSGIEnvironment, start_response: StartResponse) -> Iterable[bytes]:
    return plain(start_response, "200 OK", BODY)


app = validator(_app)
