"""``cgikit serve`` as processes: workers, their supervision, shutdown, the switch of user.

Real servers (``python -m cgikit serve``) on 127.0.0.1; processes are looked at through
/proc (Linux only). Covers the prefork master (a worker that dies is replaced, SIGHUP
replaces them all, the workers die with the master, busy workers leave connections to
idle ones), the shutdown (a script still running after ``--grace`` is killed) and the
switch from root to ``nobody`` or ``--user``.
"""

from __future__ import annotations

import os
import pwd
import re
import shutil
import signal
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from serve.servekit import Server, copy_site, write_script
from serve.test_serve_load import children, cmdline, process_gone, read_pid

pytestmark = [
    pytest.mark.server,
    pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc"),
]

PPID_SH = "#!/bin/sh\nprintf 'Content-Type: text/plain\\n\\n%s\\n' \"$PPID\"\n"
SLOW_SH = "#!/bin/sh\nsleep 1\nprintf 'Content-Type: text/plain\\n\\n%s\\n' \"$PPID\"\n"
ID_SH = '#!/bin/sh\nprintf \'Content-Type: text/plain\\n\\n%s %s\\n\' "$(id -u)" "$(id -g)"\n'
LINGER_SH = """#!/bin/sh
echo $$ > "{pids}/linger"
printf 'Content-Type: text/plain\\n\\nfirst\\n'
sleep 60
"""


def workers_of(server: Server) -> list[int]:
    """The master's live children that are workers (forked: the master's command line)."""
    mine = cmdline(server.proc.pid)
    kids = children(server.proc.pid)
    return sorted(pid for pid, state in kids if state != "Z" and cmdline(pid) == mine)


def wait_workers(server: Server, count: int, timeout: float = 10.0) -> list[int]:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        found = workers_of(server)
        if len(found) == count:
            return found
        time.sleep(0.05)
    raise AssertionError(f"not {count} workers: {workers_of(server)}")


