"""The bridge's event loop (fastcgi_loop) answers as its threaded path does.

The same site is served in process by the threaded bridge (``FastCGIServer`` with
``BodyFirst(Dispatcher)``) and by ``FastCGILoopServer``, each on its own loopback port.
Every request of the table goes to both as raw FastCGI records: STDOUT, STDERR and
END_REQUEST must be the same, and the loop must have answered itself (nothing handed
to its threads), or the comparison would compare the threaded path with itself. Each
goes to the loop twice: in one write (read in one pass, ``fastcgi_whole``) and split in
two writes (read record by record by ``Connection``). Then
what the loop hands over (other paths, large bodies), kept connections across both
paths, and an abort.
"""

from __future__ import annotations

import os
import re
import socket
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from cgikit import fastcgi_records as wire
from cgikit.fastcgi_bridge import BodyFirst
from cgikit.fastcgi_loop import FastCGILoopServer
from cgikit.fastcgi_server import FastCGIServer
from cgikit.gateway_server import listen, parse_address
from cgikit.site_dispatch import Dispatcher
from drivers.test_fastcgi_server import Reply, read_reply, request_bytes
from serve.servekit import write_script
from serve.test_fast_path import PLAIN, SCRIPTS

TIMEOUT = 10.0
BASE = {
    b"GATEWAY_INTERFACE": b"CGI/1.1",
    b"SERVER_PROTOCOL": b"HTTP/1.1",
    b"SERVER_NAME": b"h",
    b"SERVER_PORT": b"80",
    b"REMOTE_ADDR": b"127.0.0.1",
    b"REMOTE_PORT": b"5000",
    b"HTTP_HOST": b"h",
}


def params(uri: str, method: str = "GET", **extra: str) -> dict[bytes, bytes]:
    more = {k.encode(): v.encode() for k, v in extra.items()}
    return {**BASE, b"REQUEST_METHOD": method.encode(), b"REQUEST_URI": uri.encode(), **more}


def cgi(name: str, method: str = "GET") -> dict[bytes, bytes]:
    return params(f"/cgi-bin/{name}", method)


POST = {**params("/cgi-bin/echo.sh?q=1", "POST", CONTENT_TYPE="text/x", CONTENT_LENGTH="11")}
REQUESTS: dict[str, tuple[dict[bytes, bytes], bytes]] = {
    **{name: (cgi(f"{name}.sh"), b"") for name in PLAIN},
    "redirect-loop": (cgi("loop.sh"), b""),
    "redirect-away": (cgi("away.sh"), b""),
    "nph": (cgi("nph-raw.sh"), b""),
    "head": (cgi("hello.sh", "HEAD"), b""),
    "head-nobody": (cgi("nobody.sh", "HEAD"), b""),
    "post": (POST, b"hello world"),
    "env": (
        {
            **params("/cgi-bin/env.sh/extra/path?a=b&c", HTTP_X_CUSTOM="v", HTTP_PROXY="evil"),
            b"SCRIPT_FILENAME": b"/bin/sh",
            b"HTTP_CONTENT_LENGTH": b"9",
        },
        b"",
    ),
    "missing": (cgi("nope.sh"), b""),
    "not-executable": (cgi("data.txt"), b""),
    "directory": (cgi(""), b""),
    "no-request-uri": (
        {**BASE, b"REQUEST_METHOD": b"GET", b"SCRIPT_NAME": b"/cgi-bin/hello.sh"},
        b"",
    ),
}
BIG = b"x" * 100_000
HANDED = {  # name: (params, body, what STDOUT starts with)
    "not-a-script-dir": (params("/index.html"), b"", b"Status: 404 Not Found\r\n"),
    "large-body": (
        params("/cgi-bin/echo.sh", "POST", CONTENT_LENGTH=str(len(BIG))),
        BIG,
        b"Status: 200 OK\r\nContent-Type: text/plain\r\nX-Len: 100000\r\n\r\n" + BIG,
    ),
    "bad-length": (params("/cgi-bin/echo.sh", "POST", CONTENT_LENGTH="x"), b"", b"Status: 400"),
}


