"""Web servers that spawn the cgikit app themselves, from the configs users copy.

lighttpd (mod_fastcgi ``bin-path``, docs/deploy/lighttpd-fastcgi-spawn.conf) and Apache
(mod_fcgid, docs/deploy/apache-fcgid.conf) start app.fcgi with a listening socket on
fd 0, where ``cgikit.run`` serves FastCGI. Each server gets an app.fcgi of its own,
written into the www-data runtime (integration.runtime) for fixtureapps.spawned, so
that the processes running that path are that server's app processes and no one
else's: ``app_processes`` finds them in /proc, to check that none outlives the server.

Servers are stopped by the PID we started (servers.stop); an app process left behind
is killed by its PID, found by its command line.
"""

from __future__ import annotations

import os
import pwd
import shutil
import signal
import subprocess
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from integration.runtime import RUNUSER, Runtime, write_script
from servers import (
    APACHE_BINARIES,
    APACHE_MODULE_DIRS,
    CGI_USER,
    LIGHTTPD_BINARIES,
    POLL,
    STOP_TIMEOUT,
    Server,
    cgi_user_ids,
    find_binary,
    free_port,
    launch,
    make_rundir,
    render,
    retry_start,
    stop,
    unavailable,
)

APP_SCRIPT = "app.fcgi"
PREFIX = "/app"  # where both configs mount the app
# The most app processes each config lets the server run for app.fcgi at once:
# lighttpd's "max-procs", mod_fcgid's FcgidMaxProcessesPerClass.
MAX_PROCESSES = {"lighttpd": 2, "apache": 2}
# Seconds an idle app process may outlive its server: the server's SIGTERM reaches it
# as the server stops, and an idle cgikit server then stops at once.
LEFTOVER_TIMEOUT = 5.0


@dataclass
class Spawner:
    """A web server that runs ``app`` (its app.fcgi) as FastCGI processes of its own.

    ``server.error_log`` is where the app processes' stderr lands: their tracebacks."""

    server: Server
    app: Path

    @property
    def name(self) -> str:
        return self.server.name

    def diagnostics(self) -> str:
        return f"{self.server.diagnostics()}\napp processes: {app_processes(self.app)}"


def write_app(runtime: Runtime, name: str) -> Path:
    """A fresh app.fcgi for fixtureapps.spawned, in a directory of its own (0755)."""
    directory = Path(tempfile.mkdtemp(prefix=f"spawned-{name}-", dir=runtime.root))
    directory.chmod(0o755)
    path = directory / APP_SCRIPT
    write_script(runtime, path, "spawned")
    return path


def start_lighttpd_spawn(app: Path) -> Server:
    binary = find_binary(LIGHTTPD_BINARIES)
    if binary is None:
        unavailable("lighttpd is not installed (Debian: apt-get install lighttpd)")
    uid, gid = cgi_user_ids()
    rundir, port = make_rundir("lighttpd-spawn"), free_port()
    docroot = rundir / "docroot"
    docroot.mkdir()
    values = {"PORT": str(port), "RUNDIR": str(rundir), "DOCROOT": str(docroot)}
    config = rundir / "lighttpd-fastcgi-spawn.conf"
    config.write_text(render(config.name, {**values, "APPDIR": str(app.parent)}), "utf-8")
    error_log, app_log = rundir / "error.log", rundir / "app-stderr.log"
    for log in (error_log, app_log):
        log.touch()
    if os.geteuid() == 0:  # lighttpd opens its logs and sockets as www-data
        for path in (rundir, error_log, app_log):
            os.chown(path, uid, gid)
    return launch("lighttpd", [binary, "-D", "-f", str(config)], rundir, port, app_log)


