"""``cgikit serve --warm`` end to end: real servers, scripts forked by their zygotes.

A cold ``cgikit serve`` and a ``cgikit serve --warm`` on one site, whose cgi-bin holds
the Python scripts of tests/warm/test_warm_host.py's ``SCRIPTS``: each request gets the
same response from both (status, headers but Date, body) and leaves the same lines in
the server's log. ``whoami.py`` says who forked it: on the warm server a zygote
(``warm_zygote.py``), a child of the worker; every compared request is also seen to end
a child of that zygote (its count of reaped children's page faults grows). The first
requests of a warm server run cold while its zygote starts, so each server is asked
until every worker process has answered warm. Then: two workers, two zygotes; a script
past ``--timeout`` is a 504 warm and the zygote serves on; SIGTERM leaves no zygote and
no zombie behind; a warm script still running then is killed. Linux only (/proc).
"""

from __future__ import annotations

import contextlib
import http.client
import json
import os
import re
import signal
import sys
import textwrap
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import pytest

from cgikit import warm_spawn
from cgikit.prefork import become_subreaper
from serve.servekit import Server, copy_site, write_script
from serve.test_serve_load import children, cmdline, process_gone
from serve.test_serve_process import workers_of
from warm.test_warm_host import SCRIPTS

pytestmark = [
    pytest.mark.server,
    pytest.mark.skipif(not warm_spawn.available(), reason="warm mode is Linux-only"),
]

PY = sys.executable
WARM_TIMEOUT = 20.0  # a worker's zygote starts on its first Python request; this is ample
POLL = 0.05
HOST = "cgikit.test"  # sent to both servers, so HTTP_HOST and SERVER_NAME do not differ

# Who ran me: the parent's command line (a zygote's names warm_zygote.py), the parent's
# parent (for a zygote: its worker), what stdin held. ?hold keeps the request busy a
# moment, so that concurrent ones go to different worker processes.
WHOAMI = """\
    import hashlib, json, os, sys, time
    data = sys.stdin.buffer.read()
    if os.environ.get("QUERY_STRING") == "hold":
        time.sleep(0.3)
    parent = os.getppid()
    cmdline = open(f"/proc/{parent}/cmdline").read()
    with open(f"/proc/{parent}/stat", "rb") as f:
        stat = f.read()
    print("Content-Type: application/json\\n")
    print(json.dumps({
        "pid": os.getpid(), "ppid": parent, "cmdline": cmdline,
        "gppid": int(stat[stat.rindex(b")") + 2:].split()[1]),
        "length": len(data), "sha256": hashlib.sha256(data).hexdigest(),
    }))
    """
HANG = """\
    import os, sys, time
    print(f"pid {os.getpid()} ppid {os.getppid()}", file=sys.stderr, flush=True)
    time.sleep(30)
    """

# SCRIPTS but left_open.py, which writes to a path of its test's own.
COMPARED = {name: text for name, text in SCRIPTS.items() if name != "left_open.py"}
BODIES = {"env.py": b"a=1&b=2", "writes_first.py": b"q=1&" + b"z" * 1_000_000}
CASES = [(name, "GET") for name in COMPARED] + [(name, "POST") for name in BODIES]
# What the log must show (the comparison alone would pass on two empty logs).
LOGGED = {
    "raises_before.py": ["ValueError: boom before", "exited with status 1"],
    "raises_after.py": ["RuntimeError: boom after", "exited with status 1"],
    "exit_code.py": ["exited with status 3"],
    "exit_message.py": ["why", "exited with status 1"],
}
T = TypeVar("T")


def eventually(check: Callable[[], T | None], timeout: float, what: str) -> T:
    """``check()``'s first truthy value, asking every POLL seconds for ``timeout``."""
    deadline = time.monotonic() + timeout
    while True:
        value = check()
        if value:
            return value
        if time.monotonic() >= deadline:
            raise AssertionError(f"{what}: not within {timeout:g} s")
        time.sleep(POLL)


def stat_fields(pid: int) -> list[bytes]:
    """/proc/PID/stat from field 3 (state) on: [0] state, [1] ppid, [8] cminflt."""
    with open(f"/proc/{pid}/stat", "rb") as f:
        stat = f.read()
    return stat[stat.rindex(b")") + 2 :].split()


def reaped_faults(pid: int) -> int:
    """cminflt: the page faults of the children ``pid`` has reaped. It grows with every
    child it reaps, as a forked script faults in the pages it writes."""
    return int(stat_fields(pid)[8])


def is_zygote(pid: int) -> bool:
    """A live zygote (a zombie's command line is empty)."""
    return b"warm_zygote" in cmdline(pid)


