"""WSGI apps that the gateway tests serve from a real subprocess (a CGI script or the CLI).

Not a test module: scripts written by the tests import it (tests/gateways is put on
PYTHONPATH). Options come from CHILD_* environment variables the test sets.
"""

from __future__ import annotations

import json
import os
import time
from typing import Any

# What a module-level HTTP client would see if it read its proxy at import time.
IMPORT_TIME_PROXY = os.environ.get("HTTP_PROXY")
TEXT = [("Content-Type", "text/plain")]


def report(environ: dict[str, Any]) -> dict[str, Any]:
    body = environ["wsgi.input"].read()
    return {
        "method": environ["REQUEST_METHOD"],
        "script_name": environ["SCRIPT_NAME"],
        "path_info": environ["PATH_INFO"],
        "query": environ["QUERY_STRING"],
        "content_length": environ.get("CONTENT_LENGTH"),
        "body": body.decode("latin-1"),
        "environ_proxy": environ.get("HTTP_PROXY"),
        "os_proxy": os.environ.get("HTTP_PROXY"),
        "import_proxy": IMPORT_TIME_PROXY,
        "cookie": environ.get("HTTP_COOKIE"),
        "input_terminated": environ.get("wsgi.input_terminated", False),
    }


def echo(environ: dict[str, Any], start_response: Any) -> list[bytes]:
    data = json.dumps(report(environ), sort_keys=True).encode()
    start_response("200 OK", [("Content-Type", "application/json")])
    return [data]


def hello(environ: dict[str, Any], start_response: Any) -> list[bytes]:
    start_response("200 OK", TEXT)
    return [b"hello"]


def printing(environ: dict[str, Any], start_response: Any) -> list[bytes]:
    print("stray print from the app")
    return hello(environ, start_response)


def raising(environ: dict[str, Any], start_response: Any) -> list[bytes]:
    raise ValueError("<script>boom</script>")


def bad_header(environ: dict[str, Any], start_response: Any) -> list[bytes]:
    start_response("200 OK", [*TEXT, ("X-Bad", "a\r\nInjected: 1")])
    return [b"never"]


def error_writer(environ: dict[str, Any], start_response: Any) -> list[bytes]:
    environ["wsgi.errors"].write("written to wsgi.errors\n")
    start_response("200 OK", [])
    return [b"no type"]


def cut(environ: dict[str, Any], start_response: Any) -> Any:
    start_response("200 OK", TEXT)
    yield b"partial"
    raise RuntimeError("failed after the headers")


def send_file(environ: dict[str, Any], start_response: Any) -> Any:
    start_response("200 OK", [("Content-Type", "application/octet-stream")])
    return environ["wsgi.file_wrapper"](open(os.environ["CHILD_FILE"], "rb"))


def streaming(environ: dict[str, Any], start_response: Any) -> Any:
    """Yield one chunk, then wait until the test has seen it (CHILD_FLAG exists)."""
    start_response("200 OK", TEXT)
    yield b"first\n"
    flag = os.environ["CHILD_FLAG"]
    deadline = time.monotonic() + 20
    while not os.path.exists(flag) and time.monotonic() < deadline:
        time.sleep(0.01)
    yield b"second\n" if os.path.exists(flag) else b"timed out\n"
