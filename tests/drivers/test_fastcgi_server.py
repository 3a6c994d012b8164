"""cgikit's FastCGI server (fastcgi_server, gateway_server) over loopback sockets.

The client is a raw socket speaking records built with ``cgikit.fastcgi_records``:
BEGIN_REQUEST, PARAMS split over several records, STDIN in pieces, then records read
until END_REQUEST. Every socket has a timeout; every server is shut down by ``running``.
"""

from __future__ import annotations

import hashlib
import socket
from pathlib import Path

import pytest

from cgikit import fastcgi_records as wire
from cgikit.fastcgi_server import FastCGIServer
from cgikit.gateway_server import Address, parse_address
from drivers.gateway_apps import (
    DEFAULT_THREADS,
    TIMEOUT,
    Slow,
    echo_body,
    environ_keys,
    hello,
    pool_mode,
    raise_before,
    running,
    stderr,
    stream,
)

pytestmark = pytest.mark.usefixtures("pool_mode")
__all__ = ["pool_mode"]  # the fixture, imported for pytest

PARAMS = {
    b"REQUEST_METHOD": b"GET",
    b"SCRIPT_NAME": b"",
    b"PATH_INFO": b"/p",
    b"QUERY_STRING": b"a=1",
    b"SERVER_NAME": b"localhost",
    b"SERVER_PORT": b"80",
    b"SERVER_PROTOCOL": b"HTTP/1.1",
    b"CONTENT_LENGTH": b"",
    b"CONTENT_TYPE": b"",
    b"HTTP_HOST": b"localhost",
    b"HTTP_PROXY": b"http://evil.example/",
    b"HTTP_X_LATIN": b"caf\xe9",
}


def request_bytes(
    rid: int = 1,
    *,
    keep: bool = False,
    params: dict[bytes, bytes] | None = None,
    body: bytes = b"",
    end_stdin: bool = True,
) -> bytes:
    """BEGIN_REQUEST, PARAMS in 3 records (a pair straddles two), STDIN in pieces."""
    flags = wire.KEEP_CONN if keep else 0
    out = [wire.encode_record(wire.BEGIN_REQUEST, rid, wire.begin_request_body(1, flags))]
    pairs = wire.encode_params(params if params is not None else PARAMS)
    cut1, cut2 = len(pairs) // 3, 2 * len(pairs) // 3 + 1
    for part in (pairs[:cut1], pairs[cut1:cut2], pairs[cut2:], b""):
        out.append(wire.encode_record(wire.PARAMS, rid, part))
    for start in range(0, len(body), 40000):
        out.append(wire.encode_stream(wire.STDIN, rid, body[start : start + 40000]))
    if end_stdin:
        out.append(wire.encode_record(wire.STDIN, rid))
    return b"".join(out)


class Reply:
    def __init__(self) -> None:
        self.stdout = b""
        self.stderr = b""
        self.end: tuple[int, int] | None = None
        self.records: list[wire.Record] = []

    @property
    def status(self) -> str:
        return self.stdout.split(b"\r\n", 1)[0].decode()

    @property
    def body(self) -> bytes:
        return self.stdout.partition(b"\r\n\r\n")[2]


def read_reply(sock: socket.socket, reader: wire.RecordReader | None = None) -> Reply:
    """Records until END_REQUEST (fails on EOF before it)."""
    reader = reader or wire.RecordReader()
    reply = Reply()
    while reply.end is None:
        record = reader.next_record()
        if record is None:
            data = sock.recv(65536)
            if not data:
                raise EOFError(f"EOF before END_REQUEST: {reply.records}")
            reader.feed(data)
            continue
        reply.records.append(record)
        if record.type == wire.STDOUT:
            reply.stdout += record.content
        elif record.type == wire.STDERR:
            reply.stderr += record.content
        elif record.type == wire.END_REQUEST:
            reply.end = wire.decode_end_request(record.content)
    return reply


def closed(sock: socket.socket) -> bool:
    try:
        return sock.recv(1) == b""
    except ConnectionResetError:
        return True


def test_hello_and_close_without_keep_conn() -> None:
    with running(FastCGIServer, hello) as srv:
        sock = srv.connect()
        sock.sendall(request_bytes())
        reply = read_reply(sock)
        assert reply.status == "Status: 200 OK"
        assert reply.body == b"Hello, world!"
        assert reply.end == (0, wire.REQUEST_COMPLETE)
        # the streams are ended before END_REQUEST, which comes last
        assert [(r.type, r.content) for r in reply.records[-2:]] == [
            (wire.STDOUT, b""),
            (wire.END_REQUEST, wire.end_request_body()),
        ]
        assert closed(sock)
        sock.close()


@pytest.mark.parametrize("unix", [False, True])
def test_keep_conn_serves_two_requests_on_one_connection(tmp_path: Path, unix: bool) -> None:
    address = f"unix:{tmp_path / 'fcgi.sock'}" if unix else "127.0.0.1:0"
    with running(FastCGIServer, stream, address) as srv:
        sock = srv.connect()
        for rid in (1, 2):
            sock.sendall(request_bytes(rid, keep=True))
            reply = read_reply(sock)
            assert reply.body == b"one,two,three"
            assert {r.request_id for r in reply.records} == {rid}
        sock.close()
    if unix:
        assert not (tmp_path / "fcgi.sock").exists()


def test_environ_from_params() -> None:
    with running(FastCGIServer, environ_keys) as srv:
        sock = srv.connect()
        sock.sendall(request_bytes())
        text = read_reply(sock).body.decode("latin-1")
        sock.close()
    lines = set(text.split("\n"))
    assert {"PATH_INFO=/p", "QUERY_STRING=a=1", "HTTP_X_LATIN=caf\xe9"} <= lines
    threaded = f"wsgi.multithread={DEFAULT_THREADS['threads'] > 1}"
    assert {threaded, "wsgi.multiprocess=False", "wsgi.run_once=False"} <= lines
    assert not any(line.startswith(("HTTP_PROXY", "CONTENT_LENGTH")) for line in lines)


