"""The WSGI app the FastCGI/SCGI backends serve under real web servers, and its launcher.

``app`` mounts the fixture apps (tests/fixtureapps, each wrapped in the PEP 3333
validator) one path segment deep: the web server mounts the backend at a prefix such
as /tcp, so /tcp/echo_environ/x reaches fixtureapps.echo_environ with SCRIPT_NAME
/tcp/echo_environ and PATH_INFO /x (wsgiref.util.shift_path_info). Two apps of its own:
``whoami`` answers with CGIKIT_TEST_BACKEND, the name the test gave the backend (which
backend served a request, for the scale-out test; a process id would name one of its
worker processes), and ``stderr`` writes a line to wsgi.errors.

The launcher, ``python -m integration.backend fastcgi|scgi ADDR``, serves ``app`` with
cgikit's FastCGIServer or SCGIServer on ADDR (``host:port`` or ``unix:/path``) until
SIGTERM, then drains and exits 0; what ``cgikit run --fastcgi ADDR`` does, plus a
count of the connections accepted: ``connection`` answers with the number of the
connection its request came on (0 under ``cgikit run``), so that a test sees whether
the web server reused a connection. Either way CGIKIT_TEST_MARKERS names the directory where the
streaming app waits for the test's marker files.
"""

from __future__ import annotations

import os
import signal
import socket
import sys
import threading
from collections.abc import Iterable
from pathlib import Path
from types import FrameType
from typing import Any
from wsgiref.types import StartResponse, WSGIApplication, WSGIEnvironment
from wsgiref.util import shift_path_info
from wsgiref.validate import validator

from fixtureapps import _common, cookies, echo_body, echo_environ, head, hello, raise_before
from fixtureapps import stream as stream_app

STDERR_LINE = "cgikit-test: a line on wsgi.errors"

if os.environ.get("CGIKIT_TEST_MARKERS"):  # where the test puts the streaming markers
    _common.MARKERS = Path(os.environ["CGIKIT_TEST_MARKERS"])


_served = threading.local()  # the worker thread's current connection number


def _connection(environ: WSGIEnvironment, start_response: StartResponse) -> Iterable[bytes]:
    number = getattr(_served, "connection", 0)
    return _common.plain(start_response, "200 OK", str(number).encode())


def _whoami(environ: WSGIEnvironment, start_response: StartResponse) -> Iterable[bytes]:
    backend = os.environ.get("CGIKIT_TEST_BACKEND", "unnamed")
    return _common.plain(start_response, "200 OK", backend.encode())


def _stderr(environ: WSGIEnvironment, start_response: StartResponse) -> Iterable[bytes]:
    environ["wsgi.errors"].write(STDERR_LINE + "\n")
    return _common.plain(start_response, "200 OK", b"logged\n")


def _unbuffered(environ: WSGIEnvironment, start_response: StartResponse) -> Iterable[bytes]:
    """fixtureapps.stream, saying ``X-Accel-Buffering: no``: nginx buffers responses
    (fastcgi_buffering, scgi_buffering) unless the app asks it not to."""

    def start(status: str, headers: list[tuple[str, str]], exc_info: Any = None) -> Any:
        return start_response(status, [*headers, ("X-Accel-Buffering", "no")], exc_info)

    return stream_app.app(environ, start)


ROUTES: dict[str, WSGIApplication] = {
    "echo_environ": echo_environ.app,
    "echo_body": echo_body.app,
    "stream": _unbuffered,
    "cookies": cookies.app,
    "raise_before": raise_before.app,
    "head": head.app,
    "hello": hello.app,
    "whoami": validator(_whoami),
    "connection": validator(_connection),
    "stderr": validator(_stderr),
}


def app(environ: WSGIEnvironment, start_response: StartResponse) -> Iterable[bytes]:
    """Dispatch on the first PATH_INFO segment, which moves to SCRIPT_NAME."""
    target = ROUTES.get(shift_path_info(environ) or "")
    if target is None:
        return _common.plain(start_response, "404 Not Found", b"no such fixture app\n")
    return target(environ, start_response)


class _Numbered:
    """A connection's protocol state with its number, which ``serve`` tells ``connection``
    (whichever worker thread serves it: an idle kept connection waits in the poller)."""

    def __init__(self, inner: Any, number: int) -> None:
        self.inner, self.number = inner, number

    def serve(self) -> bool:
        _served.connection = self.number
        return bool(self.inner.serve())


def main(argv: list[str]) -> int:
    """Serve ``app`` over ``argv[0]`` (fastcgi or scgi) on ``argv[1]`` until SIGTERM."""
    from cgikit.fastcgi_server import FastCGIServer
    from cgikit.scgi_server import SCGIServer

    protocol, address = argv
    base = {"fastcgi": FastCGIServer, "scgi": SCGIServer}[protocol]

    class Counting(base):  # type: ignore[valid-type,misc]
        """Numbers the connections it accepts, for the ``connection`` app."""

        accepted = 0
        lock = threading.Lock()

        def connection(self, sock: socket.socket, peer: str) -> Any:
            with self.lock:
                Counting.accepted += 1
                number = Counting.accepted
            return _Numbered(super().connection(sock, peer), number)

    # Threads as cgikit run's default (2 workers of 8): the backend serves several web
    # servers' connections, nginx's kept ones among them.
    server = Counting(app, address, threads=16, timeout=30.0)

    def on_term(signum: int, frame: FrameType | None) -> None:
        # shutdown() waits for serve_forever to return: not from the main thread.
        threading.Thread(target=server.shutdown, args=(5.0,), daemon=True).start()

    signal.signal(signal.SIGTERM, on_term)
    print(f"cgikit-test backend {os.getpid()} serving {protocol} on {address}", flush=True)
    server.serve_forever()
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
