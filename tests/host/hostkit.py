"""Helpers for the CGIHost tests: real scripts in a temp dir, the app called through
``wsgiref.validate.validator`` with warnings as errors, leak checks."""

from __future__ import annotations

import io
import json
import os
import sys
import textwrap
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from wsgiref.util import setup_testing_defaults
from wsgiref.validate import validator

import pytest

from cgikit.cgi_host import CGIHost
from cgikit.site_server import become_subreaper

PY = sys.executable
PERL = "/usr/bin/perl"
SRC = Path(__file__).resolve().parents[2] / "src"
FAST = {"timeout": 10.0, "idle_timeout": 10.0}

# name: (interpreter, text). Written by the ``cgi_dir`` fixture, chmod 755.
ENV_PY = """\
import json, os, sys
print("Content-Type: application/json\\n", flush=True)
body = sys.stdin.buffer.read().decode("latin-1")
env = {k: v for k, v in os.environ.items()}
print(json.dumps({"env": env, "cwd": os.getcwd(), "argv": sys.argv, "body": body}))
"""
SCRIPTS: dict[str, tuple[str, str]] = {
    "env.py": (PY, ENV_PY),
    "sub/inner.py": (PY, ENV_PY),
    "env.sh": ("/bin/sh", "printf 'Content-Type: text/plain\\n\\n'; env"),
    "env.pl": (
        PERL,
        'print "Content-Type: text/plain\\n\\n"; print "$_=$ENV{$_}\\n" for sort keys %ENV;',
    ),
    "echo.pl": (
        PERL,
        """\
        binmode STDIN; binmode STDOUT; $| = 1;
        print "Content-Type: application/octet-stream\\n\\n";
        while (read(STDIN, my $buf, 65536)) { print $buf }
        """,
    ),
    "echo.sh": (
        "/bin/sh",
        "printf 'Content-Type: text/plain\\nX-Length: %s\\n\\n' \"$CONTENT_LENGTH\"; cat",
    ),
    "status404.sh": (
        "/bin/sh",
        "printf 'Status: 404 Gone Fishing\\nContent-Type: text/plain\\n\\nsend404\\n'",
    ),
    "redirect.sh": ("/bin/sh", "printf 'Location: /env.py/moved?from=redirect\\n\\n'; echo junk"),
    "loop.sh": ("/bin/sh", "printf 'Location: /loop.sh\\n\\n'"),
    "away.sh": ("/bin/sh", "printf 'Location: /elsewhere/x\\n\\n'"),
    "client.sh": ("/bin/sh", "printf 'Location: http://example.com/x\\n\\n'"),
    "garbage.sh": ("/bin/sh", "echo 'this is not a CGI header'"),
    "silent.sh": ("/bin/sh", "exit 0"),
    "sleeper.sh": ("/bin/sh", "sleep 20"),
    "cut.sh": ("/bin/sh", "printf 'Content-Type: text/plain\\n\\npart1\\n'; sleep 20"),
    "stream.sh": (
        "/bin/sh",
        """\
        printf 'Content-Type: text/plain\\n\\nfirst\\n'
        i=0
        while [ ! -e "$MARKER" ] && [ $i -lt 100 ]; do sleep 0.05; i=$((i+1)); done
        if [ -e "$MARKER" ]; then echo second; else echo 'no marker'; fi
        """,
    ),
    "nph-status.sh": (
        "/bin/sh",
        "printf 'HTTP/1.1 202 Accepted Nicely\\r\\nServer: fake/1\\r\\nDate: Mon, 1 Jan 2001"
        " 00:00:00 GMT\\r\\nConnection: close\\r\\nContent-Type: text/plain\\r\\n"
        "X-Nph: yes\\r\\n\\r\\nnph body\\n'",
    ),
    "nph-bad.sh": ("/bin/sh", "printf 'Content-Type: text/plain\\n\\nnot nph\\n'"),
    "head.sh": (
        "/bin/sh",
        "printf 'Content-Type: text/plain\\n\\n%s\\n' \"$REQUEST_METHOD\"; "
        'echo "$REQUEST_METHOD" > "$MARKER"',
    ),
}


