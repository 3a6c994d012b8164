"""``cgikit serve --fastcgi`` (the fcgiwrap role) behind a real nginx, from the config users copy.

A real ``python -m cgikit serve --fastcgi ADDR ROOT`` on 127.0.0.1 (two workers) and on
a Unix socket (one process), each behind nginx started from
docs/deploy/nginx-cgi-bridge.conf. The scripts, sh and Python, run as www-data when the
tests run as root. What fcgiwrap gets wrong must hold here (research
shared/research/fastcgi-anchors.md §6): a script that writes 200 KB before it reads a
1 MiB body (B16: deadlock), one past its time (B17/B18: never killed), one that crashes
(B19: stderr lost); SCRIPT_FILENAME must not choose what runs. Each test ends by
checking that the bridge still serves.
"""

from __future__ import annotations

import hashlib
import os
import random
import shutil
import socket
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from cgikit import fastcgi_records as wire
from drivers.test_fastcgi_server import read_reply, request_bytes
from gateway_servers import Backend, start_bridge, start_nginx
from integration.runtime import choose_interpreter
from integration.wire import LOG_POLL, LOG_TIMEOUT, Reply, request
from servers import HOST, Server, cgi_user_ids, stop

pytestmark = pytest.mark.server

IDLE_TIMEOUT = 2  # the bridge's --idle-timeout: slow.sh is killed after this
BIG_OUTPUT = 200_000  # what big_post.py writes before it reads its stdin

ENV_SH = """#!/bin/sh
printf 'Content-Type: text/plain\\r\\n\\r\\n'
echo "UID=$(id -u)"
env
"""
BIG_POST_PY = """#!{python}
import hashlib, os, sys
out = sys.stdout.buffer
out.write(b"Content-Type: application/octet-stream\\r\\n\\r\\n")
out.write(b"x" * {size})  # before reading: more than any pipe holds
out.flush()
data = sys.stdin.buffer.read(int(os.environ["CONTENT_LENGTH"]))
out.write(b"\\nlength=%d sha256=%s\\n" % (len(data), hashlib.sha256(data).hexdigest().encode()))
"""
SLOW_SH = """#!/bin/sh
echo $$ > {pids}/slow.pid
exec sleep 60
"""
CRASH_PY = """#!{python}
import sys
print("crash.py: about to fail", file=sys.stderr)
1 / 0
"""
OUTSIDE_SH = """#!/bin/sh
touch {pids}/outside-ran
printf 'Content-Type: text/plain\\r\\n\\r\\nOUTSIDE\\n'
"""


@dataclass
class Site:
    top: Path  # world-readable, removed at the end
    root: Path  # the ROOT given to cgikit serve and to nginx
    pids: Path  # where the scripts (www-data) leave traces


@dataclass
class Bridged:
    """nginx in front of one bridge."""

    name: str
    nginx: Server
    bridge: Backend

    def diagnostics(self) -> str:
        return f"{self.nginx.diagnostics()}\n{self.bridge.diagnostics()}"


def write(path: Path, text: str, mode: int = 0o755) -> None:
    path.write_text(text, "utf-8")
    path.chmod(mode)


@pytest.fixture(scope="module")
def site() -> Iterator[Site]:
    """ROOT: a static page, cgi-bin/ scripts, a .cgi script elsewhere, a symlink out."""
    cgi_user_ids()
    top = Path(tempfile.mkdtemp(prefix="cgikit-bridge-", dir="/tmp"))
    top.chmod(0o755)
    root, pids = top / "root", top / "pids"
    (root / "cgi-bin").mkdir(parents=True)
    (root / "docs").mkdir()
    pids.mkdir()
    pids.chmod(0o777)  # written by the scripts, as www-data
    python = choose_interpreter()
    cgi_bin = root / "cgi-bin"
    write(root / "index.html", "<p>static</p>\n", 0o644)
    write(root / "docs" / "page.cgi", ENV_SH)
    write(cgi_bin / "env.sh", ENV_SH)
    write(cgi_bin / "big_post.py", BIG_POST_PY.format(python=python, size=BIG_OUTPUT))
    write(cgi_bin / "slow.sh", SLOW_SH.format(pids=pids))
    write(cgi_bin / "crash.py", CRASH_PY.format(python=python))
    write(top / "outside.sh", OUTSIDE_SH.format(pids=pids))
    (cgi_bin / "outside.sh").symlink_to(top / "outside.sh")
    yield Site(top, root, pids)
    shutil.rmtree(top, ignore_errors=True)


