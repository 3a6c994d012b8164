"""A generator body that proves streaming: the second chunk waits for the test.

The app yields ``first``, then waits (bounded) for the marker file the test creates
only after it has received ``first``. A server that buffers the response never lets
the test see ``first`` in time, so the test fails by its own timeout.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from wsgiref.types import StartResponse, WSGIEnvironment
from wsgiref.validate import validator

from fixtureapps._common import wait_for_marker


def _body(environ: WSGIEnvironment) -> Iterator[bytes]:
    yield b"first\n"
    if wait_for_marker(environ):
        yield b"second\n"
        yield b"third\n"
    else:
        yield b"the marker never appeared: the server buffered the response\n"


def _app(environ: WSGIEnvironment, start_response: StartResponse) -> Iterable[bytes]:
    start_response("200 OK", [("Content-Type", "text/plain; charset=utf-8")])
    return _body(environ)


app = validator(_app)
