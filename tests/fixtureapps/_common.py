"""Helpers shared by the fixture apps (standard library only)."""

from __future__ import annotations

import time
from pathlib import Path
from urllib.parse import parse_qs

TYPE_CHECKING = False
if TYPE_CHECKING:
    from wsgiref.types import StartResponse, WSGIEnvironment

# The runtime layout is ROOT/lib/fixtureapps/_common.py; markers live in ROOT/markers.
MARKERS = Path(__file__).resolve().parent.parent.parent / "markers"
MARKER_TIMEOUT = 10.0  # seconds a streaming app waits for the test's go-ahead
MARKER_POLL = 0.02


def query(environ: WSGIEnvironment) -> dict[str, str]:
    """The query string's fields, the first value of each."""
    return {k: v[0] for k, v in parse_qs(environ.get("QUERY_STRING", "")).items()}


def wait_for_marker(environ: WSGIEnvironment) -> bool:
    """Wait (bounded) until the test creates the marker file named in ``?marker=``.

    The test creates it only after it has read the first chunk, so a server that
    buffers the response makes this time out instead of the test hanging.
    """
    name = query(environ).get("marker", "")
    if not name.isalnum():
        raise ValueError(f"marker must be a plain name, not {name!r}")
    path = MARKERS / name
    for _ in range(int(MARKER_TIMEOUT / MARKER_POLL)):
        if path.exists():
            return True
        time.sleep(MARKER_POLL)
    return False


def plain(
    start_response: StartResponse, status: str, body: bytes, *extra: tuple[str, str]
) -> list[bytes]:
    """Answer with a text/plain body of known length."""
    headers = [("Content-Type", "text/plain; charset=utf-8"), ("Content-Length", str(len(body)))]
    start_response(status, [*headers, *extra])
    return [body]
