"""Soak ``cgikit serve``: many sequential requests to a tiny sh script (issue 3, Tests).

Starts ``python -m cgikit serve --port 0`` on a temp copy of examples/site (plus
cgi-bin/tiny.sh), then sends ``--count`` sequential GETs on 127.0.0.1, the first half on
one keep-alive connection and the second half each on a new connection. Before and after
(after a bounded settle) it reads the server's open descriptors (/proc/PID/fd), its child
processes (/proc/*/stat, zombies included) and its VmRSS/VmHWM, prints a short table and,
unless ``--no-record``, appends it to bench/RESULTS.md (run.record). Exit status 1 when a
request failed, the time bound cut the run, or descriptors or children were left. Linux.

    python3 bench/soak_serve.py --count 10000
"""

from __future__ import annotations

import argparse
import http.client
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import run

SRC = run.REPO_ROOT / "src"
SITE = run.REPO_ROOT / "examples" / "site"
TINY_SH = "#!/bin/sh\nprintf 'Content-Type: text/plain\\n\\nok\\n'\n"
STARTED = re.compile(r"^cgikit: serving \S+ at http://127\.0\.0\.1:(\d+)/")
SETTLE = 5.0


@dataclass(frozen=True)
class Snapshot:
    fds: int
    children: int
    rss_kib: int
    hwm_kib: int


def _children(pid: int) -> int:
    count = 0
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat", "rb") as f:
                stat = f.read()
        except OSError:
            continue
        if int(stat[stat.rindex(b")") + 2 :].split()[1]) == pid:
            count += 1
    return count


def _status_kib(pid: int, field: str) -> int:
    with open(f"/proc/{pid}/status", encoding="ascii") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    raise KeyError(field)


def snapshot(pid: int) -> Snapshot:
    return Snapshot(
        len(os.listdir(f"/proc/{pid}/fd")),
        _children(pid),
        _status_kib(pid, "VmRSS"),
        _status_kib(pid, "VmHWM"),
    )


def settled(pid: int, fds_at_most: int | None = None) -> Snapshot:
    """A snapshot once the count of fds is stable (or <= ``fds_at_most``) with no
    children, or the last one after ``SETTLE`` seconds."""
    last = snapshot(pid)
    for _ in range(int(SETTLE / 0.1)):
        time.sleep(0.1)
        now = snapshot(pid)
        target = last.fds if fds_at_most is None else fds_at_most
        if now.children == 0 and now.fds <= target:
            return now
        last = now
    return last


class Served:
    """The server process; its stderr is drained (and counted) all the time."""

    def __init__(self, root: Path) -> None:
        env = {**os.environ, "PYTHONPATH": str(SRC)}
        argv = [sys.executable, "-m", "cgikit", "serve", "--port", "0", str(root)]
        self.proc = subprocess.Popen(
            argv, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE
        )
        self.port = 0
        self.log_lines = 0
        self._started = threading.Event()
        self._reader = threading.Thread(target=self._drain, daemon=True)
        self._reader.start()
        if not self._started.wait(15) or not self.port:
            self.stop()
            raise RuntimeError("cgikit serve did not start")

    def _drain(self) -> None:
        assert self.proc.stderr is not None
        for raw in self.proc.stderr:
            self.log_lines += 1
            if not self.port and (match := STARTED.match(raw.decode("utf-8", "replace"))):
                self.port = int(match.group(1))
                self._started.set()
        self._started.set()

    def stop(self) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        try:
            return self.proc.wait(20)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            return self.proc.wait(10)
        finally:
            self._reader.join(5)
            if self.proc.stderr is not None:
                self.proc.stderr.close()


def soak(
    port: int, count: int, max_seconds: float, quiet: bool = False
) -> tuple[int, int, float, bool]:
    """(requests done, failures, seconds, cut by the time bound)."""
    done = failures = 0
    began = time.monotonic()
    deadline = began + max_seconds
    keep = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    step = max(1, count // 10)
    try:
        for n in range(count):
            if time.monotonic() >= deadline:
                return done, failures, time.monotonic() - began, True
            conn = keep if n < count // 2 else http.client.HTTPConnection("127.0.0.1", port, 10)
            try:
                conn.request("GET", "/cgi-bin/tiny.sh")
                response = conn.getresponse()
                if (response.status, response.read()) != (200, b"ok\n"):
                    failures += 1
            except (OSError, http.client.HTTPException):
                failures += 1
                conn.close()
            finally:
                if conn is not keep:
                    conn.close()
            done += 1
            if done % step == 0 and not quiet:
                elapsed = time.monotonic() - began
                print(f"  {done}/{count} in {elapsed:.1f} s ({done / elapsed:.0f} req/s)")
    finally:
        keep.close()
    return done, failures, time.monotonic() - began, False


def table(before: Snapshot, after: Snapshot) -> str:
    rows = [
        ("open fds", str(before.fds), str(after.fds)),
        ("child processes", str(before.children), str(after.children)),
        ("VmRSS", f"{before.rss_kib / 1024:.1f} MiB", f"{after.rss_kib / 1024:.1f} MiB"),
        ("VmHWM", f"{before.hwm_kib / 1024:.1f} MiB", f"{after.hwm_kib / 1024:.1f} MiB"),
    ]
    lines = ["| server process | before | after |", "|---|---:|---:|"]
    lines += [f"| {a} | {b} | {c} |" for a, b, c in rows]
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--count", type=int, default=10_000, help="requests (default 10000)")
    parser.add_argument("--max-seconds", type=float, default=600.0, help="time bound")
    parser.add_argument("--no-record", action="store_true", help="do not write RESULTS.md")
    args = parser.parse_args(argv)
    if not sys.platform.startswith("linux"):
        print("soak_serve: needs Linux (/proc)", file=sys.stderr)
        return 2
    with tempfile.TemporaryDirectory(prefix="soak-serve-") as tmp:
        site = Path(tmp) / "site"
        shutil.copytree(SITE, site)
        tiny = site / "cgi-bin" / "tiny.sh"
        tiny.write_text(TINY_SH)
        tiny.chmod(0o755)
        server = Served(site)
        try:
            pid = server.proc.pid
            warm = soak(server.port, 20, 30, quiet=True)
            before = settled(pid)
            print(f"cgikit serve pid {pid}, port {server.port}; warm-up {warm[0]} requests")
            done, failures, seconds, cut = soak(server.port, args.count, args.max_seconds)
            after = settled(pid, before.fds)
        finally:
            status = server.stop()
    summary = (
        f"{done} sequential GETs of a tiny sh CGI script ({done // 2 if not cut else '?'} "
        f"on one keep-alive connection, the rest on new connections): {seconds:.1f} s, "
        f"{done / seconds:.0f} req/s, {failures} failed"
        + (f", cut by the {args.max_seconds:g} s bound" if cut else "")
        + f"; server exit status {status} on SIGTERM."
    )
    body = summary + "\n\n" + table(before, after) + "\n"
    print()
    print(body)
    ok = not (failures or cut or status or after.fds > before.fds or after.children)
    print("OK" if ok else "FAIL")
    if not args.no_record:
        verdict = f"\nResult: {'OK' if ok else 'FAIL'}\n"
        run.record("cgikit serve soak (bench/soak_serve.py)", body + verdict)
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
