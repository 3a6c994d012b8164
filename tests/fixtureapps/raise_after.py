"""Raise after the first body chunk went out: the response must be cut there.

``?declare=1`` makes the app promise a Content-Length it never delivers, so that the
client can tell the response is incomplete.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from wsgiref.types import StartResponse, WSGIEnvironment
from wsgiref.validate import validator

from fixtureapps import EXPECTED_FAILURE
from fixtureapps._common import query

FIRST = b"partial\n"
DECLARED = 1000


def _body() -> Iterator[bytes]:
    yield FIRST
    raise RuntimeError(f"{EXPECTED_FAILURE}: raised after the first chunk")


def _app(environ: WSGIEnvironment, start_response: StartResponse) -> Iterable[bytes]:
    headers = [("Content-Type", "text/plain; charset=utf-8")]
    if query(environ).get("declare"):
        headers.append(("Content-Length", str(DECLARED)))
    start_response("200 OK", headers)
    return _body()


app = validator(_app)
