"""``cgikit run --fastcgi|--scgi|--http ADDR module:app``: a real process on loopback.

Each test starts ``python -m cgikit run`` on port 0 or a Unix socket in a temp dir, reads
the bound address from its start-up line, speaks the protocol to it and stops it by its
PID (gatewaykit). Workers are counted from /proc (Linux).
"""

from __future__ import annotations

import itertools
import os
import re
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import pytest

import cgikit
from cgikit.cli import build_parser, markdown_table
from cgikit.gateway_options import GATEWAY_OPTIONS, gateway_settings
from gateways.gatewaykit import TIMEOUT, Gateway, child_env, gone, request
from gateways.served_apps import app

pytestmark = pytest.mark.skipif(sys.platform != "linux", reason="reads /proc")
ROOT = Path(__file__).resolve().parents[2]


def wait_until(predicate: Any, what: str, timeout: float = TIMEOUT) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.05)


@pytest.mark.parametrize("protocol", ["fastcgi", "scgi", "http"])
@pytest.mark.parametrize("unix", [False, True], ids=["tcp", "unix"])
def test_each_protocol_serves_the_app(tmp_path: Path, protocol: str, unix: bool) -> None:
    path = tmp_path / "app.sock"
    gateway = Gateway(protocol, f"unix:{path}" if unix else "127.0.0.1:0", "--workers", "1")
    try:
        assert gateway.address == (f"unix:{path}" if unix else gateway.address)
        status, reply = gateway.request("/hello", b"x=1")
        assert (status, reply["path"], reply["body"]) == (200, "/hello", "x=1")
        assert reply["ppid"] == gateway.proc.pid  # served by a worker of the master
    finally:
        assert gateway.stop() == 0
    assert not path.exists()  # the socket file is removed at the end
    assert gateway.output.lines[-1] == "cgikit: stopped"


def test_ipv6_loopback() -> None:
    if not socket.has_ipv6:
        pytest.skip("no IPv6")
    try:
        socket.create_server(("::1", 0), family=socket.AF_INET6).close()
    except OSError:
        pytest.skip("no IPv6 loopback")
    gateway = Gateway("fastcgi", "[::1]:0", "--workers", "1")
    try:
        assert gateway.address.startswith("[::1]:")
        assert gateway.request()[0] == 200
    finally:
        assert gateway.stop() == 0


def test_two_workers_serve_at_once(tmp_path: Path) -> None:
    gateway = Gateway(
        "fastcgi", "127.0.0.1:0", "--workers", "2", "--threads", "1",
        CGIKIT_TEST_MARKERS=str(tmp_path),
    )  # fmt: skip
    try:
        wait_until(lambda: len(gateway.workers()) == 2, "two workers")
        # One thread each: two slow requests at once can only be two processes' work.
        # A worker that exists may not poll the socket yet (a loaded machine): the
        # other then takes both connections in turn, so the pair is tried again.
        for _ in range(3):
            replies: list[tuple[int, dict[str, Any]]] = []
            threads = [
                threading.Thread(target=lambda into=replies: into.append(gateway.request("/slow")))
                for _ in range(2)
            ]
            for thread in threads:
                thread.start()
            for thread in threads:
                thread.join(TIMEOUT)
            assert [status for status, _ in replies] == [200, 200]
            if {reply["pid"] for _, reply in replies} == gateway.workers():
                break
        assert {reply["pid"] for _, reply in replies} == gateway.workers()
    finally:
        assert gateway.stop() == 0


def test_max_requests_retires_a_worker_and_loses_no_request() -> None:
    gateway = Gateway(
        "fastcgi", "127.0.0.1:0", "--workers", "1", "--threads", "1", "--max-requests", "3"
    )
    try:
        pids = []
        for _ in range(7):
            status, reply = gateway.request()
            assert status == 200
            pids.append(reply["pid"])
        runs = [len(list(group)) for _, group in itertools.groupby(pids)]
        # At 3 the jitter (up to 10%) is 0: each worker takes three, or one more that it
        # accepted before it saw its own stop; a retired worker never comes back.
        assert len(runs) >= 2 and all(run in (3, 4) for run in runs[:-1]), pids
        assert len(runs) == len(set(pids))
        gateway.output.wait_line(re.compile(rf"worker {pids[0]} served [34] requests; retiring"))
        wait_until(lambda: gone(pids[0]), "the retired worker reaped")
    finally:
        assert gateway.stop() == 0


def test_sigterm_lets_the_request_in_flight_finish(tmp_path: Path) -> None:
    gateway = Gateway("scgi", "127.0.0.1:0", "--workers", "1", CGIKIT_TEST_MARKERS=str(tmp_path))
    replies: list[tuple[int, dict[str, Any]]] = []
    client = threading.Thread(target=lambda: replies.append(gateway.request("/slow")))
    try:
        client.start()
        wait_until(lambda: any(tmp_path.glob("started-*")), "the slow request to start")
        os.kill(gateway.proc.pid, signal.SIGTERM)
        client.join(TIMEOUT)
        assert [(status, reply["path"]) for status, reply in replies] == [(200, "/slow")]
    finally:
        assert gateway.stop(None if replies else signal.SIGTERM) == 0
    with pytest.raises(OSError):  # stopped: nobody listens any more
        request("scgi", gateway.address)


