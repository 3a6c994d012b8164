"""Terminal emulation and the ``cgikit`` command: no GATEWAY_INTERFACE, one made-up request.

Also ``cgikit run module:app`` (``python -m cgikit`` and the console script) under a CGI
environment, where it serves the real request.
"""

from __future__ import annotations

import json
import os
import shutil
import sys
from pathlib import Path
from typing import Any

import pytest

from cgikit import RUN_OPTIONS, __version__
from helpers_child import SRC, cgi_env, run_cgi, run_proc, terminal_env, write_script

HERE = Path(__file__).resolve().parent
PYTHONPATH = f"{SRC}{os.pathsep}{HERE}"
NOTE = "cgikit: not started by a web server (no GATEWAY_INTERFACE): emulating "
CONSOLE_SCRIPT = shutil.which("cgikit", path=str(Path(sys.executable).parent))


def script(tmp_path: Path, app: str = "echo") -> Path:
    source = f"import cgikit\nfrom child_apps import {app} as app\ncgikit.run(app)\n"
    return write_script(tmp_path, source)


def env(**overrides: str | None) -> dict[str, str | bytes]:
    return terminal_env(PYTHONPATH=PYTHONPATH, **overrides)


def parse(stdout: bytes) -> dict[str, Any]:
    """The echo app's report, after checking the CGI header block byte for byte."""
    head, _, body = stdout.partition(b"\r\n\r\n")
    assert head == (
        b"Status: 200 OK\r\nContent-Type: application/json\r\n"
        + f"Content-Length: {len(body)}".encode()
    )
    return json.loads(body)


def the_note(stderr: bytes) -> str:
    """Exactly one line on stderr, the emulation note; returns what follows its prefix."""
    lines = stderr.decode().splitlines()
    assert len(lines) == 1, lines
    assert lines[0].startswith(NOTE)
    return lines[0][len(NOTE) :]


def test_get_with_path_and_query(tmp_path: Path) -> None:
    proc = run_cgi(script(tmp_path), env(), None, "GET", "/x?a=b")
    seen = parse(proc.stdout)
    assert (seen["method"], seen["path_info"], seen["query"]) == ("GET", "/x", "a=b")
    assert seen["script_name"] == "/app.cgi"
    assert seen["content_length"] is None and seen["body"] == ""
    assert the_note(proc.stderr).startswith("GET /app.cgi/x?a=b;")


def test_defaults_to_get_of_the_script(tmp_path: Path) -> None:
    seen = parse(run_cgi(script(tmp_path), env(), None).stdout)
    assert (seen["method"], seen["path_info"], seen["query"]) == ("GET", "", "")


def test_path_without_method_and_lowercase_method(tmp_path: Path) -> None:
    seen = parse(run_cgi(script(tmp_path), env(), None, "/only/path").stdout)
    assert (seen["method"], seen["path_info"]) == ("GET", "/only/path")
    seen = parse(run_cgi(script(tmp_path), env(), None, "delete", "/r").stdout)
    assert (seen["method"], seen["path_info"]) == ("DELETE", "/r")
    # A lone lowercase word is a path, not a method.
    seen = parse(run_cgi(script(tmp_path), env(), None, "about").stdout)
    assert (seen["method"], seen["path_info"]) == ("GET", "/about")


def test_post_body_from_stdin(tmp_path: Path) -> None:
    proc = run_cgi(script(tmp_path), env(), b"name=x&y=\xff", "POST", "/submit")
    seen = parse(proc.stdout)
    assert (seen["method"], seen["content_length"], seen["body"]) == ("POST", "10", "name=x&y=\xff")
    the_note(proc.stderr)


def test_percent_encoded_path_is_decoded_as_a_server_would(tmp_path: Path) -> None:
    seen = parse(run_cgi(script(tmp_path), env(), None, "/caf%C3%A9?q=%41").stdout)
    assert seen["path_info"] == "/caf\xc3\xa9"
    assert seen["query"] == "q=%41"


def test_environment_variables_are_kept(tmp_path: Path) -> None:
    seen = parse(run_cgi(script(tmp_path), env(HTTP_COOKIE="a=1"), None).stdout)
    assert seen["cookie"] == "a=1"


@pytest.mark.parametrize("flag", ["--help", "-h"])
def test_script_help(tmp_path: Path, flag: str) -> None:
    proc = run_cgi(script(tmp_path), env(), None, flag)
    assert proc.stdout.decode().startswith("usage: SCRIPT [METHOD] [PATH[?QUERY]]")
    assert proc.stderr == b""


