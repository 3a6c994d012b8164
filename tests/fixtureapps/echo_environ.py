"""Echo the environ's str-valued keys as JSON: what the server passed, as cgikit mapped it.

Non-ASCII characters come out as JSON escapes of the latin-1 "bytes as str" values
(PEP 3333), so the test can check that every byte survived.
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from wsgiref.types import StartResponse, WSGIEnvironment
from wsgiref.validate import validator


def _app(environ: WSGIEnvironment, start_response: StartResponse) -> Iterable[bytes]:
    data = {key: value for key, value in environ.items() if isinstance(value, str)}
    data["wsgi.input_terminated"] = str(environ.get("wsgi.input_terminated"))
    body = json.dumps(data, sort_keys=True).encode("ascii")
    headers = [("Content-Type", "application/json"), ("Content-Length", str(len(body)))]
    start_response("200 OK", headers)
    return [body]


app = validator(_app)
