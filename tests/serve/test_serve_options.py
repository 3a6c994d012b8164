"""``cgikit serve``'s options end to end (each on its own server process), the CLI's
--help, SIGTERM, the in-process API, and the generated docs/serve-options.md."""

from __future__ import annotations

import http.client
import os
import re
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import pytest

from cgikit.cli import build_parser, markdown_table
from cgikit.host_options import HOST_OPTIONS
from cgikit.site_server import SERVE_OPTIONS, Dispatcher, make_server
from serve.servekit import SRC, Server, copy_site, write_script

ROOT = SRC.parent
ENV_SH = "#!/bin/sh\nprintf 'Content-Type: text/plain\\n\\n'; env | sort\n"
# Records when it ran, so that the test can tell overlapping runs from serial ones.
SLOW_SH = """#!/bin/sh
start=$(date +%s.%N)
sleep 0.6
printf 'Content-Type: text/plain\\n\\n%s %s\\n' "$start" "$(date +%s.%N)"
"""


def test_cgi_ext_runs_scripts_outside_cgi_bin(tmp_path: Path) -> None:
    site = copy_site(tmp_path, compile_c=False)
    write_script(site / "apps" / "tool.cgi", ENV_SH)
    write_script(site / "apps" / "plain.sh", ENV_SH)  # executable, but not a .cgi: a file
    server = Server(site, "--cgi-ext", ".cgi", "--cgi-ext", ".xcgi")
    try:
        assert server.startup.group(3) == "/cgi-bin, *.cgi, *.xcgi"
        status, _, body = server.get("/apps/tool.cgi/more?x=1")
        assert status == 200
        assert b"SCRIPT_NAME=/apps/tool.cgi\n" in body and b"PATH_INFO=/more\n" in body
        status, _, body = server.get("/apps/plain.sh")
        assert (status, body) == (200, ENV_SH.encode())  # static: it is no .cgi
        assert server.get("/cgi-bin/hello.sh")[0] == 200  # the default stays
    finally:
        assert server.stop() == 0


def test_cgi_dir_mounts_more_directories(tmp_path: Path) -> None:
    site = copy_site(tmp_path, compile_c=False)
    apps = tmp_path / "elsewhere"
    write_script(apps / "env.sh", ENV_SH)
    server = Server(site, "--cgi-dir", f"/apps={apps}", "--cgi-dir", f"/deep/er={apps}")
    try:
        assert server.startup.group(3) == "/cgi-bin, /apps, /deep/er"
        status, _, body = server.get("/apps/env.sh/p")
        assert status == 200
        assert b"SCRIPT_NAME=/apps/env.sh\n" in body and b"PATH_INFO=/p\n" in body
        assert f"SCRIPT_FILENAME={apps}/env.sh\n".encode() in body
        assert b"SCRIPT_NAME=/deep/er/env.sh\n" in server.get("/deep/er/env.sh")[2]
        assert server.get("/cgi-bin/hello.sh")[2].startswith(b"Hello from sh")
    finally:
        assert server.stop() == 0


def test_pass_env_and_env(tmp_path: Path) -> None:
    site = copy_site(tmp_path, compile_c=False)
    write_script(site / "cgi-bin" / "env.sh", ENV_SH)
    extra = {"KEPT_VAR": "kept", "SECRET_VAR": "secret"}
    server = Server(site, "--pass-env", "KEPT_VAR", "--env", "A=1", "--env", "B=x=y", env=extra)
    try:
        body = server.get("/cgi-bin/env.sh")[2]
        assert b"KEPT_VAR=kept\n" in body and b"A=1\n" in body and b"B=x=y\n" in body
        assert b"SECRET_VAR" not in body and b"PYTHONPATH" not in body
    finally:
        assert server.stop() == 0


def test_max_procs_runs_scripts_one_at_a_time(tmp_path: Path) -> None:
    site = copy_site(tmp_path, compile_c=False)
    write_script(site / "cgi-bin" / "slow.sh", SLOW_SH)
    server = Server(site, "--max-procs", "1")
    results: list[tuple[int, bytes]] = []

    def fetch() -> None:
        status, _, body = server.get("/cgi-bin/slow.sh")
        results.append((status, body))

    try:
        clients = [threading.Thread(target=fetch) for _ in range(2)]
        for client in clients:
            client.start()
        for client in clients:
            client.join(20)
        # The second waits for the slot (0.6 s < the 5 s bounded wait), never a 503.
        assert [status for status, _ in results] == [200, 200]
        (a0, a1), (b0, b1) = sorted(tuple(map(float, body.split())) for _, body in results)
        assert a0 < a1 <= b0 < b1  # the runs did not overlap
    finally:
        assert server.stop() == 0


def test_max_procs_full_is_503_after_the_bounded_wait(tmp_path: Path) -> None:
    site = copy_site(tmp_path, compile_c=False)
    app = Dispatcher(site, {"/cgi-bin": site / "cgi-bin"}, max_procs=1, proc_wait=0.2)
    errors: list[str] = []

    def call() -> tuple[list[str], Any]:
        seen: list[str] = []
        environ = {
            "REQUEST_METHOD": "GET",
            "REQUEST_URI": "/cgi-bin/hello.sh",
            "SCRIPT_NAME": "",
            "PATH_INFO": "/cgi-bin/hello.sh",
            "SERVER_NAME": "localhost",
            "SERVER_PORT": "80",
            "SERVER_PROTOCOL": "HTTP/1.1",
            "wsgi.input": open(os.devnull, "rb"),  # noqa: SIM115
            "wsgi.errors": type("E", (), {"write": lambda self, s: errors.append(s)})(),
            "wsgi.url_scheme": "http",
        }
        try:
            body = app(environ, lambda status, headers, exc=None: seen.append(status))
        finally:
            environ["wsgi.input"].close()
        return seen, body

    _, first = call()  # holds the only slot until closed
    try:
        started = time.monotonic()
        second_status, _ = call()
        assert second_status == ["503 Service Unavailable"]
        assert 0.15 < time.monotonic() - started < 3.0
        assert any("max_procs" in line for line in errors)
    finally:
        assert b"".join(first) == b"Hello from sh\nQUERY_STRING=\n"
        first.close()
    third_status, third = call()  # the slot is free again
    assert third_status == ["200 OK"] and b"".join(third).startswith(b"Hello from sh")
    third.close()


