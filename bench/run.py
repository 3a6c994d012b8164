"""The shared benchmark runner: hyperfine in slices, Markdown tables, bench/RESULTS.md.

A shared machine drifts: load that comes and goes over seconds lands on whichever command
hyperfine happens to be running, and hyperfine runs all runs of one command before the
next. So every benchmark here times its named commands in many short hyperfine
invocations (*slices*, :func:`hyperfine_slices`), each in a different command order (a
balanced Latin square, :func:`slice_orders`), and pools every single run time per command
from hyperfine's JSON. It prints :func:`markdown_table` and :func:`spread_table` and,
unless ``--no-record``, appends a section to RESULTS.md with :func:`record`. Run
standalone it benchmarks arbitrary commands::

    python3 bench/run.py --baseline bare 'bare=python3 -I -S -c pass' 'site=python3 -c pass'
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shlex
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

BENCH_DIR = Path(__file__).resolve().parent
REPO_ROOT = BENCH_DIR.parent
RESULTS = BENCH_DIR / "RESULTS.md"
RESULTS_HEADER = """# Benchmark results

Written by the scripts in bench/ (see bench/README.md); newest last, before the History
paragraph. Times are wall-clock per whole command, from hyperfine with `--shell=none`,
pooled over many short hyperfine slices.
"""
HISTORY = "## History"

Commands = Mapping[str, Sequence[str]]


@dataclass(frozen=True)
class Timing:
    """One command's statistics over a list of run times, in seconds."""

    name: str
    command: str
    median: float
    mean: float
    stddev: float
    min: float
    max: float
    runs: int

    @classmethod
    def of(cls, name: str, command: str, times: Sequence[float]) -> Timing:
        """The statistics of ``times`` (sample standard deviation, 0 for a single run)."""
        return cls(
            name=name,
            command=command,
            median=statistics.median(times),
            mean=statistics.fmean(times),
            stddev=statistics.stdev(times) if len(times) > 1 else 0.0,
            min=min(times),
            max=max(times),
            runs=len(times),
        )


@dataclass(frozen=True)
class Sliced:
    """A sliced measurement: statistics pooled over all slices, and each slice's own.

    All dicts are keyed in the caller's command order, whatever order a slice ran in.
    """

    pooled: dict[str, Timing]
    slices: list[dict[str, Timing]]
    orders: list[list[str]]
    seconds: float  # wall-clock time of all slices together


def hyperfine_times(
    commands: Commands,
    *,
    warmup: int = 3,
    runs: int | None = None,
    min_runs: int | None = None,
    env: Mapping[str, str] | None = None,
) -> dict[str, list[float]]:
    """Time the named argv lists in ONE hyperfine run; every run time (s) by name.

    ``--shell=none`` because a shell would add its own start-up (milliseconds) to every
    command and blur exactly the differences these benchmarks look for. ``env`` is the
    environment of hyperfine, which the commands inherit. Runs in ``commands`` order.
    hyperfine's own warnings (outliers, a slow first run) are dropped: on a shared machine
    they come with every slice, and the pooled statistics are robust to them.
    """
    exe = shutil.which("hyperfine")
    if exe is None:
        raise SystemExit("bench: hyperfine not found (Debian: apt-get install hyperfine)")
    with tempfile.TemporaryDirectory(prefix="cgikit-bench-") as tmp:
        export = Path(tmp) / "hyperfine.json"
        argv = [exe, "--shell=none", "--style=none", "--output=null", f"--warmup={warmup}"]
        argv += [f"--export-json={export}"]
        argv += [f"--runs={runs}"] if runs else []
        argv += [f"--min-runs={min_runs}"] if min_runs else []
        for name in commands:  # hyperfine pairs names with commands in order
            argv += ["--command-name", name]
        argv += [shlex.join(command) for command in commands.values()]
        done = subprocess.run(argv, env=None if env is None else dict(env), capture_output=True)
        if done.returncode != 0:
            sys.stderr.write(done.stderr.decode(errors="replace"))
            raise SystemExit(f"bench: hyperfine failed with exit status {done.returncode}")
        data = json.loads(export.read_text(encoding="utf-8"))
    results = zip(commands, data["results"], strict=True)
    return {name: [float(t) for t in result["times"]] for name, result in results}


def slice_orders(names: Sequence[str], count: int) -> list[list[str]]:
    """The command order of each of ``count`` slices: a balanced Latin square (Williams).

    For n commands the first row is 0, 1, n-1, 2, n-2, ... and row i adds i (mod n). Over
    every n slices (2n when n is odd, the rows then followed by their mirror images) each
    command runs once in every position and directly after every other command once, so
    neither a drift nor a carry-over from the previous command favours one of them.
    """
    n = len(names)
    base, low, high = [0], 1, n - 1
    while low <= high:
        base.append(low)
        low += 1
        if low <= high:
            base.append(high)
            high -= 1
    rows = [[names[(b + i) % n] for b in base] for i in range(n)]
    if n % 2:
        rows += [row[::-1] for row in rows]
    return [rows[i % len(rows)] for i in range(count)]


