"""Shared helpers for the child-side tests (tests/protocol, tests/wsgi, tests/gateways).

In-process: build an environ the way the CGI gateway does and drive ``Response`` with a
list-collecting ``send``. Out of process: write a tiny CGI script and run it with a
controlled environment, as a web server would.
"""

from __future__ import annotations

import io
import os
import signal
import subprocess
import sys
import textwrap
import warnings
from pathlib import Path
from typing import Any
from wsgiref.validate import validator

from cgikit.wsgi_request import BoundedInput, build_environ, content_length
from cgikit.wsgi_response import FileWrapper, Response

SRC = Path(__file__).resolve().parents[1] / "src"
TIMEOUT = 30


# -- in process ----------------------------------------------------------------------


def make_environ(method: str = "GET", body: bytes = b"", **meta: str) -> dict[str, Any]:
    """A WSGI environ from CGI variables, as cgikit's CGI gateway builds it."""
    variables = {
        "GATEWAY_INTERFACE": "CGI/1.1",
        "REQUEST_METHOD": method,
        "SERVER_NAME": "localhost",
        "SERVER_PORT": "80",
        "SERVER_PROTOCOL": "HTTP/1.1",
        "SCRIPT_NAME": "/app.cgi",
        "PATH_INFO": "/",
        "QUERY_STRING": "",
    }
    if body:
        variables["CONTENT_LENGTH"] = str(len(body))
    variables.update(meta)
    length = content_length(variables)
    stream = BoundedInput(io.BytesIO(body).read, length)
    environ = build_environ(variables, stream, io.StringIO(), length)
    environ["wsgi.file_wrapper"] = FileWrapper
    return environ


class Out:
    """What a Response sent (one item per ``send`` call) and logged."""

    def __init__(self) -> None:
        self.sent: list[bytes] = []
        self.logs: list[str] = []
        self.files: list[tuple[int, int, int]] = []

    @property
    def data(self) -> bytes:
        return b"".join(self.sent)

    def send_file(self, fd: int, offset: int, count: int) -> int:
        """A ``send_file`` callable: copy the span with pread, as the CGI gateway does."""
        self.files.append((fd, offset, count))
        data = os.pread(fd, count, offset)
        self.sent.append(data)
        return len(data)


def respond(
    app: Any,
    method: str = "GET",
    *,
    body: bytes = b"",
    meta: dict[str, str] | None = None,
    validate: bool = False,
    **options: Any,
) -> Out:
    """Run ``app`` through a Response; with ``validate``, wrapped in wsgiref's validator
    with every warning turned into an error (which the Response turns into a 500)."""
    out = Out()
    environ = make_environ(method, body, **(meta or {}))
    response = Response(environ, out.sent.append, out.logs.append, **options)
    if not validate:
        response.run(app)
        return out
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        response.run(validator(app))
    return out


def split_response(data: bytes) -> tuple[str, list[tuple[str, str]], bytes]:
    """``(status line, headers, body)`` of a CGI (or NPH) response."""
    head, sep, body = data.partition(b"\r\n\r\n")
    assert sep, f"no blank line in {data!r}"
    first, *lines = head.decode("latin-1").split("\r\n")
    headers = [(name, value) for name, _, value in (line.partition(": ") for line in lines)]
    return first, headers, body


def assert_same_as_validated(app: Any, out: Out, method: str = "GET", **kw: Any) -> None:
    """The app passes wsgiref's validator and gives the same status and body through it."""
    checked = respond(app, method, validate=True, **kw)
    failures = [line for line in checked.logs if "Traceback" in line or "bad response" in line]
    assert failures == [], failures
    status, _, body = split_response(out.data)
    checked_status, _, checked_body = split_response(checked.data)
    assert (checked_status, checked_body) == (status, body)


# -- out of process ------------------------------------------------------------------


def cgi_env(**overrides: str | bytes | None) -> dict[str, str | bytes]:
    """The environment a CGI server gives a script; None removes a variable."""
    env: dict[str, str | bytes] = {
        "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
        "PYTHONPATH": str(SRC),
        "PYTHONDONTWRITEBYTECODE": "1",
        "GATEWAY_INTERFACE": "CGI/1.1",
        "SERVER_SOFTWARE": "test-server/1.0",
        "SERVER_NAME": "localhost",
        "SERVER_PORT": "80",
        "SERVER_PROTOCOL": "HTTP/1.1",
        "REQUEST_METHOD": "GET",
        "SCRIPT_NAME": "/app.cgi",
        "PATH_INFO": "",
        "QUERY_STRING": "",
        "REMOTE_ADDR": "127.0.0.1",
    }
    for key, value in overrides.items():
        if value is None:
            env.pop(key, None)
        else:
            env[key] = value
    return env


def terminal_env(**overrides: str | None) -> dict[str, str | bytes]:
    """A terminal user's environment: no CGI variables at all."""
    kept = ("PATH", "PYTHONPATH", "PYTHONDONTWRITEBYTECODE")
    env = {key: value for key, value in cgi_env().items() if key in kept}
    for key, value in overrides.items():
        if value is None:
            env.pop(key, None)
        else:
            env[key] = value
    return env


def write_script(directory: Path, source: str, name: str = "app.cgi") -> Path:
    """Write a CGI script (dedented ``source``) and make it executable."""
    path = directory / name
    path.write_text(textwrap.dedent(source))
    path.chmod(0o755)
    return path


def run_proc(
    argv: list[str],
    env: dict[str, str | bytes],
    stdin: bytes | None = b"",
    cwd: Path | None = None,
) -> subprocess.CompletedProcess[bytes]:
    """Run ``argv`` like a web server would (``stdin=None``: /dev/null); check it left nothing.

    The process runs in a new session, so that afterwards the test can check that no
    process of its group is left behind.
    """
    with subprocess.Popen(
        argv,
        env=env,
        stdin=subprocess.PIPE if stdin is not None else subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        start_new_session=True,
        cwd=cwd,
    ) as proc:
        try:
            stdout, stderr = proc.communicate(stdin, timeout=TIMEOUT)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.communicate()
            raise
    assert_group_gone(proc.pid)
    return subprocess.CompletedProcess(argv, proc.returncode, stdout, stderr)


def run_cgi(
    script: Path, env: dict[str, str | bytes], stdin: bytes | None = b"", *args: str
) -> subprocess.CompletedProcess[bytes]:
    """Run a CGI script with this interpreter; it must exit 0."""
    proc = run_proc([sys.executable, str(script), *args], env, stdin)
    assert proc.returncode == 0, proc.stderr.decode("utf-8", "replace")
    return proc


def assert_group_gone(pgid: int) -> None:
    try:
        os.killpg(pgid, 0)
    except ProcessLookupError:
        return
    raise AssertionError(f"processes of group {pgid} are still running")
