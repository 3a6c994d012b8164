"""The event-driven fast path answers byte for byte as the WSGI path does.

``cgikit serve`` answers a CGI directory's request on its event loop (loop_server,
loop_exchange) and everything else through ``CGIHost`` under the threaded server. The
same ``Dispatcher`` is served here both ways, in process, each on its own loopback port,
and every request of the table is sent as raw bytes to both: the responses must be the
same bytes (the Date field aside), and the loop server must have answered them itself
(none handed to its threads), or the comparison would compare the threaded path with
itself. Then the requests that the loop hands over, which must come out right too.
"""

from __future__ import annotations

import re
import socket
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from cgikit import posix_spawn
from cgikit.http_server import HTTPServer
from cgikit.loop_exchange import LoopExchange
from cgikit.loop_server import LoopServer
from cgikit.site_dispatch import Dispatcher
from serve.servekit import write_script

PY = sys.executable
TIMEOUT = 10.0


def sh(output: str) -> str:
    """A sh script printing ``output`` (printf escapes: \\n, \\r\\n)."""
    return f"#!/bin/sh\nprintf '{output}'\n"


def get(path: str, method: str = "GET") -> bytes:
    return f"{method} {path} HTTP/1.1\r\nHost: h\r\nConnection: close\r\n\r\n".encode()


