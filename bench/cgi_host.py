"""CGI hosting throughput: cgikit serve against Apache, lighttpd, nginx + fcgiwrap, http.server.

Issue 3, Performance: wrk on loopback, side by side in one run, for a C hello CGI and a
Python hello CGI. Every server runs on its own free 127.0.0.1 port for the whole run
(peers.py starts them; Apache and lighttpd from docs/deploy/*.conf as the tests do); each
must answer both scripts correctly before anything is timed. wrk then runs against each
server in turn, the servers interleaved, for ``--rounds`` rounds (the order reversed every
other round). The floor: cgikit serve at least the best of Apache/lighttpd/fcgiwrap in
req/s on the C script, with a p99 latency no worse than theirs.

    python3 bench/cgi_host.py [--duration 10] [--connections 8] [--no-record]
"""

from __future__ import annotations

import argparse
import functools
import os
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import compiled_build
import peers
import run

BODY = "Hello, world!"
C_SOURCE = r"""#include <stdio.h>
int main(void) {
    fputs("Content-Type: text/plain\r\n\r\nHello, world!\n", stdout);
    return 0;
}
"""
PY_SOURCE = """#!/usr/bin/python3
print("Content-Type: text/plain")
print()
print("Hello, world!")
"""
SCRIPTS = {"C": "hello-c", "Python": "hello-py"}  # no .py: http.server would run it itself
PEERS = ("apache", "lighttpd", "fcgiwrap")  # the floor's baseline: the best of these
TOOLS = {  # binary candidates -> Debian package
    ("wrk",): "wrk",
    peers.NGINX_BINARIES: "nginx",
    peers.FCGIWRAP_BINARIES: "fcgiwrap",
    peers.servers.APACHE_BINARIES: "apache2",
    peers.servers.LIGHTTPD_BINARIES: "lighttpd",
    ("cc",): "gcc",
}
UNITS = {"us": 1e-6, "ms": 1e-3, "s": 1.0, "m": 60.0}


@dataclass(frozen=True)
class Sample:
    """One wrk run: requests per second, latency percentiles (s), and any errors."""

    rps: float
    p50: float
    p99: float
    errors: str


def ensure_tools() -> None:
    """Install the missing servers and tools with apt-get when root; else name them."""
    missing = [pkg for names, pkg in TOOLS.items() if peers.servers.find_binary(names) is None]
    if not missing:
        return
    if os.geteuid() != 0 or shutil.which("apt-get") is None:
        raise SystemExit(f"bench: missing {', '.join(missing)} (Debian: apt-get install ...)")
    print(f"installing with apt-get: {' '.join(missing)}", flush=True)
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    argv = ["apt-get", "install", "-y", "--no-install-recommends", *missing]
    done = subprocess.run(argv, env=env, capture_output=True, text=True, timeout=600)
    if done.returncode != 0:
        sys.stderr.write(done.stdout[-3000:] + done.stderr[-3000:])
        raise SystemExit(f"bench: apt-get install failed ({done.returncode})")


def make_site(tmp: Path) -> Path:
    """A document root with cgi-bin/hello-c (compiled here) and cgi-bin/hello-py."""
    docroot = tmp / "site"
    cgi_bin = docroot / "cgi-bin"
    cgi_bin.mkdir(parents=True)
    (tmp / "hello.c").write_text(C_SOURCE, "utf-8")
    cc = ["cc", "-O2", "-o", str(cgi_bin / SCRIPTS["C"]), str(tmp / "hello.c")]
    subprocess.run(cc, check=True, timeout=120)
    (cgi_bin / SCRIPTS["Python"]).write_text(PY_SOURCE, "utf-8")
    for path in (tmp, docroot, cgi_bin, *cgi_bin.iterdir()):
        path.chmod(0o755)  # the servers run scripts as www-data (http.server: nobody)
    return docroot


def url(host: peers.Host, script: str) -> str:
    return f"http://{peers.HOST}:{host.port}/cgi-bin/{SCRIPTS[script]}"


def check(host: peers.Host) -> None:
    """Each script must answer 200 with the hello body, else the benchmark stops."""
    for script in SCRIPTS:
        try:
            with urllib.request.urlopen(url(host, script), timeout=15) as response:
                status, body = response.status, response.read().decode("utf-8", "replace")
        except OSError as exc:
            status, body = 0, str(exc)
        if status != 200 or body.strip() != BODY:
            message = f"{host.label}, {script} script: status {status}, body {body[:200]!r}"
            raise SystemExit(f"bench: wrong answer from {message}\n{host.diagnostics()}")


