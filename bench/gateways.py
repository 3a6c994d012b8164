"""Persistent gateways: cgikit FastCGI and SCGI against flup, uWSGI and gunicorn (issue 4).

wrk -t2 -c8 on loopback, side by side in one run, to a hello-world WSGI app: through
nginx to cgikit FastCGI and SCGI (2 worker processes), flup FastCGI and SCGI, uWSGI
speaking FastCGI (2 processes); to gunicorn (sync, 2 workers) over HTTP, no nginx. And
the C hello CGI through nginx to ``cgikit serve --fastcgi`` (the bridge) and to fcgiwrap.
Every server runs on its own free 127.0.0.1 port for the whole run (gateway_peers.py
starts them) and must answer correctly before anything is timed; wrk then runs against
each in turn for ``--rounds`` rounds, the order reversed every other round. The floors
of issue 4 are judged on the mean req/s over the rounds.

    python3 bench/gateways.py [--duration 10] [--rounds 2] [--servers a,b] [--no-record]
"""

from __future__ import annotations

import argparse
import functools
import statistics
import sys
import tempfile
import time
import urllib.request
from collections.abc import Sequence
from pathlib import Path

import cgi_host
import compiled_build
import gateway_peers
import peers
import run
from cgi_host import Sample

BODY = "Hello, world!\n"
NAMES = (
    "cgikit-fastcgi", "cgikit-fastcgi-compiled", "cgikit-fastcgi-keep", "cgikit-scgi",
    "flup-fastcgi", "flup-scgi",
    "uwsgi-fastcgi", "gunicorn", "bridge", "bridge-compiled", "fcgiwrap",
    "bridge-keep", "bridge-compiled-keep", "fcgiwrap-keep",
)  # fmt: skip
FLOORS = (  # (cgikit's row, the peer's, the least ratio of mean req/s): issue 4
    ("cgikit-fastcgi", "flup-fastcgi", 3.0),
    ("cgikit-fastcgi", "gunicorn", 1.0),
    ("cgikit-scgi", "flup-scgi", 1.0),
    ("cgikit-fastcgi", "uwsgi-fastcgi", 0.75),
    ("bridge", "fcgiwrap", 1.0),
)
Started = dict[str, tuple[gateway_peers.Row, peers.Host]]
Samples = dict[str, list[Sample]]  # server -> one per round


def url(row: gateway_peers.Row, host: peers.Host) -> str:
    return f"http://{peers.HOST}:{host.port}{row.path}"


def check(row: gateway_peers.Row, host: peers.Host) -> None:
    """The server must answer 200 with the hello body, else the benchmark stops."""
    try:
        with urllib.request.urlopen(url(row, host), timeout=15) as response:
            status, body = response.status, response.read().decode("utf-8", "replace")
    except OSError as exc:
        status, body = 0, str(exc)
    if status != 200 or body != BODY:
        message = f"{host.label}: status {status}, body {body[:200]!r}"
        raise SystemExit(f"bench: wrong answer from {message}\n{host.diagnostics()}")


def start_all(names: Sequence[str], setup: gateway_peers.Setup) -> Started:
    started: Started = {}
    try:
        for name, row in gateway_peers.rows(setup).items():
            if name in names:
                host = row.start()
                started[name] = (row, host)
                check(row, host)
                print(f"started {host.label} on port {host.port}", flush=True)
    except BaseException:
        stop_all(started)
        raise
    return started


def stop_all(started: Started) -> None:
    for _, host in started.values():
        host.stop()


def measure(started: Started, args: argparse.Namespace) -> Samples:
    """``args.rounds`` rounds; in each, every server in turn (reversed every other round)."""
    samples: Samples = {name: [] for name in started}
    for number in range(args.rounds):
        order = list(started) if number % 2 == 0 else list(started)[::-1]
        for name in order:
            row, host = started[name]
            if not host.alive():
                raise SystemExit(f"bench: {name} died\n{host.diagnostics()}")
            sample = cgi_host.wrk(url(row, host), args.duration, args.connections)
            samples[name].append(sample)
            note = f", {sample.errors}" if sample.errors else ""
            print(
                f"round {number + 1}/{args.rounds}, {name}: {sample.rps:.0f} req/s,"
                f" p50 {sample.p50 * 1e3:.2f} ms, p99 {sample.p99 * 1e3:.2f} ms{note}",
                file=sys.stderr, flush=True,
            )  # fmt: skip
    return samples


def mean_rps(samples: Samples, name: str) -> float:
    return statistics.fmean(s.rps for s in samples[name])


def table(samples: Samples, started: Started) -> str:
    rounds = len(next(iter(samples.values())))
    head = ["server", "request", *(f"req/s r{i + 1}" for i in range(rounds))]
    head += ["mean req/s", "p50 (ms)", "p99 (ms)"]
    lines = ["| " + " | ".join(head) + " |", "| --- | --- " + "| --: " * (len(head) - 2) + "|"]
    for name, (row, host) in started.items():
        _, p50, p99 = cgi_host.summary(samples[name])
        what = "hello WSGI app" if row.path == "/" else "C hello CGI"
        cells = [host.label, what, *(f"{s.rps:,.0f}" for s in samples[name])]
        cells += [f"{mean_rps(samples, name):,.0f}", f"{p50 * 1e3:.2f}", f"{p99 * 1e3:.2f}"]
        lines.append("| " + " | ".join(cells) + " |")
    errors = [
        f"- {name}, round {i}: {sample.errors}"
        for name, runs in samples.items()
        for i, sample in enumerate(runs, 1)
        if sample.errors
    ]
    return "\n".join(lines + (["", "wrk reported:", *errors] if errors else []))