def is_warm(answer: dict[str, Any]) -> bool:
    return "warm_zygote" in answer["cmdline"]


def whoami(server: Server, query: str = "") -> dict[str, Any]:
    status, _, body = server.get(f"/cgi-bin/whoami.py{query}")
    assert status == 200, body[:500]
    answer: dict[str, Any] = json.loads(body)
    return answer


def warm_up(server: Server, workers: int) -> dict[int, int]:
    """Ask whoami.py until each of the server's ``workers`` worker processes has answered
    from its zygote: worker pid -> zygote pid. With several workers the requests go
    ``workers`` at a time (held, and one thread each: each worker takes one)."""
    zygotes: dict[int, int] = {}
    query = "?hold" if workers > 1 else ""

    def all_warm() -> bool:
        with ThreadPoolExecutor(workers) as pool:
            answers = list(pool.map(lambda _: whoami(server, query), range(workers)))
        zygotes.update((a["gppid"], a["ppid"]) for a in answers if is_warm(a))
        return len(zygotes) == workers

    eventually(all_warm, WARM_TIMEOUT, f"{workers} worker(s) answering warm")
    return zygotes


def script(site: Path, name: str, text: str) -> None:
    write_script(site / "cgi-bin" / name, f"#!{PY}\n" + textwrap.dedent(text))


@pytest.fixture(scope="module")
def site(tmp_path_factory: pytest.TempPathFactory) -> Path:
    site = copy_site(tmp_path_factory.mktemp("warm"), compile_c=False)
    for name, text in {**COMPARED, "whoami.py": WHOAMI, "hang.py": HANG}.items():
        script(site, name, text)
    return site


@dataclass
class Pair:
    cold: Server
    warm: Server
    zygote: int  # the warm server's (one worker, one zygote)


@pytest.fixture(scope="module")
def pair(site: Path) -> Iterator[Pair]:
    """A cold server and a warm one on the same site, one worker process each, the warm
    one's zygote serving."""
    cold = Server(site, "--workers", "1")
    try:
        warm = Server(site, "--warm", "--workers", "1")
        try:
            yield Pair(cold, warm, warm_up(warm, 1)[warm.proc.pid])
        finally:
            assert warm.stop() == 0
    finally:
        assert cold.stop() == 0


# -- the same responses, the same log -------------------------------------------------


def test_the_warm_server_forks_scripts_from_its_zygote_and_the_cold_one_does_not(
    pair: Pair,
) -> None:
    cold = whoami(pair.cold)
    assert not is_warm(cold) and cold["ppid"] == pair.cold.proc.pid
    warm = whoami(pair.warm)
    assert is_warm(warm) and warm["ppid"] == pair.zygote
    assert warm["gppid"] == pair.warm.proc.pid  # the zygote is the worker's child
    assert cmdline(pair.zygote).split(b"\0")[0] == PY.encode()  # the #! line's Python


def exchange(
    server: Server, name: str, method: str
) -> tuple[int, dict[str, str], bytes, list[str]]:
    """One request, and the log lines it left: the script's, then its access line's
    status and size (without the time and the duration)."""
    mark = len(server.lines)
    headers = {"Host": HOST}
    status, head, body = server.request(method, f"/cgi-bin/{name}", BODIES.get(name), headers)
    access = re.compile(rf'"{method} /cgi-bin/{re.escape(name)} HTTP/1\.1" (\d+ \d+)')
    match = server.wait_line(access, 10)  # each (name, method) is asked once a server
    assert match is not None, server.lines[mark:]
    lines = server.lines[mark:]
    mine = [line for line in lines if line.startswith(f"cgikit: {name}: ")]
    return status, head, body, [*mine, match.group(1)]


def comparable(name: str, server: Server, body: bytes) -> bytes:
    """env.py's answer less what differs between any two requests or servers: the
    client's port and the server's (checked, then left out)."""
    if name != "env.py":
        return body
    answer = json.loads(body)
    env = answer["env"]
    assert env.pop("SERVER_PORT") == str(server.port)
    assert env.pop("REMOTE_PORT").isdigit()
    ports = ("SERVER_PORT=", "REMOTE_PORT=")
    answer["execd"] = [line for line in answer["execd"] if not line.startswith(ports)]
    return json.dumps(answer, sort_keys=True).encode()


