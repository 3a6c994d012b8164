"""Warm mode (issue 5): Python CGI scripts forked from a zygote, exec'd, and FastCGI.

wrk on loopback, side by side in one run: a print hello CGI script and a Flask hello CGI
script, each through ``cgikit serve`` (cold: a new interpreter per request) and through
``cgikit serve --warm`` (forked from a pre-started interpreter that has imported Flask,
asked for by the script's ``# cgikit-preload: flask, ...`` line); and the same Flask app
through nginx to ``cgikit run --fastcgi`` (2 workers, as in gateways.py). Every server
runs on its own free 127.0.0.1 port for the whole run and must answer every target with
the hello body before anything is timed. Then each target gets short wrk bursts as
warm-up (the warm ones until their req/s stop rising: the first requests run cold while
the zygotes start and import Flask), a probe script says whether the warm server's
children are forked by a zygote, and ``wrk -t2 -c8 --latency`` runs against each target
in turn for ``--rounds`` rounds (the order reversed every other round). The floors of
issue 5: warm at least 5x cold req/s for the print script and 20x for the Flask script,
warm Flask p50 at most 2x FastCGI's. Latency is measured where the server is not
saturated: one connection sending a request every PACE_MS milliseconds (wrk's Lua
``delay``), so that a request's time is its own and not the queue's. The same with no
pause (one connection, back to back) and under -c8 are in the table too: there the p50
is 1 / req/s, a measure of throughput, and a forked process per request costs warm mode
several milliseconds of CPU there.

    python3 bench/warm.py [--duration 10] [--rounds 2] [--no-record]
"""

from __future__ import annotations

import argparse
import http.client
import os
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import cgi_host
import gateway_peers
import peers
import run
from cgi_host import Sample

import servers  # tests/servers.py, on sys.path once peers is imported

BODY = "Hello, world!"
DEFAULT_PYTHON = run.REPO_ROOT / ".venv" / "bin" / "python"  # scripts/test's venv: Flask
TOOLS = {"wrk": ("wrk",), "nginx": peers.NGINX_BINARIES}  # Debian package -> binaries
WORKERS = gateway_peers.WORKERS  # server processes, for cgikit serve and FastCGI alike
WRK_TIMEOUT = 30  # s: cold Flask answers take seconds under load; wrk's 2 s would drop them
PACE_MS = 20  # the paced targets' pause between a response and the next request
PACE_SCRIPT = Path(__file__).resolve().parent / "pace.lua"  # reads WRK_PACE_MS
BURST = 1  # s per warm-up wrk run
WARMUP_LIMIT = 30.0  # s of warm-up bursts per warm target at most
SETTLED = 1.2  # warm-up ends when a burst's req/s are below this times the burst before's
PROBES = 8  # sequential requests to the probe script after the warm-up
PROBE_TIMEOUT = 5.0  # s for each
PRINT_SCRIPT = """#!{python}
print("Content-Type: text/plain")
print()
print("Hello, world!")
"""
# The app module. Its last line is docs/warm.md's advice: in warm mode's zygote one
# GET goes through the app, so that children start with Flask's first-request work
# done; everywhere else (cold, FastCGI, the script-built app in a child) a no-op.
FLASK_APP = """import cgikit
from flask import Flask

app = Flask(__name__)


@app.route("/")
def hello() -> str:
    return "Hello, world!"


cgikit.warm_up(app)
"""
FLASK_MAIN = """

import cgikit

cgikit.run(app)
"""
FLASK_SCRIPT = (
    "#!{python}\n# cgikit-preload: flask, cgikit, encodings.idna\n" + FLASK_APP + FLASK_MAIN
)
PROBE_SCRIPT = """#!{python}
import os

with open(f"/proc/{{os.getppid()}}/cmdline", "rb") as parent:
    forked = b"warm_zygote" in parent.read()
print("Content-Type: text/plain")
print()
print("zygote" if forked else "exec")
"""
# The recommended shape (docs/warm.md): a thin script, the app in a module beside it
# that the zygote imports (and so builds) once, with what werkzeug imports lazily while
# it handles a request; cold, the script imports it all on every request.
FLASK_APP_SCRIPT = """#!{python}
# cgikit-preload: cgikit, flask_hello, encodings.idna
import cgikit
from flask_hello import app

cgikit.run(app)
"""
SCRIPTS = {
    "hello-py": PRINT_SCRIPT,
    "hello-flask": FLASK_SCRIPT,
    "hello-flask-app": FLASK_APP_SCRIPT,
    "probe-py": PROBE_SCRIPT,
}


