"""A 302 with an absolute Location built from the environ, as PEP 3333 apps do."""

from __future__ import annotations

from collections.abc import Iterable
from wsgiref.types import StartResponse, WSGIEnvironment
from wsgiref.util import application_uri
from wsgiref.validate import validator

from fixtureapps._common import plain


def _app(environ: WSGIEnvironment, start_response: StartResponse) -> Iterable[bytes]:
    location = application_uri(environ) + "/landed?from=redirect"
    return plain(start_response, "302 Found", b"moved\n", ("Location", location))


app = validator(_app)
