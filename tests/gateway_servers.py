"""cgikit's FastCGI and SCGI servers as real backends, and the web servers in front of them.

A ``Backend`` is a cgikit FastCGI or SCGI server in a process of its own, serving
integration.backend's app on a free 127.0.0.1 port or a Unix socket: started with the
test launcher ``python -m integration.backend``, which counts the connections it
accepts (so that a test sees whether a web server reuses them), or as users start it,
``cgikit run --fastcgi ADDR``, when the CLI has that flag (``cli_serves_gateways``).
The web servers start from the configs users copy, docs/deploy/nginx-fastcgi.conf,
nginx-scgi.conf, nginx-upstream.conf, apache-proxy-fcgi.conf and lighttpd-fastcgi.conf,
with the placeholders filled in (servers.render), each on a free port with a private
run directory. ``GatewayPool`` starts them as the tests need them.

Everything is stopped by the PID we started (servers.stop); a missing binary fails the
test when CI is set and skips it otherwise (servers.unavailable).
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TypeVar

from servers import (
    APACHE_BINARIES,
    APACHE_MODULE_DIRS,
    CGI_USER,
    HOST,
    LIGHTTPD_BINARIES,
    POLL,
    REPO,
    SERVER_ENV,
    START_TIMEOUT,
    Server,
    cgi_user_ids,
    find_binary,
    free_port,
    launch,
    make_rundir,
    render,
    stop,
    unavailable,
)

NGINX_BINARIES = ("nginx", "/usr/sbin/nginx")
NGINX_CONFDIRS = ("/etc/nginx", "/usr/local/nginx/conf", "/usr/local/etc/nginx")
BACKEND_APP = "integration.backend:app"
T = TypeVar("T")


@dataclass
class Backend:
    """A cgikit gateway server process; its stdout and stderr are ``log``."""

    protocol: str  # "fastcgi" or "scgi"
    address: str  # "127.0.0.1:PORT" or "unix:/path"
    process: subprocess.Popen[bytes]
    rundir: Path

    @property
    def log(self) -> Path:
        return self.rundir / "backend.log"

    @property
    def port(self) -> int:
        return int(self.address.rpartition(":")[2])

    def log_text(self) -> str:
        return self.log.read_text("utf-8", "replace") if self.log.exists() else ""

    def diagnostics(self) -> str:
        return (
            f"{self.protocol} backend on {self.address} (pid {self.process.pid}, "
            f"exit {self.process.poll()}):\n{self.log_text()[-3000:]}"
        )

    def stop(self) -> None:
        stop(self.process)
        shutil.rmtree(self.rundir, ignore_errors=True)


def cli_serves_gateways() -> bool:
    """True once ``cgikit run`` has the --fastcgi and --scgi flags (issue 4)."""
    help_text = subprocess.run(
        [sys.executable, "-m", "cgikit", "run", "--help"],
        capture_output=True,
        text=True,
        timeout=30,
        env=backend_env(None),
        check=False,
    ).stdout
    return "--fastcgi" in help_text and "--scgi" in help_text


def backend_env(markers: Path | None, name: str = "") -> dict[str, str]:
    """PYTHONPATH for cgikit and the fixture apps; where the streaming app's markers are;
    the name the app's /whoami answers with."""
    env = {**SERVER_ENV, "PYTHONPATH": f"{REPO / 'src'}{os.pathsep}{REPO / 'tests'}"}
    if markers is not None:
        env["CGIKIT_TEST_MARKERS"] = str(markers)
        env["CGIKIT_TEST_BACKEND"] = name
    return env


def start_backend(protocol: str, *, unix: bool, markers: Path, use_cli: bool) -> Backend:
    """A backend on a free port (or a socket in its run directory), accepting."""
    rundir = make_rundir(f"{protocol}-backend")
    address = f"unix:{rundir / 'backend.sock'}" if unix else f"{HOST}:{free_port()}"
    if use_cli:
        argv = [sys.executable, "-m", "cgikit", "run", f"--{protocol}", address, BACKEND_APP]
    else:
        argv = [sys.executable, "-m", "integration.backend", protocol, address]
    with (rundir / "backend.log").open("wb") as sink:
        process = subprocess.Popen(
            argv,
            stdin=subprocess.DEVNULL,
            stdout=sink,
            stderr=subprocess.STDOUT,
            cwd=rundir,
            env=backend_env(markers, address),
            start_new_session=True,
            # The socket file is created by the backend (root in CI) and connected to
            # by the web server's workers (www-data): it must be writable by them.
            umask=0o111 if unix else 0o022,
        )
    backend = Backend(protocol, address, process, rundir)
    try:
        wait_for_backend(backend)
    except RuntimeError:
        backend.stop()
        raise
    return backend


