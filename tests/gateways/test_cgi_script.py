"""``cgikit.run(app)`` as a real CGI script: a subprocess with a CGI environment and stdin.

Every run checks the exact stdout bytes, the exit status 0 and that no process of the
script's group is left behind (helpers_child.run_proc).
"""

from __future__ import annotations

import email.utils
import json
import os
import select
import signal
import subprocess
import sys
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest

from cgikit import __version__
from helpers_child import SRC, TIMEOUT, cgi_env, run_cgi, run_proc, write_script

HERE = Path(__file__).resolve().parent
PYTHONPATH = f"{SRC}{os.pathsep}{HERE}"
HELLO = b"Status: 200 OK\r\nContent-Type: text/plain\r\nContent-Length: 5\r\n\r\nhello"
GENERIC_500 = (
    b"Status: 500 Internal Server Error\r\nContent-Type: text/plain; charset=utf-8\r\n"
    b"Content-Length: 94\r\n\r\n500 Internal Server Error\n\n"
    b"The application failed. The details are in the server's error log.\n"
)


def script_for(tmp_path: Path, app: str, name: str = "app.cgi", runner: str = "") -> Path:
    runner = runner or "import cgikit\ncgikit.run(app)\n"
    return write_script(tmp_path, f"from child_apps import {app} as app\n{runner}", name)


def env(**overrides: str | bytes | None) -> dict[str, str | bytes]:
    return cgi_env(PYTHONPATH=PYTHONPATH, **overrides)


def echo(tmp_path: Path, stdin: bytes = b"", **overrides: str | bytes | None) -> dict[str, Any]:
    """Run the echo app; check the header block byte for byte; return what it saw."""
    proc = run_cgi(script_for(tmp_path, "echo"), env(**overrides), stdin)
    head, _, body = proc.stdout.partition(b"\r\n\r\n")
    assert head == (
        b"Status: 200 OK\r\nContent-Type: application/json\r\n"
        + f"Content-Length: {len(body)}".encode()
    )
    assert proc.stderr == b""
    return json.loads(body)


def stderr_lines(proc: subprocess.CompletedProcess[bytes]) -> list[str]:
    return proc.stderr.decode("utf-8", "replace").splitlines()


def test_hello(tmp_path: Path) -> None:
    proc = run_cgi(script_for(tmp_path, "hello"), env())
    assert proc.stdout == HELLO
    assert proc.stderr == b""


def test_c10_content_length_bounds_stdin(tmp_path: Path) -> None:
    seen = echo(tmp_path, b"abcdeEXTRA", REQUEST_METHOD="POST", CONTENT_LENGTH="5")
    assert seen["body"] == "abcde"
    assert seen["content_length"] == "5"


def test_chunked_body_reads_to_eof(tmp_path: Path) -> None:
    seen = echo(tmp_path, b"whole body", REQUEST_METHOD="POST", HTTP_TRANSFER_ENCODING="chunked")
    assert (seen["body"], seen["input_terminated"]) == ("whole body", True)


def test_c11_httpoxy(tmp_path: Path) -> None:
    seen = echo(tmp_path, HTTP_PROXY="http://evil:1")
    assert seen["environ_proxy"] is None
    assert seen["os_proxy"] is None


def test_c9_path_info_bytes_survive(tmp_path: Path) -> None:
    seen = echo(tmp_path, PATH_INFO=b"/caf\xc3\xa9", QUERY_STRING=b"q=\xff")
    assert seen["path_info"] == "/caf\xc3\xa9"
    assert seen["query"] == "q=\xff"


def test_non_numeric_content_length_is_400(tmp_path: Path) -> None:
    overrides = {"REQUEST_METHOD": "POST", "CONTENT_LENGTH": "abc"}
    proc = run_cgi(script_for(tmp_path, "echo"), env(**overrides), b"abc")
    assert proc.stdout == (
        b"Status: 400 Bad Request\r\nContent-Type: text/plain; charset=utf-8\r\n"
        b"Content-Length: 16\r\n\r\n400 Bad Request\n"
    )
    assert stderr_lines(proc) == [
        "cgikit: /app.cgi: cannot serve this request: CONTENT_LENGTH is not a number: 'abc'"
    ]


def test_missing_request_method_is_500(tmp_path: Path) -> None:
    proc = run_cgi(script_for(tmp_path, "echo"), env(REQUEST_METHOD=None))
    assert proc.stdout == (
        b"Status: 500 Internal Server Error\r\nContent-Type: text/plain; charset=utf-8\r\n"
        b"Content-Length: 26\r\n\r\n500 Internal Server Error\n"
    )
    [line] = stderr_lines(proc)
    assert "REQUEST_METHOD" in line and "Traceback" not in line


