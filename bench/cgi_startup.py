"""Whole-process cost of one CGI request for a hello-world WSGI app (issue 2, Performance).

A CGI server starts one process per request, so interpreter start-up plus imports is the
price of every request. Four commands, same interpreter, same environment: cgikit.run,
wsgiref's CGIHandler, a hand-written print-style script, and the bare interpreter
(``-I -S -c pass``, the floor nothing can beat). The machine is shared and noisy, so they
are timed in many short hyperfine slices, each in another command order, and every run
time is pooled per command (see run.py); the floors of issue 2 are judged on the pooled
medians, and the ratios within each slice show the spread.

    python3 bench/cgi_startup.py [--python /usr/bin/python3] [--slices 20] [--runs 20]
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
FLOORS: tuple[run.Pair, ...] = (("cgikit", "print-script", 1.10), ("cgikit", "wsgiref", 0.70))
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
IMPORTTIME_HEAD = "import time: self [us] | cumulative | imported package"


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


def added_lines(report: str, baseline: str) -> tuple[list[str], str]:
    """The lines of ``report`` for modules ``baseline`` does not import, and their total.

    With the print script's report as ``baseline`` these are the cgikit modules and any
    stdlib module that only cgikit's path imports: the whole import cost cgikit adds.
    """
    seen = {row[0] for row in parse_importtime(baseline)}
    lines = [line for line in report.splitlines() if parse_importtime(line)]  # no header
    kept = [line for line in lines if parse_importtime(line)[0][0] not in seen]
    rows = parse_importtime("\n".join(kept))
    own = sum(row[1] for row in rows) / 1000
    base = parse_importtime(baseline)
    total = (
        f"Total beyond the print script (fastest of {TRIES} runs each):"
        f" {len(rows)} module{'' if len(rows) == 1 else 's'},"
        f" {own:.2f} ms self (the print script imports {len(base)} modules,"
        f" {sum(row[1] for row in base) / 1000:.2f} ms self)."
    )
    return kept, total


def startup_note(startup: str) -> str:
    """What the interpreter imports before any script runs, which every command pays.

    A site-packages ``.pth`` file can import heavy modules (even ``re``) at start-up; then
    the commands differ less, and wsgiref's own ``import re`` costs it nothing extra.
    """
    rows = parse_importtime(startup)
    site = next((cumulative for name, _, cumulative in rows if name == "site"), 0)
    heavy = [name for name in ("re", "typing", "enum", "pathlib") if name in {r[0] for r in rows}]
    return (
        f"Start-up (the print script's importtime, fastest of {TRIES}): site {site / 1000:.2f}"
        f" ms cumulative; already imported then: {', '.join(heavy) or 'none of re, typing'}."
    )


def import_section(python: str, scripts: dict[str, Path], env: dict[str, str]) -> str:
    """Markdown for the importtime reports of ``import cgikit`` and of one real request.

    The request is the cgikit script itself, run under the CGI environment: it shows every
    module the CGI path imports, whatever the package layout. Only the lines for modules
    the print script does not import are shown (the rest is start-up, paid by all alike).
    """
    baseline = importtime(python, [str(scripts["print-script"])], env)
    reports = {
        "import cgikit": ["-c", "import cgikit"],
        "CGI path (one GET request)": [str(scripts["cgikit"])],
    }
    parts = [startup_note(baseline), ""]
    for title, args in reports.items():
        kept, total = added_lines(importtime(python, args, env), baseline)
        shown = shlex.join([run.portable(python), "-X", "importtime", *map(run.portable, args)])
        parts += [f"{title}, modules the print script does not import: `{shown}`", ""]
        parts += ["```", IMPORTTIME_HEAD, *kept, "```", "", total, ""]
    return "\n".join(parts)


def measure(python: str, args: argparse.Namespace) -> tuple[run.Sliced, str]:
    """Check the scripts, time them in slices, and profile their imports."""
    env = cgi_environment()
    with tempfile.TemporaryDirectory(prefix="cgikit-bench-") as tmp:
        scripts = write_scripts(Path(tmp))
        named = commands(python, scripts)
        check_scripts(named, env)
        sliced = run.hyperfine_slices(
            named, slices=args.slices, runs=args.runs, warmup=args.warmup, env=env
        )
        imports = import_section(python, scripts, env)
    return sliced, imports


def main() -> int:
    """Run the benchmark, print the tables and floors, and record them."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--python", default=sys.executable, help="interpreter to measure")
    run.add_arguments(parser)
    args = parser.parse_args()
    sliced, imports = measure(args.python, args)
    body = [run.method_line(sliced, args.warmup), ""]
    body += ["Commands (scripts generated in a temp dir; run with a CGI GET environment,"]
    body += ["PATH, HOME and PYTHONPATH=src):", "", *describe(args.python), ""]
    body += [f"Pooled over {len(sliced.slices)} slices:", ""]
    body += [run.markdown_table(sliced.pooled, BASELINES), ""]
    body += ["Floors (issue 2), judged on the pooled medians; per-slice ratios as spread:", ""]
    body += [run.spread_table(sliced, FLOORS), "", imports]
    text = "\n".join(body)
    print(text)
    if not args.no_record:
        run.record("cgi_startup", text, python=args.python)
        print(f"\nwritten to {run.portable(str(run.RESULTS))}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
