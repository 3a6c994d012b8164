"""The WSGI app the gateway-server tests serve from a real ``cgikit run`` process.

Not a test module: ``python -m cgikit run ... served_apps:app`` and the scripts the
auto-detection tests write import it (tests/gateways is put on PYTHONPATH). The answer
names the process that served the request, so a test sees which worker it reached.
``/slow`` first creates ``started-<pid>`` in the directory CGIKIT_TEST_MARKERS names,
then takes SLOW_SECONDS: a request the test knows to be in flight.
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

SLOW_SECONDS = 1.5


def app(environ: dict[str, Any], start_response: Callable[..., Any]) -> Iterable[bytes]:
    body = environ["wsgi.input"].read()
    if environ.get("PATH_INFO") == "/slow":
        markers = Path(os.environ["CGIKIT_TEST_MARKERS"])
        (markers / f"started-{os.getpid()}").touch()
        time.sleep(SLOW_SECONDS)
    report = {
        "pid": os.getpid(),
        "ppid": os.getppid(),
        "path": environ.get("PATH_INFO", ""),
        "body": body.decode("latin-1"),
        "listen_fds": os.environ.get("LISTEN_FDS"),  # systemd's, removed once taken
        "multiprocess": environ["wsgi.multiprocess"],
        "multithread": environ["wsgi.multithread"],
    }
    start_response("200 OK", [("Content-Type", "application/json")])
    return [json.dumps(report).encode()]