def test_print_in_the_app_goes_to_stderr(tmp_path: Path) -> None:
    proc = run_cgi(script_for(tmp_path, "printing"), env())
    assert proc.stdout == HELLO
    assert stderr_lines(proc) == ["stray print from the app"]


def test_head_sends_no_body(tmp_path: Path) -> None:
    proc = run_cgi(script_for(tmp_path, "hello"), env(REQUEST_METHOD="HEAD"))
    assert proc.stdout == HELLO[: -len(b"hello")]


def test_nph_script_speaks_http(tmp_path: Path) -> None:
    before = datetime.now(UTC).replace(microsecond=0)
    proc = run_cgi(script_for(tmp_path, "hello", name="nph-app.cgi"), env())
    after = datetime.now(UTC)
    head, _, body = proc.stdout.partition(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    assert lines[0] == "HTTP/1.1 200 OK"
    assert lines[1].startswith("Date: ")
    assert before <= email.utils.parsedate_to_datetime(lines[1][6:]) <= after
    assert lines[2:] == [
        f"Server: cgikit/{__version__}",
        "Content-Type: text/plain",
        "Content-Length: 5",
        "Connection: close",
    ]
    assert body == b"hello"


def nph_lines(stdout: bytes) -> tuple[list[str], bytes]:
    head, _, body = stdout.partition(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    assert lines[1].startswith("Date: ") and lines[2] == f"Server: cgikit/{__version__}"
    return [lines[0], *lines[3:]], body


def test_nph_app_error_is_an_http_500(tmp_path: Path) -> None:
    proc = run_cgi(script_for(tmp_path, "raising", name="nph-app.cgi"), env())
    lines, body = nph_lines(proc.stdout)
    assert lines[0] == "HTTP/1.1 500 Internal Server Error"
    assert lines[-1] == "Connection: close"
    assert body == GENERIC_500.partition(b"\r\n\r\n")[2]


def test_nph_broken_environment_is_still_http(tmp_path: Path) -> None:
    # RFC 3875 §5.2: an NPH script's whole output is the HTTP response; a "Status:"
    # header block would reach the client as garbage.
    overrides = {"REQUEST_METHOD": "POST", "CONTENT_LENGTH": "abc"}
    proc = run_cgi(script_for(tmp_path, "echo", name="nph-app.cgi"), env(**overrides), b"abc")
    assert proc.stdout.startswith(b"HTTP/1.1 400 Bad Request\r\nDate: ")
    lines, body = nph_lines(proc.stdout)
    assert lines[-1] == "Connection: close"
    assert body == b"400 Bad Request\n"


def test_debug_page_from_the_environment(tmp_path: Path) -> None:
    proc = run_cgi(script_for(tmp_path, "raising"), env(CGIKIT_DEBUG="1"))
    head, _, body = proc.stdout.partition(b"\r\n\r\n")
    assert head.startswith(b"Status: 500 Internal Server Error\r\n")
    assert b"Content-Type: text/html; charset=utf-8\r\n" in head + b"\r\n"
    assert f"Content-Length: {len(body)}".encode() in head
    assert b"&lt;script&gt;boom&lt;/script&gt;" in body and b"<script>" not in body
    assert b"Traceback (most recent call last)" in proc.stderr


def test_error_before_headers_is_a_generic_500(tmp_path: Path) -> None:
    proc = run_cgi(script_for(tmp_path, "raising"), env())
    assert proc.stdout == GENERIC_500
    assert b"Traceback (most recent call last)" in proc.stderr
    assert b"ValueError: <script>boom</script>" in proc.stderr


def test_error_after_headers_cuts_the_body(tmp_path: Path) -> None:
    proc = run_cgi(script_for(tmp_path, "cut"), env())
    assert proc.stdout == b"Status: 200 OK\r\nContent-Type: text/plain\r\n\r\npartial"
    assert b"RuntimeError: failed after the headers" in proc.stderr
    assert b"may be incomplete" in proc.stderr


@pytest.mark.parametrize("how", ["env", "keyword"])
def test_log_file(tmp_path: Path, how: str) -> None:
    log = tmp_path / "cgi.log"
    runner = f"import cgikit\ncgikit.run(app, log_file={str(log)!r})\n"
    if how == "env":
        script, overrides = script_for(tmp_path, "error_writer"), {"CGIKIT_LOG_FILE": str(log)}
    else:
        script, overrides = script_for(tmp_path, "error_writer", runner=runner), {}
    proc = run_cgi(script, env(**overrides))
    assert proc.stdout.endswith(b"X-Content-Type-Options: nosniff\r\n\r\nno type")
    assert proc.stderr == b""
    lines = log.read_text().splitlines()
    assert lines[0] == "written to wsgi.errors"
    assert len(lines) == 2 and lines[1].startswith("[")
    assert "cgikit: /app.cgi: app sent a body without Content-Type" in lines[1]


def test_unusable_log_file_falls_back_to_stderr(tmp_path: Path) -> None:
    log = tmp_path / "missing-dir" / "cgi.log"
    proc = run_cgi(script_for(tmp_path, "error_writer"), env(CGIKIT_LOG_FILE=str(log)))
    assert proc.stdout.endswith(b"\r\n\r\nno type")
    lines = stderr_lines(proc)
    assert lines[0].startswith("cgikit: cannot open log file, using stderr:")
    assert lines[1] == "written to wsgi.errors"
    assert lines[2].startswith("cgikit: /app.cgi: app sent a body without Content-Type")
    assert not log.exists()


@pytest.mark.parametrize("flags", [(), ("-O",), ("-OO",)])
def test_bad_header_is_500_even_under_dash_o(tmp_path: Path, flags: tuple[str, ...]) -> None:
    script = script_for(tmp_path, "bad_header")
    proc = run_proc([sys.executable, *flags, str(script)], env())
    assert proc.returncode == 0
    assert proc.stdout == GENERIC_500
    assert b"Injected" not in proc.stdout
    [line] = stderr_lines(proc)
    assert "bad response from the app" in line


def test_wsgiref_style_cgihandler_is_the_same(tmp_path: Path) -> None:
    runner = "from cgikit import CGIHandler\nCGIHandler().run(app)\n"
    plain = run_cgi(script_for(tmp_path, "echo"), env(CONTENT_LENGTH="3"), b"abcd")
    handler = run_cgi(
        script_for(tmp_path, "echo", "h.cgi", runner), env(CONTENT_LENGTH="3"), b"abcd"
    )
    assert handler.stdout == plain.stdout
    assert b'"body": "abc"' in plain.stdout


def test_file_wrapper_through_stdout_pipe(tmp_path: Path) -> None:
    data = os.urandom(300_000)
    (tmp_path / "data.bin").write_bytes(data)
    proc = run_cgi(script_for(tmp_path, "send_file"), env(CHILD_FILE=str(tmp_path / "data.bin")))
    assert proc.stdout == (
        b"Status: 200 OK\r\nContent-Type: application/octet-stream\r\n"
        + f"Content-Length: {len(data)}\r\n\r\n".encode()
        + data
    )


@pytest.mark.parametrize("app", ["hello", "raising", "cut", "bad_header", "printing"])
def test_exit_status_zero_and_nothing_left_behind(tmp_path: Path, app: str) -> None:
    script = script_for(tmp_path, app)
    proc = run_proc([sys.executable, str(script)], env())  # checks the process group
    assert proc.returncode == 0
    assert proc.stdout.startswith(b"Status: ")


def read_until(fd: int, marker: bytes, timeout: float) -> bytes:
    data = b""
    deadline = time.monotonic() + timeout
    while marker not in data:
        left = deadline - time.monotonic()
        if left <= 0 or not select.select([fd], [], [], left)[0]:
            raise AssertionError(f"no {marker!r} within {timeout}s; got {data!r}")
        chunk = os.read(fd, 65536)
        if not chunk:
            break
        data += chunk
    return data


def test_streaming_reaches_the_server_at_once(tmp_path: Path) -> None:
    flag = tmp_path / "flag"
    proc = subprocess.Popen(
        [sys.executable, str(script_for(tmp_path, "streaming"))],
        env=env(CHILD_FLAG=str(flag)),
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    try:
        first = read_until(proc.stdout.fileno(), b"first\n", timeout=10)
        flag.touch()
        rest, stderr = proc.communicate(timeout=TIMEOUT)
    finally:
        proc.kill()
        proc.wait()
    assert first + rest == b"Status: 200 OK\r\nContent-Type: text/plain\r\n\r\nfirst\nsecond\n"
    assert proc.returncode == 0 and stderr == b""


def test_print_before_run_goes_to_the_log_not_the_response(tmp_path: Path) -> None:
    # The print sits in sys.stdout's buffer until exit; fd 1 by then is stderr.
    runner = 'print("module-level debug")\nimport cgikit\ncgikit.run(app)\n'
    proc = run_cgi(script_for(tmp_path, "hello", runner=runner), env())
    assert proc.stdout == (
        b"Status: 200 OK\r\nContent-Type: text/plain\r\nContent-Length: 5\r\n\r\nhello"
    )
    assert b"module-level debug" in proc.stderr


def test_a_child_left_running_does_not_hold_the_response_open(tmp_path: Path) -> None:
    # A server reads the response until EOF; a background process that inherited the
    # response pipe would keep it waiting (the classic "CGI hangs until the job ends").
    runner = (
        "import subprocess, cgikit\n"
        "def spawning(environ, start_response):\n"
        "    subprocess.Popen(['sleep', '30'])\n"
        "    return app(environ, start_response)\n"
        "cgikit.run(spawning)\n"
    )
    script = script_for(tmp_path, "hello", runner=runner)
    proc = subprocess.Popen(
        [sys.executable, str(script)],
        env=env(),
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    try:
        assert proc.stdout is not None
        data = b""
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            ready, _, _ = select.select([proc.stdout], [], [], deadline - time.monotonic())
            chunk = os.read(proc.stdout.fileno(), 65536) if ready else b""
            if not chunk:
                break
            data += chunk
        assert time.monotonic() < deadline, "stdout stayed open while the child ran"
        assert data.endswith(b"\r\n\r\nhello")
    finally:
        os.killpg(proc.pid, signal.SIGKILL)  # the sleep is in the script's group
        proc.wait(timeout=10)
        proc.stdout.close()  # type: ignore[union-attr]


SLOW_CLOSE = """
import time, cgikit
class Body:
    def __iter__(self):
        return iter([b"hello"])
    def close(self):
        time.sleep(30)
def slow(environ, start_response):
    start_response("200 OK", [("Content-Type", "text/plain"), ("Content-Length", "5")])
    return Body()
cgikit.run(slow)
print("after run")
"""
SLOW_EXIT = """
import atexit, time, cgikit
atexit.register(time.sleep, 30)
cgikit.run(app)
print("after run", flush=True)
"""


@pytest.mark.parametrize("runner", [SLOW_CLOSE, SLOW_EXIT], ids=["iterable-close", "atexit"])
def test_the_response_ends_when_it_is_whole_not_at_the_exit(tmp_path: Path, runner: str) -> None:
    # What comes after the whole response (the app's iterable closed: a framework's
    # teardown; the script's own exit: atexit handlers, an interpreter's finalization)
    # no longer holds the server's EOF.
    script = script_for(tmp_path, "hello", runner=runner)
    proc = subprocess.Popen(
        [sys.executable, str(script)],
        env=env(), stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
        start_new_session=True,
    )  # fmt: skip
    assert proc.stdout is not None and proc.stderr is not None
    try:
        out = proc.stdout.read()  # to EOF, which must come well before the 30 s
        assert out == HELLO
        assert proc.poll() is None  # still sleeping: the EOF came first
        if runner == SLOW_EXIT:
            # stdout points at the error stream from run on. The print may come just
            # after the EOF: wait for it (bounded) before the kill.
            assert b"after run" in read_until(proc.stderr.fileno(), b"after run", TIMEOUT)
    finally:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(TIMEOUT)
        proc.stdout.close()
        proc.stderr.close()


def test_read_meta_keeps_every_byte_as_latin1(monkeypatch: pytest.MonkeyPatch) -> None:
    from cgikit import read_meta

    monkeypatch.setitem(os.environb, b"CGIKIT_TEST_BYTES", b"\xff\xe9 ok")  # not UTF-8
    assert read_meta()["CGIKIT_TEST_BYTES"] == "\xff\xe9 ok"
    assert read_meta() == {
        k.decode("latin-1"): v.decode("latin-1") for k, v in os.environb.items()
    }  # the fast read of environb's own dict is the mapping's items
    monkeypatch.setattr(os, "environb", {b"ONLY": b"\xe9"})  # a mapping without _data
    assert read_meta() == {"ONLY": "\xe9"}


YIELD_RECORDER = """
import os, sys, cgikit
calls = []
real_close = os.close
def close(fd):
    calls.append("close")
    real_close(fd)
os.close = close
os.sched_yield = lambda: calls.append("yield")
cgikit.run(app)
sys.stderr.write(" ".join(calls))
"""


def test_the_cpu_is_yielded_once_the_response_is_whole(tmp_path: Path) -> None:
    # The server, woken by the EOF (on this CPU, as Linux places a pipe's reader),
    # must not wait behind the script's teardown.
    proc = run_cgi(script_for(tmp_path, "hello", runner=YIELD_RECORDER), env(), b"")
    assert proc.stdout == HELLO
    assert proc.stderr.decode().split() == ["close", "yield"]
