"""``cgikit serve`` on a copy of examples/site: static files, scripts in four languages,
a form POST, and the paths that must never send a CGI script's source."""

from __future__ import annotations

import os
import re
import shutil
import socket
import time
from email.utils import formatdate
from pathlib import Path

import pytest

from serve.servekit import Server, write_script

SH_SOURCE = b"printf 'Hello from sh\\n'"


def test_startup_line_names_root_port_and_cgi(server: Server, site: Path) -> None:
    assert server.startup.group(1) == str(site.resolve())
    assert server.port > 0
    assert server.startup.group(3) == "/cgi-bin"


def test_index_html_for_the_root(server: Server, site: Path) -> None:
    status, headers, body = server.get("/")
    assert status == 200
    assert headers["content-type"] == "text/html; charset=utf-8"
    assert body == (site / "index.html").read_bytes()
    assert headers["content-length"] == str(len(body))
    assert "last-modified" in headers


def test_css_content_type(server: Server) -> None:
    status, headers, _ = server.get("/style.css")
    assert (status, headers["content-type"]) == (200, "text/css; charset=utf-8")


def test_if_modified_since_gives_304(server: Server, site: Path) -> None:
    _, headers, _ = server.get("/index.html")
    status, _, body = server.get("/index.html", **{"If-Modified-Since": headers["last-modified"]})
    assert (status, body) == (304, b"")
    old = formatdate((site / "index.html").stat().st_mtime - 3600, usegmt=True)
    assert server.get("/index.html", **{"If-Modified-Since": old})[0] == 200


def test_head_sends_headers_only(server: Server, site: Path) -> None:
    status, headers, body = server.request("HEAD", "/index.html")
    assert (status, body) == (200, b"")
    assert headers["content-length"] == str((site / "index.html").stat().st_size)


def test_missing_file_is_404(server: Server) -> None:
    assert server.get("/nope.html")[0] == 404


def test_directory_without_slash_is_301(server: Server, site: Path) -> None:
    (site / "docs").mkdir(exist_ok=True)
    (site / "docs" / "index.html").write_text("<p>docs</p>\n")
    status, headers, _ = server.get("/docs?x=1")
    assert (status, headers["location"]) == (301, "/docs/?x=1")
    assert server.get("/docs/")[2] == b"<p>docs</p>\n"
    (site / "empty").mkdir(exist_ok=True)
    assert server.get("/empty/")[0] == 403  # no index.html, and no listings


def test_post_to_static_is_405(server: Server) -> None:
    status, headers, _ = server.request("POST", "/index.html", body=b"x=1")
    assert (status, headers["allow"]) == (405, "GET, HEAD")


@pytest.mark.parametrize(
    ("target", "expected"),
    [
        ("/cgi-bin/hello.sh?name=sh", b"Hello from sh\nQUERY_STRING=name=sh\n"),
        ("/cgi-bin/hello.pl?a=b", b"Hello from Perl\nQUERY_STRING=a=b\n"),
    ],
)
def test_scripts_in_sh_and_perl(server: Server, target: str, expected: bytes) -> None:
    status, headers, body = server.get(target)
    assert (status, headers["content-type"], body) == (200, "text/plain; charset=utf-8", expected)


def test_python_wsgi_script_with_env_and_path_info(server: Server) -> None:
    status, _, body = server.get("/cgi-bin/hello.py/a/b?q=1")
    assert status == 200
    assert body.splitlines() == [
        b"Hello from Python (WSGI through cgikit.run)",
        b"PATH_INFO=/a/b",
        b"QUERY_STRING=q=1",
        b"GREETING=hi",  # --env GREETING=hi
    ]


@pytest.mark.skipif(shutil.which("cc") is None, reason="no C compiler")
def test_compiled_c_script(server: Server) -> None:
    status, _, body = server.get("/cgi-bin/hello?c=1")
    assert (status, body) == (200, b"Hello from C\nQUERY_STRING=c=1\n")


