"""Raise before start_response: the client must get cgikit's generic 500."""

from __future__ import annotations

from collections.abc import Iterable
from wsgiref.types import StartResponse, WSGIEnvironment
from wsgiref.validate import validator

from fixtureapps import EXPECTED_FAILURE


def _app(environ: WSGIEnvironment, start_response: StartResponse) -> Iterable[bytes]:
    raise RuntimeError(f"{EXPECTED_FAILURE}: raised before start_response")


app = validator(_app)