def seconds(text: str) -> float:
    """A wrk duration such as 812.00us, 3.20ms or 1.02s, in seconds."""
    match = re.fullmatch(r"([\d.]+)(us|ms|s|m)", text)
    if match is None:
        raise ValueError(f"unexpected wrk duration {text!r}")
    return float(match[1]) * UNITS[match[2]]


def parse_wrk(output: str) -> Sample:
    """Requests/s, 50 % and 99 % latencies, and the error lines from wrk --latency."""
    rps = re.search(r"^Requests/sec:\s+([\d.]+)", output, re.M)
    p50 = re.search(r"^\s+50%\s+(\S+)", output, re.M)
    p99 = re.search(r"^\s+99%\s+(\S+)", output, re.M)
    if rps is None or p50 is None or p99 is None:
        raise ValueError(f"cannot parse wrk output:\n{output}")
    errors = [line.strip() for line in output.splitlines() if "errors" in line or "Non-2xx" in line]
    return Sample(float(rps[1]), seconds(p50[1]), seconds(p99[1]), "; ".join(errors))


def wrk(target: str, duration: int, connections: int) -> Sample:
    argv = ["wrk", "-t2", f"-c{connections}", f"-d{duration}s", "--latency", target]
    done = subprocess.run(argv, capture_output=True, text=True, timeout=duration + 60)
    if done.returncode != 0:
        raise SystemExit(f"bench: wrk failed ({done.returncode}): {done.stderr}")
    return parse_wrk(done.stdout)


Samples = dict[tuple[str, str], list[Sample]]  # (script, server) -> one per round


def measure(hosts: dict[str, peers.Host], args: argparse.Namespace) -> Samples:
    """``args.rounds`` rounds; in each, every script against every server in turn."""
    samples: Samples = {(s, n): [] for s in SCRIPTS for n in hosts}
    for number in range(args.rounds):
        order = list(hosts) if number % 2 == 0 else list(hosts)[::-1]
        for script in SCRIPTS:
            for name in order:
                if not hosts[name].alive():
                    raise SystemExit(f"bench: {name} died\n{hosts[name].diagnostics()}")
                sample = wrk(url(hosts[name], script), args.duration, args.connections)
                samples[script, name].append(sample)
                note = f", {sample.errors}" if sample.errors else ""
                print(
                    f"round {number + 1}/{args.rounds}, {script}, {name}: {sample.rps:.0f} req/s,"
                    f" p50 {sample.p50 * 1e3:.2f} ms, p99 {sample.p99 * 1e3:.2f} ms{note}",
                    file=sys.stderr, flush=True,
                )  # fmt: skip
    return samples


def summary(samples: list[Sample]) -> tuple[float, float, float]:
    """Mean req/s, mean p50 and mean p99 (s) over the rounds."""
    return tuple(statistics.fmean(getattr(s, f) for s in samples) for f in ("rps", "p50", "p99"))  # type: ignore[return-value]


def best_peer(samples: Samples, script: str) -> tuple[str, float, float]:
    """The peer with the most req/s on ``script``; and the lowest p99 among the peers."""
    present = [name for name in PEERS if (script, name) in samples]
    best = max(present, key=lambda name: summary(samples[script, name])[0])
    low_p99 = min(summary(samples[script, name])[2] for name in present)
    return best, summary(samples[script, best])[0], low_p99


def table(samples: Samples, hosts: dict[str, peers.Host], script: str) -> str:
    rounds = len(next(iter(samples.values())))
    head = ["server", *(f"req/s r{i + 1}" for i in range(rounds)), "p50 (ms)", "p99 (ms)"]
    best, best_rps, _ = best_peer(samples, script)
    head.append(f"ratio to best peer ({best})")
    lines = [f"{script} hello CGI:", "", "| " + " | ".join(head) + " |"]
    lines.append("| --- " + "| --: " * (len(head) - 1) + "|")
    for name, host in hosts.items():
        rps, p50, p99 = summary(samples[script, name])
        row = [host.label, *(f"{s.rps:,.0f}" for s in samples[script, name])]
        row += [f"{p50 * 1e3:.2f}", f"{p99 * 1e3:.2f}", f"{rps / best_rps:.2f}"]
        lines.append("| " + " | ".join(row) + " |")
    errors = [
        f"- {name}, round {i}: {sample.errors}"
        for (of, name), runs in samples.items()
        if of == script
        for i, sample in enumerate(runs, 1)
        if sample.errors
    ]
    return "\n".join(lines + (["", "wrk reported:", *errors] if errors else []))