def test_sighup_replaces_the_workers_without_refusing_a_request() -> None:
    gateway = Gateway("http", "127.0.0.1:0", "--workers", "2")
    try:
        wait_until(lambda: len(gateway.workers()) == 2, "two workers")
        old = gateway.workers()
        os.kill(gateway.proc.pid, signal.SIGHUP)
        deadline = time.monotonic() + TIMEOUT
        while not (gateway.workers().isdisjoint(old) and len(gateway.workers()) == 2):
            assert time.monotonic() < deadline, "the workers were not replaced"
            assert gateway.request()[0] == 200  # served all along
        wait_until(lambda: all(gone(pid) for pid in old), "the old workers reaped")
        status, reply = gateway.request()
        assert status == 200 and reply["pid"] not in old
    finally:
        assert gateway.stop() == 0


@pytest.mark.parametrize(
    ("flags", "message"),
    [
        (["--fastcgi", "localhost"], "not host:port"),
        (["--scgi", "127.0.0.1:0", "--workers", "0"], "workers must be at least 1"),
        (["--http", "127.0.0.1:0", "--debug"], "unexpected arguments: --debug"),
        (["--fastcgi", "127.0.0.1:0", "--max-requests", "-1"], "max_requests must be at least"),
    ],
)
def test_bad_arguments_are_one_line_and_status_2(flags: list[str], message: str) -> None:
    done = subprocess.run(
        [sys.executable, "-m", "cgikit", "run", *flags, "served_apps:app"],
        env=child_env(),
        stdin=subprocess.DEVNULL,
        capture_output=True,
        timeout=TIMEOUT,
    )
    assert done.returncode == 2
    assert message in done.stderr.decode(), done.stderr


def test_options_come_from_the_variables_when_not_given() -> None:
    env = {"CGIKIT_WORKERS": "3", "CGIKIT_MAX_REQUESTS": "50", "CGIKIT_GRACE": "2.5"}
    values = gateway_settings({"workers": 2}, env)
    assert (values["workers"], values["max_requests"], values["grace"]) == (2, 50, 2.5)
    assert values["threads"] is None and values["timeout"] is None  # per protocol
    with pytest.raises(TypeError, match="unknown gateway option"):
        gateway_settings({"debug": True}, {})


def test_cli_flags_are_the_gateway_options_table() -> None:
    run = build_parser()._subparsers._group_actions[0].choices["run"]  # type: ignore[union-attr]
    flags = {s for a in run._actions for s in a.option_strings}
    assert {o.flag for o in GATEWAY_OPTIONS} | {"--fastcgi", "--scgi", "--http"} <= flags


def test_docs_table_is_generated_from_the_options() -> None:
    text = (ROOT / "docs" / "gateway-options.md").read_text()
    start, end = "<!-- options-table -->\n", "<!-- /options-table -->"
    assert text.split(start, 1)[1].split(end, 1)[0] == markdown_table(GATEWAY_OPTIONS)


def test_the_api_checks_before_it_binds() -> None:
    with pytest.raises(ValueError, match="protocol must be one of"):
        cgikit.run_gateway(app, "ajp", "127.0.0.1:0")
    with pytest.raises(TypeError, match="unknown gateway option"):
        cgikit.run_gateway(app, "fastcgi", "127.0.0.1:0", debug=True)
    with pytest.raises(ValueError, match="not host:port"):
        cgikit.run_gateway(app, "fastcgi", "9000", workers=1)


@pytest.mark.parametrize("protocol", ["fastcgi", "scgi", "http"])
def test_wsgi_multiprocess_with_several_workers_multithread_with_several_threads(
    protocol: str,
) -> None:
    for flags, expected in [
        (("--workers", "1", "--threads", "1"), (False, False)),
        (("--workers", "2", "--threads", "3"), (True, True)),
    ]:
        gateway = Gateway(protocol, "127.0.0.1:0", *flags)
        try:
            status, reply = gateway.request()
            assert status == 200
            assert (reply["multiprocess"], reply["multithread"]) == expected, flags
        finally:
            assert gateway.stop() == 0


def test_fcgi_web_server_addrs_closes_other_peers_at_once() -> None:
    gateway = Gateway("fastcgi", "127.0.0.1:0", "--workers", "1", FCGI_WEB_SERVER_ADDRS="192.0.2.1")
    try:
        with pytest.raises((EOFError, ConnectionResetError)):
            gateway.request()
        gateway.output.wait_line(re.compile(r"127\.0\.0\.1:\d+: not in FCGI_WEB_SERVER_ADDRS"))
    finally:
        assert gateway.stop() == 0
    gateway = Gateway("fastcgi", "127.0.0.1:0", FCGI_WEB_SERVER_ADDRS="192.0.2.1,127.0.0.1")
    try:
        assert gateway.request()[0] == 200
    finally:
        assert gateway.stop() == 0
    done = subprocess.run(
        [sys.executable, "-m", "cgikit", "run", "--fastcgi", "127.0.0.1:0", "served_apps:app"],
        env=child_env(FCGI_WEB_SERVER_ADDRS="web.example"),
        stdin=subprocess.DEVNULL,
        capture_output=True,
        timeout=TIMEOUT,
    )
    assert done.returncode == 2
    assert "not an IP address: 'web.example'" in done.stderr.decode(), done.stderr