def hyperfine_slices(
    commands: Commands,
    *,
    slices: int,
    runs: int,
    warmup: int,
    env: Mapping[str, str] | None = None,
) -> Sliced:
    """``slices`` hyperfine runs of ``runs`` runs per command, orders from :func:`slice_orders`.

    Each slice warms every command up again (``warmup`` untimed runs), as the previous
    slice ran other commands last. Prints one progress line per slice to stderr.
    """
    names, started = list(commands), time.monotonic()
    pooled: dict[str, list[float]] = {name: [] for name in names}
    per_slice: list[dict[str, Timing]] = []
    orders = slice_orders(names, slices)
    for i, order in enumerate(orders, 1):
        ordered = {name: commands[name] for name in order}
        times = hyperfine_times(ordered, warmup=warmup, runs=runs, env=env)
        for name in names:
            pooled[name] += times[name]
        per_slice.append({n: Timing.of(n, shlex.join(commands[n]), times[n]) for n in names})
        medians = ", ".join(f"{n} {_ms(per_slice[-1][n].median)}" for n in order)
        print(f"slice {i}/{slices}, medians (ms): {medians}", file=sys.stderr, flush=True)
    timings = {n: Timing.of(n, shlex.join(commands[n]), pooled[n]) for n in names}
    return Sliced(timings, per_slice, orders, time.monotonic() - started)


def slice_ratios(sliced: Sliced, name: str, baseline: str) -> list[float]:
    """``name``'s median over ``baseline``'s, within each slice."""
    return [s[name].median / s[baseline].median for s in sliced.slices]


def quartiles(values: Sequence[float]) -> tuple[float, float, float]:
    """First quartile, median and third quartile of ``values`` (inclusive method)."""
    if len(values) < 2:
        return values[0], values[0], values[0]
    q1, q2, q3 = statistics.quantiles(values, n=4, method="inclusive")
    return q1, q2, q3


def _ms(seconds: float) -> str:
    return f"{seconds * 1000:.2f}"


def markdown_table(timings: Mapping[str, Timing], baselines: Sequence[str] = ()) -> str:
    """A Markdown table of ``timings``, with a ratio-of-medians column per baseline name."""
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


Pair = tuple[str, str, float | None]  # name, baseline, upper limit of the ratio (or None)


def spread_table(sliced: Sliced, pairs: Sequence[Pair]) -> str:
    """A Markdown table of median ratios: pooled, and the spread of the per-slice ratios.

    The verdict, when a pair has a limit, is judged on the ratio of the pooled medians;
    the per-slice median and interquartile range show how much the slices agree.
    """
    head = ["ratio", "pooled medians", "per-slice median", "per-slice IQR", "limit", "verdict"]
    lines = ["| " + " | ".join(head) + " |", "| --- " + "| --: " * 4 + "| --- |"]
    for name, baseline, limit in pairs:
        pooled = sliced.pooled[name].median / sliced.pooled[baseline].median
        q1, q2, q3 = quartiles(slice_ratios(sliced, name, baseline))
        verdict = "" if limit is None else ("PASS" if pooled <= limit else "FAIL")
        row = [f"{name} / {baseline}", f"{pooled:.3f}", f"{q2:.3f}"]
        row += [f"{q1:.3f} to {q3:.3f} ({q3 - q1:.3f})", "" if limit is None else f"<= {limit:.2f}"]
        lines.append("| " + " | ".join([*row, verdict]) + " |")
    return "\n".join(lines)


def method_line(sliced: Sliced, warmup: int) -> str:
    """One sentence saying how ``sliced`` was measured."""
    runs = next(iter(sliced.pooled.values())).runs
    count = len(sliced.slices)
    return (
        f"Method: {count} hyperfine slices of {runs // count} runs per command, each after "
        f"{warmup} warm-up runs, in a balanced Latin square of command orders; statistics "
        f"pool all {runs} runs per command; {sliced.seconds:.0f} s of timing."
    )


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
    """Add a dated section (command line, machine, ``body``) to RESULTS.md; return it.

    The section goes last, but before a closing ``## History`` section if there is one.
    """
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
    head, found, history = existing.partition("\n" + HISTORY)  # sections go before it
    text = head.rstrip("\n") + "\n\n" + section
    text += "\n" + found.lstrip("\n") + history if found else ""
    path.write_text(text, encoding="utf-8")
    return section


def add_arguments(
    parser: argparse.ArgumentParser, slices: int = 20, runs: int = 20, warmup: int = 3
) -> None:
    """The options every benchmark shares: --slices, --runs, --warmup, --no-record."""
    parser.add_argument(
        "--slices", type=int, default=slices, help=f"hyperfine invocations (default {slices})"
    )
    parser.add_argument(
        "--runs", type=int, default=runs, help=f"timed runs per command and slice (default {runs})"
    )
    parser.add_argument(
        "--warmup", type=int, default=warmup, help=f"untimed runs per command and slice ({warmup})"
    )
    parser.add_argument(
        "--no-record", action="store_true", help="print the tables; do not write RESULTS.md"
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
    sliced = hyperfine_slices(commands, slices=args.slices, runs=args.runs, warmup=args.warmup)
    pairs = [(n, b, None) for b in args.baseline for n in commands if n != b]
    parts = [method_line(sliced, args.warmup), markdown_table(sliced.pooled, args.baseline)]
    text = "\n\n".join([*parts, spread_table(sliced, pairs)] if pairs else parts)
    print(text)
    if not args.no_record:
        record(args.title, text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