@pytest.fixture(scope="module")
def site(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("process")
    site = copy_site(root, compile_c=False)
    (root / "pids").mkdir()
    write_script(site / "cgi-bin" / "ppid.sh", PPID_SH)
    write_script(site / "cgi-bin" / "slow.sh", SLOW_SH)
    write_script(site / "cgi-bin" / "linger.sh", LINGER_SH.format(pids=root / "pids"))
    return site


@pytest.fixture
def server(site: Path) -> Iterator[Server]:
    running = Server(site, "--workers", "3", "--threads", "2")
    try:
        yield running
    finally:
        assert running.stop() == 0


def test_workers_serve_and_a_dead_worker_is_replaced(server: Server) -> None:
    workers = wait_workers(server, 3)
    assert server.wait_line(re.compile(r"3 worker process\(es\) x 2 threads"), 5)
    os.kill(workers[0], signal.SIGKILL)  # a worker of the test's own server, by PID
    line = re.compile(rf"worker {workers[0]} was killed by signal 9; starting another")
    assert server.wait_line(line, 5) is not None, server.lines[-5:]
    after = wait_workers(server, 3)
    assert workers[0] not in after and set(workers[1:]) <= set(after)
    for _ in range(20):
        status, _, body = server.get("/cgi-bin/ppid.sh")
        assert status == 200 and int(body) in after


def test_sighup_replaces_every_worker_without_refusing_requests(server: Server) -> None:
    before = wait_workers(server, 3)
    failures: list[object] = []
    stop = threading.Event()

    def load() -> None:
        while not stop.is_set():
            try:
                status, _, body = server.get("/cgi-bin/ppid.sh")
                if status != 200:
                    failures.append((status, body))
            except OSError as exc:
                failures.append(exc)

    client = threading.Thread(target=load, daemon=True)
    client.start()
    try:
        time.sleep(0.3)
        server.proc.send_signal(signal.SIGHUP)
        assert server.wait_line(re.compile(r"SIGHUP: replacing 3 worker"), 5) is not None
        deadline = time.monotonic() + 15
        while time.monotonic() < deadline and set(workers_of(server)) & set(before):
            time.sleep(0.05)
        time.sleep(0.3)
    finally:
        stop.set()
        client.join(10)
    after = wait_workers(server, 3)
    assert not set(after) & set(before)
    assert failures == []
    time.sleep(1.0)  # the new set stays: no worker of it stops or dies
    assert workers_of(server) == after
    assert not [line for line in server.lines if re.search(r"worker \d+ (exited|was killed)", line)]


def test_busy_workers_leave_new_connections_to_idle_ones(site: Path) -> None:
    server = Server(site, "--workers", "2", "--threads", "1")
    try:
        workers = wait_workers(server, 2)
        for _ in range(3):  # a lucky split without the rule is likely once, not thrice
            answers: list[tuple[int, bytes]] = []

            def fetch(into: list[tuple[int, bytes]] = answers) -> None:
                status, _, body = server.get("/cgi-bin/slow.sh")
                into.append((status, body))

            clients = [threading.Thread(target=fetch) for _ in range(2)]
            began = time.monotonic()
            for client in clients:
                client.start()
            for client in clients:
                client.join(20)
            took = time.monotonic() - began
            assert [status for status, _ in answers] == [200, 200]
            # One thread each: both at once only if each worker took one connection.
            assert {int(body) for _, body in answers} == set(workers)
            assert took < 1.9, f"the second request waited for the first: {took:.2f} s"
    finally:
        assert server.stop() == 0


def test_workers_die_with_the_master(site: Path) -> None:
    server = Server(site, "--workers", "2")
    workers = wait_workers(server, 2)
    server.proc.kill()  # the test's own server, by PID: no chance to stop its workers
    server.proc.wait(10)
    for pid in workers:
        assert process_gone(pid, 10), f"worker {pid} outlived its master"
    server.stop()


@pytest.mark.parametrize("workers", ["1", "2"])
def test_shutdown_kills_a_script_still_running_after_the_grace(site: Path, workers: str) -> None:
    pids = site.parent / "pids"
    (pids / "linger").unlink(missing_ok=True)
    server = Server(site, "--workers", workers, "--grace", "0.5")
    sock_holder: list[object] = []

    def hold() -> None:  # the request stays in flight: the script never ends
        import socket

        sock = socket.create_connection(("127.0.0.1", server.port), timeout=30)
        sock_holder.append(sock)
        sock.sendall(b"GET /cgi-bin/linger.sh HTTP/1.1\r\nHost: x\r\n\r\n")
        sock.recv(4096)

    client = threading.Thread(target=hold, daemon=True)
    client.start()
    script = read_pid(pids / "linger")
    began = time.monotonic()
    assert server.stop() == 0, server.lines[-15:]
    took = time.monotonic() - began
    assert process_gone(script, 5), f"script {script} outlived the server"
    assert took < 10, f"stopping took {took:.2f} s"
    for sock in sock_holder:
        sock.close()  # type: ignore[attr-defined]
    client.join(5)


# -- the user -----------------------------------------------------------------------------

root_only = pytest.mark.skipif(os.geteuid() != 0, reason="switching user needs root")


@pytest.fixture(scope="module")
def public_site() -> Iterator[Path]:
    """A site every user can read (pytest's temp dirs are root's alone)."""
    top = Path(tempfile.mkdtemp(prefix="cgikit-user-", dir="/tmp"))
    try:
        top.chmod(0o755)
        site = copy_site(top, compile_c=False)
        write_script(site / "cgi-bin" / "id.sh", ID_SH)
        yield site
    finally:
        shutil.rmtree(top)


@root_only
@pytest.mark.parametrize("user", [None, "daemon"])
def test_root_gives_up_root_before_serving(public_site: Path, user: str | None) -> None:
    entry = pwd.getpwnam(user or "nobody")
    flags = [] if user is None else ["--user", user]
    server = Server(public_site, *flags, keep_root=False)
    try:
        status, _, body = server.get("/cgi-bin/id.sh")
        assert (status, body) == (200, f"{entry.pw_uid} {entry.pw_gid}\n".encode())
        for pid in [server.proc.pid, *workers_of(server)]:
            with open(f"/proc/{pid}/status", encoding="ascii") as f:
                uids = next(line for line in f if line.startswith("Uid:")).split()[1:]
            assert uids == [str(entry.pw_uid)] * 4  # real, effective, saved, fs
        assert server.wait_line(re.compile(rf"as user {entry.pw_name}$"), 5) is not None
    finally:
        assert server.stop() == 0


def test_an_unknown_user_is_refused(site: Path) -> None:
    with pytest.raises(RuntimeError, match="no such user"):
        Server(site, "--user", "no-such-user-cgikit")


@pytest.mark.skipif(os.geteuid() == 0, reason="root may switch")
def test_only_root_can_switch_user(site: Path) -> None:
    with pytest.raises(RuntimeError, match="only a server started as root"):
        Server(site, "--user", "root")
