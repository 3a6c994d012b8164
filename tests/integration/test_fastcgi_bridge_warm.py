"""``cgikit serve --fastcgi --warm`` behind a real nginx: Python scripts forked by a zygote.

A real ``python -m cgikit serve --fastcgi 127.0.0.1:PORT --warm --workers 1 ROOT`` behind
nginx started from docs/deploy/nginx-cgi-bridge.conf, as test_fastcgi_bridge.py starts
them (as root, the bridge gives root up to www-data, and so do its zygotes). The
script is serve/test_serve_warm.py's whoami.py: who forked it, and the length and
digest of what it read. The first requests run cold while the zygote starts, so it is
asked until it answers warm; then a GET and a 1 MiB POST are answered by that zygote's
children.
"""

from __future__ import annotations

import hashlib
import json
import os
import random
import shutil
import tempfile
import textwrap
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from cgikit import warm_spawn
from gateway_servers import Backend, start_bridge, start_nginx
from integration.runtime import choose_interpreter
from integration.wire import request
from serve.test_serve_warm import WARM_TIMEOUT, WHOAMI, eventually, is_warm, stat_fields
from servers import HOST, Server, cgi_user_ids, stop

pytestmark = [
    pytest.mark.server,
    pytest.mark.skipif(not warm_spawn.available(), reason="warm mode is Linux-only"),
]


@dataclass
class Front:
    """nginx in front of a warm bridge, and the bridge's zygote, answering."""

    nginx: Server
    bridge: Backend
    zygote: int

    def diagnostics(self) -> str:
        return f"{self.nginx.diagnostics()}\n{self.bridge.diagnostics()}"


def whoami(front: Server, body: bytes | None = None) -> dict[str, Any]:
    method = "GET" if body is None else "POST"
    headers: dict[str, str | bytes] = {"Content-Type": "application/octet-stream"}
    reply = request(front, method, "/cgi-bin/whoami.py", body=body, headers=headers)
    assert reply.status == 200 and reply.complete, f"{reply.status} {reply.body[:300]!r}"
    answer: dict[str, Any] = json.loads(reply.body)
    return answer


@pytest.fixture(scope="module")
def root() -> Iterator[Path]:
    """ROOT with cgi-bin/whoami.py, world-readable (the scripts run as www-data)."""
    cgi_user_ids()
    top = Path(tempfile.mkdtemp(prefix="cgikit-bridge-warm-", dir="/tmp"))
    top.chmod(0o755)
    script = top / "root" / "cgi-bin" / "whoami.py"
    script.parent.mkdir(parents=True)
    script.write_text(f"#!{choose_interpreter()}\n" + textwrap.dedent(WHOAMI), "utf-8")
    script.chmod(0o755)
    yield top / "root"
    shutil.rmtree(top, ignore_errors=True)


@pytest.fixture(scope="module")
def front(root: Path) -> Iterator[Front]:
    try:
        bridge = start_bridge(root, "--warm", "--workers", "1")
    except RuntimeError as exc:
        pytest.fail(str(exc), pytrace=False)
    try:
        values = {"ROOT": str(root), "BRIDGE": f"{HOST}:{bridge.port}"}
        nginx = start_nginx("nginx-cgi-bridge.conf", values)
        try:

            def warm_answer() -> dict[str, Any] | None:
                answer = whoami(nginx)
                return answer if is_warm(answer) else None

            answer = eventually(warm_answer, WARM_TIMEOUT, "the bridge answering warm")
            yield Front(nginx, bridge, answer["ppid"])
        finally:
            stop(nginx.process)
            shutil.rmtree(nginx.rundir, ignore_errors=True)
    finally:
        bridge.stop()


def test_a_get_is_answered_by_the_bridge_s_zygote(front: Front) -> None:
    answer = whoami(front.nginx)
    assert is_warm(answer), front.diagnostics()
    assert (answer["ppid"], answer["gppid"]) == (front.zygote, front.bridge.process.pid)
    assert answer["length"] == 0
    if os.geteuid() == 0:  # the zygote, as the bridge, gave root up: www-data's
        with open(f"/proc/{front.zygote}/status", encoding="ascii") as f:
            uids = next(line for line in f if line.startswith("Uid:")).split()[1:]
        assert uids == [str(cgi_user_ids()[0])] * 4
    assert int(stat_fields(front.zygote)[1]) == front.bridge.process.pid


def test_a_1_mib_post_is_answered_warm(front: Front) -> None:
    body = random.Random(5).randbytes(1 << 20)
    answer = whoami(front.nginx, body)
    assert is_warm(answer) and answer["ppid"] == front.zygote, front.diagnostics()
    assert answer["length"] == len(body)
    assert answer["sha256"] == hashlib.sha256(body).hexdigest()
    assert whoami(front.nginx)["ppid"] == front.zygote  # and it serves on
