"""Real web servers for the integration tests, started from the configs users copy.

Apache httpd (mod_cgid) and lighttpd (mod_cgi) start from docs/deploy/*.conf with the
placeholders filled in, so the documented configs are the tested ones. BusyBox httpd
needs no config: ``busybox httpd -f -p 127.0.0.1:PORT -h DOCROOT -u www-data``, with its
scripts in DOCROOT/cgi-bin/.

Each server gets a free 127.0.0.1 port and a private run directory; ``stop`` ends it by
the PID we started (SIGTERM, a bounded wait, then SIGKILL) and reaps it. A missing
binary fails the test when the CI variable is set (CI must never silently skip) and
skips it otherwise.
"""

from __future__ import annotations

import os
import pwd
import re
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import NoReturn

import pytest

REPO = Path(__file__).resolve().parent.parent
DEPLOY = REPO / "docs" / "deploy"
HOST = "127.0.0.1"
CGI_USER = "www-data"  # the user every config below runs scripts as
START_TIMEOUT = 15.0  # seconds for a server to accept connections
STOP_TIMEOUT = 10.0  # seconds for a server to exit after SIGTERM
POLL = 0.05
# The servers' whole environment. BusyBox passes its own environment on to every script,
# so the test runner's (HOME, PYTHON* variables, a pyenv PATH) must not be it.
SERVER_ENV = {"PATH": "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"}

# Known install locations, for when /usr/sbin is not on PATH (a non-root shell).
APACHE_BINARIES = ("apache2", "/usr/sbin/apache2", "httpd", "/usr/sbin/httpd")
APACHE_MODULE_DIRS = (
    "/usr/lib/apache2/modules",
    "/usr/lib64/httpd/modules",
    "/usr/lib/httpd/modules",
)
LIGHTTPD_BINARIES = ("lighttpd", "/usr/sbin/lighttpd")
BUSYBOX_BINARIES = ("busybox", "/usr/bin/busybox", "/bin/busybox")


@dataclass
class Server:
    """A running server: where to send requests and where the scripts' stderr lands."""

    name: str
    port: int
    error_log: Path  # the CGI scripts' stderr: cgikit's log lines and tracebacks
    logs: tuple[Path, ...]  # every file the server writes, shown when something fails
    process: subprocess.Popen[bytes]
    rundir: Path

    @property
    def base_url(self) -> str:
        return f"http://{HOST}:{self.port}"

    def log_size(self) -> int:
        """Where the error log ends now: pass it to ``log_since`` after a request."""
        try:
            return self.error_log.stat().st_size
        except FileNotFoundError:
            return 0

    def log_since(self, offset: int) -> str:
        try:
            with self.error_log.open("rb") as log:
                log.seek(offset)
                return log.read().decode("utf-8", "replace")
        except FileNotFoundError:
            return ""

    def diagnostics(self, tail: int = 3000) -> str:
        """The end of every log, for assertion messages."""
        parts = [f"{self.name} (pid {self.process.pid}, exit {self.process.poll()})"]
        for path in self.logs:
            text = path.read_text("utf-8", "replace") if path.exists() else "(missing)"
            parts.append(f"--- {path.name}:\n{text[-tail:]}")
        return "\n".join(parts)


def unavailable(reason: str) -> NoReturn:
    """A server cannot run here: a failure in CI, a skip on a developer's machine."""
    if os.environ.get("CI"):
        pytest.fail(f"{reason} (CI is set: servers must not be skipped)", pytrace=False)
    pytest.skip(reason)


def find_binary(candidates: tuple[str, ...]) -> str | None:
    for candidate in candidates:
        found = shutil.which(candidate)
        if found:
            return found
    return None


def cgi_user_ids() -> tuple[int, int]:
    """www-data's uid and gid; the configs name that user, so it must exist."""
    try:
        entry = pwd.getpwnam(CGI_USER)
    except KeyError:
        unavailable(f"no {CGI_USER} user: the server configs run CGI scripts as {CGI_USER}")
    return entry.pw_uid, entry.pw_gid