@pytest.mark.parametrize(("name", "method"), CASES, ids=[f"{n}-{m}" for n, m in CASES])
def test_same_response_and_log_lines_cold_and_warm(pair: Pair, name: str, method: str) -> None:
    cold_status, cold_head, cold_body, cold_log = exchange(pair.cold, name, method)
    reaped = reaped_faults(pair.zygote)
    warm_status, warm_head, warm_body, warm_log = exchange(pair.warm, name, method)
    # The zygote reaped a child while this request ran: the script, forked warm.
    eventually(lambda: reaped_faults(pair.zygote) > reaped, 5, "the zygote reaping the script")

    assert warm_status == cold_status
    assert warm_head.pop("date") and cold_head.pop("date")
    assert warm_head == cold_head
    assert comparable(name, pair.warm, warm_body) == comparable(name, pair.cold, cold_body)
    if name == "env.py":  # the sizes differ when the two ports' digits do
        cold_log, warm_log = cold_log[:-1], warm_log[:-1]
    assert warm_log == cold_log
    for line in LOGGED.get(name, []):
        assert f"cgikit: {name}: {line}" in warm_log


# -- workers, faults, shutdown ----------------------------------------------------------


def test_each_worker_process_answers_warm_from_a_zygote_of_its_own(site: Path) -> None:
    server = Server(site, "--warm", "--workers", "2", "--threads", "1")
    try:
        zygotes = warm_up(server, 2)
        assert sorted(zygotes) == workers_of(server)
        assert len(set(zygotes.values())) == 2
        for worker, zygote in zygotes.items():
            assert is_zygote(zygote) and int(stat_fields(zygote)[1]) == worker
    finally:
        assert server.stop() == 0


def test_a_hanging_script_is_a_504_warm_and_the_zygote_serves_on(site: Path) -> None:
    server = Server(site, "--warm", "--workers", "1", "--timeout", "1")
    try:
        zygote = warm_up(server, 1)[server.proc.pid]
        began = time.monotonic()
        status, _, _ = server.get("/cgi-bin/hang.py")
        assert status == 504 and time.monotonic() - began < 5
        started = server.wait_line(re.compile(r"^cgikit: hang\.py: pid (\d+) ppid (\d+)$"), 5)
        assert started is not None, server.lines[-10:]
        assert int(started.group(2)) == zygote  # it ran warm
        killed = r"^cgikit: hang\.py: still running after 1 s \(timeout\); killing its process"
        assert server.wait_line(re.compile(killed), 5) is not None, server.lines[-10:]
        assert process_gone(int(started.group(1)), 5)  # killed, and reaped by its zygote
        after = whoami(server)
        assert is_warm(after) and after["ppid"] == zygote
    finally:
        assert server.stop() == 0


def test_stop_kills_a_warm_script_still_running(site: Path) -> None:
    server = Server(site, "--warm", "--workers", "1", "--grace", "0.5")
    try:
        zygote = warm_up(server, 1)[server.proc.pid]

        def hold() -> None:  # the request stays in flight: the server ends it unanswered
            with contextlib.suppress(OSError, http.client.HTTPException):
                server.get("/cgi-bin/hang.py")

        client = threading.Thread(target=hold, daemon=True)
        client.start()
        started = server.wait_line(re.compile(r"^cgikit: hang\.py: pid (\d+) ppid (\d+)$"), 5)
        assert started is not None, server.lines[-10:]
        assert int(started.group(2)) == zygote
    finally:
        assert server.stop() == 0
    assert process_gone(int(started.group(1)), 5), "the warm script outlived the server"
    client.join(5)


def reap(pids: list[int], timeout: float = 5.0) -> None:
    """Reap those of ``pids`` that are this process's children (came here as orphans of
    a test's own server); SIGKILL by pid one that does not exit in ``timeout``."""
    deadline = time.monotonic() + timeout
    for pid in pids:
        while True:
            try:
                if os.waitpid(pid, os.WNOHANG)[0]:
                    break
            except ChildProcessError:
                break  # not (or no longer) ours
            if time.monotonic() >= deadline:
                os.kill(pid, signal.SIGKILL)
                os.waitpid(pid, 0)
                break
            time.sleep(POLL)


def test_stop_leaves_no_zygote_and_no_zombie(site: Path) -> None:
    """The server's zygotes end before it does. This test is a subreaper meanwhile, as a
    container's PID 1 or a supervisor may be: whatever the server leaves comes here."""
    before = {pid for pid, _ in children(os.getpid())}
    become_subreaper()
    zygotes: list[int] = []
    try:
        server = Server(site, "--warm", "--workers", "1")
        try:
            zygotes.append(warm_up(server, 1)[server.proc.pid])
            assert is_zygote(zygotes[0])
        finally:
            assert server.stop() == 0
        left = [(pid, state) for pid, state in children(os.getpid()) if pid not in before]
        assert left == [], "processes the server left behind (Z: a zombie)"
        assert not os.path.exists(f"/proc/{zygotes[0]}") or not is_zygote(zygotes[0])
    finally:
        become_subreaper(False)
        reap(zygotes)