@pytest.mark.parametrize("target", ["/index.html", "/cgi-bin/hello.py/a/b?q=1"])
def test_absolute_form_target_is_served(server: Server, target: str) -> None:
    # RFC 9112 §3.2.2: a server MUST accept absolute-form (what a proxy sends onwards).
    with socket.create_connection(("127.0.0.1", server.port), timeout=10) as sock:
        # HTTP/1.0: the body is not chunked, so it compares byte for byte.
        request = f"GET http://localhost:{server.port}{target} HTTP/1.0\r\nHost: x\r\n\r\n"
        sock.sendall(request.encode())
        data = b""
        while chunk := sock.recv(65536):  # bounded by the timeout and the close
            data += chunk
    _, _, direct = server.get(target)
    assert data.startswith(b"HTTP/1.1 200 ") and data.endswith(b"\r\n\r\n" + direct)


def test_form_post_is_echoed(server: Server) -> None:
    status, headers, body = server.request(
        "POST",
        "/cgi-bin/form.py",
        body=b"name=Ada&message=%3Cb%3Ehi",
        headers={"Content-Type": "application/x-www-form-urlencoded"},
    )
    assert (status, headers["content-type"]) == (200, "text/html; charset=utf-8")
    assert b"<li>name = Ada</li><li>message = &lt;b&gt;hi</li>" in body


@pytest.mark.parametrize(
    "target",
    [
        "/cgi-bin/hello.sh",
        "/cgi-bin/../cgi-bin/hello.sh",
        "/cgi-bin/./hello.sh",
        "//cgi-bin//hello.sh",
        "/%63gi-bin/hello.sh",
        "/cgi-bin%2fhello.sh",
        "/cgi-bin%2Fhello.sh",
        "/CGI-BIN/hello.sh",
        "/cgi-bin/hello.sh/",
        "/cgi-bin/hello.sh%00",
        "/cgi-bin/hello.sh%20",
        "/site/cgi-bin/hello.sh",
        "/x/../../cgi-bin/hello.sh",
    ],
)
def test_cgi_source_is_never_served(server: Server, target: str) -> None:
    status, _, body = server.get(target)
    assert SH_SOURCE not in body
    assert status in (200, 400, 404)
    if status == 200:
        assert body.startswith(b"Hello from sh\n")


def test_symlink_into_cgi_bin_is_not_served(server: Server, site: Path) -> None:
    (site / "alias").symlink_to(site / "cgi-bin")
    (site / "one.sh").symlink_to(site / "cgi-bin" / "hello.sh")
    for target in ("/alias/hello.sh", "/one.sh"):
        status, _, body = server.get(target)
        assert (status, SH_SOURCE in body) == (404, False)


def test_access_log_line_per_request(server: Server) -> None:
    server.get("/style.css?logged=1")
    pattern = re.compile(r'cgikit: 127\.0\.0\.1 - "GET /style\.css\?logged=1 HTTP/1\.1" 200 ')
    assert server.wait_line(pattern, 5.0) is not None


def test_the_response_ends_at_the_scripts_eof_and_the_log_line_at_its_exit(
    server: Server, site: Path
) -> None:
    # The client has the whole response (chunked: its last chunk too) as soon as the
    # script's output ends; the access line waits for the exit, so it stays the last.
    text = "#!/bin/sh\nprintf 'Content-Type: text/plain\\n\\n%s' $$\nexec >&-\nsleep 1\n"
    write_script(site / "cgi-bin" / "linger.sh", text)
    status, headers, body = server.get("/cgi-bin/linger.sh")
    assert (status, headers.get("transfer-encoding")) == (200, "chunked")
    pid = int(body)
    os.kill(pid, 0)  # still there (sleeping): no ProcessLookupError
    line = re.compile(r'"GET /cgi-bin/linger\.sh HTTP/1\.1" 200 ')
    assert server.wait_line(line, 10.0) is not None
    for _ in range(100):  # reaped by the server by now, or very soon after
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return
        time.sleep(0.01)
    raise AssertionError(f"script {pid} still there after its access line")
