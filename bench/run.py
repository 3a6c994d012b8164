"""The shared benchmark runner: hyperfine side by side, a Markdown table, bench/RESULTS.md.

Every benchmark in bench/ builds named commands, hands them to :func:`hyperfine` (one
invocation, so the commands share the machine's state of the moment), prints
:func:`markdown_table` and, unless ``--no-record``, appends a section to RESULTS.md with
:func:`record`. Run standalone it benchmarks arbitrary commands::

    python3 bench/run.py --baseline bare 'bare=python3 -I -S -c pass' 'site=python3 -c pass'
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shlex
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

BENCH_DIR = Path(__file__).resolve().parent
REPO_ROOT = BENCH_DIR.parent
RESULTS = BENCH_DIR / "RESULTS.md"
RESULTS_HEADER = """# Benchmark results

Appended by the scripts in bench/ (see bench/README.md); newest last. Times are
wall-clock per whole command, from hyperfine with `--shell=none`.
"""


@dataclass(frozen=True)
class Timing:
    """One command's statistics from hyperfine, in seconds."""

    name: str
    command: str
    median: float
    mean: float
    stddev: float
    min: float
    max: float
    runs: int


def hyperfine(
    commands: Mapping[str, Sequence[str]],
    *,
    warmup: int = 10,
    runs: int | None = None,
    min_runs: int | None = None,
    env: Mapping[str, str] | None = None,
) -> dict[str, Timing]:
    """Time the named argv lists in ONE hyperfine run; returns their statistics by name.

    ``--shell=none`` because a shell would add its own start-up (milliseconds) to every
    command and blur exactly the differences these benchmarks look for. ``env`` is the
    environment of hyperfine, which the commands inherit.
    """
    exe = shutil.which("hyperfine")
    if exe is None:
        raise SystemExit("bench: hyperfine not found (Debian: apt-get install hyperfine)")
    with tempfile.TemporaryDirectory(prefix="cgikit-bench-") as tmp:
        export = Path(tmp) / "hyperfine.json"
        argv = [exe, "--shell=none", "--style=basic", "--output=null", f"--warmup={warmup}"]
        argv += [f"--export-json={export}"]
        argv += [f"--runs={runs}"] if runs else []
        argv += [f"--min-runs={min_runs}"] if min_runs else []
        for name in commands:  # hyperfine pairs names with commands in order
            argv += ["--command-name", name]
        argv += [shlex.join(command) for command in commands.values()]
        subprocess.run(argv, env=None if env is None else dict(env), check=True)
        data = json.loads(export.read_text(encoding="utf-8"))
    return {name: _timing(name, r) for name, r in zip(commands, data["results"], strict=True)}


def _timing(name: str, result: dict[str, Any]) -> Timing:
    """A Timing from one entry of hyperfine's ``--export-json`` results."""
    return Timing(
        name=name,
        command=result["command"],
        median=result["median"],
        mean=result["mean"],
        stddev=result["stddev"] or 0.0,  # null when there was a single run
        min=result["min"],
        max=result["max"],
        runs=len(result["times"]),
    )


def _ms(seconds: float) -> str:
    return f"{seconds * 1000:.2f}"


def markdown_table(timings: Mapping[str, Timing], baselines: Sequence[str] = ()) -> str:
    """A Markdown table of ``timings``, with a median ratio column per baseline name."""
    head = ["command", "median (ms)", "mean ± sd (ms)", "min (ms)", "runs"]
    head += [f"ratio to {name}" for name in baselines]
    rule = ["---"] + ["--:"] * (len(head) - 1)  # numbers right-aligned
    lines = ["| " + " | ".join(head) + " |", "| " + " | ".join(rule) + " |"]
    for t in timings.values():
        row = [f"`{t.name}`", _ms(t.median), f"{_ms(t.mean)} ± {_ms(t.stddev)}", _ms(t.min)]
        row.append(str(t.runs))
        row += [f"{t.median / timings[name].median:.2f}" for name in baselines]
        lines.append("| " + " | ".join(row) + " |")
    return "\n".join(lines)


def portable(arg: str) -> str:
    """``arg`` without this machine's paths: repo paths relative, home/temp ones basenamed.

    System paths such as /usr/bin/python3 stay, as they say which interpreter was meant.
    """
    if not os.path.isabs(arg):
        return arg
    path = Path(arg)
    if path.is_relative_to(REPO_ROOT):
        return str(path.relative_to(REPO_ROOT)) or "."
    if arg.startswith(("/usr/", "/bin/", "/opt/", "/etc/")):
        return arg
    return path.name


