"""CGIHost: requests in, real scripts (sh, Perl, Python) run, responses out.

Each test calls the WSGI app directly, wrapped in ``wsgiref.validate.validator`` with
warnings as errors; ``no_leaks`` checks descriptors and child processes after each.
Vectors: research cgi-anchors.md §5a (G*), §5b (R*), §5c (P*).
"""

from __future__ import annotations

import hashlib
import os
import threading
import time
import warnings
from pathlib import Path
from typing import Any
from wsgiref.validate import validator

import pytest

from cgikit.cgi_host import CGIHost
from host.hostkit import FAST, PY, call, environ_for


def test_env_dump_g1_python(cgi_dir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CGIKIT_TEST_SECRET", "server-only")
    app = CGIHost(cgi_dir, **FAST)
    res = call(
        app,
        "/env.py?foo=bar&a=b",
        REMOTE_ADDR="1.2.3.4",
        REMOTE_PORT="1234",
        HTTP_HOST="example.com:80",
        SERVER_PROTOCOL="HTTP/1.0",
    )
    assert res.status == "200 OK"
    assert res.header("Content-Type") == "application/json"
    out = res.json()
    env = out["env"]
    expected = {
        "GATEWAY_INTERFACE": "CGI/1.1",
        "HTTP_HOST": "example.com:80",
        "SERVER_NAME": "example.com",
        "SERVER_PORT": "80",
        "SERVER_PROTOCOL": "HTTP/1.0",
        "PATH_INFO": "",
        "QUERY_STRING": "foo=bar&a=b",
        "REMOTE_ADDR": "1.2.3.4",
        "REMOTE_HOST": "1.2.3.4",
        "REMOTE_PORT": "1234",
        "REQUEST_METHOD": "GET",
        "REQUEST_URI": "/env.py?foo=bar&a=b",
        "SCRIPT_NAME": "/env.py",
        "SCRIPT_FILENAME": str(cgi_dir / "env.py"),
        "DOCUMENT_ROOT": str(cgi_dir),
        "SERVER_SOFTWARE": "cgikit",
        "REQUEST_SCHEME": "http",
    }
    assert {k: env.get(k) for k in expected} == expected
    assert out["cwd"] == str(cgi_dir)  # RFC 3875 §7.2, G10
    # P6 and the allow-list (research §3 row 11): nothing else leaks in.
    for absent in ("CONTENT_LENGTH", "CONTENT_TYPE", "PATH_TRANSLATED", "CGIKIT_TEST_SECRET"):
        assert absent not in env
    assert "HOME" not in env


def test_env_extra_path_g3_and_nested_p11(cgi_dir: Path) -> None:
    app = CGIHost(cgi_dir, **FAST)
    env = call(app, "/env.py/extrapath?a=b").json()["env"]
    assert (env["SCRIPT_NAME"], env["PATH_INFO"]) == ("/env.py", "/extrapath")
    assert env["PATH_TRANSLATED"] == str(cgi_dir) + "/extrapath"
    assert env["REQUEST_URI"] == "/env.py/extrapath?a=b"
    out = call(app, "/sub/inner.py/x/y/").json()
    assert (out["env"]["SCRIPT_NAME"], out["env"]["PATH_INFO"]) == ("/sub/inner.py", "/x/y/")
    assert out["cwd"] == str(cgi_dir / "sub")
    p3 = call(app, "/env.py/").json()["env"]  # P3: a trailing / is path info
    assert (p3["SCRIPT_NAME"], p3["PATH_INFO"]) == ("/env.py", "/")


def test_headers_g6_g7_p5_p14_p17(cgi_dir: Path) -> None:
    app = CGIHost(cgi_dir, **FAST)
    headers = {
        "HTTP_COOKIE": "nom=NOM; yum=YUM",
        "HTTP_X_FOO": "val1, val2",
        "HTTP_PROXY": "http://evil:1",
        "HTTP_XX_YY123": "foo",
        "HTTP_ACCEPT": "text/html,text/plain",
        "HTTP_AUTHORIZATION": "Basic dXNlcjpwYXNz",
    }
    env = call(app, "/env.sh", **headers).lines()
    assert env["HTTP_COOKIE"] == "nom=NOM; yum=YUM"
    assert env["HTTP_X_FOO"] == "val1, val2"
    assert env["HTTP_XX_YY123"] == "foo"
    assert env["HTTP_ACCEPT"] == "text/html,text/plain"
    for absent in ("HTTP_PROXY", "HTTP_AUTHORIZATION", "REMOTE_USER", "AUTH_TYPE"):
        assert absent not in env
    passed = call(CGIHost(cgi_dir, pass_auth=True, **FAST), "/env.pl", **headers).lines()
    assert passed["HTTP_AUTHORIZATION"] == "Basic dXNlcjpwYXNz"
    assert "REMOTE_USER" not in passed  # P17: never decoded from the client's header
    # REMOTE_USER set by the WSGI server or a middleware is server-side authentication.
    trusted = call(app, "/env.pl", REMOTE_USER="alice", AUTH_TYPE="Basic").lines()
    assert (trusted["REMOTE_USER"], trusted["AUTH_TYPE"]) == ("alice", "Basic")


def test_pass_env_and_env_options(cgi_dir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CGIKIT_TEST_SECRET", "s3")
    monkeypatch.setenv("CGIKIT_TEST_SHARED", "shared")
    app = CGIHost(
        cgi_dir,
        pass_env=["CGIKIT_TEST_SHARED"],
        env=["GREETING=hi there", "SERVER_SOFTWARE=custom", "GREETING=last wins"],
        **FAST,
    )
    env = call(app, "/env.pl").lines()
    assert env["CGIKIT_TEST_SHARED"] == "shared"
    assert "CGIKIT_TEST_SECRET" not in env
    assert (env["GREETING"], env["SERVER_SOFTWARE"]) == ("last wins", "custom")  # G11, G13
    assert env["PATH"]


def test_post_g8(cgi_dir: Path) -> None:
    app = CGIHost(cgi_dir, **FAST)
    out = call(
        app,
        "/env.py?q=1",
        "POST",
        b"postfoo=postbar",
        CONTENT_LENGTH="15",
        CONTENT_TYPE="application/x-www-form-urlencoded",
    ).json()
    assert out["body"] == "postfoo=postbar"
    env = out["env"]
    assert (env["REQUEST_METHOD"], env["CONTENT_LENGTH"]) == ("POST", "15")
    assert env["CONTENT_TYPE"] == "application/x-www-form-urlencoded"
    assert env["REQUEST_URI"] == "/env.py?q=1"


def test_echo_one_mib_perl(cgi_dir: Path) -> None:
    data = os.urandom(1 << 20)
    res = call(
        CGIHost(cgi_dir, **FAST), "/echo.pl", "POST", data + b"EXTRA", CONTENT_LENGTH=str(len(data))
    )
    assert res.code == 200
    assert hashlib.sha256(res.body).hexdigest() == hashlib.sha256(data).hexdigest()


@pytest.mark.parametrize("size", [10, 3 << 20])  # memory, then the temporary file
def test_chunked_body_spooled_g9(cgi_dir: Path, size: int) -> None:
    data = os.urandom(size)
    res = call(
        CGIHost(cgi_dir, **FAST),
        "/echo.sh",
        "POST",
        data,
        HTTP_TRANSFER_ENCODING="chunked",
        **{"wsgi.input_terminated": True},
    )
    assert res.code == 200
    assert res.header("X-Length") == str(size)
    assert hashlib.sha256(res.body).digest() == hashlib.sha256(data).digest()


def test_body_too_large_413(cgi_dir: Path) -> None:
    app = CGIHost(cgi_dir, max_body=1000, **FAST)
    chunked = call(app, "/echo.sh", "POST", b"x" * 1001, HTTP_TRANSFER_ENCODING="chunked")
    assert chunked.code == 413 and chunked.body.startswith(b"413 ")
    declared = call(app, "/echo.sh", "POST", b"x" * 1001, CONTENT_LENGTH="1001")
    assert declared.code == 413
    assert call(app, "/echo.sh", "POST", b"x" * 1000, CONTENT_LENGTH="1000").code == 200
    bad = call(app, "/echo.sh", "POST", b"x", validate=False, CONTENT_LENGTH="1x")
    assert bad.code == 400


def test_response_streams(cgi_dir: Path, tmp_path: Path) -> None:
    marker = tmp_path / "marker"
    app = CGIHost(cgi_dir, env=[f"MARKER={marker}"], **FAST)
    environ = environ_for("/stream.sh")
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        result = validator(app)(environ, lambda status, headers, exc=None: None)
        try:
            chunks = iter(result)
            assert next(chunks) == b"first\n"  # arrives while the script waits
            marker.touch()
            assert b"".join(chunks) == b"second\n"
        finally:
            result.close()  # type: ignore[attr-defined]


def test_status_404_reason_kept_r7(cgi_dir: Path) -> None:
    res = call(CGIHost(cgi_dir, **FAST), "/status404.sh")
    assert (res.status, res.body) == ("404 Gone Fishing", b"send404\n")


def test_local_redirect_followed_r6(cgi_dir: Path) -> None:
    res = call(CGIHost(cgi_dir, **FAST), "/redirect.sh", "POST", b"abc", CONTENT_LENGTH="3")
    assert res.code == 200
    env = res.json()["env"]
    assert (env["REQUEST_METHOD"], env["PATH_INFO"]) == ("GET", "/moved")
    assert (env["QUERY_STRING"], env["REQUEST_URI"]) == (
        "from=redirect",
        "/env.py/moved?from=redirect",
    )
    assert "CONTENT_LENGTH" not in env and "CONTENT_TYPE" not in env
    assert res.json()["body"] == ""


def test_local_redirect_of_a_head_has_no_body(cgi_dir: Path) -> None:
    res = call(CGIHost(cgi_dir, **FAST), "/redirect.sh", "HEAD")
    assert (res.status, res.header("Content-Type"), res.body) == ("200 OK", "application/json", b"")


def test_local_redirect_loop_limit(cgi_dir: Path) -> None:
    res = call(CGIHost(cgi_dir, **FAST), "/loop.sh")
    assert res.status == "500 Internal Server Error"
    assert "more than 5 local redirects" in res.log


def test_local_redirect_off_or_outside_mount_is_302(cgi_dir: Path) -> None:
    off = call(CGIHost(cgi_dir, local_redirects=False, **FAST), "/redirect.sh")
    assert (off.status, off.header("Location"), off.body) == (
        "302 Found",
        "/env.py/moved?from=redirect",
        b"",
    )
    mounted = CGIHost(cgi_dir, **FAST)
    away = call(mounted, "/away.sh", SCRIPT_NAME="")
    assert away.code == 404  # /elsewhere is below the root mount: looked up, not found
    res = call(mounted, "/redirect.sh", SCRIPT_NAME="/cgi")  # /env.py is outside /cgi
    assert (res.code, res.header("Location")) == (302, "/env.py/moved?from=redirect")


def test_client_redirect_r5(cgi_dir: Path) -> None:
    res = call(CGIHost(cgi_dir, **FAST), "/client.sh")
    assert (res.status, res.header("Location"), res.body) == (
        "302 Found",
        "http://example.com/x",
        b"",
    )


@pytest.mark.parametrize("name", ["garbage.sh", "silent.sh", "nph-bad.sh"])
def test_malformed_output_502_r1_r4(cgi_dir: Path, name: str) -> None:
    res = call(CGIHost(cgi_dir, **FAST), f"/{name}")
    assert (res.status, res.body) == ("502 Bad Gateway", b"502 Bad Gateway\n")
    assert f"{name}:" in res.log


def test_timeout_before_head_504(cgi_dir: Path) -> None:
    started = time.monotonic()
    res = call(CGIHost(cgi_dir, timeout=0.5, idle_timeout=5.0), "/sleeper.sh")
    assert res.status == "504 Gateway Timeout"
    assert "sleeper.sh" in res.log and "timeout" in res.log
    assert time.monotonic() - started < 5


def test_idle_timeout_after_head_cuts_body(cgi_dir: Path) -> None:
    from cgikit.cgi_host import BodyCut

    app = CGIHost(cgi_dir, timeout=5.0, idle_timeout=0.5)
    environ = environ_for("/cut.sh")
    got: list[Any] = []
    result = app(environ, lambda status, headers, exc=None: got.append(status))
    try:
        chunks = iter(result)
        assert next(chunks) == b"part1\n"
        with pytest.raises(BodyCut):
            next(chunks)
    finally:
        result.close()  # type: ignore[attr-defined]
    assert got == ["200 OK"]
    assert "response body cut" in environ["wsgi.errors"].getvalue()


def test_head_runs_script_without_body_r16(cgi_dir: Path, tmp_path: Path) -> None:
    marker = tmp_path / "method"
    res = call(CGIHost(cgi_dir, env=[f"MARKER={marker}"], **FAST), "/head.sh", "HEAD")
    assert (res.status, res.header("Content-Type"), res.body) == ("200 OK", "text/plain", b"")
    assert marker.read_text() == "HEAD\n"


def test_nph_status_line_becomes_the_response(cgi_dir: Path) -> None:
    res = call(CGIHost(cgi_dir, **FAST), "/nph-status.sh")
    assert res.status == "202 Accepted Nicely"
    assert res.headers == [("Content-Type", "text/plain"), ("X-Nph", "yes")]
    assert res.body == b"nph body\n"


def test_client_gone_kills_script(cgi_dir: Path, tmp_path: Path) -> None:
    app = CGIHost(cgi_dir, env=[f"MARKER={tmp_path / 'never'}"], **FAST)
    environ = environ_for("/stream.sh")
    result = app(environ, lambda status, headers, exc=None: None)
    chunks = iter(result)
    assert next(chunks) == b"first\n"
    started = time.monotonic()
    result.close()  # type: ignore[attr-defined]
    assert time.monotonic() - started < 3  # SIGTERM to the group, not the 5 s wait


def test_mounted_under_script_name(cgi_dir: Path) -> None:
    app = CGIHost(cgi_dir, **FAST)
    env = call(app, "/env.sh/p", SCRIPT_NAME="/cgi-bin").lines()
    assert (env["SCRIPT_NAME"], env["PATH_INFO"]) == ("/cgi-bin/env.sh", "/p")
    assert env["REQUEST_URI"] == "/cgi-bin/env.sh/p"


def test_options_checked(cgi_dir: Path) -> None:
    with pytest.raises(TypeError):
        CGIHost(cgi_dir, no_such_option=1)
    with pytest.raises(ValueError):
        CGIHost(cgi_dir, timeout=0)
    with pytest.raises(ValueError):
        CGIHost(cgi_dir, env=["NOEQUALS"])
    with pytest.raises(NotADirectoryError):
        CGIHost(cgi_dir / "env.py")


def test_concurrent_requests(cgi_dir: Path) -> None:
    app = CGIHost(cgi_dir, **FAST)
    results: list[int] = []

    def one(i: int) -> None:
        data = f"body {i}".encode()
        res = call(app, "/echo.pl", "POST", data, CONTENT_LENGTH=str(len(data)))
        results.append(res.body == data)

    threads = [threading.Thread(target=one, args=(i,)) for i in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(10)
    assert results == [True] * 8


def test_run_python_option(cgi_dir: Path) -> None:
    script = cgi_dir / "plain.py"
    script.write_text('print("Content-Type: text/plain\\n\\nran")\n')
    script.chmod(0o644)
    assert call(CGIHost(cgi_dir, **FAST), "/plain.py").code == 403
    res = call(CGIHost(cgi_dir, run_python=True, **FAST), "/plain.py")
    assert (res.code, res.body) == (200, b"ran\n")
    assert PY


class SlowInput:
    """A request body whose second half exists only once the script read the first."""

    def __init__(self, marker: Path) -> None:
        self.marker, self.calls = marker, 0

    def read(self, size: int = -1) -> bytes:
        self.calls += 1
        if self.calls == 1:
            return b"hello"
        if self.calls == 2:
            deadline = time.monotonic() + 5
            while not self.marker.exists() and time.monotonic() < deadline:
                time.sleep(0.01)
            return b"world" if self.marker.exists() else b"STALL"
        return b""

    def readline(self, size: int = -1) -> bytes:  # the validator wants the whole API
        raise AssertionError("the host only calls read(n)")

    readlines = readline

    def __iter__(self) -> Any:
        raise AssertionError("the host only calls read(n)")


def test_request_body_streams_to_the_script(cgi_dir: Path, tmp_path: Path) -> None:
    marker = tmp_path / "got-first"
    script = cgi_dir / "stream_in.pl"
    script.write_text(
        "#!/usr/bin/perl\nbinmode STDIN; read(STDIN, my $a, 5);\n"
        'open(my $f, ">", $ENV{MARKER}) or die; close $f;\n'
        'my $b = ""; while (read(STDIN, my $c, 100)) { $b .= $c }\n'
        'print "Content-Type: text/plain\\n\\n$a+$b";\n'
    )
    script.chmod(0o755)
    app = CGIHost(cgi_dir, env=[f"MARKER={marker}"], **FAST)
    res = call(
        app, "/stream_in.pl", "POST", CONTENT_LENGTH="10", **{"wsgi.input": SlowInput(marker)}
    )
    assert res.body == b"hello+world"
