"""HTTP to the servers under test, stdlib only, with a timeout on every socket.

``request`` uses http.client; ``exchange`` sends raw bytes and returns everything the
server answers until it closes, for checks http.client would hide (a HEAD body, an NPH
status line). ``stream_with_marker`` proves streaming without timing anything.
"""

from __future__ import annotations

import http.client
import socket
import time
import uuid
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

from fixtureapps import EXPECTED_FAILURE
from servers import HOST, Server

TIMEOUT = 15.0  # seconds any one socket operation may take
FIRST_CHUNK_TIMEOUT = 5.0  # shorter than the app's 10 s wait for the marker
LOG_TIMEOUT = 5.0  # a script's stderr may reach the log just after its response
LOG_POLL = 0.05
MAX_READS = 10_000  # bounds every read loop, on top of the deadlines


@dataclass
class Reply:
    status: int
    headers: http.client.HTTPMessage
    body: bytes
    complete: bool  # False when the connection ended before the promised body did

    def header(self, name: str) -> str | None:
        return self.headers.get(name)


def request(
    server: Server,
    method: str,
    target: str,
    body: bytes | Iterable[bytes] | None = None,
    headers: dict[str, str | bytes] | None = None,
    timeout: float = TIMEOUT,
) -> Reply:
    """One request on a fresh connection. An iterable body is sent chunked."""
    conn = http.client.HTTPConnection(HOST, server.port, timeout=timeout)
    try:
        conn.request(method, target, body=body, headers=headers or {})
        response = conn.getresponse()
        try:
            data, complete = response.read(), True
        except http.client.IncompleteRead as exc:
            data, complete = exc.partial, False
        return Reply(response.status, response.msg, data, complete)
    finally:
        conn.close()


def exchange(server: Server, raw: bytes, timeout: float = TIMEOUT) -> bytes:
    """Send ``raw`` and return all the server sends until it closes the connection."""
    deadline = time.monotonic() + timeout
    received = bytearray()
    with socket.create_connection((HOST, server.port), timeout=timeout) as sock:
        sock.sendall(raw)
        for _ in range(MAX_READS):
            data = sock.recv(65536)
            if not data or time.monotonic() > deadline:
                break
            received += data
    return bytes(received)


def split_response(raw: bytes) -> tuple[str, dict[str, list[str]], bytes]:
    """``(status line, headers by lower-case name, body)`` of a raw HTTP/1.x response."""
    head, _, body = raw.partition(b"\r\n\r\n")
    status, *lines = head.decode("latin-1").split("\r\n")
    fields: dict[str, list[str]] = {}
    for line in lines:
        name, _, value = line.partition(":")
        fields.setdefault(name.strip().lower(), []).append(value.strip())
    return status, fields, body


def stream_with_marker(server: Server, script: str, markers: Path) -> tuple[bytes, bytes]:
    """Read the first chunk, then release the app (marker file), then read the rest.

    Returns ``(first, rest)``. A server that buffers the response sends nothing until the
    app gives up waiting (10 s), so reading the first chunk times out after 5 s.
    """
    name = uuid.uuid4().hex
    conn = http.client.HTTPConnection(HOST, server.port, timeout=FIRST_CHUNK_TIMEOUT)
    try:
        conn.request("GET", f"/cgi-bin/{script}?marker={name}")
        response = conn.getresponse()
        first = read_until(response, b"first\n", FIRST_CHUNK_TIMEOUT)
        (markers / name).touch()
        rest = response.read()
    finally:
        conn.close()
        (markers / name).unlink(missing_ok=True)
    return first, rest


def read_until(response: http.client.HTTPResponse, needle: bytes, timeout: float) -> bytes:
    """Read what has arrived until ``needle`` is in it; never waits for more than that."""
    deadline = time.monotonic() + timeout
    data = b""
    for _ in range(MAX_READS):
        if needle in data or time.monotonic() > deadline:
            break
        chunk = response.read1(65536)
        if not chunk:
            break
        data += chunk
    return data


def wait_for_log(server: Server, offset: int, needle: str) -> str:
    """The error log since ``offset`` once it contains ``needle`` (bounded wait)."""
    deadline = time.monotonic() + LOG_TIMEOUT
    text = server.log_since(offset)
    for _ in range(int(LOG_TIMEOUT / LOG_POLL)):
        if needle in text or time.monotonic() > deadline:
            break
        time.sleep(LOG_POLL)
        text = server.log_since(offset)
    assert needle in text, f"{needle!r} never reached the error log\n{server.diagnostics()}"
    return text


def assert_clean_log(server: Server, offset: int) -> None:
    """A happy-path request left no traceback and no validator warning in the log."""
    text = server.log_since(offset)
    for bad in ("Traceback", "WSGIWarning", EXPECTED_FAILURE):
        assert bad not in text, f"{bad} in {server.name}'s error log:\n{text}"
