"""The web servers bench/cgi_host.py compares, each on its own free 127.0.0.1 port.

Apache (event MPM + mod_cgid) and lighttpd (mod_cgi) start exactly as the test suite
starts them: tests/servers.py renders docs/deploy/*.conf into a private run directory.
nginx + fcgiwrap, ``python3 -m http.server --cgi`` and ``cgikit serve`` start here, with
the same helpers (servers.launch: own session, wait for the port; servers.stop: SIGTERM
to the PID we started, a bounded wait, then SIGKILL to its group, reaped).
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import time
import types
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import run

# tests/servers.py reports a missing server through pytest (skip or fail). No test runs
# here, so a stand-in turns such a report into a plain exit with its reason.
if "pytest" not in sys.modules:
    _stub = types.ModuleType("pytest")

    def _give_up(reason: str, **_: object) -> None:
        raise SystemExit(f"bench: {reason}")

    _stub.skip = _stub.fail = _give_up  # type: ignore[attr-defined]
    sys.modules["pytest"] = _stub
sys.path.insert(0, str(run.REPO_ROOT / "tests"))
import servers  # after the stand-in above

SRC = run.REPO_ROOT / "src"
HOST = servers.HOST
NGINX_BINARIES = ("nginx", "/usr/sbin/nginx")
FCGIWRAP_BINARIES = ("fcgiwrap", "/usr/sbin/fcgiwrap")
NGINX_CONF = """daemon off;
master_process on;
worker_processes auto;
pid {rundir}/nginx.pid;
error_log {rundir}/error.log warn;
{user}
events {{ worker_connections 1024; }}
http {{
    access_log off;
    client_body_temp_path {rundir}/client_body;
    proxy_temp_path {rundir}/proxy;
    fastcgi_temp_path {rundir}/fastcgi;
    uwsgi_temp_path {rundir}/uwsgi;
    scgi_temp_path {rundir}/scgi;
    {upstream_block}
    server {{
        listen {host}:{port};
        root {docroot};
        location /cgi-bin/ {{
            include /etc/nginx/fastcgi_params;
            fastcgi_param SCRIPT_FILENAME $document_root$fastcgi_script_name;
            {keep_conn}
            fastcgi_pass {upstream};
        }}
    }}
}}
"""


@dataclass
class Host:
    """One server under test: ``front`` answers HTTP; ``back`` are its helpers (fcgiwrap)."""

    label: str
    front: servers.Server
    back: list[servers.Server] = field(default_factory=list)

    @property
    def port(self) -> int:
        return self.front.port

    def alive(self) -> bool:
        return all(s.process.poll() is None for s in [self.front, *self.back])

    def diagnostics(self) -> str:
        return "\n".join(s.diagnostics() for s in [self.front, *self.back])

    def stop(self) -> None:
        """Stop every process we started, front first, by PID; remove the run dirs."""
        for server in [self.front, *self.back]:
            servers.stop(server.process)
            shutil.rmtree(server.rundir, ignore_errors=True)


def binary(candidates: tuple[str, ...], what: str) -> str:
    found = servers.find_binary(candidates)
    if found is None:
        raise SystemExit(f"bench: {what} is not installed")
    return found


def start_fcgiwrap(children: int) -> servers.Server:
    """fcgiwrap on a unix socket in its own run dir, as www-data when we are root."""
    rundir = servers.make_rundir("fcgiwrap")
    socket = rundir / "fcgiwrap.sock"
    argv = [binary(FCGIWRAP_BINARIES, "fcgiwrap"), "-c", str(children), "-s", f"unix:{socket}"]
    user: dict[str, int] = {}
    if os.geteuid() == 0:  # scripts run as www-data, as under Apache and lighttpd
        uid, gid = servers.cgi_user_ids()
        os.chown(rundir, uid, gid)
        user = {"user": uid, "group": gid, "extra_groups": []}
    output = rundir / "server.out"
    with output.open("wb") as sink:
        process = subprocess.Popen(
            argv, stdin=subprocess.DEVNULL, stdout=sink, stderr=subprocess.STDOUT,
            cwd=rundir, env=servers.SERVER_ENV, start_new_session=True, **user,
        )  # fmt: skip
    server = servers.Server("fcgiwrap", 0, output, (output,), process, rundir)
    for _ in range(int(servers.START_TIMEOUT / servers.POLL)):
        if socket.exists() or process.poll() is not None:
            break
        time.sleep(servers.POLL)
    if not socket.exists():
        servers.stop(process)
        raise RuntimeError(f"fcgiwrap did not create its socket\n{server.diagnostics()}")
    return server


def start_nginx(docroot: Path, socket: Path, keep_conn: bool = False) -> servers.Server:
    """nginx from a generated config, passing /cgi-bin/ to the FastCGI ``socket``;
    ``keep_conn``: through an upstream with keepalive 8 and fastcgi_keep_conn on, as
    docs/deploy/nginx-cgi-bridge.conf does (fcgiwrap closes after each request anyway)."""
    rundir, port = servers.make_rundir("nginx"), servers.free_port()
    user = "user www-data;" if os.geteuid() == 0 else ""
    kept = {
        "upstream_block": f"upstream cgi {{ server unix:{socket}; keepalive 8; }}",
        "keep_conn": "fastcgi_keep_conn on;",
        "upstream": "cgi",
    }
    direct = {"upstream_block": "", "keep_conn": "", "upstream": f"unix:{socket}"}
    text = NGINX_CONF.format(
        rundir=rundir, user=user, host=HOST, port=port, docroot=docroot,
        **(kept if keep_conn else direct),
    )  # fmt: skip
    config = rundir / "nginx.conf"
    config.write_text(text, "utf-8")
    error_log = rundir / "error.log"
    argv = [binary(NGINX_BINARIES, "nginx"), "-p", str(rundir), "-c", str(config)]
    argv += ["-e", str(error_log)]
    return servers.launch("nginx", argv, rundir, port, error_log)


def start_nginx_fcgiwrap(docroot: Path, children: int, keep_conn: bool = False) -> Host:
    back = start_fcgiwrap(children)
    sock = back.rundir / "fcgiwrap.sock"
    try:
        front = servers.retry_start(lambda: start_nginx(docroot, sock, keep_conn))
    except BaseException:
        servers.stop(back.process)
        raise
    return Host("nginx + fcgiwrap" + (" (keep-conn)" if keep_conn else ""), front, [back])


def start_python(name: str, args: list[str], python: str, env: dict[str, str]) -> servers.Server:
    """``python args...`` (plus the port) via env(1), so that the PID we hold is Python's."""
    rundir, port = servers.make_rundir(name), servers.free_port()
    settings = [f"{key}={value}" for key, value in env.items()]
    argv = ["/usr/bin/env", *settings, python, *[a.format(port=port) for a in args]]
    return servers.launch(name, argv, rundir, port, rundir / "server.out")