def wait_for_backend(backend: Backend) -> None:
    deadline = time.monotonic() + START_TIMEOUT
    while time.monotonic() < deadline:
        if backend.process.poll() is not None:
            break
        try:
            if backend.address.startswith("unix:"):
                with socket.socket(socket.AF_UNIX) as probe:
                    probe.settimeout(1.0)
                    probe.connect(backend.address[len("unix:") :])
            else:
                socket.create_connection((HOST, backend.port), timeout=1.0).close()
            return
        except OSError:
            time.sleep(POLL)
    raise RuntimeError(f"backend did not start\n{backend.diagnostics()}")


# -- the web servers --------------------------------------------------------------------


def nginx_confdir() -> str:
    """Where the stock fastcgi_params and scgi_params are (the configs include them)."""
    for confdir in NGINX_CONFDIRS:
        if all(Path(confdir, name).is_file() for name in ("fastcgi_params", "scgi_params")):
            return confdir
    unavailable("nginx's fastcgi_params and scgi_params are not installed")


def start_nginx(template: str, values: dict[str, str]) -> Server:
    """nginx from docs/deploy/``template``: master and workers, in the foreground."""
    binary = find_binary(NGINX_BINARIES)
    if binary is None:
        unavailable("nginx is not installed (Debian: apt-get install nginx)")
    cgi_user_ids()  # the configs say "user www-data"
    rundir, port = make_rundir("nginx"), free_port()
    values = {**values, "PORT": str(port), "RUNDIR": str(rundir), "CONFDIR": nginx_confdir()}
    config = rundir / template
    config.write_text(render(template, values), "utf-8")
    error_log = rundir / "error.log"
    for log in (error_log, rundir / "access.log"):
        log.touch()
    # -p: relative paths resolve in rundir; -e: the log nginx opens before it has read
    # the config (otherwise /var/log/nginx/error.log).
    argv = [binary, "-p", str(rundir), "-e", str(error_log), "-c", str(config)]
    argv += ["-g", "daemon off;"]
    return launch("nginx", argv, rundir, port, error_log)


def start_apache_proxy_fcgi(fcgi_port: int) -> Server:
    binary = find_binary(APACHE_BINARIES)
    moddir = next((d for d in APACHE_MODULE_DIRS if Path(d, "mod_proxy_fcgi.so").is_file()), None)
    if binary is None or moddir is None:
        unavailable("Apache httpd with mod_proxy_fcgi is not installed (apt-get install apache2)")
    cgi_user_ids()
    rundir, port = make_rundir("apache-fcgi"), free_port()
    values = {"PORT": str(port), "RUNDIR": str(rundir), "MODDIR": moddir}
    config = rundir / "apache-proxy-fcgi.conf"
    config.write_text(render(config.name, {**values, "FCGIPORT": str(fcgi_port)}), "utf-8")
    (rundir / "error.log").touch()
    argv = [binary, "-f", str(config), "-DFOREGROUND"]
    return launch("apache", argv, rundir, port, rundir / "error.log")


def start_lighttpd_fastcgi(fcgi_port: int) -> Server:
    binary = find_binary(LIGHTTPD_BINARIES)
    if binary is None:
        unavailable("lighttpd is not installed (Debian: apt-get install lighttpd)")
    uid, gid = cgi_user_ids()
    rundir, port = make_rundir("lighttpd-fcgi"), free_port()
    docroot = rundir / "docroot"
    docroot.mkdir()
    values = {"PORT": str(port), "RUNDIR": str(rundir), "DOCROOT": str(docroot)}
    config = rundir / "lighttpd-fastcgi.conf"
    config.write_text(render(config.name, {**values, "FCGIPORT": str(fcgi_port)}), "utf-8")
    error_log = rundir / "error.log"
    error_log.touch()
    if os.geteuid() == 0:  # lighttpd opens its log after dropping to www-data
        for path in (rundir, error_log):
            os.chown(path, uid, gid)
    return launch("lighttpd", [binary, "-D", "-f", str(config)], rundir, port, error_log)


# -- the set-ups under test -------------------------------------------------------------


@dataclass
class Front:
    """One way to reach the app: a web server, the prefix it mounts the app at, and the
    backend behind that prefix."""

    name: str
    server: Server
    prefix: str
    backend: Backend


# variant -> (web server, mount prefix in its config, backend)
VARIANTS: dict[str, tuple[str, str, str]] = {
    "nginx-fastcgi-keep": ("nginx-fastcgi", "/tcp", "fastcgi-tcp"),
    "nginx-fastcgi-close": ("nginx-fastcgi", "/tcp-close", "fastcgi-tcp"),
    "nginx-fastcgi-unix": ("nginx-fastcgi", "/unix", "fastcgi-unix"),
    "nginx-scgi": ("nginx-scgi", "/app", "scgi-tcp"),
    "apache-proxy-fcgi": ("apache-proxy-fcgi", "/app", "fastcgi-tcp"),
    "lighttpd-fastcgi": ("lighttpd-fastcgi", "/app", "fastcgi-tcp"),
}


