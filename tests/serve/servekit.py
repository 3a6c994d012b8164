"""Helpers for the ``cgikit serve`` tests: a temp copy of examples/site, the server as a
real subprocess on 127.0.0.1 (port 0, read from its start-up line), plain HTTP requests."""

from __future__ import annotations

import http.client
import os
import re
import shutil
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

SRC = Path(__file__).resolve().parents[2] / "src"
SITE = SRC.parent / "examples" / "site"
START_TIMEOUT = 15.0
STARTED = re.compile(r"^cgikit: serving (\S+) at http://127\.0\.0\.1:(\d+)/ \(CGI: (.*)\)$")


def write_script(path: Path, text: str) -> Path:
    """An executable script at ``path`` (directories made)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    path.chmod(0o755)
    return path


def copy_site(dest: Path, compile_c: bool = True) -> Path:
    """examples/site copied to ``dest`` (modes kept), with cgi-bin/hello.c compiled."""
    site = dest / "site"
    shutil.copytree(SITE, site)
    cc = shutil.which("cc")
    if cc is not None and compile_c:
        subprocess.run(
            [cc, "-O2", "-o", str(site / "cgi-bin" / "hello"), str(site / "cgi-bin" / "hello.c")],
            check=True,
            timeout=60,
        )
    return site


class Server:
    """``python -m cgikit serve --port 0 ... ROOT`` as a child; ``stop()`` ends it by PID."""

    def __init__(
        self, root: Path, *flags: str, env: dict[str, str] | None = None, keep_root: bool = True
    ) -> None:
        # As root, the server would become nobody, who cannot read a pytest temp dir:
        # these tests keep root (tests/serve/test_serve_process.py covers the switch).
        user = {"CGIKIT_USER": "root"} if keep_root and os.geteuid() == 0 else {}
        full_env = {**os.environ, "PYTHONPATH": str(SRC), **user, **(env or {})}
        argv = [sys.executable, "-m", "cgikit", "serve", "--port", "0", *flags, str(root)]
        self.proc = subprocess.Popen(
            argv, env=full_env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE
        )
        self.lines: list[str] = []
        self._seen = threading.Condition()
        # Drained all the time: a full stderr pipe would block the server's log writes.
        self._reader = threading.Thread(target=self._drain, daemon=True)
        self._reader.start()
        match = self.wait_line(STARTED, START_TIMEOUT)
        if match is None:
            self.stop()
            raise RuntimeError(f"no start-up line: {self.lines!r}")
        self.startup = match
        self.port = int(match.group(2))

    def _drain(self) -> None:
        if self.proc.stderr is None:
            raise RuntimeError("stderr is not a pipe")
        for raw in self.proc.stderr:
            with self._seen:
                self.lines.append(raw.decode("utf-8", "replace").rstrip("\n"))
                self._seen.notify_all()

    def wait_line(self, pattern: re.Pattern[str], timeout: float) -> re.Match[str] | None:
        """The first log line matching ``pattern``, waiting up to ``timeout`` seconds."""
        deadline = time.monotonic() + timeout
        with self._seen:
            while True:
                for line in self.lines:
                    if match := pattern.search(line):
                        return match
                left = deadline - time.monotonic()
                if left <= 0 or (self.proc.poll() is not None and not self._reader.is_alive()):
                    return None
                self._seen.wait(min(left, 0.2))

    def request(
        self,
        method: str,
        target: str,
        body: bytes | None = None,
        headers: dict[str, str] | None = None,
    ) -> tuple[int, dict[str, str], bytes]:
        conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=20)
        try:
            conn.request(method, target, body=body, headers=headers or {})
            response = conn.getresponse()
            data = response.read()
            return response.status, {k.lower(): v for k, v in response.getheaders()}, data
        finally:
            conn.close()

    def get(self, target: str, **headers: str) -> tuple[int, dict[str, str], bytes]:
        return self.request("GET", target, headers=headers)

    def stop(self) -> int:
        """SIGTERM, then the exit status (SIGKILL after a bounded wait, then a failure)."""
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        try:
            status = self.proc.wait(20)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(10)
            raise RuntimeError("cgikit serve did not stop on SIGTERM") from None
        finally:
            self._reader.join(5)
            if self.proc.stderr is not None:
                self.proc.stderr.close()
        return status
