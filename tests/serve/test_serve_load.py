"""``cgikit serve`` under load and failure (issue 3, Tests, and item 4 "Processes").

50 concurrent requests, 1,000 sequential ones (keep-alive and new connections), a 50 MiB
streamed response with the server's memory growth bounded, clients that go away in the
middle of a response (FIN and RST), a script that hangs past ``--timeout`` and one that
crashes. After each, the server is checked through /proc: the same number of open
descriptors as before in its processes (the master and its forked workers) and no other
process under them (a zombie is a child too). Linux only.
"""

from __future__ import annotations

import hashlib
import http.client
import os
import re
import signal
import socket
import struct
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from serve.servekit import Server, copy_site, write_script

pytestmark = [
    pytest.mark.server,
    pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc"),
]

SETTLE = 5.0  # seconds the server gets to close descriptors and reap children
GONE_WITHIN = 5.0  # seconds a script may outlive its client or its timeout
MIB = 1 << 20
BIG_BLOCKS = 800  # 800 x 64 KiB = 50 MiB
BLOCK = 1 << 16
RSS_LIMIT = 30 * MIB
WORKERS = 2  # every server here runs this many worker processes

TINY_SH = "#!/bin/sh\nprintf 'Content-Type: text/plain\\n\\nok\\n'\n"
# Sleeps so that the 50 requests really overlap (16 workers: about 4 rounds).
ECHO_SH = """#!/bin/sh
sleep 0.1
printf 'Content-Type: text/plain\\n\\n%s %s\\n' "$QUERY_STRING" "$$"
"""
BIG_PY = f"""#!{sys.executable}
import sys
out = sys.stdout.buffer
out.write(b"Content-Type: application/octet-stream\\r\\n\\r\\n")
for i in range({BIG_BLOCKS}):
    out.write(i.to_bytes(4, "big") * {BLOCK // 4})
out.flush()
"""
# Writes its PID, a first line, then a line every 0.1 s for at most 60 s.
DRIP_SH = """#!/bin/sh
echo $$ > "{pids}/$QUERY_STRING"
printf 'Content-Type: text/plain\\n\\nfirst\\n'
i=0
while [ $i -lt 600 ]; do sleep 0.1; echo more; i=$((i + 1)); done
"""
# Writes its PID, then hangs before any header (its sleep is a child in its group).
HANG_SH = """#!/bin/sh
echo $$ > "{pids}/$QUERY_STRING"
sleep 60
printf 'Content-Type: text/plain\\n\\nlate\\n'
"""
GARBAGE_SH = "#!/bin/sh\nprintf 'this is no header\\n\\nat all\\n'\nexit 1\n"
SILENT_SH = "#!/bin/sh\necho oops >&2\nexit 1\n"


# -- /proc ------------------------------------------------------------------------------


def open_fds(pid: int) -> int:
    return len(os.listdir(f"/proc/{pid}/fd"))


def children(pid: int) -> list[tuple[int, str]]:
    """(pid, state) of every process whose parent is ``pid``, zombies included."""
    found = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat", "rb") as f:
                stat = f.read()
        except OSError:  # gone meanwhile
            continue
        fields = stat[stat.rindex(b")") + 2 :].split()  # after "pid (comm) "
        if int(fields[1]) == pid:
            found.append((int(entry), fields[0].decode()))
    return found


def status_kib(pid: int, field: str) -> int:
    with open(f"/proc/{pid}/status", encoding="ascii") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    raise KeyError(field)


def cmdline(pid: int) -> bytes:
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            return f.read()
    except OSError:
        return b""


def server_processes(server: Server) -> list[int]:
    """The master and its workers (forked, not exec'd: the master's command line)."""
    master = server.proc.pid
    mine = cmdline(master)
    kids = [pid for pid, state in children(master) if state != "Z" and cmdline(pid) == mine]
    return [master, *sorted(kids)]


def tree_fds(server: Server) -> int:
    return sum(open_fds(pid) for pid in server_processes(server))


def strays(server: Server) -> list[tuple[int, str]]:
    """Every process under the server that is not one of its own: scripts, zombies."""
    ours = server_processes(server)
    return [kid for pid in ours for kid in children(pid) if kid[0] not in ours]