@pytest.fixture(scope="module", params=["tcp", "unix"])
def bridged(request: pytest.FixtureRequest, site: Site) -> Iterator[Bridged]:
    unix = request.param == "unix"
    flags = ["--idle-timeout", str(IDLE_TIMEOUT), "--cgi-ext", ".cgi"]
    flags += ["--workers", "1" if unix else "2"]  # one process, and the prefork workers
    try:
        bridge = start_bridge(site.root, *flags, unix=unix)
    except RuntimeError as exc:
        pytest.fail(str(exc), pytrace=False)
    try:
        target = bridge.address if unix else f"{HOST}:{bridge.port}"
        values = {"ROOT": str(site.root), "BRIDGE": target}
        nginx = start_nginx("nginx-cgi-bridge.conf", values)
    except BaseException:
        bridge.stop()
        raise
    yield Bridged(request.param, nginx, bridge)
    stop(nginx.process)
    shutil.rmtree(nginx.rundir, ignore_errors=True)
    bridge.stop()


def get(front: Bridged, target: str, **headers: str) -> Reply:
    return request(front.nginx, "GET", target, headers=dict(headers))


def env_of(reply: Reply) -> dict[str, str]:
    """env.sh's output as a dict (latin-1, so the bytes of a UTF-8 path survive)."""
    lines = reply.body.decode("latin-1").splitlines()
    return dict(line.split("=", 1) for line in lines if "=" in line)


def assert_serves(front: Bridged) -> None:
    """The bridge still runs scripts, and its process is still there."""
    reply = get(front, "/cgi-bin/env.sh")
    assert reply.status == 200, f"{reply.status} {reply.body[:200]!r}\n{front.diagnostics()}"
    assert front.bridge.process.poll() is None, front.diagnostics()


def cgikit_404(reply: Reply) -> bool:
    """The bridge's own 404 (text/plain), not nginx's HTML page."""
    return reply.status == 404 and reply.body == b"404 Not Found\n"


def wait_for_log(front: Bridged, offset: int, needle: str) -> str:
    deadline = time.monotonic() + LOG_TIMEOUT
    text = front.nginx.log_since(offset)
    while needle not in text and time.monotonic() < deadline:
        time.sleep(LOG_POLL)
        text = front.nginx.log_since(offset)
    return text


def bridge_connections(port: int) -> set[int]:
    """The peer ports of the established TCP connections to ``port`` (/proc/net/tcp)."""
    peers = set()
    for line in Path("/proc/net/tcp").read_text("ascii").splitlines()[1:]:
        local, remote, state = line.split()[1:4]
        if state == "01" and int(local.rsplit(":", 1)[1], 16) == port:
            peers.add(int(remote.rsplit(":", 1)[1], 16))
    return peers


# -- the connections ----------------------------------------------------------------------


def test_nginx_keeps_its_connections_to_the_bridge(bridged: Bridged) -> None:
    """The config's keep-conn (FCGI_KEEP_CONN over an upstream with keepalive): nginx's
    connections stay open between requests and carry the next ones; with keep-conn off
    each request would open one and close it."""
    if bridged.name != "tcp":
        pytest.skip("connections to a Unix socket cannot be told apart in /proc/net")
    seen: set[int] = set()
    for _ in range(6):
        reply = get(bridged, "/cgi-bin/env.sh")
        assert reply.status == 200, bridged.diagnostics()
        seen |= bridge_connections(bridged.bridge.port)
    assert seen, "no connection to the bridge stayed open between requests"
    assert len(seen) <= 2, f"6 requests, {len(seen)} connections (2 nginx workers)"


# -- the environment --------------------------------------------------------------------