@dataclass(frozen=True)
class Target:
    """One thing timed: which server (``cold``, ``warm``, ``fastcgi``) and which path."""

    label: str
    server: str
    path: str
    connections: int = 0  # 0: --connections
    paced: bool = False  # PACE_MS between a response and the next request


TARGETS = {  # in the table's order
    "cold-print": Target("print script, cgikit serve (cold)", "cold", "/cgi-bin/hello-py"),
    "warm-print": Target("print script, cgikit serve --warm", "warm", "/cgi-bin/hello-py"),
    "cold-flask": Target("Flask script, cgikit serve (cold)", "cold", "/cgi-bin/hello-flask/"),
    "warm-flask": Target("Flask script, cgikit serve --warm", "warm", "/cgi-bin/hello-flask/"),
    "cold-flask-app": Target(
        "thin Flask script, app module beside it, cold", "cold", "/cgi-bin/hello-flask-app/"
    ),
    "warm-flask-app": Target(
        "thin Flask script, app module preloaded, --warm", "warm", "/cgi-bin/hello-flask-app/"
    ),
    "fastcgi-flask": Target("Flask app, nginx + cgikit FastCGI", "fastcgi", "/"),
    "warm-flask-app-paced": Target(
        f"the same, one connection, {PACE_MS} ms between requests (latency)",
        "warm", "/cgi-bin/hello-flask-app/", 1, paced=True,
    ),
    "fastcgi-flask-paced": Target(
        f"Flask app via FastCGI, one connection, {PACE_MS} ms between requests",
        "fastcgi", "/", 1, paced=True,
    ),
    "warm-flask-app-c1": Target(
        "thin Flask script, --warm, one connection back to back", "warm",
        "/cgi-bin/hello-flask-app/", 1,
    ),
    "fastcgi-flask-c1": Target(
        "Flask app via FastCGI, one connection back to back", "fastcgi", "/", 1
    ),
}  # fmt: skip
FLOORS = (  # (target, baseline, field, limit): issue 5; rps at least, p50 at most
    ("warm-print", "cold-print", "rps", 5.0),
    ("warm-flask", "cold-flask", "rps", 20.0),
    ("warm-flask-app", "cold-flask-app", "rps", 20.0),
    ("warm-flask-app-paced", "fastcgi-flask-paced", "p50", 2.0),  # a request's own time
)
# The same ratio where the p50 measures throughput, not a request: shown, not judged.
SATURATED = (
    ("warm-flask-app-c1", "fastcgi-flask-c1", "p50", 2.0),  # back to back: 1/req/s
    ("warm-flask", "fastcgi-flask", "p50", 2.0),  # under -c8: a queue
)
Hosts = dict[str, peers.Host]  # cold, warm, fastcgi
Samples = dict[str, list[Sample]]  # target -> one per round


def ensure_tools() -> None:
    """Install wrk and nginx with apt-get when missing and root; else name them."""
    missing = [pkg for pkg, names in TOOLS.items() if not gateway_peers.present(names)]
    if not missing:
        return
    if os.geteuid() != 0 or shutil.which("apt-get") is None:
        raise SystemExit(f"bench: missing {', '.join(missing)} (Debian: apt-get install ...)")
    print(f"installing with apt-get: {' '.join(missing)}", flush=True)
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    argv = ["apt-get", "install", "-y", "--no-install-recommends", *missing]
    if subprocess.run(argv, env=env, capture_output=True, timeout=900).returncode != 0:
        raise SystemExit(f"bench: apt-get install {' '.join(missing)} failed")