SCRIPTS = {
    "hello.sh": sh("Content-Type: text/plain\\n\\nhello\\n"),
    "crlf.sh": sh("Content-type: text/plain\\r\\nX-A: 1\\r\\n\\r\\nbody"),
    "status.sh": sh("Status: 404 Gone Fishing\\nContent-Type: text/plain\\n\\nno\\n"),
    "bare-status.sh": sh("status: 201\\nContent-Type: text/plain\\n\\n"),
    "nobody.sh": sh("Content-Type: text/plain\\n\\n"),
    "notype.sh": sh("Status: 200 OK\\n\\nraw bytes"),
    "204.sh": sh("Status: 204 No Content\\n\\nignored"),
    "client-redirect.sh": sh("Location: http://example.org/x\\n\\n"),
    "redirect-doc.sh": sh("Status: 301 Moved\\nLocation: /y\\nContent-Type: text/html\\n\\n<a>"),
    "local-redirect.sh": sh("Location: /cgi-bin/hello.sh?from=redirect\\n\\n"),
    "loop.sh": sh("Location: /cgi-bin/loop.sh\\n\\n"),
    "away.sh": sh("Location: /elsewhere\\n\\n"),
    "cookies.sh": sh(
        "Content-Type: text/plain\\nSet-Cookie: a=1\\nSet-Cookie: b=2\\n"
        "Content-Length: 999\\nConnection: close\\n\\nok"
    ),
    "nph-raw.sh": sh("HTTP/1.1 202 Taken\\r\\nServer: x\\r\\nX-N: 1\\r\\n\\r\\nnph"),
    "echo.sh": sh("Content-Type: text/plain\\nX-Len: %s\\n\\n' \"$CONTENT_LENGTH\"; cat; printf '"),
    "env.sh": (  # the ports differ between the two servers: left out
        "#!/bin/sh\nprintf 'Content-Type: text/plain\\n\\n'; env | sort | "
        "grep -v -e '^_=' -e '^REMOTE_PORT=' -e '^SERVER_PORT='\n"
    ),
    "big.sh": "#!/bin/sh\nprintf 'Content-Type: text/plain\\n\\n'; head -c 300000 /dev/zero\n",
    "garbage.sh": "#!/bin/sh\necho 'this is not a header block'\n",
    "silent.sh": "#!/bin/sh\nexit 3\n",
    "stderr.sh": "#!/bin/sh\necho 'to the log' >&2\nprintf 'Content-Type: text/plain\\n\\nx'\n",
}
PLAIN = (  # scripts asked for by a plain GET: name.sh
    "hello",
    "crlf",
    "status",
    "bare-status",
    "nobody",
    "notype",
    "204",
    "client-redirect",
    "redirect-doc",
    "local-redirect",
    "cookies",
    "big",
    "garbage",
    "silent",
    "stderr",
)
REQUESTS = {  # name: raw request (Connection: close, so each response ends at the close)
    **{name: get(f"/cgi-bin/{name}.sh") for name in PLAIN},
    "redirect-loop": get("/cgi-bin/loop.sh"),
    "redirect-away": get("/cgi-bin/away.sh"),
    "nph": get("/cgi-bin/nph-raw.sh"),
    "head": get("/cgi-bin/hello.sh", "HEAD"),
    "head-nobody": get("/cgi-bin/nobody.sh", "HEAD"),
    "http10": b"GET /cgi-bin/hello.sh HTTP/1.0\r\n\r\n",
    "http10-keep": b"GET /cgi-bin/nobody.sh HTTP/1.0\r\nConnection: keep-alive\r\n\r\n"
    b"GET /cgi-bin/hello.sh HTTP/1.0\r\n\r\n",
    "post": b"POST /cgi-bin/echo.sh?q=1 HTTP/1.1\r\nHost: h\r\nContent-Type: text/x\r\n"
    b"Content-Length: 11\r\nConnection: close\r\n\r\nhello world",
    "env": b"GET /cgi-bin/env.sh/extra/path?a=b&c HTTP/1.1\r\nHost: h:8\r\nX-Custom: v\r\n"
    b"Cookie: a=1\r\nCookie: b=2\r\nProxy: evil\r\nAuthorization: secret\r\n"
    b"Connection: close\r\n\r\n",
    "missing": get("/cgi-bin/nope.sh"),
    "not-executable": get("/cgi-bin/data.txt"),
    "directory": get("/cgi-bin/"),
    "pipelined": b"GET /cgi-bin/hello.sh HTTP/1.1\r\nHost: h\r\n\r\n"
    b"GET /cgi-bin/status.sh?x HTTP/1.1\r\nHost: h\r\n\r\n" + get("/cgi-bin/nobody.sh"),
}
HANDED = {  # requests the loop gives to its threads: answered all the same
    "static": (b"GET /index.html HTTP/1.1\r\nHost: h\r\nConnection: close\r\n\r\n", b"<p>hi"),
    "chunked": (
        b"POST /cgi-bin/echo.sh HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: chunked\r\n"
        b"Connection: close\r\n\r\n5\r\nhello\r\n0\r\n\r\n",
        b"X-Len: 5\r\n",
    ),
    "expect": (
        b"POST /cgi-bin/echo.sh HTTP/1.1\r\nHost: h\r\nContent-Length: 2\r\n"
        b"Expect: 100-continue\r\nConnection: close\r\n\r\nok",
        b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 200 OK\r\n",
    ),
    "encoded-slash": (
        b"GET /cgi-bin/hello.sh%2Fx HTTP/1.1\r\nHost: h\r\nConnection: close\r\n\r\n",
        b"HTTP/1.1 4",
    ),
}
DATE = re.compile(rb"\r\nDate: [^\r\n]*\r\n")
CHUNK = re.compile(rb"([0-9a-f]+)\r\n")


def exchange(port: int, raw: bytes) -> bytes:
    """Send ``raw`` and read to the server's close."""
    with socket.create_connection(("127.0.0.1", port), timeout=TIMEOUT) as sock:
        sock.sendall(raw)
        chunks = []
        while chunk := sock.recv(65536):
            chunks.append(chunk)
    return DATE.sub(b"\r\nDate: -\r\n", b"".join(chunks))