@pytest.fixture(scope="module", autouse=True)
def subreaper() -> Iterator[None]:
    """Grandchildren orphaned by a group kill come back here to be reaped (as in serve)."""
    become_subreaper()
    yield
    become_subreaper(False)


def children() -> set[str]:
    found: set[str] = set()
    for task in os.listdir("/proc/self/task"):
        with open(f"/proc/self/task/{task}/children") as f:
            found.update(f.read().split())
    return found


@pytest.fixture(autouse=True)
def no_leaks() -> Iterator[None]:
    fds, kids = set(os.listdir("/proc/self/fd")), children()
    yield
    now = set(os.listdir("/proc/self/fd"))
    assert now == fds, {"opened": _described(now - fds), "closed": sorted(fds - now)}
    assert children() == kids


def _described(fds: set[str]) -> dict[str, str]:
    found = {}
    for fd in sorted(fds):
        try:
            found[fd] = os.readlink(f"/proc/self/fd/{fd}")
        except OSError:
            found[fd] = "?"
    return found


def write_script(root: Path, name: str, interpreter: str, text: str, mode: int = 0o755) -> Path:
    path = root / name
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(f"#!{interpreter}\n" + textwrap.dedent(text))
    path.chmod(mode)
    return path


@pytest.fixture
def cgi_dir(tmp_path: Path) -> Path:
    root = tmp_path / "cgi"
    for name, (interpreter, text) in SCRIPTS.items():
        write_script(root, name, interpreter, text)
    return root


class Result:
    def __init__(self, status: str, headers: list[tuple[str, str]], body: bytes, log: str):
        self.status, self.headers, self.body, self.log = status, headers, body, log

    @property
    def code(self) -> int:
        return int(self.status[:3])

    def header(self, name: str) -> str | None:
        values = [v for n, v in self.headers if n.lower() == name.lower()]
        return values[0] if values else None

    def json(self) -> dict[str, Any]:
        data: dict[str, Any] = json.loads(self.body)
        return data

    def lines(self) -> dict[str, str]:
        pairs = (line.partition("=") for line in self.body.decode("latin-1").splitlines())
        return {name: value for name, _, value in pairs}


def environ_for(
    path: str = "/", method: str = "GET", body: bytes = b"", **extra: Any
) -> dict[str, Any]:
    environ: dict[str, Any] = {
        "REQUEST_METHOD": method,
        "PATH_INFO": path,
        "SCRIPT_NAME": "",
        "QUERY_STRING": "",
    }
    if "?" in path:
        environ["PATH_INFO"], environ["QUERY_STRING"] = path.split("?", 1)
    environ.update(extra)
    environ.setdefault("wsgi.input", io.BytesIO(body))
    environ["wsgi.errors"] = io.StringIO()
    setup_testing_defaults(environ)
    return environ


def call(
    app: CGIHost,
    path: str = "/",
    method: str = "GET",
    body: bytes = b"",
    validate: bool = True,
    **extra: Any,
) -> Result:
    """One request; ``validate=False`` for an environ the validator itself refuses."""
    environ = environ_for(path, method, body, **extra)
    errors = environ["wsgi.errors"]
    got: list[Any] = []

    def start_response(status: str, headers: list[tuple[str, str]], exc_info: Any = None) -> Any:
        got[:] = [status, headers]
        return lambda data: None

    with warnings.catch_warnings():
        warnings.simplefilter("error")
        result = (validator(app) if validate else app)(environ, start_response)
        try:
            data = b"".join(result)
        finally:
            close = getattr(result, "close", None)
            if close is not None:
                close()
    return Result(got[0], got[1], data, errors.getvalue())