def settled(server: Server, fds_before: int) -> tuple[int, list[tuple[int, str]]]:
    """The server's descriptor count and strays once back to ``fds_before`` and none,
    or as they are after ``SETTLE`` seconds (50 polls at most)."""
    deadline = time.monotonic() + SETTLE
    for _ in range(50):
        fds, kids = tree_fds(server), strays(server)
        if (fds <= fds_before and not kids) or time.monotonic() >= deadline:
            break
        time.sleep(SETTLE / 50)
    return fds, kids


def baseline(server: Server) -> int:
    """The server's descriptor count at rest, after a warm-up request: the same count
    twice 0.1 s apart, every worker up and no stray (``SETTLE`` seconds at most)."""
    assert server.get("/cgi-bin/tiny.sh")[2] == b"ok\n"
    last = -1
    for _ in range(int(SETTLE / 0.1)):
        fds = tree_fds(server)
        if fds == last and not strays(server) and len(server_processes(server)) == 1 + WORKERS:
            return fds
        last = fds
        time.sleep(0.1)
    raise AssertionError(
        f"the server does not settle: {tree_fds(server)} fds, {server_processes(server)}, "
        f"strays {strays(server)}"
    )


def process_gone(pid: int, timeout: float) -> bool:
    """Whether /proc/<pid> disappears (exited *and* reaped) within ``timeout``."""
    deadline = time.monotonic() + timeout
    while os.path.exists(f"/proc/{pid}"):
        if time.monotonic() >= deadline:
            return False
        time.sleep(0.02)
    return True