def test_one_mib_post_sent_in_pieces() -> None:
    body = bytes(range(256)) * 4096
    params = {**PARAMS, b"REQUEST_METHOD": b"POST", b"CONTENT_LENGTH": str(len(body)).encode()}
    with running(FastCGIServer, echo_body) as srv:
        sock = srv.connect()
        sock.sendall(request_bytes(params=params, body=body))
        reply = read_reply(sock)
        sock.close()
    assert reply.body == f"{len(body)} {hashlib.sha256(body).hexdigest()}".encode()


def test_app_error_is_a_500_and_stderr_is_forwarded() -> None:
    with running(FastCGIServer, raise_before) as srv:
        sock = srv.connect()
        sock.sendall(request_bytes())
        assert read_reply(sock).status == "Status: 500 Internal Server Error"
        sock.close()
        srv.wait_log("expected failure")
    with running(FastCGIServer, stderr) as srv:
        sock = srv.connect()
        sock.sendall(request_bytes())
        reply = read_reply(sock)
        sock.close()
    assert reply.stderr == b"a warning\n"
    assert reply.body == b"ok"


def test_get_values_answered_between_requests() -> None:
    query = wire.encode_params({wire.MAX_CONNS: b"", wire.MPXS_CONNS: b"", b"OTHER": b""})
    with running(FastCGIServer, hello, threads=3) as srv:
        sock = srv.connect()
        sock.sendall(wire.encode_record(wire.GET_VALUES, 0, query))
        reader = wire.RecordReader()
        while (record := reader.next_record()) is None:
            reader.feed(sock.recv(65536))
        assert record.type == wire.GET_VALUES_RESULT
        assert wire.decode_params(record.content) == {wire.MAX_CONNS: b"3", wire.MPXS_CONNS: b"0"}
        sock.sendall(request_bytes())  # the connection still serves a request
        assert read_reply(sock, reader).body == b"Hello, world!"
        sock.close()


@pytest.mark.parametrize("read_body", [False, True])
def test_abort_closes_the_iterable_and_sends_one_end_request(read_body: bool) -> None:
    app = Slow(read_body=read_body)
    params = {**PARAMS, b"REQUEST_METHOD": b"POST", b"CONTENT_LENGTH": b"100"}
    with running(FastCGIServer, app) as srv:
        sock = srv.connect()
        sock.sendall(request_bytes(keep=True, params=params, body=b"x" * 10, end_stdin=False))
        assert app.started.wait(TIMEOUT)
        sock.sendall(wire.encode_record(wire.ABORT_REQUEST, 1))
        reply = read_reply(sock)
        assert app.closed.wait(TIMEOUT)
        assert reply.end == (0, wire.REQUEST_COMPLETE)
        assert [r.type for r in reply.records].count(wire.END_REQUEST) == 1
        srv.wait_log("request 1 aborted")
        sock.sendall(request_bytes(2, keep=True, params=dict(PARAMS)))  # then served on
        sock.settimeout(TIMEOUT)
        second = read_reply(sock)
        assert {r.request_id for r in second.records} == {2}
        assert second.body == b"again"
        sock.close()
    if read_body:
        assert app.error is not None


def test_vanished_peer_closes_the_iterable() -> None:
    app = Slow()
    with running(FastCGIServer, app) as srv:
        sock = srv.connect()
        sock.sendall(request_bytes(keep=True))
        assert app.started.wait(TIMEOUT)
        sock.close()
        assert app.closed.wait(TIMEOUT)
        srv.wait_log("aborted")


def test_malformed_record_closes_and_the_server_serves_on() -> None:
    with running(FastCGIServer, hello, threads=1) as srv:
        bad = srv.connect()
        bad.sendall(b"\x02" + bytes(7))  # version 2
        assert closed(bad)
        bad.close()
        srv.wait_log("protocol error")
        good = srv.connect()
        good.sendall(request_bytes())
        assert read_reply(good).body == b"Hello, world!"
        good.close()


def test_parse_address() -> None:
    assert parse_address("127.0.0.1:9000") == Address("127.0.0.1", 9000)
    assert parse_address("[::1]:0") == Address("::1", 0)
    assert parse_address("unix:/run/app.sock") == Address(path="/run/app.sock")
    assert str(parse_address("[::1]:9000")) == "[::1]:9000"
    for bad in ("::1:9000", "host", "host:", ":9000", "host:99999", "[host]:1", "unix:", "h:x"):
        with pytest.raises(ValueError):
            parse_address(bad)


def test_idle_kept_connection_does_not_starve_a_new_one() -> None:
    """Apache (enablereuse) and nginx (keepalive) may keep more idle connections than
    there are workers: a new connection must not wait behind them for the idle timeout.
    (Closing an idle connection to make room races with the web server sending on it:
    nginx then answers a POST with 502. Idle connections wait in the pool's poller, not
    in a thread: tests/drivers/test_gateway_pool.py has more.)"""
    with running(FastCGIServer, hello, threads=1) as srv:
        idle = srv.connect()
        idle.sendall(request_bytes(keep=True))
        assert read_reply(idle).body == b"Hello, world!"  # now idle, in the poller
        waiting = srv.connect()
        waiting.settimeout(1.0)  # a request served at once, not after the idle timeout
        waiting.sendall(request_bytes())
        assert read_reply(waiting).body == b"Hello, world!"
        waiting.close()
        idle.close()