def test_env_follows_the_cgi_host_rules(bridged: Bridged, site: Site) -> None:
    reply = get(
        bridged,
        "/cgi-bin/env.sh/extra/caf%C3%A9?a=1&b=%2F",
        **{"X-Test": "yes", "Authorization": "Basic c2VjcmV0", "Proxy": "http://evil/"},
    )
    assert reply.status == 200, f"{reply.status} {reply.body[:300]!r}\n{bridged.diagnostics()}"
    env = env_of(reply)
    cgi_bin = os.path.realpath(site.root / "cgi-bin")
    assert env["SCRIPT_NAME"] == "/cgi-bin/env.sh"
    assert env["PATH_INFO"] == "/extra/caf\xc3\xa9"  # decoded, the UTF-8 bytes
    assert env["QUERY_STRING"] == "a=1&b=%2F"  # as sent
    assert env["REQUEST_METHOD"] == "GET"
    assert env["REQUEST_URI"] == "/cgi-bin/env.sh/extra/caf%C3%A9?a=1&b=%2F"
    assert env["SCRIPT_FILENAME"] == os.path.join(cgi_bin, "env.sh")  # cgikit's, not nginx's
    assert env["DOCUMENT_ROOT"] == cgi_bin
    assert env["GATEWAY_INTERFACE"] == "CGI/1.1"
    assert env["SERVER_PORT"] == str(bridged.nginx.port)
    assert env["REMOTE_ADDR"] == "127.0.0.1"
    assert env["HTTP_X_TEST"] == "yes"
    for absent in ("CONTENT_LENGTH", "CONTENT_TYPE", "HTTP_AUTHORIZATION", "HTTP_PROXY"):
        assert absent not in env, f"{absent}={env[absent]!r}"
    if os.geteuid() == 0:
        assert env["UID"] == str(cgi_user_ids()[0])  # www-data, not root


def test_post_env_has_content_length_and_type(bridged: Bridged) -> None:
    headers: dict[str, str | bytes] = {"Content-Type": "application/x-www-form-urlencoded"}
    reply = request(bridged.nginx, "POST", "/cgi-bin/env.sh", body=b"a=1&b", headers=headers)
    assert reply.status == 200, bridged.diagnostics()
    env = env_of(reply)
    assert env["REQUEST_METHOD"] == "POST"
    assert env["CONTENT_LENGTH"] == "5"
    assert env["CONTENT_TYPE"] == "application/x-www-form-urlencoded"
    assert "HTTP_CONTENT_LENGTH" not in env and "HTTP_CONTENT_TYPE" not in env


def test_cgi_ext_script_outside_cgi_bin(bridged: Bridged) -> None:
    env = env_of(get(bridged, "/docs/page.cgi/more"))
    assert (env["SCRIPT_NAME"], env["PATH_INFO"]) == ("/docs/page.cgi", "/more")
    assert cgikit_404(get(bridged, "/docs/missing.cgi"))


# -- fcgiwrap's bugs ----------------------------------------------------------------------


def test_big_post_to_a_script_that_writes_before_reading(bridged: Bridged) -> None:
    """fcgiwrap writes the whole body before reading any output: deadlock (B16)."""
    body = random.Random(16).randbytes(1 << 20)
    headers: dict[str, str | bytes] = {"Content-Type": "application/octet-stream"}
    reply = request(bridged.nginx, "POST", "/cgi-bin/big_post.py", body=body, headers=headers)
    assert reply.status == 200, f"{reply.status} {reply.body[-300:]!r}\n{bridged.diagnostics()}"
    assert reply.complete
    assert reply.body[:BIG_OUTPUT] == b"x" * BIG_OUTPUT
    digest = hashlib.sha256(body).hexdigest()
    assert reply.body[BIG_OUTPUT:] == f"\nlength={len(body)} sha256={digest}\n".encode()
    assert_serves(bridged)


def test_a_script_past_its_time_is_killed_504(bridged: Bridged, site: Site) -> None:
    pid_file = site.pids / "slow.pid"
    pid_file.unlink(missing_ok=True)
    started = time.monotonic()
    reply = get(bridged, "/cgi-bin/slow.sh")
    assert reply.status == 504, f"{reply.status}\n{bridged.diagnostics()}"
    assert time.monotonic() - started < IDLE_TIMEOUT + 10
    pid = int(pid_file.read_text())
    deadline = time.monotonic() + 5
    while Path(f"/proc/{pid}").exists() and time.monotonic() < deadline:
        time.sleep(0.05)  # killed with its group, reaped by the bridge
    assert (
        not Path(f"/proc/{pid}/cmdline").exists()
        or b"sleep" not in Path(f"/proc/{pid}/cmdline").read_bytes()
    ), "the script outlived its 504"
    assert_serves(bridged)


def test_a_crashing_script_is_a_502_and_its_stderr_is_logged(bridged: Bridged) -> None:
    offset = bridged.nginx.log_size()
    reply = get(bridged, "/cgi-bin/crash.py")
    assert reply.status == 502, f"{reply.status}\n{bridged.diagnostics()}"
    # FCGI_STDERR: nginx logs it as "FastCGI sent in stderr".
    log = wait_for_log(bridged, offset, "ZeroDivisionError")
    assert "FastCGI sent in stderr" in log and "crash.py: about to fail" in log, log
    assert "ZeroDivisionError" in log, log
    assert_serves(bridged)