def start_apache_fcgid(app: Path) -> Server:
    binary = find_binary(APACHE_BINARIES)
    moddir = next((d for d in APACHE_MODULE_DIRS if Path(d, "mod_fcgid.so").is_file()), None)
    if binary is None or moddir is None:
        unavailable(
            "Apache httpd with mod_fcgid is not installed "
            "(Debian: apt-get install apache2 libapache2-mod-fcgid)"
        )
    cgi_user_ids()
    rundir, port = make_rundir("apache-fcgid"), free_port()
    docroot = rundir / "docroot"
    docroot.mkdir()
    values = {"PORT": str(port), "RUNDIR": str(rundir), "MODDIR": moddir}
    values |= {"DOCROOT": str(docroot), "APPDIR": str(app.parent)}
    config = rundir / "apache-fcgid.conf"
    config.write_text(render(config.name, values), "utf-8")
    (rundir / "error.log").touch()
    argv = [binary, "-f", str(config), "-DFOREGROUND"]
    return launch("apache", argv, rundir, port, rundir / "error.log")


STARTERS: dict[str, Callable[[Path], Server]] = {
    "lighttpd": start_lighttpd_spawn,
    "apache": start_apache_fcgid,
}


def start_spawner(runtime: Runtime, name: str) -> Spawner:
    app = write_app(runtime, name)
    return Spawner(retry_start(lambda: STARTERS[name](app)), app)


# -- the app processes ------------------------------------------------------------------


def app_processes(app: Path) -> dict[int, str]:
    """Every live process running ``app`` (an argument of its command line): pid -> user."""
    wanted = os.fsencode(app)
    found: dict[int, str] = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            argv = (entry / "cmdline").read_bytes().split(b"\0")
            status = (entry / "status").read_text("ascii", "replace")
        except OSError:  # gone meanwhile, or not ours to read
            continue
        if wanted in argv and "\nState:\tZ" not in status:
            uid = next(line.split()[1] for line in status.splitlines() if line[:4] == "Uid:")
            found[int(entry.name)] = _user(int(uid))
    return found


def _user(uid: int) -> str:
    try:
        return pwd.getpwuid(uid).pw_name
    except KeyError:
        return str(uid)


def wait_until_gone(app: Path, timeout: float = STOP_TIMEOUT) -> dict[int, str]:
    """The processes still running ``app`` after up to ``timeout`` seconds (bounded)."""
    deadline = time.monotonic() + timeout
    left = app_processes(app)
    while left and time.monotonic() < deadline:
        time.sleep(POLL)
        left = app_processes(app)
    return left


def kill_leftovers(app: Path) -> dict[int, str]:
    """SIGKILL, by PID, each process still running ``app``; returns those it found."""
    left = app_processes(app)
    for pid in left:
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
    return left


def stop_spawner(spawner: Spawner) -> dict[int, str]:
    """Stop the server by its PID, as an init system would (SIGTERM, then wait); return
    the app processes it left behind, which are killed now.

    Not servers.stop at first: that ends with SIGKILL to the server's whole process
    group, which would hide app processes the server failed to stop. It runs only for a
    server still alive after the wait (its group id is then still its own).
    """
    process = spawner.server.process
    if process.poll() is None:
        process.send_signal(signal.SIGTERM)
    try:
        process.wait(timeout=STOP_TIMEOUT)
    except subprocess.TimeoutExpired:
        stop(process)
    left = wait_until_gone(spawner.app, LEFTOVER_TIMEOUT)
    kill_leftovers(spawner.app)
    shutil.rmtree(spawner.server.rundir, ignore_errors=True)
    return left


# -- the same script as a CGI script ----------------------------------------------------


def run_as_cgi(app: Path, variables: dict[str, str]) -> subprocess.CompletedProcess[bytes]:
    """Execute ``app`` as a CGI server would: these variables only, stdin empty, as
    www-data when we are root."""
    argv = ["env", "-i", *(f"{k}={v}" for k, v in variables.items()), str(app)]
    if os.geteuid() == 0:
        runuser = next((found for name in RUNUSER if (found := shutil.which(name))), None)
        if runuser is None:
            raise RuntimeError("runuser (util-linux) is needed to run scripts as www-data")
        argv = [runuser, "-u", CGI_USER, "--", *argv]
    return subprocess.run(
        argv, stdin=subprocess.DEVNULL, capture_output=True, timeout=30, check=False
    )
