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
TRIES = 5  # importtime runs per report; the fastest is kept, as the least disturbed


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


def importtime(python: str, args: list[str], env: dict[str, str]) -> str:
    """``python -X importtime ARGS`` report lines: the fastest of TRIES runs."""
    best: tuple[int, str] | None = None
    for _ in range(TRIES):
        argv = [python, "-X", "importtime", *args]
        done = subprocess.run(argv, env=env, capture_output=True, text=True, timeout=60)
        lines = [line for line in done.stderr.splitlines() if line.startswith("import time:")]
        total = sum(row[1] for row in parse_importtime("\n".join(lines)))
        if best is None or total < best[0]:
            best = (total, "\n".join(lines))
    assert best is not None
    return best[1]


def parse_importtime(report: str) -> list[tuple[str, int, int]]:
    """(module, self us, cumulative us) for each line of an importtime report."""
    rows = []
    for line in report.splitlines():
        fields = line.removeprefix("import time:").split("|")
        if len(fields) == 3 and fields[0].strip().isdigit():  # skips the column header
            rows.append((fields[2].strip(), int(fields[0]), int(fields[1])))
    return rows


def added_imports(report: str, startup: str, count: int = 8) -> str:
    """What ``report`` imports beyond interpreter start-up: total, and the costliest."""
    seen = {row[0] for row in parse_importtime(startup)}
    rows = [row for row in parse_importtime(report) if row[0] not in seen]
    rows.sort(key=lambda row: row[1], reverse=True)
    top = ", ".join(f"{name} {own / 1000:.2f}" for name, own, _ in rows[:count])
    total = sum(row[1] for row in rows) / 1000
    modules = f"{len(rows)} module{'' if len(rows) == 1 else 's'}"
    return f"{modules} beyond start-up, {total:.2f} ms self in all; costliest (ms): {top}"


def floor_lines(rounds: list[dict[str, run.Timing]]) -> list[str]:
    """One PASS/FAIL line per floor, with the median ratio of every round."""
    lines = []
    for name, baseline, limit in FLOORS:
        ratios = [r[name].median / r[baseline].median for r in rounds]
        verdicts = [
            f"round {i}: {x:.3f} {'PASS' if x <= limit else 'FAIL'}"
            for i, x in enumerate(ratios, 1)
        ]
        lines.append(f"- {name} / {baseline} <= {limit:.2f}: " + "; ".join(verdicts))
    return lines


def startup_note(startup: str) -> str:
    """What the interpreter imports before any script runs, which every command pays.

    A site-packages ``.pth`` file can import heavy modules (even ``re``) at start-up; then
    the commands differ less, and wsgiref's own ``import re`` costs it nothing extra.
    """
    rows = parse_importtime(startup)
    site = next((cumulative for name, _, cumulative in rows if name == "site"), 0)
    heavy = [name for name in ("re", "typing", "enum", "pathlib") if name in {r[0] for r in rows}]
    return (
        f"Start-up (`-c pass`, fastest of {TRIES}): {len(rows)} modules, site {site / 1000:.2f}"
        f" ms cumulative; already imported then: {', '.join(heavy) or 'none of re, typing'}."
    )


def import_section(python: str, script: Path, env: dict[str, str]) -> tuple[str, str]:
    """Markdown for the importtime reports of ``import cgikit`` and of one real request.

    The request is the cgikit script itself, run under the CGI environment: it shows
    every module the CGI path imports, whatever the package layout. Returns the Markdown
    and a one-line-per-report summary.
    """
    startup = importtime(python, ["-c", "pass"], env)
    reports = {
        "import cgikit": ["-c", "import cgikit"],
        "CGI path (one GET request)": [str(script)],
    }
    parts, summary = [startup_note(startup), ""], []
    for title, args in reports.items():
        report = importtime(python, args, env)
        shown = shlex.join([run.portable(python), "-X", "importtime", *map(run.portable, args)])
        line = added_imports(report, startup)
        parts += [f"{title}: `{shown}` (fastest of {TRIES}):", "", "```", report, "```", ""]
        parts += [f"{line}.", ""]
        summary.append(f"{title}: {line}")
    return "\n".join(parts), "\n".join(summary)


Rounds = list[dict[str, run.Timing]]


def time_rounds(
    named: dict[str, list[str]], env: dict[str, str], args: argparse.Namespace
) -> Rounds:
    """Two hyperfine rounds of ``named``, the second in reverse order."""
    rounds = []
    for order in (list(named), list(reversed(named))):
        timed = run.hyperfine(
            {n: named[n] for n in order}, warmup=args.warmup, runs=args.runs, env=env
        )
        rounds.append({name: timed[name] for name in named})  # table order stays put
    return rounds


def measure(python: str, args: argparse.Namespace) -> tuple[Rounds, str, str]:
    """Check the scripts, time them, and profile their imports: (rounds, Markdown, summary)."""
    env = cgi_environment()
    with tempfile.TemporaryDirectory(prefix="cgikit-bench-") as tmp:
        scripts = write_scripts(Path(tmp))
        named = commands(python, scripts)
        check_scripts(named, env)
        rounds = time_rounds(named, env, args)
        imports, summary = import_section(python, scripts["cgikit"], env)
    return rounds, imports, summary


def main() -> int:
    """Run the benchmark, print the tables and floors, and record them."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--python", default=sys.executable, help="interpreter to measure")
    run.add_arguments(parser)
    args = parser.parse_args()
    rounds, imports, summary = measure(args.python, args)
    body = ["Commands (scripts generated in a temp dir; run with a CGI GET environment):", ""]
    body += [*describe(args.python), ""]
    for i, timings in enumerate(rounds, 1):
        body += [f"Round {i}:", "", run.markdown_table(timings, BASELINES), ""]
    body += ["Floors (issue 2, ratios of medians):", "", *floor_lines(rounds), "", imports]
    text = "\n".join(body)
    print(text)
    print(summary)
    if not args.no_record:
        run.record("cgi_startup", text, python=args.python)
        print(f"\nappended to {run.portable(str(run.RESULTS))}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
