"""The web server spawns the app: lighttpd ``bin-path`` and Apache mod_fcgid.

Each server starts from its docs/deploy/ config (integration.spawning) and runs app.fcgi,
an ordinary cgikit CGI script for fixtureapps.spawned, as FastCGI processes of its own:
they get a listening socket on fd 0, which ``cgikit.run`` must recognise. The same file,
run as a CGI script, serves one request per process. The app processes run as www-data
(when the tests run as root) and must all be gone once the server has stopped.
"""

from __future__ import annotations

import hashlib
import json
import os
import random
from collections.abc import Iterator

import pytest

from cgikit.errorpage import GENERIC_BODY
from fixtureapps import EXPECTED_FAILURE, hello
from integration.runtime import Runtime
from integration.spawning import (
    MAX_PROCESSES,
    PREFIX,
    STARTERS,
    Spawner,
    app_processes,
    kill_leftovers,
    run_as_cgi,
    start_spawner,
    stop_spawner,
    write_app,
)
from integration.wire import Reply, request, wait_for_log
from servers import CGI_USER

pytestmark = pytest.mark.server

SEQUENTIAL = 10
POST_SIZE = 256 * 1024  # over mod_fcgid's default FcgidMaxRequestLen (128 KiB)


class SpawnerPool:
    """Starts each server the first time a test needs it; stops all, counting leftovers."""

    def __init__(self, runtime: Runtime) -> None:
        self.runtime = runtime
        self.running: dict[str, Spawner] = {}
        self.broken: dict[str, str] = {}

    def get(self, name: str) -> Spawner:
        if name in self.broken:
            pytest.fail(self.broken[name], pytrace=False)
        if name not in self.running:
            try:
                self.running[name] = start_spawner(self.runtime, name)
            except RuntimeError as exc:
                self.broken[name] = str(exc)
                raise
        spawner = self.running[name]
        if spawner.server.process.poll() is not None:
            pytest.fail(f"{name} died during the tests:\n{spawner.diagnostics()}")
        return spawner

    def stop_all(self) -> dict[str, dict[int, str]]:
        leftovers = {name: stop_spawner(s) for name, s in self.running.items()}
        self.running.clear()
        return {name: left for name, left in leftovers.items() if left}


@pytest.fixture(scope="module")
def spawner_pool(cgi_runtime: Runtime) -> Iterator[SpawnerPool]:
    pool = SpawnerPool(cgi_runtime)
    yield pool
    leftovers = pool.stop_all()
    assert not leftovers, f"app processes outlived their server (killed now): {leftovers}"


@pytest.fixture(params=list(STARTERS))
def spawner(request: pytest.FixtureRequest, spawner_pool: SpawnerPool) -> Spawner:
    return spawner_pool.get(request.param)


def get(spawner: Spawner, path: str) -> Reply:
    return request(spawner.server, "GET", PREFIX + path)


# -- requests ---------------------------------------------------------------------------


def test_get_with_query_string(spawner: Spawner) -> None:
    reply = get(spawner, "/echo_environ/caf%C3%A9/a%20b?q=caf%C3%A9&x=1")
    assert reply.status == 200, f"{reply.status} {reply.body[:300]!r}\n{spawner.diagnostics()}"
    env = json.loads(reply.body)
    # The config mounts the app at /app; the app's router moved one segment.
    assert env["SCRIPT_NAME"] == f"{PREFIX}/echo_environ"
    assert env["PATH_INFO"] == "/caf\xc3\xa9/a b"  # decoded, the UTF-8 bytes as latin-1
    assert env["QUERY_STRING"] == "q=caf%C3%A9&x=1"  # as sent
    assert env["REQUEST_METHOD"] == "GET"
    assert env["SERVER_PORT"] == str(spawner.server.port)
    assert "CONTENT_LENGTH" not in env


