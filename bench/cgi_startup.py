"""Whole-process cost of one CGI request for a hello-world WSGI app (issue 2, Performance).

A CGI server starts one process per request, so interpreter start-up plus imports is the
price of every request. Four commands, same interpreter, same environment, side by side
in one hyperfine run: cgikit.run, wsgiref's CGIHandler, a hand-written print-style script,
and the bare interpreter (``-I -S -c pass``, the floor nothing can beat). Two rounds,
because the machine is shared and noisy; the second runs the commands in reverse order so
that a slow drift in machine load does not always favour the same command.

    python3 bench/cgi_startup.py [--python /usr/bin/python3] [--runs 100] [--no-record]
"""

from __future__ import annotations

import argparse
import os
import shlex
import subprocess
import sys
import tempfile
from pathlib import Path

import run

SRC = run.REPO_ROOT / "src"
BODY = b"Hello, world!"
FLOORS = (("cgikit", "print-script", 1.10), ("cgikit", "wsgiref", 0.70))
BASELINES = ("print-script", "wsgiref")

APP = """
def app(environ, start_response):
    body = b"Hello, world!"
    start_response("200 OK", [("Content-Type", "text/plain"), ("Content-Length", str(len(body)))])
    return [body]
"""
SCRIPTS = {
    "cgikit": "import cgikit\n" + APP + "\ncgikit.run(app)\n",
    "wsgiref": "from wsgiref.handlers import CGIHandler\n" + APP + "\nCGIHandler().run(app)\n",
    # What people write by hand without any library: the cost a library must approach.
    "print-script": 'print("Content-Type: text/plain")\nprint()\nprint("Hello, world!", end="")\n',
}
CGI_META = {
    "GATEWAY_INTERFACE": "CGI/1.1",
    "REQUEST_METHOD": "GET",
    "SCRIPT_NAME": "/hello.cgi",
    "PATH_INFO": "/",
    "QUERY_STRING": "name=world",
    "SERVER_NAME": "localhost",
    "SERVER_PORT": "80",
    "SERVER_PROTOCOL": "HTTP/1.1",
    "SERVER_SOFTWARE": "cgikit-bench",
    "REMOTE_ADDR": "127.0.0.1",
    "HTTP_HOST": "localhost",
}
IMPORTS = {
    "import cgikit": "import cgikit",
    # What cgikit.run imports under a CGI server (run -> gateways.auto -> cgi_script).
    "CGI path": "import cgikit; from cgikit.gateways import auto, cgi_script",
}


def cgi_environment() -> dict[str, str]:
    """The environment of every command: a web server's, plus src/ on PYTHONPATH.

    Built from scratch rather than copied, as a server would: this shell's
    PYTHONDONTWRITEBYTECODE would make cgikit recompile on every request, and its other
    variables are no part of a CGI request. PYTHONPATH is the same for all four commands
    (``-I`` ignores it), so the only import cost that differs is cgikit's own.
    """
    env = {key: os.environ[key] for key in ("PATH", "HOME") if key in os.environ}
    env["PYTHONPATH"] = str(SRC)
    env.update(CGI_META)
    return env


def script_file(name: str) -> str:
    """The file name of the script for command ``name``."""
    return name.replace("-", "_") + ".cgi.py"


def write_scripts(directory: Path) -> dict[str, Path]:
    """The three CGI scripts, written into ``directory``; returns their paths by name."""
    paths = {}
    for name, text in SCRIPTS.items():
        path = directory / script_file(name)
        path.write_text(text, encoding="utf-8")
        paths[name] = path
    return paths


def commands(python: str, scripts: dict[str, Path]) -> dict[str, list[str]]:
    """The four commands, each as ``PYTHON SCRIPT`` (the bare interpreter as the floor)."""
    named = {name: [python, str(path)] for name, path in scripts.items()}
    named["python -I -S -c pass"] = [python, "-I", "-S", "-c", "pass"]
    return named


def describe(python: str) -> list[str]:
    """The commands as Markdown list items, without machine paths (scripts by file name)."""
    scripts = {name: Path(script_file(name)) for name in SCRIPTS}
    named = commands(run.portable(python), scripts)
    return [f"- `{name}`: `{shlex.join(argv)}`" for name, argv in named.items()]


def response_problem(stdout: bytes) -> str | None:
    """Why ``stdout`` is not a correct CGI response with our body, or None if it is."""
    for separator in (b"\r\n\r\n", b"\n\n"):
        head, found, body = stdout.partition(separator)
        if found:
            break
    else:
        return "no blank line after the headers"
    names = {line.partition(b":")[0].strip().lower() for line in head.splitlines()}
    if not names & {b"status", b"content-type"}:
        return "neither a Status nor a Content-Type header"
    if body != BODY:
        return f"body is {body[:80]!r}, expected {BODY!r}"
    return None