def group_gone(pgid: int, timeout: float = 2.0) -> bool:
    """Whether the group is empty (every member exited and reaped) within ``timeout``:
    its members get the kill together, and one may still be exiting, or waiting for the
    server (their subreaper) to reap it, when the script itself is gone."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            os.killpg(pgid, 0)
        except ProcessLookupError:
            return True
        except PermissionError:
            pass
        if time.monotonic() >= deadline:
            return False
        time.sleep(0.02)


def read_pid(path: Path, timeout: float = 10.0) -> int:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        text = path.read_text() if path.exists() else ""
        if text.endswith("\n"):
            return int(text)
        time.sleep(0.02)
    raise AssertionError(f"no PID in {path}")


def assert_clean(server: Server, fds_before: int) -> None:
    fds, kids = settled(server, fds_before)
    assert (fds, kids) == (fds_before, [])


# -- fixtures ---------------------------------------------------------------------------


@pytest.fixture(scope="module")
def load_site(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("load")
    site = copy_site(root, compile_c=False)
    pids = root / "pids"
    pids.mkdir()
    bin_ = site / "cgi-bin"
    write_script(bin_ / "tiny.sh", TINY_SH)
    write_script(bin_ / "echo.sh", ECHO_SH)
    write_script(bin_ / "big.py", BIG_PY)
    write_script(bin_ / "drip.sh", DRIP_SH.format(pids=pids))
    write_script(bin_ / "hang.sh", HANG_SH.format(pids=pids))
    write_script(bin_ / "garbage.sh", GARBAGE_SH)
    write_script(bin_ / "silent.sh", SILENT_SH)
    return site


@pytest.fixture(scope="module")
def pids(load_site: Path) -> Path:
    return load_site.parent / "pids"


@pytest.fixture(scope="module")
def load_server(load_site: Path) -> Iterator[Server]:
    running = Server(load_site, "--workers", str(WORKERS))
    try:
        yield running
    finally:
        assert running.stop() == 0


# -- 1. concurrency -----------------------------------------------------------------------


def test_50_concurrent_requests_all_correct(load_server: Server) -> None:
    fds_before = baseline(load_server)
    count = 50
    answers: dict[int, tuple[int, bytes]] = {}
    errors: list[BaseException] = []
    start = threading.Barrier(count, timeout=10)

    def fetch(n: int) -> None:
        try:
            start.wait()
            conn = http.client.HTTPConnection("127.0.0.1", load_server.port, timeout=20)
            try:
                conn.request("GET", f"/cgi-bin/echo.sh?token-{n}")
                response = conn.getresponse()
                answers[n] = (response.status, response.read())
            finally:
                conn.close()
        except BaseException as exc:
            errors.append(exc)

    clients = [threading.Thread(target=fetch, args=(n,), daemon=True) for n in range(count)]
    began = time.monotonic()
    for client in clients:
        client.start()
    for client in clients:
        client.join(max(0.1, began + 30 - time.monotonic()))
    assert errors == [] and not any(c.is_alive() for c in clients)
    assert sorted(answers) == list(range(count))
    pids_seen = set()
    for n, (status, body) in answers.items():
        token, pid = body.decode().split()
        assert (status, token) == (200, f"token-{n}")
        pids_seen.add(int(pid))
    assert len(pids_seen) == count  # one process each
    assert_clean(load_server, fds_before)


# -- 2. many sequential requests ------------------------------------------------------------


def test_1000_sequential_requests_keep_alive_and_new_connections(load_server: Server) -> None:
    fds_before = baseline(load_server)
    conn = http.client.HTTPConnection("127.0.0.1", load_server.port, timeout=10)
    try:
        conn.connect()
        assert conn.sock is not None
        local = conn.sock.getsockname()
        for _ in range(500):
            conn.request("GET", "/cgi-bin/tiny.sh")
            response = conn.getresponse()
            assert (response.status, response.read()) == (200, b"ok\n")
            # http.client would reconnect silently: the same socket proves keep-alive.
            assert conn.sock is not None and conn.sock.getsockname() == local
    finally:
        conn.close()
    for _ in range(500):
        status, _, body = load_server.get("/cgi-bin/tiny.sh")
        assert (status, body) == (200, b"ok\n")
    assert_clean(load_server, fds_before)


# -- 3. a big response is streamed, not buffered ------------------------------------------


def expected_big() -> tuple[int, str]:
    digest = hashlib.sha256()
    for i in range(BIG_BLOCKS):
        digest.update(i.to_bytes(4, "big") * (BLOCK // 4))
    return BIG_BLOCKS * BLOCK, digest.hexdigest()


def test_50_mib_response_streams_in_bounded_memory(load_site: Path) -> None:
    # A server of its own: its VmHWM then holds nothing of the other tests.
    server = Server(load_site, "--workers", str(WORKERS))
    try:
        fds_before = baseline(server)
        pids = server_processes(server)
        rss_before = {pid: status_kib(pid, "VmRSS") * 1024 for pid in pids}
        peak = dict(rss_before)
        done = threading.Event()

        def sample() -> None:
            for _ in range(6000):  # 5 ms apart: 30 s at most
                for pid in pids:
                    peak[pid] = max(peak[pid], status_kib(pid, "VmRSS") * 1024)
                if done.wait(0.005):
                    return

        sampler = threading.Thread(target=sample, daemon=True)
        sampler.start()
        digest, length = hashlib.sha256(), 0
        conn = http.client.HTTPConnection("127.0.0.1", server.port, timeout=20)
        try:
            conn.request("GET", "/cgi-bin/big.py")
            response = conn.getresponse()
            assert response.status == 200
            while chunk := response.read(BLOCK):
                digest.update(chunk)
                length += len(chunk)
                if length == MIB:
                    # A slow reader: a server that buffered would now slurp the rest.
                    time.sleep(1.0)
        finally:
            conn.close()
            done.set()
            sampler.join(5)
        assert (length, digest.hexdigest()) == expected_big()
        for pid in pids:  # the worker that served it, and the others
            hwm_after = status_kib(pid, "VmHWM") * 1024
            growth = peak[pid] - rss_before[pid]
            print(f"{pid}: RSS before {rss_before[pid] / MIB:.1f} MiB, sampled peak growth "
                  f"{growth / MIB:.1f} MiB, VmHWM after {hwm_after / MIB:.1f} MiB")  # fmt: skip
            assert growth < RSS_LIMIT
            assert hwm_after - rss_before[pid] < RSS_LIMIT  # the kernel's peak, between samples
        assert_clean(server, fds_before)
    finally:
        assert server.stop() == 0


# -- 4. the client goes away mid-response ---------------------------------------------------


def raw_get(port: int, target: str) -> socket.socket:
    sock = socket.create_connection(("127.0.0.1", port), timeout=10)
    sock.sendall(f"GET {target} HTTP/1.1\r\nHost: localhost\r\n\r\n".encode())
    return sock


@pytest.mark.parametrize("reset", [False, True], ids=["fin", "rst"])
def test_client_gone_mid_response_ends_the_script(
    load_server: Server, pids: Path, reset: bool
) -> None:
    fds_before = baseline(load_server)
    name = f"drip-{'rst' if reset else 'fin'}"
    sock = raw_get(load_server.port, f"/cgi-bin/drip.sh?{name}")
    try:
        got = b""
        for _ in range(100):  # bounded by count and by the socket timeout
            got += sock.recv(4096)
            if b"first\n" in got:
                break
        assert got.startswith(b"HTTP/1.1 200 ") and b"first\n" in got
        script = read_pid(pids / name)
        assert os.path.exists(f"/proc/{script}")  # still dripping
        if reset:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    finally:
        sock.close()
    closed = time.monotonic()
    assert process_gone(script, GONE_WITHIN), f"script {script} outlived its client"
    print(f"{name}: script gone {time.monotonic() - closed:.2f} s after the close")
    assert group_gone(script)  # its sleep too
    assert load_server.get("/cgi-bin/tiny.sh")[2] == b"ok\n"
    assert_clean(load_server, fds_before)


# -- 5. a script that hangs before its head -------------------------------------------------


def test_timeout_before_head_is_504_and_kills_the_group(load_site: Path, pids: Path) -> None:
    server = Server(load_site, "--timeout", "1", "--workers", str(WORKERS))
    try:
        fds_before = baseline(server)
        began = time.monotonic()
        status, _, body = server.get("/cgi-bin/hang.sh?hang")
        took = time.monotonic() - began
        assert (status, body) == (504, b"504 Gateway Timeout\n")
        assert took < 1 + GONE_WITHIN, f"504 after {took:.2f} s"
        print(f"hang: 504 after {took:.2f} s")
        script = read_pid(pids / "hang")
        assert process_gone(script, GONE_WITHIN) and group_gone(script)
        assert server.wait_line(re.compile(r"hang\.sh.*timeout"), 5) is not None
        assert server.get("/cgi-bin/tiny.sh")[2] == b"ok\n"
        assert_clean(server, fds_before)
    finally:
        assert server.stop() == 0


# -- 6. a script that crashes ---------------------------------------------------------------


@pytest.mark.parametrize("script", ["garbage.sh", "silent.sh"])
def test_crashing_script_is_502_and_logged(load_server: Server, script: str) -> None:
    fds_before = baseline(load_server)
    status, _, _ = load_server.get(f"/cgi-bin/{script}")
    assert status == 502
    named = re.compile(re.escape(script) + r".*(malformed|no response|status 1)")
    assert load_server.wait_line(named, 5) is not None, load_server.lines[-5:]
    assert load_server.get("/cgi-bin/tiny.sh")[2] == b"ok\n"
    assert_clean(load_server, fds_before)


# Writes its PID, then stays silent for 20 s: before its head, or after a first line.
QUIET_SH = """#!/bin/sh
echo $$ > "{pids}/$QUERY_STRING"
case "$QUERY_STRING" in
  after*) printf 'Content-Type: text/plain\\n\\nfirst\\n'; sleep 20; echo late;;
  *) sleep 20; printf 'Content-Type: text/plain\\n\\nlate\\n';;
esac
"""


@pytest.mark.parametrize("when", ["before-head", "after-head"])
def test_client_gone_while_script_is_silent_ends_it(load_site: Path, pids: Path, when: str) -> None:
    write_script(load_site / "cgi-bin" / "quiet.sh", QUIET_SH.format(pids=pids))
    server = Server(load_site)  # its own: a stuck worker must not disturb the others
    script = 0
    try:
        sock = raw_get(server.port, f"/cgi-bin/quiet.sh?{when}")
        try:
            script = read_pid(pids / when)
            if when == "after-head":
                got = b""
                for _ in range(100):  # bounded by count and by the socket timeout
                    got += sock.recv(4096)
                    if b"first\n" in got:
                        break
                assert b"first\n" in got
        finally:
            sock.close()
        assert process_gone(script, GONE_WITHIN), f"script {script} outlived its client"
    finally:
        if script and not group_gone(script):
            os.killpg(script, signal.SIGKILL)  # the test's own script, by its PID (= its group)
        assert server.stop() == 0
