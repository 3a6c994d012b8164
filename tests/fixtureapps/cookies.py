"""Three Set-Cookie headers, which must reach the client as three separate fields."""

from __future__ import annotations

from collections.abc import Iterable
from wsgiref.types import StartResponse, WSGIEnvironment
from wsgiref.validate import validator

from fixtureapps._common import plain

COOKIES = ("a=1; Path=/", "b=2; HttpOnly", "c=3, with a comma; Max-Age=60")


def _app(environ: WSGIEnvironment, start_response: StartResponse) -> Iterable[bytes]:
    return plain(start_response, "200 OK", b"cookies\n", *(("Set-Cookie", c) for c in COOKIES))


app = validator(_app)