@pytest.fixture(scope="module")
def site(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("fcgi")
    (root / "index.html").write_text("<p>hi</p>\n")
    for name, text in SCRIPTS.items():
        write_script(root / "cgi-bin" / name, text)
    (root / "cgi-bin" / "data.txt").write_text("not a script\n")
    return root


def _dispatcher(site: Path) -> Dispatcher:
    options = {"timeout": 5.0, "idle_timeout": 5.0}
    return Dispatcher(site, {"/cgi-bin": str(site / "cgi-bin")}, host_options=options, files=False)


@pytest.fixture(scope="module")
def servers(site: Path) -> Iterator[tuple[FastCGIServer, FastCGILoopServer]]:
    threaded_app = BodyFirst(_dispatcher(site), 1 << 20)
    threaded = FastCGIServer(threaded_app, "127.0.0.1:0", threads=4)
    dispatcher = _dispatcher(site)
    sock = listen(parse_address("127.0.0.1:0"))
    looped = FastCGILoopServer(BodyFirst(dispatcher, 1 << 20), dispatcher, sock, 4)
    threads = [threading.Thread(target=s.serve_forever, daemon=True) for s in (threaded, looped)]
    for thread in threads:
        thread.start()
    try:
        yield threaded, looped
    finally:
        threaded.shutdown(2.0)
        looped.shutdown(2.0)
        for thread in threads:
            thread.join(10)
        sock.close()


def port(server: FastCGIServer | FastCGILoopServer) -> int:
    sock = server.socket
    return int(sock.getsockname()[1])


def ask(port: int, *requests: tuple[dict[bytes, bytes], bytes], split: bool = False) -> list[Reply]:
    """Send the requests on one connection (KEEP_CONN but for the last); ``split``: each
    in two writes a moment apart, so that no read has a whole request (fastcgi_whole)."""
    replies = []
    with socket.create_connection(("127.0.0.1", port), timeout=TIMEOUT) as sock:
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        reader = wire.RecordReader()
        for index, (request_params, body) in enumerate(requests):
            keep = index < len(requests) - 1
            data = request_bytes(index + 1, keep=keep, params=request_params, body=body)
            if split:
                sock.sendall(data[:20])
                time.sleep(0.05)
                data = data[20:]
            sock.sendall(data)
            replies.append(read_reply(sock, reader))
    return replies


# A kill line depends on whether the script had exited when its run was ended: a
# redirected script (output abandoned) or one whose bad output was seen before its
# exit (malformed output). Either path, either way: timing, not behaviour.
ABANDONED = re.compile(
    rb"cgikit: [^\n]*: (output abandoned by the caller|malformed output); killing [^\n]*\n"
)


def same(reply: Reply) -> tuple[bytes, bytes, object]:
    """What must match: all but the timing-dependent kill lines (``ABANDONED``)."""
    return reply.stdout, ABANDONED.sub(b"", reply.stderr), reply.end


@pytest.mark.parametrize("split", [False, True], ids=["whole", "split"])
@pytest.mark.parametrize("name", list(REQUESTS))
def test_the_loop_answers_as_the_threads_do(
    servers: tuple[FastCGIServer, FastCGILoopServer], name: str, split: bool
) -> None:
    threaded, looped = servers
    handed, taken = looped.handed_over, looped.taken_whole
    expected = ask(port(threaded), REQUESTS[name])[0]
    got = ask(port(looped), REQUESTS[name], split=split)[0]
    assert same(got) == same(expected)
    assert got.stdout.startswith(b"Status: ")
    assert looped.handed_over == handed, "the loop gave this request to its threads"
    # Read in one pass when it came in one read (loopback: it does), else by Connection.
    assert looped.taken_whole == taken + (not split)


@pytest.mark.parametrize("split", [False, True], ids=["whole", "split"])
@pytest.mark.parametrize("name", list(HANDED))
def test_what_the_loop_hands_over_is_answered(
    servers: tuple[FastCGIServer, FastCGILoopServer], name: str, split: bool
) -> None:
    threaded, looped = servers
    request_params, body, start = HANDED[name]
    handed = looped.handed_over
    expected = ask(port(threaded), (request_params, body))[0]
    got = ask(port(looped), (request_params, body), split=split)[0]
    assert same(got) == same(expected)
    assert got.stdout.startswith(start)
    assert looped.handed_over == handed + 1


def test_a_kept_connection_goes_between_loop_and_threads(
    servers: tuple[FastCGIServer, FastCGILoopServer],
) -> None:
    _, looped = servers
    order = [REQUESTS["hello"], HANDED["large-body"][:2], REQUESTS["post"], REQUESTS["hello"]]
    replies = ask(port(looped), *order)
    assert [r.stdout.split(b"\r\n")[0] for r in replies] == [b"Status: 200 OK"] * 4
    assert replies[1].stdout.endswith(BIG) and replies[2].stdout.endswith(b"hello world")
    assert all(r.end == (0, wire.REQUEST_COMPLETE) for r in replies)


def test_an_abort_ends_the_script_and_the_request(
    servers: tuple[FastCGIServer, FastCGILoopServer], site: Path
) -> None:
    write_script(site / "cgi-bin" / "sleepy.sh", "#!/bin/sh\nexec sleep 30\n")
    _, looped = servers
    with socket.create_connection(("127.0.0.1", port(looped)), timeout=TIMEOUT) as sock:
        sock.sendall(request_bytes(1, keep=True, params=cgi("sleepy.sh")))
        time.sleep(0.3)
        sock.sendall(wire.encode_record(wire.ABORT_REQUEST, 1))
        started = time.monotonic()
        reply = read_reply(sock)
        assert reply.end is not None and time.monotonic() - started < 5
    assert same(ask(port(looped), REQUESTS["hello"])[0])[0].endswith(b"hello\n")


def test_a_stopped_loop_server_leaves_no_descriptor_open(site: Path) -> None:
    """Every descriptor the loop server opened is closed by the time it has stopped,
    the unused loop of the threaded half it borrows from included (not left to the
    garbage collector, which closed it in the middle of a later test)."""
    sock = listen(parse_address("127.0.0.1:0"))
    before = set(os.listdir("/proc/self/fd"))
    dispatcher = _dispatcher(site)
    looped = FastCGILoopServer(BodyFirst(dispatcher, 1 << 20), dispatcher, sock, 2)
    thread = threading.Thread(target=looped.serve_forever, daemon=True)
    thread.start()
    try:
        (reply,) = ask(port(looped), (cgi("hello.sh"), b""))
        assert reply.stdout.endswith(b"hello\n")
    finally:
        looped.shutdown(2.0)
        thread.join(10)
    assert not thread.is_alive()
    # Only what it opened: another test's garbage may be collected meanwhile.
    # (listdir's own descriptor is in its listing: one closed since is no leak)
    opened = {fd: _target(fd) for fd in set(os.listdir("/proc/self/fd")) - before}
    assert not {fd: target for fd, target in opened.items() if target != "closed"}
    sock.close()


def _target(fd: str) -> str:
    try:
        return os.readlink(f"/proc/self/fd/{fd}")
    except OSError:
        return "closed"


@pytest.mark.parametrize(("allowed", "served"), [("192.0.2.1,::1", False), ("127.0.0.1", True)])
def test_the_loop_admits_only_the_web_servers_fcgi_web_server_addrs_lists(
    site: Path, monkeypatch: pytest.MonkeyPatch, allowed: str, served: bool
) -> None:
    """FastCGI 1.0 §3.2 on the bridge's own accept, as on the threaded server's."""
    monkeypatch.setenv("FCGI_WEB_SERVER_ADDRS", allowed)
    sock = listen(parse_address("127.0.0.1:0"))
    dispatcher = _dispatcher(site)
    looped = FastCGILoopServer(BodyFirst(dispatcher, 1 << 20), dispatcher, sock, 2)
    lines: list[str] = []
    monkeypatch.setattr(looped.threaded, "log", lines.append)  # where the loop's lines go
    thread = threading.Thread(target=looped.serve_forever, daemon=True)
    thread.start()
    try:
        with socket.create_connection(("127.0.0.1", port(looped)), timeout=TIMEOUT) as conn:
            conn.sendall(request_bytes(1, keep=False, params=cgi("hello.sh"), body=b""))
            reply = b""
            try:
                while chunk := conn.recv(65536):
                    reply += chunk
            except ConnectionResetError:  # closed with our request unread: a reset
                pass
    finally:
        looped.shutdown(2.0)
        thread.join(10)
        sock.close()
    if served:
        assert b"hello\n" in reply
        assert not lines
    else:
        assert reply == b""  # closed at once: no record, not even END_REQUEST
        assert len(lines) == 1
        refused = r"127\.0\.0\.1:\d+: not in FCGI_WEB_SERVER_ADDRS, connection closed"
        assert re.fullmatch(refused, lines[0])
