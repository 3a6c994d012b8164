"""The servers bench/gateways.py compares, each reached on its own free 127.0.0.1 port.

A hello-world WSGI app (``hello:app``, generated into a temp dir) behind nginx: cgikit's
FastCGI and SCGI servers (``cgikit run --fastcgi|--scgi``, 2 workers), flup's threaded
fcgi and scgi WSGIServers and uWSGI speaking FastCGI (2 processes); gunicorn (sync, 2
workers) answers HTTP itself. The C hello CGI of cgi_host.py behind nginx through
``cgikit serve --fastcgi`` (the bridge) and through fcgiwrap (peers.py). flup and
gunicorn come from a private venv (bench/.venv-peers, made and filled with pip when
missing); uWSGI from Debian's uwsgi-core + uwsgi-plugin-python3, else pip's ``uwsgi``.
Each process is started in its own session and stopped by its PID (servers.stop).
"""

from __future__ import annotations

import os
import re
import shutil
import socket
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import peers
import run

import servers  # tests/servers.py, on sys.path once peers is imported

HOST = peers.HOST
VENV = run.BENCH_DIR / ".venv-peers"
PIP_PACKAGES = ("flup", "gunicorn")  # flup 1.0.3 is the Python 3 flup ("flup6")
UWSGI_CORE = ("uwsgi-core", "/usr/bin/uwsgi-core")
UWSGI_PLUGIN = Path("/usr/lib/uwsgi/plugins/python3_plugin.so")
WORKERS = 2  # processes, for cgikit, uWSGI and gunicorn alike
TOOLS = {  # Debian package -> what shows it is installed (a binary or a file)
    "wrk": ("wrk",),
    "nginx": peers.NGINX_BINARIES,
    "fcgiwrap": peers.FCGIWRAP_BINARIES,
    "gcc": ("cc",),
    "uwsgi-core": UWSGI_CORE,
    "uwsgi-plugin-python3": (str(UWSGI_PLUGIN),),
}
HELLO_APP = """def app(environ, start_response):
    start_response("200 OK", [("Content-Type", "text/plain"), ("Content-Length", "14")])
    return [b"Hello, world!\\n"]
"""
FLUP_LAUNCHER = """import sys
from hello import app
from flup.server import fcgi, scgi
protocol, port = sys.argv[1], int(sys.argv[2])
if protocol == "fastcgi":
    fcgi.WSGIServer(app, bindAddress=("127.0.0.1", port)).run()
else:
    scgi.WSGIServer(app, scriptName="", bindAddress=("127.0.0.1", port)).run()
"""
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
    upstream backend {{
        server {host}:{backend};
        keepalive 4;
    }}
    server {{
        listen {host}:{port};
        location / {{
{location}
        }}
    }}
}}
"""
LOCATIONS = {  # the app at /, as in docs/deploy/nginx-upstream.conf and nginx-scgi.conf
    "fastcgi": """            fastcgi_split_path_info ^()(/.*)$;
            include /etc/nginx/fastcgi_params;
            fastcgi_param PATH_INFO $fastcgi_path_info;
            fastcgi_keep_conn {keep};
            fastcgi_pass backend;""",
    "scgi": """            include /etc/nginx/scgi_params;
            scgi_param SCRIPT_NAME "";
            scgi_param PATH_INFO $uri;
            scgi_pass {host}:{backend};""",
}


@dataclass(frozen=True)
class Setup:
    """What the starters need: interpreters, the app's and the site's directories."""

    python: str  # runs cgikit
    venv_python: str  # runs flup and gunicorn
    apps: Path  # hello.py, flup_server.py
    docroot: Path  # cgi-bin/hello-c
    keep_conn: bool  # nginx's fastcgi_keep_conn to the WSGI FastCGI backends (but -keep's)
    compiled: Callable[[], Path]  # src/ with the optional compiled build, built when asked


def present(candidates: tuple[str, ...]) -> bool:
    return servers.find_binary(candidates) is not None or any(
        Path(c).is_absolute() and Path(c).exists() for c in candidates
    )


def ensure_tools() -> None:
    """Install the missing Debian packages with apt-get when root; else name them."""
    missing = [pkg for pkg, names in TOOLS.items() if not present(names)]
    if not missing:
        return
    if os.geteuid() != 0 or shutil.which("apt-get") is None:
        print(f"bench: missing Debian packages {', '.join(missing)}", file=sys.stderr)
        return  # uWSGI may still come from pip; the others are checked when started
    print(f"installing with apt-get: {' '.join(missing)}", flush=True)
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    argv = ["apt-get", "install", "-y", "--no-install-recommends", *missing]
    for attempt in range(2):
        done = subprocess.run(argv, env=env, capture_output=True, text=True, timeout=900)
        if done.returncode == 0:
            return
        if attempt == 0:  # a stale package list: update it once and try again
            subprocess.run(["apt-get", "update", "-qq"], env=env, capture_output=True)
    sys.stderr.write(done.stdout[-3000:] + done.stderr[-3000:])
    raise SystemExit(f"bench: apt-get install failed ({done.returncode})")


def pip(venv_python: str, *packages: str) -> bool:
    argv = [venv_python, "-m", "pip", "install", "-q", "--disable-pip-version-check"]
    done = subprocess.run([*argv, *packages], capture_output=True, text=True, timeout=900)
    if done.returncode != 0:
        sys.stderr.write(done.stdout[-2000:] + done.stderr[-2000:])
    return done.returncode == 0


def ensure_venv(python: str) -> str:
    """bench/.venv-peers with flup and gunicorn (and uwsgi without Debian's); its python."""
    venv_python = str(VENV / "bin" / "python")
    if not Path(venv_python).exists():
        print(f"creating {VENV.relative_to(run.REPO_ROOT)} with {python}", flush=True)
        subprocess.run([python, "-m", "venv", str(VENV)], check=True, timeout=300)
    probe = [venv_python, "-c", "import flup.server.fcgi, flup.server.scgi, gunicorn"]
    if subprocess.run(probe, capture_output=True).returncode != 0:
        print(f"installing with pip: {' '.join(PIP_PACKAGES)}", flush=True)
        if not pip(venv_python, *PIP_PACKAGES):
            raise SystemExit("bench: pip install of the peers failed")
    wanted = not (present(UWSGI_CORE) and UWSGI_PLUGIN.exists())
    if wanted and not (VENV / "bin" / "uwsgi").exists():
        print("installing uWSGI with pip (Debian's uwsgi-core is missing)", flush=True)
        pip(venv_python, "uwsgi")  # builds from source: may fail, then uWSGI is left out
    return venv_python


def make_apps(tmp: Path) -> Path:
    apps = tmp / "apps"
    apps.mkdir()
    (apps / "hello.py").write_text(HELLO_APP, "utf-8")
    (apps / "flup_server.py").write_text(FLUP_LAUNCHER, "utf-8")
    return apps


def uwsgi_command() -> list[str] | None:
    """Debian's uwsgi-core with its python3 plugin, else the venv's pip-built uwsgi."""
    core = servers.find_binary(UWSGI_CORE)
    if core is not None and UWSGI_PLUGIN.exists():
        return [core, "--plugin-dir", str(UWSGI_PLUGIN.parent), "--plugin", "python3"]
    built = VENV / "bin" / "uwsgi"
    return [str(built)] if built.exists() else None


def start_nginx(protocol: str, backend: int, keep_conn: bool) -> servers.Server:
    """nginx from a generated config: / passed to 127.0.0.1:``backend``."""
    rundir, port = servers.make_rundir("nginx"), servers.free_port()
    keep = "on" if keep_conn else "off"
    location = LOCATIONS[protocol].format(keep=keep, host=HOST, backend=backend)
    user = "user www-data;" if os.geteuid() == 0 else ""
    text = NGINX_CONF.format(
        rundir=rundir, user=user, host=HOST, port=port, backend=backend, location=location
    )
    config = rundir / "nginx.conf"
    config.write_text(text, "utf-8")
    error_log = rundir / "error.log"
    argv = [peers.binary(peers.NGINX_BINARIES, "nginx"), "-p", str(rundir), "-c", str(config)]
    return servers.launch("nginx", [*argv, "-e", str(error_log)], rundir, port, error_log)


def behind_nginx(
    label: str, protocol: str, start: Callable[[], servers.Server], keep: bool
) -> peers.Host:
    """A backend from ``start()``, then nginx in front of it (the backend stopped on failure)."""
    back = servers.retry_start(start)
    try:
        front = servers.retry_start(lambda: start_nginx(protocol, back.port, keep))
    except BaseException:
        servers.stop(back.process)
        raise
    return peers.Host(label, front, [back])


def start_uwsgi(apps: Path) -> servers.Server:
    command = uwsgi_command()
    if command is None:
        raise SystemExit(
            "bench: uWSGI is not installed (apt-get install uwsgi-core uwsgi-plugin-python3)"
        )
    rundir, port = servers.make_rundir("uwsgi"), servers.free_port()
    argv = [*command, "--master", "--processes", str(WORKERS), "--die-on-term", "--need-app"]
    argv += ["--fastcgi-socket", f"{HOST}:{port}", "--chdir", str(apps), "--module", "hello:app"]
    argv += ["--disable-logging", "--pythonpath", str(apps)]
    return servers.launch("uwsgi", argv, rundir, port, rundir / "server.out")


def start_bridge(
    docroot: Path,
    python: str,
    src: Path = peers.SRC,
    label: str = "cgikit serve --fastcgi",
    keep_conn: bool = False,
) -> peers.Host:
    """nginx -> ``cgikit serve --fastcgi unix:SOCKET ROOT`` -> the scripts of ROOT/cgi-bin
    (cgikit from ``src``: bench/compiled_build.py's copy for the compiled row);
    ``keep_conn``: nginx keeps its connections (peers.start_nginx)."""
    rundir = servers.make_rundir("bridge")
    sock = rundir / "bridge.sock"
    argv = [python, "-m", "cgikit", "serve", "--fastcgi", f"unix:{sock}"]
    argv += ["--user", "www-data"] if os.geteuid() == 0 else []  # as fcgiwrap's scripts run
    argv.append(str(docroot))
    output = rundir / "server.out"
    with output.open("wb") as sink:
        process = subprocess.Popen(
            argv, stdin=subprocess.DEVNULL, stdout=sink, stderr=subprocess.STDOUT, cwd=rundir,
            env={**servers.SERVER_ENV, "PYTHONPATH": str(src)},
            start_new_session=True, umask=0o111,  # nginx's workers (www-data) connect
        )  # fmt: skip
    back = servers.Server("cgikit serve --fastcgi", 0, output, (output,), process, rundir)
    wait_for_socket(back, sock)
    try:
        front = servers.retry_start(lambda: peers.start_nginx(docroot, sock, keep_conn))
    except BaseException:
        servers.stop(process)
        raise
    kept = ", keep-conn" if keep_conn else ""
    return peers.Host(f"nginx + {label} (bridge{kept})", front, [back])


def wait_for_socket(server: servers.Server, path: Path) -> None:
    deadline = time.monotonic() + servers.START_TIMEOUT
    while time.monotonic() < deadline and server.process.poll() is None:
        try:
            with socket.socket(socket.AF_UNIX) as probe:
                probe.connect(str(path))
            return
        except OSError:
            time.sleep(servers.POLL)
    servers.stop(server.process)
    raise SystemExit(f"bench: the bridge did not listen on {path}\n{server.diagnostics()}")


def bridge_available(python: str) -> bool:
    """Whether this checkout's ``cgikit serve`` has the --fastcgi flag yet."""
    argv = [python, "-m", "cgikit", "serve", "--help"]
    env = {**servers.SERVER_ENV, "PYTHONPATH": str(peers.SRC)}
    done = subprocess.run(argv, env=env, capture_output=True, text=True, timeout=30)
    return done.returncode == 0 and "--fastcgi" in done.stdout


def start_python(name: str, args: list[str], python: str, pythonpath: Path) -> servers.Server:
    return peers.start_python(name, args, python, {"PYTHONPATH": str(pythonpath)})


@dataclass(frozen=True)
class Row:
    """One server under test: its label, the path wrk asks for, and how to start it."""

    label: str
    path: str
    start: Callable[[], peers.Host]


def rows(setup: Setup) -> dict[str, Row]:
    """Every server by short name, in the table's order."""
    apps, keep, venv = setup.apps, setup.keep_conn, setup.venv_python
    flup = str(apps / "flup_server.py")

    def cgikit(protocol: str, built: bool = False) -> Callable[[], servers.Server]:
        args = ["-m", "cgikit", "run", f"--{protocol}", f"{HOST}:{{port}}"]
        args += ["--workers", str(WORKERS), "--threads", "1", "hello:app"]

        def start() -> servers.Server:
            src = setup.compiled() if built else peers.SRC
            path = Path(f"{src}{os.pathsep}{apps}")
            return start_python(f"cgikit-{protocol}", args, setup.python, path)

        return start

    def gunicorn() -> peers.Host:
        args = ["-m", "gunicorn", "--workers", str(WORKERS), "--worker-class", "sync"]
        args += ["--bind", f"{HOST}:{{port}}", "--chdir", str(apps), "hello:app"]
        return peers.Host("gunicorn sync (HTTP)", start_python("gunicorn", args, venv, apps))

    cgi = "/cgi-bin/hello-c"
    return {
        "cgikit-fastcgi": Row("cgikit FastCGI", "/", lambda: behind_nginx(
            "nginx + cgikit FastCGI", "fastcgi", cgikit("fastcgi"), keep)),
        "cgikit-fastcgi-compiled": Row("cgikit FastCGI (compiled)", "/", lambda: behind_nginx(
            "nginx + cgikit FastCGI (compiled)", "fastcgi", cgikit("fastcgi", True), keep)),
        "cgikit-fastcgi-keep": Row("cgikit FastCGI, keep-conn", "/", lambda: behind_nginx(
            "nginx + cgikit FastCGI (keep-conn)", "fastcgi", cgikit("fastcgi"), True)),
        "cgikit-scgi": Row("cgikit SCGI", "/", lambda: behind_nginx(
            "nginx + cgikit SCGI", "scgi", cgikit("scgi"), keep)),
        "flup-fastcgi": Row("flup FastCGI", "/", lambda: behind_nginx(
            "nginx + flup FastCGI", "fastcgi",
            lambda: start_python("flup-fastcgi", [flup, "fastcgi", "{port}"], venv, apps), keep)),
        "flup-scgi": Row("flup SCGI", "/", lambda: behind_nginx(
            "nginx + flup SCGI", "scgi",
            lambda: start_python("flup-scgi", [flup, "scgi", "{port}"], venv, apps), keep)),
        "uwsgi-fastcgi": Row("uWSGI FastCGI", "/", lambda: behind_nginx(
            "nginx + uWSGI FastCGI", "fastcgi", lambda: start_uwsgi(apps), keep)),
        "gunicorn": Row("gunicorn", "/", gunicorn),
        "bridge": Row("bridge", cgi, lambda: start_bridge(setup.docroot, setup.python)),
        "bridge-compiled": Row("bridge (compiled)", cgi, lambda: start_bridge(
            setup.docroot, setup.python, setup.compiled(), "cgikit serve --fastcgi (compiled)")),
        "fcgiwrap": Row("fcgiwrap", cgi, lambda: peers.start_nginx_fcgiwrap(setup.docroot, 8)),
        "bridge-keep": Row("bridge, keep-conn", cgi, lambda: start_bridge(
            setup.docroot, setup.python, keep_conn=True)),
        "bridge-compiled-keep": Row("bridge (compiled), keep-conn", cgi, lambda: start_bridge(
            setup.docroot, setup.python, setup.compiled(), "cgikit serve --fastcgi (compiled)",
            keep_conn=True)),
        "fcgiwrap-keep": Row("fcgiwrap, keep-conn", cgi, lambda: peers.start_nginx_fcgiwrap(
            setup.docroot, 8, keep_conn=True)),
    }  # fmt: skip


def versions(venv_python: str) -> str:
    """One line: wrk, nginx, fcgiwrap, uWSGI, flup and gunicorn as each reports itself."""
    found = []
    for name in ("wrk", "nginx", "fcgiwrap"):
        candidates, option, pattern = peers.VERSION_COMMANDS[name]
        exe, match = servers.find_binary(candidates), None
        if exe is not None:
            done = subprocess.run([exe, option], capture_output=True, text=True, timeout=10)
            match = re.search(pattern, done.stdout + done.stderr)
        found.append(f"{name} {match[1] if match else 'unknown'}")
    command = uwsgi_command()
    if command is not None:
        done = subprocess.run([command[0], "--version"], capture_output=True, text=True)
        found.append(f"uWSGI {done.stdout.strip() or 'unknown'}")
    code = "import importlib.metadata as m; print(m.version('flup'), m.version('gunicorn'))"
    done = subprocess.run([venv_python, "-c", code], capture_output=True, text=True)
    flup, _, gunicorn = done.stdout.strip().partition(" ")
    found += [f"flup {flup or 'unknown'}", f"gunicorn {gunicorn or 'unknown'}"]
    return "Versions: " + ", ".join(found) + "."
