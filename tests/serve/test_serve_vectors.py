"""The research's CGI host vectors end to end: every row of cgi-anchors.md §5a (G*),
§5b (R*) and §5c (P*), and the §5d http.server bugs, as real requests to ``cgikit
serve`` running as a subprocess on 127.0.0.1.

Requests are written and read on a raw socket, so that no client library normalises a
target (``..``, ``%2e``, no leading ``/``) or hides a repeated header; responses are
read to the server's close (``Connection: close``), so any stray body byte shows.

Each row is one vector, its pytest id the research's (``pytest -k P7``; a vector with
several requests has ids ``P15-...``). Where the anchors disagree, the row asserts what
cgikit decided (the docstrings of cgi_meta, cgi_output, cgi_paths, cgi_host); where a
vector needs what an HTTP server cannot have (a peer at 1.2.3.4, a handler mounted at
``""``), the row adapts it and its comment says how.
"""

from __future__ import annotations

import json
import os
import re
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from cgikit.cgi_meta import DEFAULT_PATH
from serve import servekit
from serve.servekit import SRC, Server, write_script

TIMEOUT = 10.0  # seconds: every socket operation, every wait
PY = sys.executable
# The env dump reads /proc/self/environ, R17 looks for the script's group in /proc.
pytestmark = pytest.mark.skipif(sys.platform != "linux", reason="needs Linux's /proc")
V6_STARTED = re.compile(r"^cgikit: serving (\S+) at http://\[::1\]:(\d+)/ \(CGI: (.*)\)$")

# The environment exactly as the kernel gave it (/proc/self/environ: order kept, nothing
# added by Python's start-up), the working directory, argv and stdin, as JSON. The
# fields are those of Go's test.cgi, which the G* vectors come from.
ENV_DUMP = f"""#!{PY} -IS
import json, os, sys
with open("/proc/self/environ", "rb") as f:
    raw = [item.partition(b"=") for item in f.read().split(b"\\0") if item]
env = [[k.decode("latin-1"), v.decode("latin-1") if eq else None] for k, eq, v in raw]
out = sys.stdout.buffer
out.write(b"Content-Type: text/html\\nX-Test-Header: X-Test-Value\\n\\n")
stdin = sys.stdin.buffer.read().decode("latin-1")
dump = {{"env": env, "cwd": os.getcwd(), "argv": sys.argv, "stdin": stdin}}
out.write(json.dumps(dump).encode())
"""

# lighttpd's tests/docroot/cgi.pl, in sh: ?env=NAME prints $NAME or "[NAME not found]".
CGI_PL = """#!/bin/sh
case "$QUERY_STRING" in
external-redir)
    printf 'Location: http://www.example.org:2048/\\r\\n\\r\\n'; exit 0 ;;
env=*)
    name=${QUERY_STRING#env=}
    case "$name" in ''|*[!A-Za-z0-9_]*) printf 'Status: 400\\r\\n\\r\\n'; exit 0 ;; esac
    printf 'Content-Type: text/plain\\r\\n\\r\\n'
    eval "set=\\${$name+x} value=\\${$name-}"
    if [ -n "$set" ]; then printf '%s' "$value"; else printf '[%s not found]' "$name"; fi
    exit 0 ;;
esac
printf 'Content-Type: text/plain\\r\\n\\r\\ncgi.pl ran\\n'
"""
CGI_PL_SOURCE = b'case "$QUERY_STRING"'


