"""The ``write()`` callable streams too: the second write waits for the test (see stream)."""

from __future__ import annotations

from collections.abc import Iterable
from wsgiref.types import StartResponse, WSGIEnvironment
from wsgiref.validate import validator

from fixtureapps._common import wait_for_marker


def _app(environ: WSGIEnvironment, start_response: StartResponse) -> Iterable[bytes]:
    write = start_response("200 OK", [("Content-Type", "text/plain; charset=utf-8")])
    write(b"first\n")
    if not wait_for_marker(environ):
        return [b"the marker never appeared: the server buffered the response\n"]
    write(b"second\n")
    return [b"third\n"]


app = validator(_app)
