"""The matryoshka: cgikit's host running a cgikit child script (``cgikit.run(app)``).

The child finds the package through PYTHONPATH, passed with the ``env`` option (the
server's own environment never reaches a script).
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

from cgikit.cgi_host import CGIHost
from host.hostkit import PY, SRC, call, write_script

CHILD = """\
import hashlib, json
import cgikit

def app(environ, start_response):
    if environ["PATH_INFO"] == "/missing":
        start_response("404 Not Here", [("Content-Type", "text/plain")])
        return [b"no\\n"]
    body = environ["wsgi.input"].read()
    keys = ("SCRIPT_NAME", "PATH_INFO", "QUERY_STRING", "REQUEST_METHOD", "HTTP_X_FOO")
    data = {k: environ.get(k) for k in keys}
    data["sha256"] = hashlib.sha256(body).hexdigest()
    data["length"] = len(body)
    start_response("200 OK", [("Content-Type", "application/json")])
    return [json.dumps(data).encode()]

cgikit.run(app)
"""


def host(cgi_dir: Path) -> CGIHost:
    write_script(cgi_dir, "child.py", PY, CHILD)
    return CGIHost(cgi_dir, env=[f"PYTHONPATH={SRC}"], timeout=20.0, idle_timeout=20.0)


def test_get_with_path_info_and_utf8(cgi_dir: Path) -> None:
    res = call(host(cgi_dir), "/", REQUEST_URI="/child.py/caf%C3%A9?x=1", HTTP_X_FOO="bar")
    assert res.status == "200 OK"
    data = res.json()
    assert data["SCRIPT_NAME"] == "/child.py"
    assert data["PATH_INFO"] == "/caf\xc3\xa9"  # PEP 3333 bytes as latin-1
    assert (data["QUERY_STRING"], data["HTTP_X_FOO"]) == ("x=1", "bar")


def test_post_and_chunked_post(cgi_dir: Path) -> None:
    app = host(cgi_dir)
    payload = os.urandom(300_000)
    digest = hashlib.sha256(payload).hexdigest()
    res = call(app, "/child.py", "POST", payload, CONTENT_LENGTH=str(len(payload)))
    assert (res.json()["sha256"], res.json()["length"]) == (digest, len(payload))
    res = call(
        app,
        "/child.py",
        "POST",
        payload,
        HTTP_TRANSFER_ENCODING="chunked",
        **{"wsgi.input_terminated": True},
    )
    assert res.json()["sha256"] == digest


def test_status_and_head(cgi_dir: Path) -> None:
    app = host(cgi_dir)
    res = call(app, "/child.py/missing")
    assert (res.status, res.body) == ("404 Not Here", b"no\n")
    head = call(app, "/child.py", "HEAD")
    assert (head.status, head.header("Content-Type"), head.body) == (
        "200 OK",
        "application/json",
        b"",
    )
