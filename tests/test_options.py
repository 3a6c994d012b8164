"""The one options table feeds the API keywords, the CLI flags and the env variables."""

from __future__ import annotations

import inspect
import subprocess
import sys
from pathlib import Path

import cgikit
from cgikit import RUN_OPTIONS, resolve
from cgikit.cli import build_parser
from cgikit.gateway_options import GATEWAY_OPTIONS, PROTOCOLS
from helpers_child import SRC, TIMEOUT


def test_run_keywords_are_the_options_table() -> None:
    params = inspect.signature(cgikit.run).parameters
    keywords = [n for n, p in params.items() if p.kind is inspect.Parameter.KEYWORD_ONLY]
    assert keywords == [o.name for o in RUN_OPTIONS]
    assert all(params[o.name].default is None for o in RUN_OPTIONS)  # None = "not given"


def test_cli_flags_are_the_options_table() -> None:
    run = build_parser()._subparsers._group_actions[0].choices["run"]  # type: ignore[union-attr]
    flags = {s for a in run._actions for s in a.option_strings if s not in ("-h", "--help")}
    gateway = {o.flag for o in GATEWAY_OPTIONS} | {f"--{p}" for p in PROTOCOLS}
    assert flags == {o.flag for o in RUN_OPTIONS} | gateway


def test_precedence_keyword_then_env_then_default() -> None:
    env = {"CGIKIT_DEBUG": "yes", "CGIKIT_LOG_FILE": "", "CGIKIT_SCRIPT_NAME": "/blog"}
    values = resolve(RUN_OPTIONS, {"script_name": "/kw"}, env)
    assert values == {
        "debug": True,
        "log_file": None,  # empty means unset
        "default_content_type": "application/octet-stream",
        "script_name": "/kw",
    }
    assert resolve(RUN_OPTIONS, {}, {"CGIKIT_DEBUG": "0"})["debug"] is False


def test_every_option_has_a_distinct_cgikit_env_variable() -> None:
    names = [o.env for o in RUN_OPTIONS]
    assert len(set(names)) == len(names)
    assert all(name.startswith("CGIKIT_") for name in names)


SCRIPT = """\
import json, cgikit
def app(environ, start_response):
    start_response("200 OK", [("Content-Type", "application/json")])
    return [json.dumps([environ["SCRIPT_NAME"], environ["PATH_INFO"]]).encode()]
cgikit.run(app{kw})
"""


def run_script(tmp_path: Path, kw: str, extra: dict[str, str]) -> bytes:
    path = tmp_path / "app.cgi"
    path.write_text(SCRIPT.format(kw=kw))
    env = {
        "PYTHONPATH": str(SRC),
        "GATEWAY_INTERFACE": "CGI/1.1",
        "REQUEST_METHOD": "GET",
        "SCRIPT_NAME": "/blog/app.cgi",
        "PATH_INFO": "/hello",
        **extra,
    }
    done = subprocess.run(
        [sys.executable, str(path)], env=env, capture_output=True, timeout=TIMEOUT, check=True
    )
    return done.stdout.partition(b"\r\n\r\n")[2]


def test_script_name_option_replaces_the_mount_point(tmp_path: Path) -> None:
    assert run_script(tmp_path, "", {}) == b'["/blog/app.cgi", "/hello"]'
    assert run_script(tmp_path, "", {"CGIKIT_SCRIPT_NAME": "/blog/"}) == b'["/blog", "/hello"]'
    assert run_script(tmp_path, "", {"CGIKIT_SCRIPT_NAME": "/"}) == b'["", "/hello"]'
    assert run_script(tmp_path, ", script_name='/x'", {}) == b'["/x", "/hello"]'
