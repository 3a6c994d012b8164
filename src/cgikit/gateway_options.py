"""The options of cgikit's long-running gateways, one table as ``cgikit.RUN_OPTIONS``.

``GATEWAY_OPTIONS`` makes the keywords of ``cgikit.run_gateway``, the flags of
``cgikit run`` that go with ``--fastcgi``, ``--scgi`` and ``--http``, the ``CGIKIT_*``
variables read when a launcher starts the app on a listening socket (``cgikit.run``'s
auto-detection: the variables are then the only way to set them) and
docs/gateway-options.md. ``gateway_settings`` checks the values and fills in the
defaults. Kept apart from ``gateway_run`` so that the CLI and the docs read the table
without importing the servers.
"""

from __future__ import annotations

import os
from collections.abc import Mapping

from cgikit import Option, resolve

__all__ = ["DEFAULT_THREADS", "GATEWAY_ENV", "GATEWAY_OPTIONS", "PROTOCOLS", "gateway_settings"]

PROTOCOLS = ("fastcgi", "scgi", "http")
# The protocol spoken on a socket a launcher hands over (fd 0, systemd): FastCGI unless
# this variable says otherwise. A launcher cannot pass --fastcgi and the like.
GATEWAY_ENV = "CGIKIT_GATEWAY"
MAX_AUTO_WORKERS = 4  # the default worker count: one per CPU, at most this (as serve)
# The default threads per worker. FastCGI and SCGI: one, on the loop's thread
# (gateway_inline), as gunicorn's sync worker and uWSGI's processes serve; an idle kept
# connection waits in the loop, so one thread never starves a web server's other
# connections. HTTP: its keep-alive clients each hold a thread between requests.
DEFAULT_THREADS = {"fastcgi": 1, "scgi": 1, "http": 8}

GATEWAY_OPTIONS = (
    Option("workers", "CGIKIT_WORKERS", int, None,
           "Worker processes sharing the socket, each with its own threads, under a master "
           "that replaces one that dies or retires; None: one per CPU, at most 4."),
    Option("threads", "CGIKIT_THREADS", int, None,
           "Threads per worker process, each serving one request at a time; None: 1 for "
           "FastCGI and SCGI (the app called on the thread that polls: no hand-off, about "
           "twice the requests per second; more processes for more at once), 8 for HTTP."),
    Option("max_requests", "CGIKIT_MAX_REQUESTS", int, 0,
           "Requests a worker serves before it retires and the master starts another, plus "
           "a random 0-10% so that workers do not retire together; 0: never."),
    Option("grace", "CGIKIT_GRACE", float, 10.0,
           "Seconds in-flight requests get to finish when a worker stops (SIGTERM, Ctrl-C, "
           "SIGHUP, max_requests); connections still busy then are cut."),
    Option("timeout", "CGIKIT_TIMEOUT", float, None,
           "Seconds each read or write may take once a request has begun (HTTP: the "
           "request's header block); None: 60 (HTTP: 10)."),
    Option("idle_timeout", "CGIKIT_IDLE_TIMEOUT", float, None,
           "Seconds a kept-alive connection may wait for its next request; None: 300 for "
           "FastCGI and SCGI (a web server's pool), 30 for HTTP."),
)  # fmt: skip


def gateway_settings(
    given: Mapping[str, object], environ: Mapping[str, str] = os.environ
) -> dict[str, object]:
    """The keywords given, checked, with the variables' values and defaults for the rest.

    Raises:
        TypeError: an unknown keyword or a value of the wrong type.
        ValueError: a value out of range (or a variable that is not a number).
    """
    unknown = set(given) - {o.name for o in GATEWAY_OPTIONS}
    if unknown:
        raise TypeError(f"unknown gateway option(s): {', '.join(sorted(unknown))}")
    values = resolve(GATEWAY_OPTIONS, given, environ)
    if values["workers"] is None:
        values["workers"] = min(os.cpu_count() or 1, MAX_AUTO_WORKERS)
    for name, least in (("workers", 1), ("threads", 1), ("max_requests", 0)):
        value = values[name]
        if value is None and name == "threads":
            continue
        if type(value) is not int:
            raise TypeError(f"{name} must be an int, not {value!r}")
        if value < least:
            raise ValueError(f"{name} must be at least {least}: {value!r}")
    for name in ("grace", "timeout", "idle_timeout"):
        value = values[name]
        if value is None and name != "grace":
            continue
        if type(value) not in (int, float):
            raise TypeError(f"{name} must be a number of seconds, not {value!r}")
        if not 0 <= value < 86400 or (value == 0 and name != "grace"):  # type: ignore[operator]
            raise ValueError(f"{name} out of range: {value!r}")
    return values