def test_sigterm_lets_the_running_script_finish_then_exits_0(tmp_path: Path) -> None:
    site = copy_site(tmp_path, compile_c=False)
    pid_file = tmp_path / "script.pid"
    write_script(
        site / "cgi-bin" / "slow.sh",
        f"#!/bin/sh\necho $$ > {pid_file}\nsleep 0.5\n"
        "printf 'Content-Type: text/plain\\n\\ndone\\n'\n",
    )
    server = Server(site)
    results: list[tuple[int, dict[str, str], bytes]] = []
    client = threading.Thread(target=lambda: results.append(server.get("/cgi-bin/slow.sh")))
    client.start()
    deadline = time.monotonic() + 10
    while not pid_file.exists() or not pid_file.read_text().strip():
        if time.monotonic() > deadline:
            raise AssertionError("the script did not start")
        time.sleep(0.02)
    started = time.monotonic()
    assert server.stop() == 0
    assert time.monotonic() - started < 10
    client.join(10)
    assert results and (results[0][0], results[0][2]) == (200, b"done\n")
    pid = int(pid_file.read_text())
    try:
        os.kill(pid, 0)
        alive = Path(f"/proc/{pid}/stat").read_text().split(")")[-1].split()[0] != "Z"
    except ProcessLookupError:
        alive = False
    assert not alive  # reaped, not left running (and not a zombie)
    assert any("shutting down" in line for line in server.lines)


def test_help_lists_every_table_option() -> None:
    done = subprocess.run(
        [sys.executable, "-m", "cgikit", "serve", "--help"],
        env={**os.environ, "PYTHONPATH": str(SRC)},
        capture_output=True,
        timeout=30,
        check=True,
    )
    text = done.stdout.decode()
    for option in SERVE_OPTIONS:
        assert option.flag in text
    assert "ROOT" in text


def test_cli_flags_are_the_options_table() -> None:
    serve = build_parser()._subparsers._group_actions[0].choices["serve"]  # type: ignore[union-attr]
    flags = {s for a in serve._actions for s in a.option_strings if s not in ("-h", "--help")}
    negated = {"--no-" + o.flag[2:] for o in SERVE_OPTIONS if o.kind is bool}
    assert flags == {o.flag for o in SERVE_OPTIONS} | negated


def test_the_table_holds_every_host_option() -> None:
    names = [o.name for o in SERVE_OPTIONS]
    own = ["bind", "port", "fastcgi", "cgi_dir", "cgi_ext", "max_procs", "threads"]
    own += ["workers", "grace", "user"]
    assert names[: len(own)] == own
    assert names[len(own) :] == [o.name for o in HOST_OPTIONS]
    assert len({o.env for o in SERVE_OPTIONS}) == len(SERVE_OPTIONS)


def test_docs_serve_options_is_generated() -> None:
    text = (ROOT / "docs" / "serve-options.md").read_text()
    start, end = "<!-- options-table -->\n", "<!-- /options-table -->"
    assert text.split(start, 1)[1].split(end, 1)[0] == markdown_table(SERVE_OPTIONS)


def test_make_server_in_process(tmp_path: Path) -> None:
    site = copy_site(tmp_path, compile_c=False)
    server, line = make_server(site, port=0, threads=2, env=["GREETING=api"])
    thread = threading.Thread(target=server.serve_forever)
    thread.start()
    try:
        port = server.server_address[1]
        assert re.fullmatch(
            rf"cgikit: serving \S+ at http://127\.0\.0\.1:{port}/ \(CGI: /cgi-bin\)", line
        )
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
        try:
            conn.request("GET", "/cgi-bin/hello.sh?api=1")
            response = conn.getresponse()
            assert (response.status, response.read()) == (
                200,
                b"Hello from sh\nQUERY_STRING=api=1\n",
            )
        finally:
            conn.close()
    finally:
        server.shutdown(5)
        thread.join(10)


def test_bad_options_are_refused(tmp_path: Path) -> None:
    for options, error in [
        ({"bogus": 1}, TypeError),
        ({"cgi_dir": ["apps"]}, ValueError),
        ({"cgi_ext": ["cgi"]}, ValueError),
        ({"port": 70000}, ValueError),
        ({"max_procs": 0}, ValueError),
        ({"timeout": -1.0}, ValueError),
        ({"fastcgi": 9000}, TypeError),
        ({"fastcgi": "127.0.0.1:0"}, ValueError),  # make_server is HTTP; serve() bridges
    ]:
        with pytest.raises(error):
            make_server(tmp_path, **{"port": 0, **options})


def test_the_module_does_not_shadow_the_gateways_serve() -> None:
    import cgikit

    # A submodule called cgikit/serve.py would replace this function once imported.
    assert callable(cgikit.serve) and not isinstance(cgikit.serve, type(cgikit))