def ensure_python(python: str) -> None:
    """``python`` must import Flask and this checkout's cgikit (the scripts' #! line)."""
    env = {**servers.SERVER_ENV, "PYTHONPATH": str(peers.SRC)}
    argv = [python, "-c", "import flask, cgikit"]
    done = subprocess.run(argv, env=env, capture_output=True, text=True, timeout=60)
    if done.returncode != 0:
        raise SystemExit(
            f"bench: {python} cannot import flask and cgikit: run scripts/test (it makes"
            f" .venv) or give --python with Flask installed\n{done.stderr[-1000:]}"
        )


def make_site(tmp: Path, python: str) -> tuple[Path, Path]:
    """ROOT with the scripts in cgi-bin/ (#! ``python``), and a dir with flask_hello.py."""
    docroot, apps = tmp / "site", tmp / "apps"
    cgi_bin = docroot / "cgi-bin"
    cgi_bin.mkdir(parents=True)
    apps.mkdir()
    for name, text in SCRIPTS.items():
        (cgi_bin / name).write_text(text.format(python=python), "utf-8")
    (apps / "flask_hello.py").write_text(FLASK_APP, "utf-8")
    for path in (tmp, docroot, cgi_bin, apps, *cgi_bin.iterdir(), *apps.iterdir()):
        path.chmod(0o755)
    (cgi_bin / "flask_hello.py").write_text(FLASK_APP, "utf-8")  # a module, not a script
    (cgi_bin / "flask_hello.py").chmod(0o644)
    return docroot, apps


def start_serve(docroot: Path, python: str, warm: bool) -> peers.Host:
    """``cgikit serve [--warm]`` on ROOT; as root it keeps root (the temp dir is ours)."""
    args = ["-m", "cgikit", "serve", "--port", "{port}", "--bind", peers.HOST]
    args += ["--workers", str(WORKERS), "--env", f"PYTHONPATH={peers.SRC}"]
    args += ["--warm", str(docroot)] if warm else [str(docroot)]
    env = {"PYTHONPATH": str(peers.SRC)}
    if os.geteuid() == 0:
        env["CGIKIT_USER"] = "root"  # else nobody, who cannot read the temp dir or .venv
    name = "cgikit-warm" if warm else "cgikit-cold"
    front = servers.retry_start(lambda: peers.start_python(name, args, python, env))
    return peers.Host("cgikit serve --warm" if warm else "cgikit serve", front)


def start_fastcgi(apps: Path, python: str) -> peers.Host:
    """nginx to ``cgikit run --fastcgi`` serving flask_hello:app, as gateways.py does."""
    args = ["-m", "cgikit", "run", "--fastcgi", f"{peers.HOST}:{{port}}"]
    args += ["--workers", str(WORKERS), "--threads", "1", "flask_hello:app"]
    path = Path(f"{peers.SRC}{os.pathsep}{apps}")

    def backend() -> servers.Server:
        return gateway_peers.start_python("cgikit-fastcgi", args, python, path)

    return gateway_peers.behind_nginx("nginx + cgikit FastCGI", "fastcgi", backend, False)


def url(hosts: Hosts, name: str) -> str:
    target = TARGETS[name]
    return f"http://{peers.HOST}:{hosts[target.server].port}{target.path}"


def get(address: str, timeout: float = 30.0) -> tuple[int, str]:
    """The status and body of a GET (status 0 and the error if there is no whole answer)."""
    try:
        with urllib.request.urlopen(address, timeout=timeout) as response:
            return response.status, response.read().decode("utf-8", "replace")
    except (OSError, http.client.HTTPException) as exc:
        return 0, f"{type(exc).__name__}: {exc}"


