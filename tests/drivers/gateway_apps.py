"""Fixture apps and a server fixture shared by the FastCGI and SCGI server tests.

Apps are wrapped in ``wsgiref.validate.validator``. ``running`` starts a server
in-process on 127.0.0.1 port 0 (or a Unix socket), collects its log lines, shuts it
down at the end and checks that no worker thread is left. ``pool_mode`` (a fixture a
test module uses with ``pytestmark = pytest.mark.usefixtures("pool_mode")``) runs each
of its tests twice: servers built without ``threads`` get 1 (``gateway_inline``: the
app called on the loop's thread) and then 4 (``gateway_pool``: worker threads).
"""

from __future__ import annotations

import contextlib
import hashlib
import socket
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from typing import Any
from wsgiref.validate import validator

import pytest

from cgikit.gateway_server import GatewayServer

TIMEOUT = 5.0
DEFAULT_THREADS = {"threads": 8}  # what ``running`` gives a server built without threads
Env = dict[str, Any]
StartResponse = Callable[..., Any]


def _hello(environ: Env, start_response: StartResponse) -> Iterable[bytes]:
    start_response("200 OK", [("Content-Type", "text/plain")])
    return [b"Hello, world!"]


def _environ_keys(environ: Env, start_response: StartResponse) -> Iterable[bytes]:
    start_response("200 OK", [("Content-Type", "text/plain")])
    lines = [f"{k}={v}" for k, v in sorted(environ.items()) if isinstance(v, (str, bool))]
    return ["\n".join(lines).encode("latin-1")]


def _echo_body(environ: Env, start_response: StartResponse) -> Iterable[bytes]:
    body = b""
    while chunk := environ["wsgi.input"].read(65536):  # validator: read() needs a size
        body += chunk
    start_response("200 OK", [("Content-Type", "text/plain")])
    return [f"{len(body)} {hashlib.sha256(body).hexdigest()}".encode()]


def _raise_before(environ: Env, start_response: StartResponse) -> Iterable[bytes]:
    raise RuntimeError("expected failure: raised before start_response")


def _stream(environ: Env, start_response: StartResponse) -> Iterable[bytes]:
    start_response("200 OK", [("Content-Type", "text/plain")])
    return iter([b"one,", b"two,", b"three"])


def _stderr(environ: Env, start_response: StartResponse) -> Iterable[bytes]:
    environ["wsgi.errors"].write("a warning\n")
    start_response("200 OK", [("Content-Type", "text/plain")])
    return [b"ok"]


hello = validator(_hello)
environ_keys = validator(_environ_keys)
echo_body = validator(_echo_body)
raise_before = validator(_raise_before)
stream = validator(_stream)
stderr = validator(_stderr)


class Slow:
    """Streams 200 chunks 20 ms apart, recording its close(); later calls answer at once."""

    def __init__(self, read_body: bool = False) -> None:
        self.read_body = read_body
        self.started = threading.Event()
        self.closed = threading.Event()
        self.error: BaseException | None = None
        self.calls = 0

    def __call__(self, environ: Env, start_response: StartResponse) -> Iterable[bytes]:
        start_response("200 OK", [("Content-Type", "text/plain")])
        self.calls += 1
        return self._body(environ) if self.calls == 1 else [b"again"]

    def _body(self, environ: Env) -> Iterator[bytes]:
        self.started.set()
        try:
            if self.read_body:
                try:
                    environ["wsgi.input"].read(1000)
                except OSError as exc:
                    self.error = exc
                    raise
            for _ in range(200):
                yield b"tick\n"
                time.sleep(0.02)
        finally:
            self.closed.set()


class Running:
    def __init__(self, server: GatewayServer, lines: list[str]) -> None:
        self.server, self.lines = server, lines

    def connect(self) -> socket.socket:
        address = self.server.server_address
        if isinstance(address, str):
            sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            sock.settimeout(TIMEOUT)
            sock.connect(address)
            return sock
        return socket.create_connection(address, timeout=TIMEOUT)

    def wait_log(self, text: str) -> str:
        deadline = time.monotonic() + TIMEOUT
        while time.monotonic() < deadline:
            for line in list(self.lines):
                if text in line:
                    return line
            time.sleep(0.01)
        raise AssertionError(f"no log line with {text!r} in {self.lines}")


@contextlib.contextmanager
def running(
    cls: type[GatewayServer], app: Callable[..., Any], address: str = "127.0.0.1:0", **kw: Any
) -> Iterator[Running]:
    lines: list[str] = []
    kw.setdefault("threads", DEFAULT_THREADS["threads"])
    server = cls(app, address, log=lines.append, **kw)
    thread = threading.Thread(target=server.serve_forever)
    thread.start()
    try:
        yield Running(server, lines)
    finally:
        server.shutdown(timeout=TIMEOUT)
        thread.join(TIMEOUT)
        assert not thread.is_alive()
        leftover = [
            t.name for t in threading.enumerate() if t.name.startswith(f"cgikit-{cls.protocol}-")
        ]
        assert leftover == []


@pytest.fixture(params=[1, 4], ids=["inline", "threaded"])
def pool_mode(request: pytest.FixtureRequest) -> Iterator[int]:
    """The default ``threads`` of ``running`` for one test: 1 (inline) or 4 (pool)."""
    saved = DEFAULT_THREADS["threads"]
    DEFAULT_THREADS["threads"] = request.param
    try:
        yield request.param
    finally:
        DEFAULT_THREADS["threads"] = saved
