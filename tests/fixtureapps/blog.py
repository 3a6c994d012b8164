"""The app a shared-host user mounts with an .htaccess (tests/integration/test_shared_host.py).

The Flask app (fixtureapps.flask_app), whose redirect ``url_for`` builds from SCRIPT_NAME.
Every response, a Flask 404 included, also says in X-Script-Name, X-Path-Info and
X-Request-Uri what the app was given, so the test sees what Apache's rewrite passed and
what cgikit made of it.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any
from wsgiref.types import StartResponse, WSGIEnvironment

from fixtureapps import flask_app

SEEN = {"SCRIPT_NAME": "X-Script-Name", "PATH_INFO": "X-Path-Info", "REQUEST_URI": "X-Request-Uri"}


def app(environ: WSGIEnvironment, start_response: StartResponse) -> Iterable[bytes]:
    """flask_app.app (wrapped in the PEP 3333 validator), with the SEEN headers added."""
    seen = [(header, str(environ.get(key, ""))) for key, header in SEEN.items()]

    def start(
        status: str, headers: list[tuple[str, str]], exc_info: Any = None
    ) -> Callable[[bytes], object]:
        return start_response(status, [*headers, *seen], exc_info)

    return flask_app.app(environ, start)