def check(hosts: Hosts, name: str) -> None:
    """The target must answer 200 with the hello body, else the benchmark stops."""
    status, body = get(url(hosts, name))
    if status != 200 or body.strip() != BODY:
        host = hosts[TARGETS[name].server]
        message = f"{name}: status {status}, body {body[:200]!r}"
        raise SystemExit(f"bench: wrong answer from {message}\n{host.diagnostics()}")


def start_all(docroot: Path, apps: Path, python: str) -> Hosts:
    """Every server, each checked on its targets; all stopped again if one fails."""
    starters: dict[str, Callable[[], peers.Host]] = {
        "cold": lambda: start_serve(docroot, python, warm=False),
        "warm": lambda: start_serve(docroot, python, warm=True),
        "fastcgi": lambda: start_fastcgi(apps, python),
    }
    hosts: Hosts = {}
    try:
        for server, start in starters.items():
            hosts[server] = start()
            for name in (n for n, t in TARGETS.items() if t.server == server):
                check(hosts, name)
            print(f"started {hosts[server].label} on port {hosts[server].port}", flush=True)
    except BaseException:
        stop_all(hosts)
        raise
    return hosts


def stop_all(hosts: Hosts) -> None:
    for host in hosts.values():
        host.stop()


def wrk(address: str, duration: int, connections: int, paced: bool = False) -> Sample:
    threads = min(2, connections)
    argv = ["wrk", f"-t{threads}", f"-c{connections}", f"-d{duration}s"]
    argv.append(f"--timeout={WRK_TIMEOUT}s")
    if paced:
        argv += ["-s", str(PACE_SCRIPT)]
    done = subprocess.run(
        [*argv, "--latency", address], capture_output=True, text=True,
        timeout=duration + WRK_TIMEOUT + 60, env={**os.environ, "WRK_PACE_MS": str(PACE_MS)},
    )  # fmt: skip
    if done.returncode != 0:
        raise SystemExit(f"bench: wrk failed ({done.returncode}): {done.stderr}")
    return cgi_host.parse_wrk(done.stdout)


def warm_up(hosts: Hosts, connections: int) -> dict[str, list[float]]:
    """BURST-second wrk runs per target: one for the cold and FastCGI targets; for the
    warm ones, until a burst's req/s are below SETTLED x the burst before's (at least
    two, for at most WARMUP_LIMIT s). Each target's burst req/s, by name."""
    bursts: dict[str, list[float]] = {}
    for name, target in TARGETS.items():
        deadline = time.monotonic() + WARMUP_LIMIT
        rates = bursts[name] = [wrk(url(hosts, name), BURST, connections).rps]
        while target.server == "warm" and time.monotonic() < deadline:
            rates.append(wrk(url(hosts, name), BURST, connections).rps)
            if rates[-1] < SETTLED * rates[-2]:
                break
        shown = ", ".join(f"{rate:.0f}" for rate in rates)
        print(f"warm-up, {name}: {shown} req/s", file=sys.stderr, flush=True)
    return bursts


def probe(hosts: Hosts, server: str) -> str:
    """PROBES sequential requests to the probe script: how many a zygote forked, how many
    were exec'd, how many got no whole 200 answer within PROBE_TIMEOUT s (and why)."""
    address = f"http://{peers.HOST}:{hosts[server].port}/cgi-bin/probe-py"
    answers = [get(address, PROBE_TIMEOUT) for _ in range(PROBES)]
    bodies = [body.strip() if status == 200 else "" for status, body in answers]
    text = f"{bodies.count('zygote')} forked, {bodies.count('exec')} exec'd"
    failed = sorted({body[:80] for status, body in answers if status != 200})
    return text + (f", {bodies.count('')} failed ({'; '.join(failed)})" if failed else "")