def test_post_body_is_echoed_exactly(spawner: Spawner) -> None:
    body = random.Random(5).randbytes(POST_SIZE)
    headers: dict[str, str | bytes] = {"Content-Type": "application/octet-stream"}
    reply = request(spawner.server, "POST", f"{PREFIX}/echo_body/", body=body, headers=headers)
    assert reply.status == 200, f"{reply.status}\n{spawner.diagnostics()}"
    assert len(reply.body) == len(body)
    assert hashlib.sha256(reply.body).digest() == hashlib.sha256(body).digest()
    assert reply.header("X-Seen-Content-Length") == str(POST_SIZE)
    assert reply.header("X-Read-Past-End") == "0"


def test_app_that_raises_gives_500_and_a_log_line(spawner: Spawner) -> None:
    offset = spawner.server.log_size()
    reply = get(spawner, "/raise_before/")
    assert reply.status == 500
    assert reply.body == GENERIC_BODY  # no traceback for the client
    log = wait_for_log(spawner.server, offset, f"RuntimeError: {EXPECTED_FAILURE}: raised before")
    assert "Traceback (most recent call last)" in log
    assert get(spawner, "/hello/").body == hello.BODY  # and the process serves on


def test_sequential_requests_are_served_by_long_lived_processes(spawner: Spawner) -> None:
    """A process per request (CGI) would answer with a new pid each time."""
    pids = []
    for n in range(SEQUENTIAL):
        reply = get(spawner, f"/process/?n={n}")
        assert reply.status == 200, f"{reply.status} {reply.body[:300]!r}"
        report = json.loads(reply.body)
        # The server runs up to MAX_PROCESSES of the app: PEP 3333's "may be invoked
        # by another process", though each runs one cgikit worker.
        assert report["multiprocess"] is True, report
        pids.append(report["pid"])
    assert len(set(pids)) <= MAX_PROCESSES[spawner.name], pids
    running = app_processes(spawner.app)
    assert set(pids) <= set(running), f"{pids} not among the app processes {running}"
    if os.geteuid() == 0:  # the server dropped to www-data before it started the app
        assert set(running.values()) == {CGI_USER}, running


# -- the same script under CGI, and the end of the processes ----------------------------


def cgi_variables(path_info: str, query: str) -> dict[str, str]:
    return {
        "GATEWAY_INTERFACE": "CGI/1.1",
        "REQUEST_METHOD": "GET",
        "SCRIPT_NAME": "/cgi-bin/app.fcgi",
        "PATH_INFO": path_info,
        "QUERY_STRING": query,
        "SERVER_NAME": "127.0.0.1",
        "SERVER_PORT": "80",
        "SERVER_PROTOCOL": "HTTP/1.1",
        "REMOTE_ADDR": "127.0.0.1",
        "PATH": "/usr/bin:/bin",
    }


def test_the_same_script_serves_as_a_cgi_script(cgi_runtime: Runtime) -> None:
    app = write_app(cgi_runtime, "cgi")
    answers = []
    for _ in range(2):
        done = run_as_cgi(app, cgi_variables("/process/", ""))
        assert done.returncode == 0, done.stderr.decode("utf-8", "replace")
        head, _, body = done.stdout.partition(b"\r\n\r\n")
        assert head.split(b"\r\n")[0] == b"Status: 200 OK", done.stdout[:300]
        answers.append(json.loads(body)["pid"])
    assert answers[0] != answers[1]  # a process per request
    done = run_as_cgi(app, cgi_variables("/echo_environ/x", "a=1"))
    env = json.loads(done.stdout.partition(b"\r\n\r\n")[2])
    assert (env["SCRIPT_NAME"], env["PATH_INFO"]) == ("/cgi-bin/app.fcgi/echo_environ", "/x")
    assert env["QUERY_STRING"] == "a=1"


@pytest.mark.parametrize("name", list(STARTERS))
def test_stopping_the_server_ends_its_app_processes(cgi_runtime: Runtime, name: str) -> None:
    spawner = start_spawner(cgi_runtime, name)
    try:
        reply = get(spawner, "/process/")  # mod_fcgid starts the app on the first request
        assert reply.status == 200, spawner.diagnostics()
        started = app_processes(spawner.app)
        assert json.loads(reply.body)["pid"] in started, started
    finally:
        left = stop_spawner(spawner)
    assert not left, f"{name} left app processes behind (killed now): {left}"
    assert not kill_leftovers(spawner.app)