def test_too_many_arguments_exit_2(tmp_path: Path) -> None:
    proc = run_proc([sys.executable, str(script(tmp_path)), "GET", "/a", "extra"], env(), None)
    assert proc.returncode == 2
    assert proc.stdout == b""
    assert b"unexpected arguments" in proc.stderr and b"usage:" in proc.stderr


def test_app_error_in_terminal_is_a_500_with_the_traceback(tmp_path: Path) -> None:
    proc = run_cgi(script(tmp_path, "raising"), env(), None, "GET", "/")
    assert proc.stdout.startswith(b"Status: 500 Internal Server Error\r\n")
    assert b"Traceback" not in proc.stdout
    assert b"Traceback (most recent call last)" in proc.stderr
    assert proc.stderr.decode().startswith(NOTE)


def module_cli() -> list[str]:
    return [sys.executable, "-m", "cgikit"]


def console_cli() -> list[str]:
    if CONSOLE_SCRIPT is None:
        pytest.skip(f"no cgikit console script next to {sys.executable} (not installed)")
    return [CONSOLE_SCRIPT]


CLIS = {"python -m cgikit": module_cli, "console script": console_cli}


@pytest.mark.parametrize("cli", CLIS.values(), ids=CLIS.keys())
def test_cli_run_emulates_a_request(tmp_path: Path, cli: Any) -> None:
    argv = [*cli(), "run", "child_apps:echo", "PUT", "/path?k=v"]
    proc = run_proc(argv, env(), b"payload", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    seen = parse(proc.stdout)
    assert (seen["method"], seen["path_info"], seen["query"]) == ("PUT", "/path", "k=v")
    assert seen["body"] == "payload"
    the_note(proc.stderr)


@pytest.mark.parametrize("cli", CLIS.values(), ids=CLIS.keys())
def test_cli_run_under_a_cgi_server(tmp_path: Path, cli: Any) -> None:
    request = cgi_env(PYTHONPATH=PYTHONPATH, REQUEST_METHOD="POST", CONTENT_LENGTH="2")
    proc = run_proc([*cli(), "run", "child_apps:echo"], request, b"hi there")
    assert proc.returncode == 0, proc.stderr
    seen = parse(proc.stdout)
    assert (seen["method"], seen["body"], seen["script_name"]) == ("POST", "hi", "/app.cgi")
    assert proc.stderr == b""


def test_cli_removes_http_proxy_before_importing_the_app() -> None:
    # cgi-anchors.md §3 row 1 (httpoxy): remove HTTP_PROXY from os.environ "before
    # importing the app". `cgikit run module:app` imports the app itself, so it can.
    request = cgi_env(PYTHONPATH=PYTHONPATH, HTTP_PROXY="http://evil:1")
    proc = run_proc([*module_cli(), "run", "child_apps:echo"], request, b"")
    seen = parse(proc.stdout)
    assert (seen["environ_proxy"], seen["os_proxy"]) == (None, None)
    assert seen["import_proxy"] is None


def test_cli_debug_flag(tmp_path: Path) -> None:
    argv = [*module_cli(), "run", "--debug", "child_apps:raising", "GET", "/"]
    proc = run_proc(argv, env(), None)
    assert proc.returncode == 0
    assert b"Content-Type: text/html; charset=utf-8\r\n" in proc.stdout
    assert b"&lt;script&gt;boom&lt;/script&gt;" in proc.stdout


def test_cli_help_lists_every_option() -> None:
    proc = run_proc([*module_cli(), "run", "--help"], env(), None)
    assert proc.returncode == 0
    text = proc.stdout.decode()
    assert text.startswith("usage: cgikit run")
    for option in RUN_OPTIONS:
        assert option.flag in text
    top = run_proc([*module_cli(), "--help"], env(), None)
    assert top.returncode == 0 and top.stdout.decode().startswith("usage: cgikit")
    assert "run" in top.stdout.decode()


def test_cli_version() -> None:
    proc = run_proc([*module_cli(), "--version"], env(), None)
    assert (proc.returncode, proc.stdout.decode().strip()) == (0, f"cgikit {__version__}")


def test_cli_without_app_is_a_usage_error() -> None:
    proc = run_proc([*module_cli(), "run"], env(), None)
    assert proc.returncode == 2
    assert proc.stdout == b"" and b"usage: cgikit run" in proc.stderr