def command_line(argv: Sequence[str] | None = None) -> str:
    """The command that is running now, as one would type it, without machine paths."""
    args = sys.argv if argv is None else argv
    return shlex.join([Path(sys.executable).name, *(portable(a) for a in args)])


def _read_field(path: str, key: str) -> str | None:
    try:
        with open(path, encoding="utf-8") as f:
            for line in f:
                name, _, value = line.partition(":")
                if name.strip() == key:
                    return value.strip()
    except OSError:
        pass
    return None


def _python_version(python: str) -> str:
    code = "import platform; print(platform.python_implementation(), platform.python_version())"
    out = subprocess.run([python, "-I", "-c", code], capture_output=True, text=True, check=True)
    return f"{out.stdout.strip()} ({Path(python).name})"


def machine_info(python: str = sys.executable) -> dict[str, str]:
    """What the figures depend on, with no absolute paths (``python`` by basename)."""
    kib = _read_field("/proc/meminfo", "MemTotal")
    memory = f"{int(kib.split()[0]) / 1024**2:.1f} GiB" if kib else "unknown"
    hf = shutil.which("hyperfine")
    version = subprocess.run([hf, "--version"], capture_output=True, text=True) if hf else None
    return {
        "CPU": _read_field("/proc/cpuinfo", "model name") or platform.processor() or "unknown",
        "cores": str(os.cpu_count()),
        "memory": memory,
        "Python": _python_version(python),
        "hyperfine": version.stdout.split()[-1] if version else "not installed",
        "kernel": f"{platform.system()} {platform.release()}",
    }


def source_state() -> str:
    """The commit measured, and whether src/ had uncommitted changes then."""

    def git(*args: str) -> str:
        done = subprocess.run(["git", "-C", str(REPO_ROOT), *args], capture_output=True, text=True)
        return done.stdout.strip() if done.returncode == 0 else ""

    commit = git("rev-parse", "--short", "HEAD") or "unknown"
    dirty = git("status", "--porcelain", "--", "src")
    return f"commit {commit}" + (", plus uncommitted changes in src/" if dirty else "")


def check_portable(text: str) -> None:
    """Refuse to commit this machine's paths to RESULTS.md (they mean nothing elsewhere)."""
    for path in (str(REPO_ROOT), tempfile.gettempdir(), str(Path.home())):
        if path and path != "/" and path in text:
            raise ValueError(f"bench: result text contains a machine path: {path}")


def record(title: str, body: str, *, python: str = sys.executable, path: Path = RESULTS) -> str:
    """Append a dated section (command line, machine, ``body``) to RESULTS.md; return it."""
    machine = machine_info(python)
    section = "\n".join(
        [
            f"## {title} — {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}",
            "",
            f"Command: `{command_line()}`",
            "",
            "Machine: " + "; ".join(f"{key} {value}" for key, value in machine.items()),
            "",
            f"Source: {source_state()}",
            "",
            body.rstrip(),
            "",
        ]
    )
    check_portable(section)
    existing = path.read_text(encoding="utf-8") if path.exists() else RESULTS_HEADER
    path.write_text(existing.rstrip("\n") + "\n\n" + section, encoding="utf-8")
    return section


def add_arguments(parser: argparse.ArgumentParser, runs: int = 100, warmup: int = 10) -> None:
    """The options every benchmark shares: ``--runs``, ``--warmup``, ``--no-record``."""
    parser.add_argument("--runs", type=int, default=runs, help=f"timed runs (default {runs})")
    parser.add_argument("--warmup", type=int, default=warmup, help=f"untimed (default {warmup})")
    parser.add_argument(
        "--no-record", action="store_true", help="print the table; do not append to RESULTS.md"
    )


def main(argv: Sequence[str] | None = None) -> int:
    """Benchmark ``NAME=COMMAND`` arguments against each other."""
    parser = argparse.ArgumentParser(description=main.__doc__)
    add_arguments(parser)
    parser.add_argument("--baseline", action="append", default=[], help="ratio column for NAME")
    parser.add_argument("--title", default="run.py", help="RESULTS.md section title")
    parser.add_argument("commands", nargs="+", metavar="NAME=COMMAND")
    args = parser.parse_args(argv)
    commands = {}
    for item in args.commands:
        name, sep, command = item.partition("=")
        if not sep or not command:
            parser.error(f"expected NAME=COMMAND, got {item!r}")
        commands[name] = shlex.split(command)
    timings = hyperfine(commands, warmup=args.warmup, runs=args.runs)
    table = markdown_table(timings, args.baseline)
    print(table)
    if not args.no_record:
        record(args.title, table)
    return 0


if __name__ == "__main__":
    sys.exit(main())
