"""Helpers for the gateway-server tests: ``cgikit run --fastcgi|--scgi|--http`` as a real
child process, and one request over each protocol on loopback TCP or a Unix socket.

The FastCGI and SCGI clients are the driver tests' (tests/drivers). Every process is
stopped by its PID; ``Gateway.stop`` then checks that no worker it had is left.
"""

from __future__ import annotations

import json
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

from cgikit import fastcgi_records as wire
from drivers.test_fastcgi_server import PARAMS, read_reply, request_bytes
from drivers.test_scgi_server import exchange, scgi_request

HERE = Path(__file__).resolve().parent
SRC = HERE.parents[1] / "src"
PYTHONPATH = f"{SRC}{os.pathsep}{HERE}"
TIMEOUT = 15.0
STARTED = re.compile(r"^cgikit: (fastcgi|scgi|http) on (\S+), (\d+) worker process")


def child_env(**extra: str) -> dict[str, str]:
    """The environment of a served app: no CGI variables, the test apps importable."""
    keep = ("PATH", "LANG", "SYSTEMROOT")
    env = {k: v for k, v in os.environ.items() if k in keep}
    return {**env, "PYTHONPATH": PYTHONPATH, "PYTHONDONTWRITEBYTECODE": "1", **extra}


class Output:
    """A child's stderr, drained by a thread (a full pipe would block its log writes)."""

    def __init__(self, proc: subprocess.Popen[bytes]) -> None:
        self.proc, self.lines = proc, []  # type: list[str]
        self._seen = threading.Condition()
        self._reader = threading.Thread(target=self._drain, daemon=True)
        self._reader.start()

    def _drain(self) -> None:
        assert self.proc.stderr is not None
        for raw in self.proc.stderr:
            with self._seen:
                self.lines.append(raw.decode("utf-8", "replace").rstrip("\n"))
                self._seen.notify_all()

    def wait_line(self, pattern: re.Pattern[str], timeout: float = TIMEOUT) -> re.Match[str]:
        deadline = time.monotonic() + timeout
        with self._seen:
            while True:
                for line in self.lines:
                    if match := pattern.search(line):
                        return match
                left = deadline - time.monotonic()
                if left <= 0 or not self._reader.is_alive():
                    raise AssertionError(f"no line matching {pattern.pattern!r}: {self.lines}")
                self._seen.wait(min(left, 0.2))

    def close(self) -> None:
        self._reader.join(5)
        # Closing the pipe under a reader still blocked on it would wait for that read
        # (the file's lock): a test that failed with the child still running would hang.
        # Its reader ends once the child is stopped.
        if self.proc.stderr is not None and not self._reader.is_alive():
            self.proc.stderr.close()


def stop(proc: subprocess.Popen[bytes], signum: int | None = signal.SIGTERM) -> int:
    """Signal the process by its PID (None: it was) and wait for it; SIGKILL if it hangs."""
    if signum is not None and proc.poll() is None:
        os.kill(proc.pid, signum)
    try:
        return proc.wait(TIMEOUT + 10)
    except subprocess.TimeoutExpired:
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait(10)
        raise AssertionError(f"process {proc.pid} ignored signal {signum}") from None


def children(pid: int) -> set[int]:
    """The live (not zombie) child processes of ``pid``, from /proc."""
    found = set()
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            stat = Path(f"/proc/{entry}/stat").read_text()
        except OSError:
            continue
        fields = stat.rpartition(")")[2].split()  # after the command name, which may hold spaces
        if int(fields[1]) == pid and fields[0] != "Z":
            found.add(int(entry))
    return found


def gone(pid: int) -> bool:
    """True once ``pid`` is neither running nor a zombie."""
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()[0]
    except OSError:
        return True
    return state == "X"


class Gateway:
    """``python -m cgikit run --PROTOCOL ADDR FLAGS served_apps:app``, once it has started."""

    def __init__(self, protocol: str, address: str, *flags: str, **env: str) -> None:
        self.protocol = protocol
        argv = [sys.executable, "-m", "cgikit", "run", f"--{protocol}", address, *flags]
        self.proc = subprocess.Popen(
            [*argv, "served_apps:app"],
            env=child_env(**env),
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
        )
        self.output = Output(self.proc)
        try:
            match = self.output.wait_line(STARTED)
        except AssertionError:
            self.stop()
            raise
        self.address = match.group(2)
        self.workers_seen: set[int] = set()

    def request(self, path: str = "/", body: bytes = b"") -> tuple[int, dict[str, Any]]:
        status, reply = request(self.protocol, self.address, path, body)
        self.workers_seen.add(reply["pid"])
        return status, reply

    def workers(self) -> set[int]:
        return children(self.proc.pid)

    def stop(self, signum: int | None = signal.SIGTERM) -> int:
        self.workers_seen |= self.workers()
        try:
            status = stop(self.proc, signum)
        finally:
            self.output.close()
        left = [pid for pid in self.workers_seen if not gone(pid)]
        assert left == [], f"workers left running: {left}"
        return status


# -- one request over each protocol ------------------------------------------------------


def connect(address: str) -> socket.socket:
    """A client socket connected to ``host:port``, ``[::1]:port`` or ``unix:/path``."""
    if address.startswith("unix:"):
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        sock.settimeout(TIMEOUT)
        sock.connect(address[len("unix:") :])
        return sock
    host, _, port = address.rpartition(":")
    return socket.create_connection((host.strip("[]"), int(port)), timeout=TIMEOUT)


def request(
    protocol: str, address: str, path: str = "/", body: bytes = b""
) -> tuple[int, dict[str, Any]]:
    """One request to the served app: the status code and the app's JSON report."""
    method = "POST" if body else "GET"
    with connect(address) as sock:
        if protocol == "fastcgi":
            params = {**PARAMS, b"PATH_INFO": path.encode(), b"REQUEST_METHOD": method.encode()}
            params[b"CONTENT_LENGTH"] = str(len(body)).encode()
            sock.sendall(request_bytes(params=params, body=body))
            reply = read_reply(sock)
            assert reply.end == (0, wire.REQUEST_COMPLETE)
            raw = reply.stdout
        elif protocol == "scgi":
            raw = exchange(sock, scgi_request(body, PATH_INFO=path, REQUEST_METHOD=method))
        else:
            head = f"{method} {path} HTTP/1.1\r\nHost: test\r\nConnection: close\r\n"
            sock.sendall(f"{head}Content-Length: {len(body)}\r\n\r\n".encode() + body)
            raw = b""
            while chunk := sock.recv(65536):
                raw += chunk
    head_block, _, payload = raw.partition(b"\r\n\r\n")
    first = head_block.split(b"\r\n", 1)[0].decode("latin-1")
    code = int(first.split()[1])  # "Status: 200 OK" or "HTTP/1.1 200 OK"
    return code, json.loads(payload)