def dechunked(response: bytes) -> bytes:
    """Chunked bodies with their chunks joined: where a pipe read ends is timing, not
    behaviour (both paths send each read as it comes). Responses in a row are kept."""
    out, rest = b"", response
    while rest:
        head, _, rest = rest.partition(b"\r\n\r\n")
        out += head + b"\r\n\r\n"
        if b"Transfer-Encoding: chunked" not in head:
            length = re.search(rb"Content-Length: (\d+)", head)
            if length is None or b"HEAD" in head:
                return out + rest  # to the close, or no body: the rest as it is
            size = int(length.group(1))
            out, rest = out + rest[:size], rest[size:]
            continue
        body = b""
        while (match := CHUNK.match(rest)) and int(match.group(1), 16):
            size = int(match.group(1), 16)
            body += rest[match.end() : match.end() + size]
            rest = rest[match.end() + size + 2 :]
        out += b"<chunked:" + body + b">"
        rest = rest[len(b"0\r\n\r\n") :]
    return out


@pytest.fixture(scope="module")
def site(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("fast")
    (root / "index.html").write_text("<p>hi</p>\n")
    bin_dir = root / "cgi-bin"
    bin_dir.mkdir()
    for name, text in SCRIPTS.items():
        write_script(bin_dir / name, text)
    (bin_dir / "data.txt").write_text("not a script\n")
    return root


def _start(server: HTTPServer) -> threading.Thread:
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    return thread


@pytest.fixture(scope="module")
def servers(site: Path) -> Iterator[tuple[HTTPServer, LoopServer]]:
    options = {"timeout": 5.0, "idle_timeout": 5.0}
    dirs = {"/cgi-bin": str(site / "cgi-bin")}
    threaded = HTTPServer(Dispatcher(site, dirs, host_options=options), "127.0.0.1", 0)
    looped = LoopServer(Dispatcher(site, dirs, host_options=options), "127.0.0.1", 0)
    threads = [_start(threaded), _start(looped)]
    try:
        yield threaded, looped
    finally:
        threaded.shutdown(2.0)
        looped.shutdown(2.0)
        for thread in threads:
            thread.join(10)


@pytest.mark.parametrize("name", list(REQUESTS))
def test_the_loop_answers_as_the_threads_do(
    servers: tuple[HTTPServer, LoopServer], name: str
) -> None:
    threaded, looped = servers
    handed = looped.handed_over
    expected = dechunked(exchange(threaded.server_address[1], REQUESTS[name]))
    got = dechunked(exchange(looped.server_address[1], REQUESTS[name]))
    assert got == expected
    assert got.startswith(b"HTTP/1.1 ")
    assert looped.handed_over == handed, "the loop gave this request to its threads"


def test_the_env_dump_is_the_same_and_safe(servers: tuple[HTTPServer, LoopServer]) -> None:
    """The fast path's meta-variables: the host's rules (one check of the table's row)."""
    raw = REQUESTS["env"].replace(b"HTTP/1.1", b"HTTP/1.0")  # not chunked: read to the close
    got = exchange(servers[1].server_address[1], raw)
    env = dict(line.split("=", 1) for line in got.split(b"\r\n\r\n", 1)[1].decode().splitlines())
    assert env["PATH_INFO"] == "/extra/path"
    assert env["SCRIPT_NAME"] == "/cgi-bin/env.sh"
    assert env["QUERY_STRING"] == "a=b&c"
    assert env["HTTP_COOKIE"] == "a=1; b=2"
    assert env["HTTP_X_CUSTOM"] == "v"
    assert "HTTP_PROXY" not in env and "HTTP_AUTHORIZATION" not in env


@pytest.mark.parametrize("name", list(HANDED))
def test_what_the_loop_hands_over_is_answered(
    servers: tuple[HTTPServer, LoopServer], name: str
) -> None:
    looped = servers[1]
    handed = looped.handed_over
    raw, expected = HANDED[name]
    got = exchange(looped.server_address[1], raw)
    assert expected in got
    assert looped.handed_over == handed + 1


def test_a_client_gone_mid_script_ends_it_and_the_loop_serves_on(
    servers: tuple[HTTPServer, LoopServer], site: Path
) -> None:
    write_script(
        site / "cgi-bin" / "hang.sh", f"#!/bin/sh\necho $$ > {site}/hang.pid\nexec sleep 30\n"
    )
    port = servers[1].server_address[1]
    with socket.create_connection(("127.0.0.1", port), timeout=TIMEOUT) as sock:
        sock.sendall(b"GET /cgi-bin/hang.sh HTTP/1.1\r\nHost: h\r\n\r\n")
        deadline = time.monotonic() + TIMEOUT
        while not (site / "hang.pid").exists() and time.monotonic() < deadline:
            time.sleep(0.02)
    pid = int((site / "hang.pid").read_text())
    deadline = time.monotonic() + TIMEOUT
    while time.monotonic() < deadline:
        try:
            with open(f"/proc/{pid}/stat") as stat:
                if stat.read().rsplit(")", 1)[1].split()[0] == "Z":
                    break
        except FileNotFoundError:
            break
        time.sleep(0.02)
    else:
        pytest.fail("the script of a client that went away still runs")
    assert b"hello" in exchange(port, REQUESTS["hello"])


def test_a_bug_in_a_callback_closes_one_connection_and_the_loop_serves_on(
    servers: tuple[HTTPServer, LoopServer], monkeypatch: pytest.MonkeyPatch
) -> None:
    looped = servers[1]
    lines: list[str] = []
    monkeypatch.setattr(looped, "log", lines.append)

    def broken(self: LoopExchange, data: bytes) -> None:
        raise RuntimeError("a bug in the exchange")

    monkeypatch.setattr(LoopExchange, "script_body", broken)
    port = looped.server_address[1]
    assert exchange(port, REQUESTS["hello"]) == b""  # closed, nothing sent
    assert any("internal error" in line and "a bug in the exchange" in line for line in lines)
    monkeypatch.undo()
    assert b"hello" in exchange(port, REQUESTS["hello"])


def test_without_posix_spawn_the_loop_spawns_with_popen(
    servers: tuple[HTTPServer, LoopServer], monkeypatch: pytest.MonkeyPatch
) -> None:
    """A libc without addchdir_np/closefrom_np (glibc < 2.34): Popen, the same answers."""
    threaded, looped = servers
    monkeypatch.setattr(posix_spawn, "available", lambda: False)
    for name in ("hello", "post", "status", "local-redirect", "garbage", "stderr"):
        expected = dechunked(exchange(threaded.server_address[1], REQUESTS[name]))
        assert dechunked(exchange(looped.server_address[1], REQUESTS[name])) == expected, name


@pytest.mark.parametrize("target", ["/index.html", "/cgi-bin/hello.sh"])
def test_a_request_arriving_during_shutdown_is_answered(site: Path, target: str) -> None:
    """A connection accepted before SIGTERM whose request comes during the drain gets
    its answer, with Connection: close: on the loop, or from a thread (the static file:
    handed over after the threads were told to stop)."""
    server = LoopServer(Dispatcher(site, {"/cgi-bin": str(site / "cgi-bin")}), "127.0.0.1", 0)
    serving = _start(server)
    sock = socket.create_connection(("127.0.0.1", server.server_address[1]), timeout=TIMEOUT)
    try:
        deadline = time.monotonic() + TIMEOUT
        while not server.connections and time.monotonic() < deadline:
            time.sleep(0.01)  # accepted by the loop
        stopping = threading.Thread(target=server.shutdown, args=(5.0,))
        stopping.start()
        time.sleep(0.2)  # the drain has begun; the connection waits for its request
        sock.sendall(f"GET {target} HTTP/1.1\r\nHost: h\r\n\r\n".encode())
        chunks = []
        while chunk := sock.recv(65536):
            chunks.append(chunk)
        response = b"".join(chunks)
        assert response.startswith(b"HTTP/1.1 200 OK\r\n"), response[:200]
        assert b"\r\nConnection: close\r\n" in response
        stopping.join(10)
    finally:
        sock.close()
        server.shutdown(1.0)
        serving.join(10)