def measure(hosts: Hosts, args: argparse.Namespace) -> Samples:
    """``args.rounds`` rounds; in each, every target in turn (reversed every other round)."""
    samples: Samples = {name: [] for name in TARGETS}
    for number in range(args.rounds):
        order = list(TARGETS) if number % 2 == 0 else list(TARGETS)[::-1]
        for name in order:
            host = hosts[TARGETS[name].server]
            if not host.alive():
                raise SystemExit(f"bench: {host.label} died\n{host.diagnostics()}")
            target = TARGETS[name]
            connections = target.connections or args.connections
            sample = wrk(url(hosts, name), args.duration, connections, target.paced)
            samples[name].append(sample)
            note = f", {sample.errors}" if sample.errors else ""
            print(
                f"round {number + 1}/{args.rounds}, {name}: {sample.rps:.0f} req/s,"
                f" p50 {sample.p50 * 1e3:.2f} ms, p99 {sample.p99 * 1e3:.2f} ms{note}",
                file=sys.stderr, flush=True,
            )  # fmt: skip
    return samples


def median(samples: Samples, name: str, field: str) -> float:
    """The median over the rounds of ``field`` (rps, p50 or p99 in s) of a target."""
    return float(statistics.median(getattr(sample, field) for sample in samples[name]))


def table(samples: Samples) -> str:
    rounds = len(next(iter(samples.values())))
    head = ["target", "what", *(f"req/s r{i + 1}" for i in range(rounds))]
    head += ["median req/s", "p50 (ms)", "p99 (ms)"]
    lines = ["| " + " | ".join(head) + " |", "| --- | --- " + "| --: " * (len(head) - 2) + "|"]
    for name, target in TARGETS.items():
        cells = [name, target.label, *(f"{s.rps:,.1f}" for s in samples[name])]
        cells.append(f"{median(samples, name, 'rps'):,.1f}")
        cells += [f"{median(samples, name, f) * 1e3:.2f}" for f in ("p50", "p99")]
        lines.append("| " + " | ".join(cells) + " |")
    errors = [
        f"- {name}, round {i}: {sample.errors}"
        for name, runs in samples.items()
        for i, sample in enumerate(runs, 1)
        if sample.errors
    ]
    return "\n".join(lines + (["", "wrk reported:", *errors] if errors else []))


def floors(samples: Samples) -> str:
    """Each floor of issue 5 on the medians over the rounds: the ratio, PASS or FAIL;
    then the saturated latency ratios, marked as not judged."""
    lines = ["| floor (issue 5) | target | baseline | ratio | verdict |"]
    lines.append("| --- | --: | --: | --: | --- |")
    for ours, theirs, field, limit in (*FLOORS, *SATURATED):
        mine, base = median(samples, ours, field), median(samples, theirs, field)
        ratio = mine / base
        if field == "rps":
            floor, verdict = f"{ours} >= {limit:g} x {theirs} req/s", ratio >= limit
            cells = [f"{mine:,.1f} req/s", f"{base:,.1f} req/s"]
        else:
            floor, verdict = f"{ours} p50 <= {limit:g} x {theirs} p50", ratio <= limit
            cells = [f"{mine * 1e3:.2f} ms", f"{base * 1e3:.2f} ms"]
        judged = (ours, theirs, field, limit) in FLOORS
        shown = ("PASS" if verdict else "FAIL") if judged else "saturated: not a floor"
        cells = [floor, *cells, f"{ratio:.2f}", shown]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def method(args: argparse.Namespace, elapsed: float) -> str:
    python = run.portable(args.python)
    return (
        f"Method: `wrk -t2 -c{args.connections} -d{args.duration}s --timeout {WRK_TIMEOUT}s"
        f" --latency` on loopback (the one-connection targets -t1 -c1; the paced ones with"
        f" a Lua `delay()` of {PACE_MS} ms after each response), {args.rounds} rounds,"
        f" targets interleaved"
        f" ({', '.join(TARGETS)}, reversed every other round); req/s per round, and the"
        f" median over the rounds of req/s, p50 and p99; {elapsed:.0f} s in all. Two"
        f" `cgikit serve --workers {WORKERS} --env PYTHONPATH=src` on one site, the second"
        f" with `--warm` and no `--preload`: the Flask scripts ask for what they import with"
        f" a `# cgikit-preload:` line under the #! line (flask, cgikit, encodings.idna; the"
        f" thin one its app module instead of flask). The scripts' #! interpreter,"
        f" and the servers', is {python}; the Flask script is asked for as"
        f" /cgi-bin/hello-flask/ (PATH_INFO /, the app's route) and ends in"
        f" `cgikit.run(app)`; the app's code ends in `cgikit.warm_up(app)` (its GETs in"
        f" the thin script's zygote, a no-op elsewhere). FastCGI: nginx (worker_processes"
        f" auto, access_log off, upstream keepalive 4, fastcgi_keep_conn off) to"
        f" `cgikit run --fastcgi --workers {WORKERS} --threads 1 flask_hello:app`, the same"
        f" app code. Warm-up before timing:"
        f" {BURST}-s wrk bursts per target, one for cold and FastCGI, for the warm targets"
        f" until a burst's req/s were below {SETTLED:g}x the burst before's (at least two,"
        f" at most {WARMUP_LIMIT:.0f} s); then {PROBES} requests to a probe script that says"
        f" whether its parent is a zygote."
    )