def floors(samples: Samples, started: Started) -> str:
    """Each floor of issue 4: the ratio of mean req/s, PASS or FAIL (or not measured)."""
    lines = ["| floor (issue 4) | cgikit req/s | peer req/s | ratio | verdict |"]
    lines.append("| --- | --: | --: | --: | --- |")
    for row, theirs, least in FLOORS:
        # cgikit with keep-conn, and the optional compiled build, judged apart; each
        # against the peer's best row (fcgiwrap's with keep-conn too, when measured)
        kinds = (row, f"{row}-keep", f"{row}-compiled", f"{row}-compiled-keep")
        variants = [v for v in kinds if v in samples] or [row]
        peer_rows = [p for p in (theirs, f"{theirs}-keep") if p in samples]
        for ours in variants:
            floor = f"{ours} >= {least:g} x {theirs}" if least != 1 else f"{ours} >= {theirs}"
            if ours not in samples or not peer_rows:
                lines.append(f"| {floor} | | | | not measured |")
                continue
            mine = mean_rps(samples, ours)
            peer = max(mean_rps(samples, p) for p in peer_rows)
            verdict = "PASS" if mine >= least * peer else "FAIL"
            ratio = f"{mine / peer:.2f}"
            lines.append(f"| {floor} | {mine:,.0f} | {peer:,.0f} | {ratio} | {verdict} |")
    return "\n".join(lines)


def method(args: argparse.Namespace, started: Started, elapsed: float) -> str:
    keep = "on" if args.keep_conn else "off"
    return (
        f"Method: `wrk -t2 -c{args.connections} -d{args.duration}s --latency` on loopback,"
        f" {args.rounds} rounds, servers interleaved ({', '.join(started)}, reversed every"
        f" other round); req/s per round, p50/p99 the mean over the rounds; {elapsed:.0f} s"
        f" in all. nginx (worker_processes auto, access_log off) passes / to the WSGI"
        f" backends over TCP (FastCGI through an upstream with keepalive 4, fastcgi_keep_conn"
        f" {keep}, on for cgikit-fastcgi-keep), and /cgi-bin/ to the bridge and fcgiwrap"
        f" (unix sockets, 8 fcgiwrap children; keep-conn off, on for the -keep rows: an"
        f" upstream with keepalive 8, as docs/deploy/nginx-cgi-bridge.conf; a floor compares"
        f" with the peer's best row)."
        f" cgikit, uWSGI and gunicorn with {gateway_peers.WORKERS} worker processes, flup"
        f" threaded in one; cgikit with {args.python}, flup and gunicorn in a venv of it."
    )


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--duration", type=int, default=10, help="seconds per wrk run (10)")
    parser.add_argument("--connections", type=int, default=8, help="wrk connections (8)")
    parser.add_argument("--rounds", type=int, default=2, help="rounds over all servers (2)")
    parser.add_argument("--python", default="/usr/bin/python3", help="for cgikit and the venv")
    parser.add_argument("--servers", default=",".join(NAMES), help="a comma-separated subset")
    parser.add_argument(
        "--keep-conn", action="store_true",
        help="fastcgi_keep_conn on for every WSGI FastCGI row (off but cgikit-fastcgi-keep)",
    )  # fmt: skip
    parser.add_argument("--no-record", action="store_true", help="do not write RESULTS.md")
    args = parser.parse_args(argv)
    unknown = set(args.servers.split(",")) - set(NAMES)
    if unknown:
        parser.error(f"unknown servers {', '.join(sorted(unknown))}; known: {', '.join(NAMES)}")
    return args


def available(args: argparse.Namespace) -> list[str]:
    """The servers asked for, less those this machine or checkout cannot run (said so)."""
    names = [name for name in NAMES if name in args.servers.split(",")]
    if "bridge" in names and not gateway_peers.bridge_available(args.python):
        names = [name for name in names if not name.startswith("bridge")]
        print("the bridge is not measured: this checkout's serve has no --fastcgi", flush=True)
    if "uwsgi-fastcgi" in names and gateway_peers.uwsgi_command() is None:
        names.remove("uwsgi-fastcgi")
        print("uWSGI is not measured: neither Debian's nor pip's is installed", flush=True)
    return names


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    gateway_peers.ensure_tools()
    venv_python = gateway_peers.ensure_venv(args.python)
    names = available(args)
    began = time.monotonic()
    with tempfile.TemporaryDirectory(prefix="cgikit-bench-") as name:
        tmp = Path(name)
        docroot = cgi_host.make_site(tmp)
        apps = gateway_peers.make_apps(tmp)
        build = functools.partial(compiled_build.build, args.python)
        setup = gateway_peers.Setup(
            args.python, venv_python, apps, docroot, args.keep_conn, functools.cache(build)
        )
        started = start_all(names, setup)
        try:
            samples = measure(started, args)
        finally:
            stop_all(started)
    parts = [method(args, started, time.monotonic() - began), gateway_peers.versions(venv_python)]
    text = "\n\n".join([*parts, table(samples, started), floors(samples, started)])
    print(text)
    if not args.no_record:
        run.record("gateways", text, python=args.python)
    return 0


if __name__ == "__main__":
    sys.exit(main())