def check_scripts(named: dict[str, list[str]], env: dict[str, str]) -> None:
    """Run each script once and refuse to time one whose response is wrong.

    This also writes cgikit's bytecode cache, so no timed run pays for compiling it.
    """
    for name, argv in named.items():
        if name not in SCRIPTS:
            continue
        done = subprocess.run(argv, env=env, capture_output=True, timeout=60)
        problem = response_problem(done.stdout) if done.returncode == 0 else "non-zero exit"
        if problem or done.stderr:
            sys.stderr.write(f"{name}: exit {done.returncode}: {problem or 'stderr output'}\n")
            sys.stderr.write(done.stdout.decode("latin-1") + done.stderr.decode("latin-1"))
            raise SystemExit(f"bench: {name} is not a correct CGI script; not timing it")


def importtime(python: str, code: str, env: dict[str, str], tries: int = 5) -> str:
    """``python -X importtime -c code``: the fastest of ``tries`` runs (the least noise)."""
    best: tuple[int, str] | None = None
    for _ in range(tries):
        done = subprocess.run(
            [python, "-X", "importtime", "-c", code], env=env, capture_output=True, text=True
        )
        lines = [line for line in done.stderr.splitlines() if line.startswith("import time:")]
        total = sum(int(line.split("|")[0].split(":")[1]) for line in lines[1:])
        if best is None or total < best[0]:
            best = (total, "\n".join(lines))
    assert best is not None
    return best[1]


def top_imports(report: str, count: int = 6) -> list[tuple[str, int, int]]:
    """The ``count`` modules with the largest self time: (module, self us, cumulative us)."""
    rows = []
    for line in report.splitlines()[1:]:  # the first line is the column header
        fields = line.removeprefix("import time:").split("|")
        rows.append((fields[2].strip(), int(fields[0]), int(fields[1])))
    return sorted(rows, key=lambda row: row[1], reverse=True)[:count]


def floor_lines(rounds: list[dict[str, run.Timing]]) -> list[str]:
    """One PASS/FAIL line per floor, with the median ratio of every round."""
    lines = []
    for name, baseline, limit in FLOORS:
        ratios = [r[name].median / r[baseline].median for r in rounds]
        verdicts = [
            f"round {i}: {x:.2f} {'PASS' if x <= limit else 'FAIL'}"
            for i, x in enumerate(ratios, 1)
        ]
        lines.append(f"- {name} / {baseline} <= {limit:.2f}: " + "; ".join(verdicts))
    return lines


def import_section(python: str, env: dict[str, str]) -> tuple[str, str]:
    """Markdown for both importtime reports, and a short summary of their top entries."""
    parts, summary = [], []
    for title, code in IMPORTS.items():
        report = importtime(python, code, env)
        top = ", ".join(f"{m} {s / 1000:.2f} ms" for m, s, _ in top_imports(report))
        parts += [f"`{Path(python).name} -X importtime -c '{code}'` (fastest of 5):", ""]
        parts += ["```", report, "```", "", f"Largest self times: {top}.", ""]
        summary.append(f"{title}: {top}")
    return "\n".join(parts), "\n".join(summary)


def measure(python: str, args: argparse.Namespace) -> list[dict[str, run.Timing]]:
    """Check the scripts, then time the four commands in two hyperfine rounds."""
    env = cgi_environment()
    with tempfile.TemporaryDirectory(prefix="cgikit-bench-") as tmp:
        named = commands(python, write_scripts(Path(tmp)))
        check_scripts(named, env)
        rounds = []
        for order in (list(named), list(reversed(named))):
            timed = run.hyperfine(
                {n: named[n] for n in order}, warmup=args.warmup, runs=args.runs, env=env
            )
            rounds.append({name: timed[name] for name in named})  # table order stays put
    return rounds


def main() -> int:
    """Run the benchmark, print the tables and floors, and record them."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--python", default=sys.executable, help="interpreter to measure")
    run.add_arguments(parser)
    args = parser.parse_args()
    rounds = measure(args.python, args)
    imports, summary = import_section(args.python, cgi_environment())
    body = ["Commands (each `PYTHON SCRIPT`, scripts generated in a temp dir, CGI GET env):"]
    body += [*describe(args.python), ""]
    for i, timings in enumerate(rounds, 1):
        body += [f"Round {i}:", "", run.markdown_table(timings, BASELINES), ""]
    body += ["Floors (issue 2, medians):", "", *floor_lines(rounds), "", imports]
    text = "\n".join(body)
    print(text)
    print("\n" + summary)
    if not args.no_record:
        run.record("cgi_startup", text, python=args.python)
        print(f"\nappended to {run.portable(str(run.RESULTS))}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