def versions(python: str) -> str:
    """One line: wrk, nginx and Flask as each reports itself."""
    found = []
    for name in ("wrk", "nginx"):
        candidates, option, pattern = peers.VERSION_COMMANDS[name]
        exe, match = servers.find_binary(candidates), None
        if exe is not None:
            done = subprocess.run([exe, option], capture_output=True, text=True, timeout=10)
            match = re.search(pattern, done.stdout + done.stderr)
        found.append(f"{name} {match[1] if match else 'unknown'}")
    code = "import importlib.metadata as m; print(m.version('flask'))"
    done = subprocess.run([python, "-c", code], capture_output=True, text=True, timeout=60)
    return "Versions: " + ", ".join([*found, f"Flask {done.stdout.strip() or 'unknown'}"]) + "."


def warm_lines(bursts: dict[str, list[float]], forked: dict[str, str]) -> str:
    shown = "; ".join(f"{n} {', '.join(f'{r:.0f}' for r in rates)}" for n, rates in bursts.items())
    return (
        f"Warm-up bursts (req/s): {shown}.\n\nProbe script after the warm-up, {PROBES}"
        f" requests each: warm server {forked['warm']}; cold server {forked['cold']}."
    )


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--duration", type=int, default=10, help="seconds per wrk run (10)")
    parser.add_argument("--connections", type=int, default=8, help="wrk connections (8)")
    parser.add_argument("--rounds", type=int, default=2, help="rounds over all targets (2)")
    parser.add_argument(
        "--python", default=str(DEFAULT_PYTHON),
        help="with Flask: the scripts' #! line, the servers (default: .venv/bin/python)",
    )  # fmt: skip
    parser.add_argument("--no-record", action="store_true", help="do not write RESULTS.md")
    return parser.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    ensure_tools()
    ensure_python(args.python)
    began = time.monotonic()
    with tempfile.TemporaryDirectory(prefix="cgikit-bench-") as tmp:
        hosts = start_all(*make_site(Path(tmp), args.python), args.python)
        try:
            bursts = warm_up(hosts, args.connections)
            forked = {server: probe(hosts, server) for server in ("warm", "cold")}
            samples = measure(hosts, args)
        finally:
            stop_all(hosts)
    parts = [method(args, time.monotonic() - began), versions(args.python)]
    parts += [warm_lines(bursts, forked), table(samples), floors(samples)]
    text = "\n\n".join(parts)
    print(text)
    if not args.no_record:
        run.record("warm", text, python=args.python)
    return 0


if __name__ == "__main__":
    sys.exit(main())