# -- paths ---------------------------------------------------------------------------------


# target -> the answer: (status, True when the bridge gives it, False for nginx's)
TRAVERSALS = {
    # nginx normalises it to /cgi-bin/env.sh and passes it on; the raw target has a %2f.
    "/cgi-bin/%2e%2e%2fcgi-bin/env.sh": (404, True),
    "/docs/..%2findex.cgi": (404, True),  # nginx: /index.cgi, a .cgi URL
    "/cgi-bin/env.sh%2fx": (404, True),
    "/cgi-bin/outside.sh": (403, True),  # a symlink out of ROOT
    "/cgi-bin/": (404, True),
    "/cgi-bin/..%2f..%2fetc%2fpasswd": (400, False),  # above the root: nginx refuses it
}


@pytest.mark.parametrize("target", list(TRAVERSALS))
def test_path_traversal_is_refused(bridged: Bridged, site: Site, target: str) -> None:
    reply = get(bridged, target)
    status, by_bridge = TRAVERSALS[target]
    assert reply.status == status, f"{target}: {reply.status} {reply.body[:200]!r}"
    if by_bridge:
        assert reply.body.startswith(f"{status} ".encode()), reply.body[:200]
    assert not (site.pids / "outside-ran").exists()
    assert_serves(bridged)


def test_static_files_are_nginx_s(bridged: Bridged) -> None:
    reply = get(bridged, "/index.html")
    assert (reply.status, reply.body) == (200, b"<p>static</p>\n")
    assert cgikit_404(get(bridged, "/cgi-bin/missing.sh"))


# -- straight to the bridge, without nginx ------------------------------------------------


def fastcgi(bridge: Backend, params: dict[bytes, bytes]) -> tuple[str, bytes]:
    """One request straight to the bridge: its status line and body."""
    if bridge.address.startswith("unix:"):
        sock = socket.socket(socket.AF_UNIX)
        sock.settimeout(15)
        sock.connect(bridge.address[len("unix:") :])
    else:
        sock = socket.create_connection((HOST, bridge.port), timeout=15)
    with sock:
        sock.sendall(request_bytes(params=params))
        reply = read_reply(sock)
    assert reply.end is not None and reply.end[1] == wire.REQUEST_COMPLETE
    return reply.status, reply.body


def meta(uri: str | None, **extra: str) -> dict[bytes, bytes]:
    params = {"REQUEST_METHOD": "GET", "SERVER_NAME": "localhost", "SERVER_PORT": "80"}
    params |= {"SERVER_PROTOCOL": "HTTP/1.1", "QUERY_STRING": ""}
    if uri is not None:
        params["REQUEST_URI"] = uri
    return {k.encode(): v.encode("latin-1") for k, v in (params | extra).items()}


def test_script_filename_never_chooses_the_script(bridged: Bridged, site: Site) -> None:
    """fcgiwrap runs SCRIPT_FILENAME; the bridge maps the URL under ROOT."""
    env_sh = str(site.root / "cgi-bin" / "env.sh")
    status, _ = fastcgi(bridged.bridge, meta("/../../bin/sh", SCRIPT_FILENAME="/bin/sh"))
    assert status.split()[1] == "400", status
    shell = meta("/index.html", SCRIPT_FILENAME="/bin/sh", SCRIPT_NAME="/cgi-bin/env.sh")
    status, body = fastcgi(bridged.bridge, shell)
    assert (status.split()[1], body) == ("404", b"404 Not Found\n")  # no file from the bridge
    status, body = fastcgi(bridged.bridge, meta("/cgi-bin/env.sh", SCRIPT_FILENAME="/bin/sh"))
    assert status.split()[1] == "200" and f"SCRIPT_FILENAME={env_sh}".encode() in body
    assert_serves(bridged)


def test_without_request_uri_script_name_and_path_info_are_the_path(bridged: Bridged) -> None:
    params = meta(None, SCRIPT_NAME="/cgi-bin/env.sh", PATH_INFO="/p")
    status, body = fastcgi(bridged.bridge, params)
    assert status.split()[1] == "200", body
    assert b"\nPATH_INFO=/p\n" in body and b"\nSCRIPT_NAME=/cgi-bin/env.sh\n" in body