def free_port() -> int:
    """A port nobody listens on now (the server binds it a moment later)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind((HOST, 0))
        return int(probe.getsockname()[1])


def render(template: str, values: dict[str, str]) -> str:
    """docs/deploy/``template`` with each @NAME@ replaced; every placeholder must be known."""
    text = (DEPLOY / template).read_text("utf-8")
    for key, value in values.items():
        text = text.replace(f"@{key}@", value)
    leftover = sorted(set(re.findall(r"@[A-Z]+@", text)))
    if leftover:
        raise ValueError(f"{template}: placeholders without a value: {leftover}")
    return text


def make_rundir(name: str) -> Path:
    # 0755: Apache's workers (www-data) must reach the cgid socket in it.
    rundir = Path(tempfile.mkdtemp(prefix=f"cgikit-{name}-"))
    rundir.chmod(0o755)
    return rundir


def wait_for_port(process: subprocess.Popen[bytes], port: int, timeout: float) -> None:
    """Return once ``port`` accepts; raise if the process died or the time ran out."""
    deadline = time.monotonic() + timeout
    for _ in range(int(timeout / POLL) + 1):
        if process.poll() is not None:
            raise RuntimeError(f"exited with status {process.returncode} while starting")
        try:
            with socket.create_connection((HOST, port), timeout=1.0):
                return
        except OSError:
            pass
        if time.monotonic() >= deadline:
            break
        time.sleep(POLL)
    raise TimeoutError(f"port {port} did not accept connections within {timeout} s")


def stop(process: subprocess.Popen[bytes]) -> None:
    """End the server we started: SIGTERM, a bounded wait, then SIGKILL; always reaped."""
    if process.poll() is None:
        process.send_signal(signal.SIGTERM)
    deadline = time.monotonic() + STOP_TIMEOUT
    # Wait without reaping (WNOWAIT): while the leader is an unreaped zombie its PID,
    # which is also its process group's id, cannot be reused by another process.
    for _ in range(int(STOP_TIMEOUT / POLL) + 1):
        if process.returncode is not None or time.monotonic() > deadline:
            break
        if os.waitid(os.P_PID, process.pid, os.WEXITED | os.WNOHANG | os.WNOWAIT):
            break
        time.sleep(POLL)
    # start_new_session made the server lead its own group: SIGKILL reaches the server
    # if it ignored SIGTERM, and any script still running that it left behind.
    if process.returncode is None:
        try:
            os.killpg(process.pid, signal.SIGKILL)
        except (ProcessLookupError, PermissionError):
            pass
    process.wait(timeout=STOP_TIMEOUT)


def launch(name: str, argv: list[str], rundir: Path, port: int, error_log: Path) -> Server:
    """Start ``argv`` in its own session, its output in rundir/server.out; wait for ``port``."""
    output = rundir / "server.out"
    logs = tuple(dict.fromkeys([error_log, *sorted(rundir.glob("*.log")), output]))
    with output.open("wb") as sink:  # the child keeps its copy; ours closes here
        process = subprocess.Popen(
            argv,
            stdin=subprocess.DEVNULL,
            stdout=sink,
            stderr=subprocess.STDOUT,
            cwd=rundir,
            env=SERVER_ENV,
            start_new_session=True,
        )
    server = Server(name, port, error_log, logs, process, rundir)
    try:
        wait_for_port(process, port, START_TIMEOUT)
    except (RuntimeError, TimeoutError) as exc:
        stop(process)
        message = f"{name} did not start: {exc}\n{server.diagnostics()}"
        shutil.rmtree(rundir, ignore_errors=True)
        raise RuntimeError(message) from exc
    return server


def start_apache(docroot: Path, addon: str | None = None) -> Server:
    """Apache from apache-cgid.conf; ``addon``, a docs/deploy/ file, is included after it."""
    binary = find_binary(APACHE_BINARIES)
    moddir = next((d for d in APACHE_MODULE_DIRS if Path(d, "mod_cgid.so").is_file()), None)
    if binary is None or moddir is None:
        unavailable("Apache httpd with mod_cgid is not installed (Debian: apt-get install apache2)")
    cgi_user_ids()
    rundir, port = make_rundir("apache"), free_port()
    values = {"PORT": str(port), "DOCROOT": str(docroot), "RUNDIR": str(rundir), "MODDIR": moddir}
    config = rundir / "apache-cgid.conf"
    config.write_text(render("apache-cgid.conf", values), "utf-8")
    (rundir / "error.log").touch()
    argv = [binary, "-f", str(config), "-DFOREGROUND"]
    if addon is not None:
        (rundir / addon).write_text(render(addon, values), "utf-8")
        argv += ["-c", f'Include "{rundir / addon}"']
    return launch("apache", argv, rundir, port, rundir / "error.log")


def start_lighttpd(docroot: Path) -> Server:
    binary = find_binary(LIGHTTPD_BINARIES)
    if binary is None:
        unavailable("lighttpd is not installed (Debian: apt-get install lighttpd)")
    uid, gid = cgi_user_ids()
    rundir, port = make_rundir("lighttpd"), free_port()
    values = {"PORT": str(port), "DOCROOT": str(docroot), "RUNDIR": str(rundir)}
    config = rundir / "lighttpd-cgi.conf"
    config.write_text(render("lighttpd-cgi.conf", values), "utf-8")
    stderr_log = rundir / "cgi-stderr.log"
    for log in (rundir / "error.log", stderr_log):
        log.touch()
    if os.geteuid() == 0:
        # lighttpd opens its logs after it has dropped to www-data (see the config).
        for path in (rundir, rundir / "error.log", stderr_log):
            os.chown(path, uid, gid)
    argv = [binary, "-D", "-f", str(config)]
    return launch("lighttpd", argv, rundir, port, stderr_log)


def start_busybox(docroot: Path) -> Server:
    binary = find_binary(BUSYBOX_BINARIES)
    if binary is None or not busybox_has_httpd(binary):
        unavailable("busybox with the httpd applet is not installed (apt-get install busybox)")
    cgi_user_ids()
    rundir, port = make_rundir("busybox"), free_port()
    # An empty config of our own, so that a host's /etc/httpd.conf cannot change anything.
    (rundir / "httpd.conf").write_text("", "utf-8")
    argv = [binary, "httpd", "-f", "-v", "-p", f"{HOST}:{port}", "-h", str(docroot)]
    argv += ["-c", str(rundir / "httpd.conf")]
    if os.geteuid() == 0:
        argv += ["-u", f"{CGI_USER}:{CGI_USER}"]
    # BusyBox has no error log: scripts inherit its stderr, which launch() keeps.
    return launch("busybox", argv, rundir, port, rundir / "server.out")


def busybox_has_httpd(binary: str) -> bool:
    listing = subprocess.run(
        [binary, "--list"], capture_output=True, text=True, timeout=10, check=False
    )
    return "httpd" in listing.stdout.split()


STARTERS: dict[str, Callable[[Path], Server]] = {
    "apache": start_apache,
    "lighttpd": start_lighttpd,
    "busybox": start_busybox,
}
SERVER_NAMES = tuple(STARTERS)


class ServerPool:
    """Starts each server the first time a test asks for it; stops them all at the end."""

    def __init__(self, docroot: Path) -> None:
        self.docroot = docroot
        self.running: dict[str, Server] = {}
        self.broken: dict[str, str] = {}  # a server that failed to start fails fast after

    def get(self, name: str) -> Server:
        if name in self.broken:
            pytest.fail(self.broken[name], pytrace=False)
        server = self.running.get(name)
        if server is None:
            try:
                server = self.running[name] = start_with_retries(name, self.docroot)
            except RuntimeError as exc:
                self.broken[name] = str(exc)
                raise
        if server.process.poll() is not None:
            pytest.fail(f"{name} died during the tests:\n{server.diagnostics()}", pytrace=False)
        return server

    def stop_all(self) -> None:
        for server in self.running.values():
            stop(server.process)
            shutil.rmtree(server.rundir, ignore_errors=True)
        self.running.clear()


def start_with_retries(name: str, docroot: Path, attempts: int = 3) -> Server:
    """Start a server; another process may take the free port first, so try again."""
    return retry_start(lambda: STARTERS[name](docroot), attempts)


def retry_start(start: Callable[[], Server], attempts: int = 3) -> Server:
    """``start()`` until a server runs: the free port may be taken before it binds."""
    error: RuntimeError | None = None
    for _ in range(attempts):
        try:
            return start()
        except RuntimeError as exc:
            error = exc
    assert error is not None
    raise error