class GatewayPool:
    """Starts each backend and web server the first time a test needs it; stops all."""

    def __init__(self, markers: Path) -> None:
        self.markers = markers
        self.backends: dict[str, Backend] = {}
        self.servers: dict[str, Server] = {}
        self.broken: dict[str, str] = {}  # what failed to start fails fast after

    def front(self, variant: str) -> Front:
        server_name, prefix, backend_name = VARIANTS[variant]
        return Front(variant, self.server(server_name), prefix, self.backend(backend_name))

    def new_backend(self, protocol: str, *, unix: bool = False, use_cli: bool = False) -> Backend:
        """A backend of the test's own (the caller stops it)."""
        return start_backend(protocol, unix=unix, markers=self.markers, use_cli=use_cli)

    def backend(self, name: str) -> Backend:
        if name not in self.backends:
            protocol, _, transport = name.partition("-")
            self.backends[name] = self._start(
                name, lambda: self.new_backend(protocol, unix=transport == "unix")
            )
        backend = self.backends[name]
        if backend.process.poll() is not None:
            raise RuntimeError(f"the backend died during the tests:\n{backend.diagnostics()}")
        return backend

    def server(self, name: str) -> Server:
        if name not in self.servers:
            self.servers[name] = self._start(name, lambda: self._start_server(name))
        server = self.servers[name]
        if server.process.poll() is not None:
            raise RuntimeError(f"{name} died during the tests:\n{server.diagnostics()}")
        return server

    def _start_server(self, name: str) -> Server:
        if name == "nginx-fastcgi":
            values = {
                "FCGIPORT": str(self.backend("fastcgi-tcp").port),
                "SOCKET": self.backend("fastcgi-unix").address[len("unix:") :],
            }
            return start_nginx("nginx-fastcgi.conf", values)
        if name == "nginx-scgi":
            return start_nginx("nginx-scgi.conf", {"SCGIPORT": str(self.backend("scgi-tcp").port)})
        if name == "apache-proxy-fcgi":
            return start_apache_proxy_fcgi(self.backend("fastcgi-tcp").port)
        if name == "lighttpd-fastcgi":
            return start_lighttpd_fastcgi(self.backend("fastcgi-tcp").port)
        raise KeyError(name)

    def _start(self, name: str, start: Callable[[], T], attempts: int = 3) -> T:
        """``start()``, again if a free port was taken first; remembers a failure."""
        if name in self.broken:
            raise RuntimeError(self.broken[name])
        for attempt in range(attempts):
            try:
                return start()
            except RuntimeError as exc:
                if attempt == attempts - 1:
                    self.broken[name] = str(exc)
                    raise
        raise AssertionError("unreachable")

    def stop_all(self) -> None:
        for server in self.servers.values():
            stop(server.process)
            shutil.rmtree(server.rundir, ignore_errors=True)
        for backend in self.backends.values():
            backend.stop()
        self.servers.clear()
        self.backends.clear()


# -- the FastCGI bridge for CGI scripts -------------------------------------------------


def start_bridge(root: Path, *flags: str, unix: bool = False) -> Backend:
    """``cgikit serve --fastcgi ADDR [flags] ROOT`` on a free port or a Unix socket in its
    run directory, accepting. Started as root, it gives root up to www-data, as the
    CGI configs run scripts (docs/deploy/nginx-cgi-bridge.conf)."""
    rundir = make_rundir("cgi-bridge")
    address = f"unix:{rundir / 'bridge.sock'}" if unix else f"{HOST}:{free_port()}"
    cgi_user_ids()  # the scripts run as www-data: it must exist
    user = ["--user", CGI_USER] if os.geteuid() == 0 else []
    argv = [sys.executable, "-m", "cgikit", "serve", "--fastcgi", address, *user, *flags]
    with (rundir / "backend.log").open("wb") as sink:
        process = subprocess.Popen(
            [*argv, str(root)],
            stdin=subprocess.DEVNULL,
            stdout=sink,
            stderr=subprocess.STDOUT,
            cwd=rundir,
            env=backend_env(None),
            start_new_session=True,
            # nginx's workers (www-data) connect to the socket root made: 0666.
            umask=0o111 if unix else 0o022,
        )
    bridge = Backend("fastcgi", address, process, rundir)
    try:
        wait_for_backend(bridge)
    except RuntimeError:
        bridge.stop()
        raise
    return bridge