def floor_line(samples: Samples, hosts: dict[str, peers.Host]) -> str:
    """The issue 3 floor, judged on the C script's mean req/s and mean p99: for the pure
    package, and for the optional compiled build when it ran."""
    if ("C", "cgikit") not in samples:
        return "Floor: cgikit serve was not yet measured (no `serve` subcommand in this checkout)."
    best, best_rps, low_p99 = best_peer(samples, "C")
    lines = []
    for name in ("cgikit", "cgikit-compiled"):
        if ("C", name) not in samples:
            continue
        rps, _, p99 = summary(samples["C", name])
        verdict = "PASS" if rps >= best_rps and p99 <= low_p99 else "FAIL"
        lines.append(
            f"Floor (C script; {hosts[name].label}'s req/s at least the best peer's, its p99"
            f" at most the lowest peer p99): {rps:,.0f} req/s vs {best} {best_rps:,.0f} req/s"
            f" ({rps / best_rps:.2f}); p99 {p99 * 1e3:.2f} ms vs {low_p99 * 1e3:.2f} ms:"
            f" {verdict}"
        )
    return "\n\n".join(lines)


def method(args: argparse.Namespace, hosts: dict[str, peers.Host], elapsed: float) -> str:
    return (
        f"Method: `wrk -t2 -c{args.connections} -d{args.duration}s --latency` on loopback,"
        f" {args.rounds} rounds, servers interleaved ({', '.join(hosts)}, reversed every other"
        f" round); req/s per round, p50/p99 the mean over the rounds; scripts and servers"
        f" run with {args.python}; fcgiwrap with {args.connections} children;"
        f" {elapsed:.0f} s in all. http.server speaks HTTP/1.0 and closes every connection:"
        f" wrk counts each close as a read error, and its req/s include reconnecting."
    )


def start_all(
    names: Sequence[str], docroot: Path, args: argparse.Namespace
) -> dict[str, peers.Host]:
    hosts: dict[str, peers.Host] = {}
    try:
        build = functools.partial(compiled_build.build, args.python)
        for name, start in peers.starters(docroot, args.python, args.connections, build).items():
            if name in names:
                hosts[name] = start()
                check(hosts[name])
                print(f"started {hosts[name].label} on port {hosts[name].port}", flush=True)
    except BaseException:
        stop_all(hosts)
        raise
    return hosts


def stop_all(hosts: dict[str, peers.Host]) -> None:
    for host in hosts.values():
        host.stop()


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--duration", type=int, default=10, help="seconds per wrk run (10)")
    parser.add_argument("--connections", type=int, default=8, help="wrk connections (8)")
    parser.add_argument("--rounds", type=int, default=2, help="rounds over all servers (2)")
    parser.add_argument("--python", default="/usr/bin/python3", help="for http.server, cgikit")
    parser.add_argument(
        "--servers", default="cgikit,cgikit-compiled,apache,lighttpd,fcgiwrap,http.server"
    )
    parser.add_argument("--no-record", action="store_true", help="do not write RESULTS.md")
    return parser.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    ensure_tools()
    names = args.servers.split(",")
    if "cgikit" in names and not peers.cgikit_serve_available(args.python):
        names = [name for name in names if not name.startswith("cgikit")]
        print("cgikit serve is not measured: this checkout has no `serve` yet", flush=True)
    started = time.monotonic()
    with tempfile.TemporaryDirectory(prefix="cgikit-bench-") as tmp:
        hosts = start_all(names, make_site(Path(tmp)), args)
        try:
            samples = measure(hosts, args)
        finally:
            stop_all(hosts)
    parts = [method(args, hosts, time.monotonic() - started), peers.versions()]
    parts += [table(samples, hosts, script) for script in SCRIPTS] + [floor_line(samples, hosts)]
    text = "\n\n".join(parts)
    print(text)
    if not args.no_record:
        run.record("cgi_host", text, python=args.python)
    return 0


if __name__ == "__main__":
    sys.exit(main())