def start_http_server(docroot: Path, python: str) -> Host:
    args = ["-m", "http.server", "--cgi", "--bind", HOST, "--directory", str(docroot), "{port}"]
    front = servers.retry_start(lambda: start_python("http.server", args, python, {}))
    return Host("http.server --cgi", front)


def start_cgikit(docroot: Path, python: str, src: Path = SRC, label: str = "cgikit serve") -> Host:
    """``cgikit serve`` from ``src`` (bench/compiled.py's copy for the compiled row)."""
    args = ["-m", "cgikit", "serve", "--port", "{port}", "--bind", HOST, str(docroot)]
    env = {"PYTHONPATH": str(src)}
    return Host(label, servers.retry_start(lambda: start_python("cgikit", args, python, env)))


VERSION_COMMANDS = {  # name -> binary candidates, option, the version in its output
    "wrk": (("wrk",), "-v", r"wrk (\S+)"),
    "Apache": (servers.APACHE_BINARIES, "-v", r"Apache/(\S+)"),
    "lighttpd": (servers.LIGHTTPD_BINARIES, "-v", r"lighttpd/(\S+)"),
    "nginx": (NGINX_BINARIES, "-v", r"nginx/(\S+)"),
    "fcgiwrap": (FCGIWRAP_BINARIES, "-h", r"fcgiwrap version (\S+)"),
}


def versions() -> str:
    """One line: the version of wrk and of each server, as each reports it."""
    found = []
    for name, (candidates, option, pattern) in VERSION_COMMANDS.items():
        exe, match = servers.find_binary(candidates), None
        if exe is not None:
            done = subprocess.run([exe, option], capture_output=True, text=True, timeout=10)
            match = re.search(pattern, done.stdout + done.stderr)
        found.append(f"{name} {match[1] if match else 'unknown'}")
    return "Versions: " + ", ".join(found) + "."


def cgikit_serve_available(python: str) -> bool:
    """Whether this checkout's cgikit has the ``serve`` subcommand yet."""
    argv = [python, "-m", "cgikit", "serve", "--help"]
    env = {**servers.SERVER_ENV, "PYTHONPATH": str(SRC)}
    done = subprocess.run(argv, env=env, capture_output=True, timeout=30, check=False)
    return done.returncode == 0


def starters(
    docroot: Path, python: str, children: int, compiled: Callable[[], Path]
) -> dict[str, Callable[[], Host]]:
    """How to start each server, by short name, in the table's order (``compiled``:
    where the compiled build is, built when first asked)."""
    return {
        "cgikit": lambda: start_cgikit(docroot, python),
        "cgikit-compiled": lambda: start_cgikit(
            docroot, python, compiled(), "cgikit serve (compiled)"
        ),
        "apache": lambda: Host(
            "Apache event + mod_cgid", servers.start_with_retries("apache", docroot)
        ),
        "lighttpd": lambda: Host(
            "lighttpd mod_cgi", servers.start_with_retries("lighttpd", docroot)
        ),
        "fcgiwrap": lambda: start_nginx_fcgiwrap(docroot, children),
        "http.server": lambda: start_http_server(docroot, python),
    }
