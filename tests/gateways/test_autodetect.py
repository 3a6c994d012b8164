"""``cgikit.run(app)`` finds its gateway: CGI, a listening socket on fd 0, systemd's fd 3,
or a terminal. The app is one script, unchanged; the test plays the launcher.

fd 0: the test binds a socket and starts the script with it as stdin, as spawn-fcgi,
mod_fcgid and lighttpd's ``bin-path`` do. systemd: a small wrapper moves the socket to
fd 3, sets LISTEN_PID to its own PID and execs the script (same PID), as systemd does.
Every process is stopped by its PID; its workers must be gone after it.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from gateways.gatewaykit import STARTED, TIMEOUT, Output, child_env, children, gone, request
from gateways.gatewaykit import stop as stop_process

pytestmark = pytest.mark.skipif(sys.platform != "linux", reason="reads /proc")

SCRIPT = "import cgikit\nfrom served_apps import app\ncgikit.run(app)\n"
# What systemd does before it runs a socket-activated service: the socket on fd 3, then
# LISTEN_PID is the service's own PID (exec keeps it).
SYSTEMD = (
    "import os, sys\n"
    "os.dup2(int(sys.argv[1]), 3)\n"
    "os.environ['LISTEN_PID'] = str(os.getpid())\n"
    "os.execv(sys.executable, [sys.executable, *sys.argv[2:]])\n"
)


@pytest.fixture
def script(tmp_path: Path) -> Path:
    path = tmp_path / "app.cgi"
    path.write_text(SCRIPT)
    return path


def bind(family: str, tmp_path: Path) -> tuple[socket.socket, str]:
    """A listening socket for the launcher to hand over, and its address for clients."""
    if family == "unix":
        path = tmp_path / "app.sock"
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        sock.bind(str(path))
        sock.listen(16)
        return sock, f"unix:{path}"
    sock = socket.create_server(("127.0.0.1", 0))
    return sock, f"127.0.0.1:{sock.getsockname()[1]}"


@pytest.fixture
def launched() -> Iterator[list[subprocess.Popen[bytes]]]:
    """The processes a test starts; any still running at the end is stopped by PID."""
    procs: list[subprocess.Popen[bytes]] = []
    yield procs
    for proc in procs:
        if proc.poll() is None:
            stop_process(proc, signal.SIGKILL)


def check_served_then_stop(
    proc: subprocess.Popen[bytes], protocol: str, address: str, multiprocess: bool
) -> None:
    output = Output(proc)
    try:
        match = output.wait_line(STARTED)
        assert (match.group(1), match.group(3)) == (protocol, "1")
        status, reply = request(protocol, address, "/auto", b"a=b")
        assert (status, reply["path"], reply["body"]) == (200, "/auto", "a=b")
        assert reply["ppid"] == proc.pid and reply["listen_fds"] is None
        # One worker, but fd 0's launcher may run more processes of the app (mod_fcgid).
        assert reply["multiprocess"] is multiprocess
        workers = children(proc.pid)
        assert workers == {reply["pid"]}
        # The socket left fd 0, which is now /dev/null (a subprocess gets a sane stdin).
        assert os.readlink(f"/proc/{reply['pid']}/fd/0") == "/dev/null"
        assert stop_process(proc) == 0
        assert all(gone(pid) for pid in workers)
    finally:
        output.close()


@pytest.mark.parametrize("family", ["tcp", "unix"])
def test_a_listening_socket_on_fd_0_gets_fastcgi(
    tmp_path: Path, script: Path, launched: list[subprocess.Popen[bytes]], family: str
) -> None:
    listener, address = bind(family, tmp_path)
    with listener:
        proc = subprocess.Popen(
            [sys.executable, str(script)],
            stdin=listener.fileno(),
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            env=child_env(CGIKIT_WORKERS="1"),
        )
        launched.append(proc)
    check_served_then_stop(proc, "fastcgi", address, multiprocess=True)


@pytest.mark.parametrize(
    ("family", "protocol"), [("tcp", "fastcgi"), ("unix", "scgi"), ("tcp", "http")]
)
def test_systemd_socket_activation(
    tmp_path: Path,
    script: Path,
    launched: list[subprocess.Popen[bytes]],
    family: str,
    protocol: str,
) -> None:
    listener, address = bind(family, tmp_path)
    env = child_env(LISTEN_FDS="1", LISTEN_FDNAMES="app", CGIKIT_WORKERS="1")
    if protocol != "fastcgi":  # FastCGI is what a bare socket gets
        env["CGIKIT_GATEWAY"] = protocol
    with listener:
        proc = subprocess.Popen(
            [sys.executable, "-c", SYSTEMD, str(listener.fileno()), str(script)],
            pass_fds=(listener.fileno(),),
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            env=env,
        )
        launched.append(proc)
    check_served_then_stop(proc, protocol, address, multiprocess=False)


def run_once(script: Path, stdin: int, **env: str) -> subprocess.CompletedProcess[bytes]:
    done = subprocess.run(
        [sys.executable, str(script)],
        stdin=stdin,
        capture_output=True,
        env=child_env(**env),
        timeout=TIMEOUT,
    )
    assert done.returncode == 0, done.stderr
    return done


def test_another_process_s_listen_pid_is_not_ours(script: Path) -> None:
    done = run_once(script, subprocess.DEVNULL, LISTEN_FDS="1", LISTEN_PID="1")
    assert done.stdout.startswith(b"Status: 200 OK\r\n")  # emulated from the terminal
    assert b"emulating" in done.stderr


def test_a_connected_socket_on_fd_0_is_not_a_listener(script: Path) -> None:
    ours, theirs = socket.socketpair()
    with ours, theirs:
        ours.shutdown(socket.SHUT_WR)  # EOF, should the app read its stdin
        done = run_once(script, theirs.fileno())
    assert done.stdout.startswith(b"Status: 200 OK\r\n")
    assert b"emulating" in done.stderr


def test_cgi_wins_and_imports_no_gateway_module(tmp_path: Path) -> None:
    """GATEWAY_INTERFACE is looked at first: a CGI request even with a listening fd 0."""
    out = tmp_path / "modules.txt"
    path = tmp_path / "app.cgi"
    path.write_text(
        f"{SCRIPT}import sys\nopen({str(out)!r}, 'w').write('\\n'.join(sorted(sys.modules)))\n"
    )
    cgi = {"GATEWAY_INTERFACE": "CGI/1.1", "REQUEST_METHOD": "GET", "SCRIPT_NAME": "/app.cgi"}
    with socket.create_server(("127.0.0.1", 0)) as listener:
        done = run_once(path, listener.fileno(), **cgi)
    assert done.stdout.startswith(b"Status: 200 OK\r\n")
    modules = set(out.read_text().split())
    assert {"cgikit", "served_apps"} <= modules
    assert not {m for m in modules if m.startswith("cgikit.gateway")}
    assert "socket" not in modules