def printf_script(output: bytes) -> str:
    """An sh script whose stdout is exactly ``output`` (a printf of octal escapes)."""
    keep = set(b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789 :/.,=-_+")
    text = "".join(chr(b) if b in keep else f"\\{b:03o}" for b in output)
    return f"#!/bin/sh\nprintf '{text}'\n"


# 5b: what each script prints (research table, NL = \n).
OUTPUTS: dict[str, bytes] = {
    "r2.sh": b"Content-Length: 6\n\nHello",
    "r3.sh": b"\nHello",
    "r4.sh": b"found here\n",
    "r5.sh": b"Location: http://foo.com/\n\n",
    "r6.sh": b"Location: /cgi-bin/env.py/foo?from=r6\n\nthis body is discarded\n",
    "r6-out.sh": b"Location: /foo\n\n",
    "r7.sh": b"Status: 404\n\nsend404\n",
    "r7-reason.sh": b"Status: 404 Gone Fishing\nContent-Type: text/plain\n\nsend404\n",
    "r8.sh": b"Status: 30 FooBar\n\n",
    "r9.sh": b"Status: 304 FooBar\n\nno body for a 304\n",
    "r10.sh": b"status: 404 Gone\nContent-Type: text/plain\n\n",
    "r11.sh": b"Location: http://www.example.org/\r\n\n\n",
    "r12.sh": b"Content-Type: text/plain\nX-Big: " + b"a" * 2048 + b"\n\nok",
    "r13.sh": b"Content-Type: text/plain\nX-A: 1\n\n",
    "r14.sh": b"Status: 200\nTransfer-Encoding: chunked\nContent-Type: text/plain\n\n"
    b"5\r\nhello\r\n0\r\nTest-Trailer: testing\r\n\r\n",
    "nph-r20.sh": b"HTTP/1.0 200 OK\r\nDate: Mon, 01 Jan 2001 00:00:00 GMT\r\nServer: fake/1\r\n"
    b"Content-Type: text/plain\r\nX-Nph: yes\r\n\r\nnph body\n",
    "r20-sniff.sh": b"HTTP/1.0 200 OK\r\nContent-Type: text/plain\r\n\r\nnot nph\n",
    "d5-status.sh": b"Status: 404 Not Found\nContent-Type: text/plain\n\nnot here\n",
}
R14_BODY = OUTPUTS["r14.sh"].split(b"\n\n", 1)[1]
SECRET = b"R15 SECRET FILE\n"

# Scripts with more than a printf; @SITE@ is the site's directory.
SCRIPTS: dict[str, str] = {
    "cgi-bin/r1.sh": "#!/bin/sh\nexit 0\n",
    "cgi-bin/g12.sh": "#!/bin/sh\nprintf 'Hello, stderr!\\n' >&2\n"
    "printf 'Content-Type: text/plain\\n\\nstdout only\\n'\n",
    "cgi-bin/r15.sh": "#!/bin/sh\n"
    "printf 'Status: 200\\nX-Sendfile: @SITE@/secret.txt\\nContent-Type: text/plain\\n\\n'\n",
    "cgi-bin/r16.sh": "#!/bin/sh\nprintf '%s\\n' \"$REQUEST_METHOD\" > @SITE@/r16.method\n"
    "printf 'Content-Type: text/plain\\n\\nbody of r16\\n'\n",
    "cgi-bin/r17.sh": "#!/bin/sh\necho $$ > @SITE@/r17.pid\n"
    "printf 'Content-Type: application/octet-stream\\n\\n'\nhead -c 17000000 /dev/zero\n",
    "cgi-bin/r18.sh": "#!/bin/sh\nyes 'r18 to stderr' | head -n 10000 >&2\n"
    "printf 'Content-Type: text/plain\\n\\n'\nyes 'r18 to stdout' | head -n 10000\n"
    "yes 'r18 to stderr' | head -n 10000 >&2\n",
    "cgi-bin/r19.sh": "#!/bin/sh\ncat > /dev/null\necho 'r19 is broken'\nexit 1\n",
    "nocgi.py": "#!/bin/sh\nprintf 'Content-Type: text/plain\\n\\nNOCGI RAN\\n'\n",
    "cgi.pl": CGI_PL,
}
DUMPERS = [
    "test.cgi",  # G1: Go's Root /test.cgi, here a *.cgi file at the site's root
    "sub/root.cgi",
    "cgi-bin/env.py",
    "cgi-bin/x.sh",
    "cgi-bin/deep/er/env.py",
    "cgi-bin/file1.py",
    "cgi-bin/child-dir/file3.py",
    "cgi-bin/file4.py",
]
# P15: static files whose bodies show where a normalised path led.
STATIC = {
    "index.html": "root\n",
    "a/b/index.html": "a/b/\n",
    "a/b/d/f": "a/b/d/f\n",
    "f": "f\n",
    "C:/index.html": "C:/\n",
}
# The environment of the server process: a secret no script may see (§5d, row 11).
SERVER_ENV = {"MY_SECRET": "server-only"}


# -- the site and the servers ----------------------------------------------------------


@pytest.fixture(scope="module")
def site(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("vectors").resolve()
    site = root / "site"
    for name in DUMPERS:
        write_script(site / name, ENV_DUMP)
    write_script(root / "mounted" / "env.py", ENV_DUMP)  # G4's directory
    for name, output in OUTPUTS.items():
        write_script(site / "cgi-bin" / name, printf_script(output))
    for name, text in SCRIPTS.items():
        write_script(site / name, text.replace("@SITE@", str(site)))
    for name, text in STATIC.items():
        (site / name).parent.mkdir(parents=True, exist_ok=True)
        (site / name).write_text(text)
    (site / "secret.txt").write_bytes(SECRET)
    return site


@dataclass
class Running:
    """A server and the address its clients connect to."""

    server: Server
    host: str
    family: socket.AddressFamily

    @property
    def address(self) -> tuple[str, int]:
        return self.host, self.server.port

    @property
    def authority(self) -> str:
        """The server's address as a Host field value."""
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"{host}:{self.server.port}"


def _serving(server: Server, host: str, family: socket.AddressFamily) -> Iterator[Running]:
    try:
        yield Running(server, host, family)
    finally:
        assert server.stop() == 0


@pytest.fixture(scope="module")
def main_server(site: Path) -> Iterator[Running]:
    """Defaults, plus *.cgi and *.pl scripts anywhere (G1, P1) and G4's mount."""
    flags = ["--cgi-ext", ".cgi", "--cgi-ext", ".pl", "--timeout", "10", "--idle-timeout", "10"]
    flags += ["--cgi-dir", f"/myscript//={site.parent / 'mounted'}"]
    yield from _serving(Server(site, *flags, env=SERVER_ENV), "127.0.0.1", socket.AF_INET)


@pytest.fixture(scope="module")
def alt_server(site: Path) -> Iterator[Running]:
    """Configured overrides (G11, G13) and local redirects off (R6)."""
    env = ["SCRIPT_FILENAME=/nonexistent/override.cgi", "REQUEST_URI=/foo/bar", "PATH=/wibble"]
    env += ["a=b", "b=c", "a=b2"]
    flags = [arg for entry in env for arg in ("--env", entry)] + ["--no-local-redirects"]
    yield from _serving(Server(site, *flags), "127.0.0.1", socket.AF_INET)


@pytest.fixture(scope="module")
def v6_server(site: Path) -> Iterator[Running]:
    """Bound to ::1, for an IPv6 peer (G2)."""
    try:
        with socket.socket(socket.AF_INET6) as probe:
            probe.bind(("::1", 0))
    except OSError as exc:
        pytest.skip(f"G2 needs an IPv6 loopback: {exc}")
    with pytest.MonkeyPatch.context() as patch:  # servekit expects a 127.0.0.1 start-up line
        patch.setattr(servekit, "STARTED", V6_STARTED)
        server = Server(site, "--bind", "::1", "--cgi-ext", ".cgi")
    yield from _serving(server, "::1", socket.AF_INET6)


# -- the raw client --------------------------------------------------------------------


@dataclass
class Reply:
    status: int
    reason: str
    fields: list[tuple[str, str]]
    body: bytes  # de-framed (chunked or Content-Length); for HEAD, 1xx, 204, 304: raw
    trailers: list[tuple[str, str]]
    client_port: int

    def values(self, name: str) -> list[str]:
        return [value for field_name, value in self.fields if field_name.lower() == name]

    def dump(self) -> dict[str, Any]:
        data: dict[str, Any] = json.loads(self.body)
        return data


def _fields(lines: list[bytes]) -> list[tuple[str, str]]:
    out = []
    for line in lines:
        name, colon, value = line.decode("latin-1").partition(":")
        assert colon and name == name.strip(), f"bad field line {line!r}"
        out.append((name, value.strip(" \t")))
    return out


def dechunk(data: bytes) -> tuple[bytes, list[tuple[str, str]]]:
    """A chunked body (RFC 9112 §7.1), strictly: the bytes and the trailer fields."""
    body, pos = bytearray(), 0
    while True:
        end = data.index(b"\r\n", pos)
        size = int(data[pos:end].split(b";")[0], 16)
        pos = end + 2
        if size == 0:
            break
        body += data[pos : pos + size]
        assert data[pos + size : pos + size + 2] == b"\r\n", "chunk not followed by CRLF"
        pos += size + 2
    trailers = []
    while (end := data.index(b"\r\n", pos)) > pos:  # field lines up to an empty line
        trailers.append(data[pos:end])
        pos = end + 2
    rest = data[end + 2 :]
    assert rest == b"", f"bytes after the chunked body: {rest[:100]!r}"
    return bytes(body), _fields(trailers)


def read_to_eof(sock: socket.socket) -> bytes:
    deadline = time.monotonic() + TIMEOUT
    chunks = []
    while time.monotonic() < deadline:
        try:
            data = sock.recv(65536)
        except ConnectionResetError:  # a server refusing a request may reset after it
            break
        if not data:
            break
        chunks.append(data)
    else:
        raise AssertionError("the server did not close the connection in time")
    return b"".join(chunks)


def parse(raw: bytes, method: str, client_port: int) -> Reply:
    head, blank, rest = raw.partition(b"\r\n\r\n")
    assert blank, f"no complete response head: {raw[:300]!r}"
    status_line, *lines = head.split(b"\r\n")
    version, code, reason = [*status_line.decode("latin-1").split(" ", 2), ""][:3]
    assert version == "HTTP/1.1", status_line
    status, fields = int(code), _fields(lines)
    reply = Reply(status, reason, fields, rest, [], client_port)
    if method == "HEAD" or status in (204, 304) or status < 200:
        return reply  # no body is framed: ``body`` holds whatever came after the head
    coding = reply.values("transfer-encoding")
    if coding:
        assert coding == ["chunked"], coding
        reply.body, reply.trailers = dechunk(rest)
    elif lengths := reply.values("content-length"):
        assert len(lengths) == 1 and len(rest) == int(lengths[0]), (lengths, len(rest))
    return reply


def request_bytes(v: Vector, running: Running) -> bytes:
    lines = [b"%s %s %s" % (v.method.encode(), v.target, v.version.encode())]
    if v.host is not None:
        lines.append(b"Host: " + (v.host or running.authority).encode("latin-1"))
    lines += [f"{name}: {value}".encode("latin-1") for name, value in v.headers]
    framed = any(name.lower() == "transfer-encoding" for name, _ in v.headers)
    if v.body and not framed:
        lines.append(b"Content-Length: %d" % len(v.body))
    if v.version == "HTTP/1.1":
        lines.append(b"Connection: close")
    return b"\r\n".join(lines) + b"\r\n\r\n" + v.body


def exchange(running: Running, data: bytes, method: str) -> Reply:
    with socket.socket(running.family, socket.SOCK_STREAM) as sock:
        sock.settimeout(TIMEOUT)
        sock.connect(running.address)
        client_port = sock.getsockname()[1]
        sock.sendall(data)
        raw = read_to_eof(sock)
    return parse(raw, method, client_port)


# -- the rows --------------------------------------------------------------------------


@dataclass(frozen=True)
class Ctx:
    """What a row's expectations may refer to, as {site}, {port}, {cport}, {mounted}."""

    site: Path
    running: Running
    client_port: int = 0

    def fill(self, text: str) -> str:
        return text.format(
            site=self.site,
            mounted=self.site.parent / "mounted",
            port=self.running.server.port,
            cport=self.client_port,
        )


@dataclass(frozen=True)
class Vector:
    """One request and what the response must be (None: that part is not checked).

    ``fields`` and ``env`` map a name to its exact value, or to None for "absent";
    ``exact_env`` also requires that the environment holds nothing else than ``env``
    and what the server passes on from its own (PATH, LANG, LC_*, TZ, LD_LIBRARY_PATH).
    ``run`` replaces the request entirely (a client that hangs up, a server that must
    refuse to start); ``check`` adds to the declarative checks.
    """

    target: bytes = b"/"
    method: str = "GET"
    version: str = "HTTP/1.1"
    host: str | None = ""  # "": the server's address; None: no Host field
    headers: tuple[tuple[str, str], ...] = ()
    body: bytes = b""
    server: str = "main_server"
    status: int = 200
    reason: str | None = None
    fields: Mapping[str, str | None] = field(default_factory=dict)
    content: bytes | None = None
    env: Mapping[str, str | None] = field(default_factory=dict)
    exact_env: bool = False
    stdin: str | None = None
    cwd: str | None = None
    log: str | None = None  # a regex one server log line must match
    check: Callable[[Reply, Ctx], None] | None = None
    run: Callable[[Ctx], None] | None = None


def row(vid: str, *marks: pytest.MarkDecorator, **kw: Any) -> Any:
    return pytest.param(Vector(**kw), id=vid, marks=marks)


def inherited_env() -> dict[str, str]:
    """What cgi_meta passes on from the server's environment (the test's, here)."""
    env = {
        os.fsencode(k).decode("latin-1"): os.fsencode(v).decode("latin-1")
        for k, v in os.environ.items()
    }
    out = {"PATH": env.get("PATH") or DEFAULT_PATH}
    out.update(
        (k, v) for k, v in env.items() if k in ("LANG", "TZ", "LD_LIBRARY_PATH") or k[:3] == "LC_"
    )
    return out


def run_vector(v: Vector, request: pytest.FixtureRequest) -> None:
    running: Running = request.getfixturevalue(v.server)
    ctx = Ctx(request.getfixturevalue("site"), running)
    if v.run is not None:
        v.run(ctx)
        return
    reply = exchange(running, request_bytes(v, running), v.method)
    ctx = Ctx(ctx.site, running, reply.client_port)
    assert reply.status == v.status, (reply.status, reply.reason, reply.body[:500])
    if v.reason is not None:
        assert reply.reason == v.reason
    for name, value in v.fields.items():
        assert reply.values(name) == ([] if value is None else [ctx.fill(value)]), name
    if v.content is not None:
        assert reply.body == v.content
    if v.env or v.exact_env or v.stdin is not None or v.cwd is not None:
        dump = reply.dump()
        env = dict(dump["env"])
        assert len(env) == len(dump["env"]), "a variable given twice"
        expected = {
            name: None if value is None else ctx.fill(value) for name, value in v.env.items()
        }
        if v.exact_env:
            present = {name: value for name, value in expected.items() if value is not None}
            assert env == {**inherited_env(), **present}
        else:
            assert {name: env.get(name) for name in expected} == expected
            for name, value in expected.items():
                assert value is not None or name not in env, f"{name} should be absent"
        if v.stdin is not None:
            assert dump["stdin"] == v.stdin
        if v.cwd is not None:
            assert dump["cwd"] == ctx.fill(v.cwd)
    if v.log is not None:
        assert running.server.wait_line(re.compile(v.log), TIMEOUT) is not None, v.log
    if v.check is not None:
        v.check(reply, ctx)


# -- 5a: request -> environment ----------------------------------------------------------


def _g12_logged_once(reply: Reply, ctx: Ctx) -> None:
    pattern = re.compile(r"^cgikit: g12\.sh: Hello, stderr!$")
    assert ctx.running.server.wait_line(pattern, TIMEOUT) is not None
    assert [line for line in ctx.running.server.lines if "Hello, stderr!" in line] == [
        "cgikit: g12.sh: Hello, stderr!"
    ]


def _g13_order(reply: Reply, ctx: Ctx) -> None:
    # The override entries end the environment in Go's de-duplicated order: b=c, a=b2.
    env = reply.dump()["env"]
    assert [name for name, _ in env].count("a") == 1
    assert env[-2:] == [["b", "c"], ["a", "b2"]]


def _g13_entry_without_equals(ctx: Ctx) -> None:
    # Go keeps an Env entry without "="; cgikit refuses it when the server starts
    # (host_options: "env entries are NAME=VALUE"), so it never reaches a script.
    argv = [PY, "-m", "cgikit", "serve", "--port", "0", "--env", "NOEQUALS", str(ctx.site)]
    env = {**os.environ, "PYTHONPATH": str(SRC)}
    done = subprocess.run(argv, env=env, capture_output=True, timeout=20, check=False)
    assert done.returncode == 2
    assert b"env entries are NAME=VALUE: 'NOEQUALS'" in done.stderr
    assert b"serving" not in done.stderr


HELLO_QUERY = b"/test.cgi?foo=bar&a=b"
G1_ENV = {
    "GATEWAY_INTERFACE": "CGI/1.1",
    "HTTP_HOST": "example.com:80",
    "SERVER_NAME": "example.com",
    "SERVER_PORT": "{port}",  # the port the request arrived on (cgi_meta; RFC 3875 §4.1.15)
    "SERVER_PROTOCOL": "HTTP/1.0",
    "SERVER_SOFTWARE": "cgikit",  # Go: "go"
    "PATH_INFO": "",
    "QUERY_STRING": "foo=bar&a=b",
    "REMOTE_ADDR": "127.0.0.1",  # Go's test peer is 1.2.3.4:1234; here the loopback
    "REMOTE_HOST": "127.0.0.1",
    "REMOTE_PORT": "{cport}",
    "REQUEST_METHOD": "GET",
    "REQUEST_SCHEME": "http",
    "REQUEST_URI": "/test.cgi?foo=bar&a=b",
    "SCRIPT_NAME": "/test.cgi",
    "SCRIPT_FILENAME": "{site}/test.cgi",
    "DOCUMENT_ROOT": "{site}",
}
SECTION_5A = [
    # Go's Root /test.cgi: a *.cgi script at the site's root has the same SCRIPT_NAME.
    # The whole environment is checked: nothing else (MY_SECRET, HOME) gets in.
    row(
        "G1",
        target=HELLO_QUERY,
        version="HTTP/1.0",
        host="example.com:80",
        fields={"content-type": "text/html", "x-test-header": "X-Test-Value"},
        env=G1_ENV,
        exact_env=True,
        cwd="{site}",
    ),
    # The peer [2000::3000]:12345 cannot connect to a test server: the peer is ::1.
    row(
        "G2",
        target=HELLO_QUERY,
        version="HTTP/1.0",
        host="example.com",
        server="v6_server",
        env={
            "REMOTE_ADDR": "::1",
            "REMOTE_HOST": "::1",
            "REMOTE_PORT": "{cport}",
            "SERVER_NAME": "example.com",
            "HTTP_HOST": "example.com",
        },
    ),
    row(
        "G3",
        target=b"/test.cgi/extrapath?a=b",
        env={
            "PATH_INFO": "/extrapath",
            "SCRIPT_NAME": "/test.cgi",
            "REQUEST_URI": "/test.cgi/extrapath?a=b",
            "QUERY_STRING": "a=b",
        },
    ),
    # Go's Root "/myscript//" is one script; serve mounts directories, so the mount is
    # given as --cgi-dir /myscript//=DIR and its script env.py: the slashes are trimmed.
    row(
        "G4",
        target=b"/myscript/env.py/bar?a=b",
        env={
            "SCRIPT_NAME": "/myscript/env.py",
            "PATH_INFO": "/bar",
            "SCRIPT_FILENAME": "{mounted}/env.py",
        },
    ),
    # Root "": serve cannot mount a script at / (a CGI directory at / is refused), but
    # its *.cgi scripts are mounted at "": SCRIPT_NAME is the script's own path only.
    row(
        "G5",
        target=b"/sub/root.cgi/bar?a=b",
        env={"SCRIPT_NAME": "/sub/root.cgi", "PATH_INFO": "/bar", "QUERY_STRING": "a=b"},
    ),
    row(
        "G6",
        target=b"/test.cgi",
        headers=(
            ("Cookie", "nom=NOM"),
            ("X-Foo", "val1"),
            ("Cookie", "yum=YUM"),
            ("X-Foo", "val2"),
        ),
        env={"HTTP_COOKIE": "nom=NOM; yum=YUM", "HTTP_X_FOO": "val1, val2"},
    ),
    row(
        "G7",
        target=b"/test.cgi",
        headers=(("X-Foo", "a"), ("Proxy", "should_be_stripped")),
        env={"HTTP_X_FOO": "a", "HTTP_PROXY": None},
    ),
    row(
        "G8",
        target=b"/test.cgi?a=b",
        method="POST",
        version="HTTP/1.0",
        host="example.com",
        headers=(("Content-Type", "application/x-www-form-urlencoded"),),
        body=b"postfoo=postbar",
        env={
            "REQUEST_METHOD": "POST",
            "CONTENT_LENGTH": "15",
            "CONTENT_TYPE": "application/x-www-form-urlencoded",
            "REQUEST_URI": "/test.cgi?a=b",
            "QUERY_STRING": "a=b",
            "HTTP_CONTENT_LENGTH": None,
            "HTTP_CONTENT_TYPE": None,
        },
        stdin="postfoo=postbar",
    ),
    # cgikit's target is lighttpd's: de-chunked, with CONTENT_LENGTH.
    row(
        "G9",
        target=b"/test.cgi",
        method="POST",
        headers=(("Transfer-Encoding", "chunked"),),
        body=b"a\r\n0123456789\r\n0\r\n\r\n",
        env={"CONTENT_LENGTH": "10", "HTTP_TRANSFER_ENCODING": None},
        stdin="0123456789",
    ),
    # The script's directory; cgikit has no "Dir" option, so only that half applies.
    row(
        "G10",
        target=b"/cgi-bin/deep/er/env.py",
        cwd="{site}/cgi-bin/deep/er",
        env={"SCRIPT_FILENAME": "{site}/cgi-bin/deep/er/env.py"},
    ),
    row(
        "G11",
        target=b"/cgi-bin/env.py/x",
        server="alt_server",
        env={
            "SCRIPT_FILENAME": "/nonexistent/override.cgi",
            "REQUEST_URI": "/foo/bar",
            "PATH": "/wibble",
            "PATH_INFO": "/x",
        },
    ),
    # Go's Stderr buffer is the server's log here: the line, once; the response intact.
    row(
        "G12",
        target=b"/cgi-bin/g12.sh",
        fields={"content-type": "text/plain"},
        content=b"stdout only\n",
        check=_g12_logged_once,
    ),
    row(
        "G13",
        target=b"/cgi-bin/env.py",
        server="alt_server",
        env={"a": "b2", "b": "c"},
        check=_g13_order,
    ),
    row("G13-no-equals", run=_g13_entry_without_equals),
]


@pytest.mark.parametrize("vector", SECTION_5A)
def test_5a_request_to_environment(vector: Vector, request: pytest.FixtureRequest) -> None:
    run_vector(vector, request)


# -- 5b: script output -> response -------------------------------------------------------

BAD_GATEWAY = b"502 Bad Gateway\n"


def malformed(vid: str, script: str, reason: str) -> Any:
    """A 5b row cgikit answers 502, logging ``reason`` with the script's name."""
    log = rf"^cgikit: {re.escape(script)}: malformed CGI output: {re.escape(reason)}$"
    return row(
        vid,
        target=f"/cgi-bin/{script}".encode(),
        status=502,
        reason="Bad Gateway",
        content=BAD_GATEWAY,
        log=log,
    )


def _no_trailers(reply: Reply, ctx: Ctx) -> None:
    assert reply.trailers == []


def _server_date(reply: Reply, ctx: Ctx) -> None:
    assert len(reply.values("date")) == 1
    assert reply.values("date") != ["Mon, 01 Jan 2001 00:00:00 GMT"]


def _r16_ran_as_head(reply: Reply, ctx: Ctx) -> None:
    assert (ctx.site / "r16.method").read_text() == "HEAD\n"


def _group_members(pgid: int) -> list[int]:
    """Processes (zombies too) whose process group is ``pgid``."""
    members = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            stat = Path(f"/proc/{entry}/stat").read_text()
        except OSError:
            continue
        if int(stat.rpartition(")")[2].split()[2]) == pgid:
            members.append(int(entry))
    return members


def _r17_client_disconnects(ctx: Ctx) -> None:
    request = b"GET /cgi-bin/r17.sh HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"
    with socket.create_connection(ctx.running.address, timeout=TIMEOUT) as sock:
        sock.sendall(request)
        got = b""
        while len(got) < 5 * 1024 + 200:
            data = sock.recv(65536)
            assert data, "the response ended early"
            got += data
        assert got.startswith(b"HTTP/1.1 200 OK\r\n")
    pidfile = ctx.site / "r17.pid"
    pgid = int(pidfile.read_text())  # written before the script's first byte
    deadline = time.monotonic() + TIMEOUT
    while (members := _group_members(pgid)) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert members == [], f"script group {pgid} still has {members}"


def _r18_stderr_logged(reply: Reply, ctx: Ctx) -> None:
    lines = ctx.running.server.lines
    deadline = time.monotonic() + TIMEOUT
    while sum(line == "cgikit: r18.sh: r18 to stderr" for line in lines) < 20000:
        assert time.monotonic() < deadline, "not every stderr line was logged"
        time.sleep(0.05)


def _r19_no_body_in_log(ctx: Ctx) -> None:
    # Apache's ScriptLog keeps at most 256 bytes of a failing script's POST body; cgikit
    # has no script log (optional in the research): the failure is logged with its
    # reason, and no byte of the body reaches the log.
    for size in (10, 1024):
        body = (b"R19BODY%04d" % size * 100)[:size]
        v = Vector(target=b"/cgi-bin/r19.sh", method="POST", body=body)
        reply = exchange(ctx.running, request_bytes(v, ctx.running), "POST")
        assert (reply.status, reply.body) == (502, BAD_GATEWAY)
    log = r"^cgikit: r19\.sh: malformed CGI output: line 1 is not a header field: 'r19 is broken'$"
    assert ctx.running.server.wait_line(re.compile(log), TIMEOUT) is not None
    assert not [line for line in ctx.running.server.lines if "R19BODY" in line]


SECTION_5B = [
    # cgikit answers every malformed output 502 with the reason in the log (cgi_output:
    # "Malformed output raises ScriptOutputError; the host answers 502"), where the
    # research's target allows 500: R2 (strict, no configurable lenient mode), R3, R4.
    malformed("R1", "r1.sh", "no output"),
    malformed("R2", "r2.sh", "no Content-Type, Location or Status field"),
    malformed("R3", "r3.sh", "the output starts with an empty line: no header fields"),
    malformed("R4", "r4.sh", "line 1 is not a header field: 'found here'"),
    # A client redirect without Content-Type: 302, no body, text/plain (cgi_host).
    row(
        "R5",
        target=b"/cgi-bin/r5.sh",
        status=302,
        reason="Found",
        fields={"location": "http://foo.com/", "content-type": "text/plain; charset=utf-8"},
        content=b"",
    ),
    # Followed inside the host as a GET (local_redirects on by default): the target
    # sees the new path and the same peer; a POST's body is not passed on.
    row(
        "R6",
        target=b"/cgi-bin/r6.sh",
        method="POST",
        body=b"abc",
        fields={"location": None, "content-type": "text/html"},
        env={
            "REQUEST_METHOD": "GET",
            "SCRIPT_NAME": "/cgi-bin/env.py",
            "PATH_INFO": "/foo",
            "QUERY_STRING": "from=r6",
            "REQUEST_URI": "/cgi-bin/env.py/foo?from=r6",
            "REMOTE_ADDR": "127.0.0.1",
            "CONTENT_LENGTH": None,
        },
        stdin="",
    ),
    # A local path outside the CGI directory's mount is answered 302 (cgi_host).
    row(
        "R6-outside-mount",
        target=b"/cgi-bin/r6-out.sh",
        status=302,
        fields={"location": "/foo"},
        content=b"",
    ),
    row(
        "R6-off",
        target=b"/cgi-bin/r6.sh",
        server="alt_server",
        status=302,
        fields={"location": "/cgi-bin/env.py/foo?from=r6"},
        content=b"",
    ),
    # No reason given: the standard phrase.
    row("R7", target=b"/cgi-bin/r7.sh", status=404, reason="Not Found", content=b"send404\n"),
    # R7's script sends no Content-Type; cgi_host passes such a document on without one
    # (RFC 3875 §6.3.1: the server SHOULD NOT guess), and so does the HTTP server.
    row(
        "R7-no-content-type",
        target=b"/cgi-bin/r7.sh",
        status=404,
        fields={"content-type": None, "x-content-type-options": None},
        content=b"send404\n",
    ),
    row(
        "R7-reason",
        target=b"/cgi-bin/r7-reason.sh",
        status=404,
        reason="Gone Fishing",
        content=b"send404\n",
    ),
    malformed("R8", "r8.sh", "invalid Status '30 FooBar'"),
    row(
        "R9",
        target=b"/cgi-bin/r9.sh",
        status=304,
        reason="FooBar",
        fields={"transfer-encoding": None, "status": None},
        content=b"",
    ),
    row(
        "R10",
        target=b"/cgi-bin/r10.sh",
        status=404,
        reason="Gone",
        fields={"status": None, "content-type": "text/plain"},
        content=b"",
    ),
    row(
        "R11",
        target=b"/cgi-bin/r11.sh",
        status=302,
        fields={"location": "http://www.example.org/"},
        content=b"",
    ),
    row(
        "R12",
        target=b"/cgi-bin/r12.sh",
        fields={"content-type": "text/plain", "x-big": "a" * 2048},
        content=b"ok",
    ),
    row(
        "R13",
        target=b"/cgi-bin/r13.sh",
        fields={"content-type": "text/plain", "x-a": "1"},
        content=b"",
    ),
    # cgikit neither de-chunks nor refuses: the script's Transfer-Encoding is dropped and
    # its bytes are the body, framed by the server (cgi_output, as Apache 2.4.59+).
    # HTTP/1.0 shows the script's field is not sent; no trailer reaches the client.
    row(
        "R14",
        target=b"/cgi-bin/r14.sh",
        version="HTTP/1.0",
        fields={"transfer-encoding": None, "test-trailer": None, "content-type": "text/plain"},
        content=R14_BODY,
    ),
    row(
        "R14-http11",
        target=b"/cgi-bin/r14.sh",
        fields={"transfer-encoding": "chunked", "test-trailer": None},
        content=R14_BODY,
        check=_no_trailers,
    ),
    # X-Sendfile is out of scope: the file is never sent for the script.
    row("R15", target=b"/cgi-bin/r15.sh", content=b""),
    row(
        "R16",
        target=b"/cgi-bin/r16.sh",
        method="HEAD",
        fields={"content-type": "text/plain"},
        content=b"",
        check=_r16_ran_as_head,
    ),
    row("R17", run=_r17_client_disconnects),
    row(
        "R18",
        target=b"/cgi-bin/r18.sh",
        content=b"r18 to stdout\n" * 10000,
        check=_r18_stderr_logged,
    ),
    row("R19", run=_r19_no_body_in_log),
    # An nph- script's status line and fields become the response; Date and Server are
    # the server's own (cgi_host: a WSGI app cannot bypass its server).
    row(
        "R20",
        target=b"/cgi-bin/nph-r20.sh",
        reason="OK",
        fields={"content-type": "text/plain", "x-nph": "yes", "server": "cgikit"},
        content=b"nph body\n",
        check=_server_date,
    ),
    # No output sniffing: a status line from a script without the nph- prefix is no field.
    malformed("R20-no-sniff", "r20-sniff.sh", "line 1 is not a header field: 'HTTP/1.0 200 OK'"),
]


@pytest.mark.parametrize("vector", SECTION_5B)
def test_5b_output_to_response(vector: Vector, request: pytest.FixtureRequest) -> None:
    run_vector(vector, request)


# -- 5c: path selection ------------------------------------------------------------------


def _no_source(reply: Reply, ctx: Ctx) -> None:
    assert CGI_PL_SOURCE not in reply.body


def _not_run(reply: Reply, ctx: Ctx) -> None:
    assert b'"env"' not in reply.body


def _no_nocgi(reply: Reply, ctx: Ctx) -> None:
    assert b"NOCGI" not in reply.body


def _argv_is_script(reply: Reply, ctx: Ctx) -> None:
    assert reply.dump()["argv"] == [f"{ctx.site}/cgi-bin/env.py"]  # not ['x y'] (§5d)


def collapsed(vid: str, target: bytes, status: int, content: str | None = None) -> Any:
    """A P15 row: the target normalised as CPython's _url_collapse_path, shown by the
    static file it reaches; the inputs CPython rejects with IndexError are a 400."""
    return row(
        vid, target=target, status=status, content=None if content is None else content.encode()
    )


SECTION_5C = [
    row("P1", target=b"/cgi.pl/foo?env=SCRIPT_NAME", content=b"/cgi.pl"),
    row("P2", target=b"/cgi.pl/path/info?env=PATH_INFO", content=b"/path/info"),
    row(
        "P3",
        target=b"/cgi.pl/?external-redir",
        status=302,
        fields={"location": "http://www.example.org:2048/"},
    ),
    row("P3-path-info", target=b"/cgi.pl/?env=PATH_INFO", content=b"/"),
    row("P4", target=b"/cgi.pl%20%20%20", status=404, check=_no_source),
    row("P5", target=b"/cgi.pl?env=HTTP_XX_YY123", headers=(("xx-yy123", "foo"),), content=b"foo"),
    row("P6", target=b"/cgi.pl?env=ABSENT", content=b"[ABSENT not found]"),
    # Path info is always accepted: cgikit has no AcceptPathInfo Off, so that half of
    # the vector has nothing to apply to.
    row(
        "P7", target=b"/cgi-bin/x.sh/foo", env={"SCRIPT_NAME": "/cgi-bin/x.sh", "PATH_INFO": "/foo"}
    ),
    row("P8", target=b"///////////nocgi.py/../cgi-bin/nothere.sh", status=404, check=_no_nocgi),
    # cgikit is the "safe host" of the research: 400 (cgi_paths, CVE-2011-1015).
    row("P9", target=b"cgi-bin/file1.py", status=400, check=_not_run),
    row("P10", target=b"/cgi-bin%2ffile1.py", status=404),
    row("P10-upper", target=b"/cgi-bin%2Ffile1.py", status=404),
    row(
        "P11",
        target=b"/cgi-bin/child-dir/file3.py",
        env={"SCRIPT_NAME": "/cgi-bin/child-dir/file3.py", "PATH_INFO": ""},
        cwd="{site}/cgi-bin/child-dir",
    ),
    row("P12", target=b"/cgi-bin/file4.py?a=b?c=d", env={"QUERY_STRING": "a=b?c=d"}),
    row(
        "P13",
        target=b"/cgi-bin/file1.py?k=aa%2F%2Fbb&//q//p//=//a//b//",
        env={
            "QUERY_STRING": "k=aa%2F%2Fbb&//q//p//=//a//b//",
            "REQUEST_URI": "/cgi-bin/file1.py?k=aa%2F%2Fbb&//q//p//=//a//b//",
        },
    ),
    # Joined with ", " (RFC 9110 §5.3); the research allows "," or ", ".
    row(
        "P14",
        target=b"/cgi-bin/env.py",
        headers=(("Accept", "text/html"), ("Accept", "text/plain")),
        env={"HTTP_ACCEPT": "text/html, text/plain"},
    ),
    collapsed("P15-empty", b"", 400),  # '' -> '//': an empty request-target is no request
    collapsed("P15-root", b"/", 200, "root\n"),
    collapsed("P15-dot-slashes", b"/.//", 200, "root\n"),
    collapsed("P15-no-leading-slash", b"cgi-bin/file1.py", 400),  # as P9
    collapsed("P15-trailing-dot", b"/a/b/.", 200, "a/b/\n"),
    collapsed("P15-trailing-dotdot", b"/a/b/c/..", 200, "a/b/\n"),
    collapsed("P15-inner-dotdots", b"/a/b/c/../d/e/../f", 200, "a/b/d/f\n"),
    collapsed("P15-up-to-root", b"/a/b/c/../d/e/../../../../f", 200, "f\n"),
    collapsed("P15-dotdot", b"..", 400),
    collapsed("P15-dot-slashes-dotdot", b"/.//..", 400),
    collapsed("P15-dotdot-first", b"../a/b", 400),
    collapsed("P15-past-root", b"/a/b/c/../d/e/../../../../../f", 400),
    collapsed("P15-drive", b"./C:/", 400),  # no leading "/": as P9 (CPython: /C:/)
    collapsed("P15-drive-rooted", b"/./C:/", 200, "C:/\n"),  # ":" is kept on POSIX
    # Dropped, not rejected (cgi_meta's default), whichever comes first.
    row(
        "P16",
        target=b"/cgi-bin/env.py",
        headers=(
            ("X_Forwarded_For", "6.6.6.6"),
            ("X-Forwarded-For", "1.1.1.1"),
            ("X_Forwarded_For", "6.6.6.7"),
        ),
        env={"HTTP_X_FORWARDED_FOR": "1.1.1.1"},
    ),
    # Apache's answer: the server did not check the credentials, so nothing of them.
    row(
        "P17",
        target=b"/cgi-bin/env.py",
        headers=(("Authorization", "Basic dXNlcjpwYXNz"),),
        env={"HTTP_AUTHORIZATION": None, "REMOTE_USER": None, "AUTH_TYPE": None},
    ),
]


@pytest.mark.parametrize("vector", SECTION_5C)
def test_5c_path_selection(vector: Vector, request: pytest.FixtureRequest) -> None:
    run_vector(vector, request)


# -- 5d: what CPython's http.server got wrong ------------------------------------------

SECTION_5D = [
    row(
        "5d-status",
        target=b"/cgi-bin/d5-status.sh",
        status=404,
        reason="Not Found",
        fields={"status": None},
        content=b"not here\n",
    ),
    row("5d-head", target=b"/cgi-bin/d5-status.sh", method="HEAD", status=404, content=b""),
    # The encoded slash of 5d's /a%2Fb/c makes a 404 here (P10), so the env row uses /a/b/c.
    row("5d-encoded-slash", target=b"/cgi-bin/env.py/a%2Fb/c?x+y", status=404),
    row(
        "5d-env",
        target=b"/cgi-bin/env.py/a/b/c?x+y",
        version="HTTP/1.0",
        host="example.com",
        headers=(
            ("Cookie", "a=1"),
            ("Cookie", "b=2"),
            ("Authorization", "Basic dXNlcjpwYXNz"),
            ("X-Foo", "bar"),
            ("Proxy", "http://evil:1"),
        ),
        env={
            "PATH_INFO": "/a/b/c",
            "QUERY_STRING": "x+y",
            "HTTP_COOKIE": "a=1; b=2",
            "CONTENT_TYPE": None,
            "CONTENT_LENGTH": None,
            "HTTP_HOST": "example.com",
            "HTTP_X_FOO": "bar",
            "HTTP_PROXY": None,
            "REMOTE_USER": None,
            "MY_SECRET": None,
            "SERVER_NAME": "example.com",
        },
        check=_argv_is_script,
    ),
]


@pytest.mark.parametrize("vector", SECTION_5D)
def test_5d_http_server_bugs_avoided(vector: Vector, request: pytest.FixtureRequest) -> None:
    run_vector(vector, request)
