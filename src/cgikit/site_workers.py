"""``cgikit serve``'s processes: a bound site served here or by prefork workers, then stopped.

Owns what ``site_server.serve`` does once its socket is bound and root given up, the
same for HTTP and for the FastCGI bridge (``fastcgi_bridge``): one worker serves in this
process (SIGTERM and SIGINT stop it), several are ``prefork.run_workers``'s; ``max_procs``
is shared out among them; in-flight requests get ``grace`` seconds; the scripts still
running then are killed (``process_group.kill_all``). A ``Listening`` says how a worker
gets its server: ``site_server``'s HTTP server is made once, before the fork; a
FastCGI server is made in each worker.

The process serving is a child subreaper on Linux (``prefork.become_subreaper``), so
the grandchildren of killed scripts are reaped here even where PID 1 reaps nothing.
"""

from __future__ import annotations

import signal
import sys
import threading
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Protocol

from cgikit import warm_spawn
from cgikit.prefork import become_subreaper, run_workers
from cgikit.process_group import kill_all

TYPE_CHECKING = False
if TYPE_CHECKING:
    from cgikit.site_dispatch import Dispatcher

__all__ = ["Listening", "Serving", "log", "serve_site"]


class Serving(Protocol):
    """A server: ``serve_forever`` until ``shutdown`` (HTTPServer, GatewayServer)."""

    def serve_forever(self) -> None: ...
    def shutdown(self, timeout: float = 10.0) -> None: ...


@dataclass(frozen=True, slots=True)
class Listening:
    """A bound site: ``make(shared)`` gives a worker its server (``shared``: other workers
    serve the socket too); ``close`` closes the socket; ``release`` removes what is left
    of it at the end (a Unix socket file)."""

    app: Dispatcher
    line: str  # the start-up line
    threads: int
    make: Callable[[bool], Serving]
    close: Callable[[], None]
    release: Callable[[], object]


def log(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def serve_site(site: Listening, user: str, values: Mapping[str, object]) -> None:
    """Serve ``site`` until SIGTERM or SIGINT (``values``: ``workers``, ``max_procs``,
    ``grace`` of the ``SERVE_OPTIONS``); ``user`` is named in the start-up log."""
    workers: int = values["workers"]  # type: ignore[assignment]
    max_procs: int | None = values["max_procs"]  # type: ignore[assignment]
    if max_procs is not None:
        workers = min(workers, max_procs)  # every worker gets at least one slot
    log(site.line)
    log(f"cgikit: {workers} worker process(es) x {site.threads} threads, as user {user}")
    grace: float = values["grace"]  # type: ignore[assignment]
    if workers == 1:
        _serve_here(site.make(False), grace)
        return

    def work(index: int, stop: threading.Event) -> None:
        if max_procs is not None:  # shared out: the first ones take the remainder
            site.app.limit_procs(max_procs // workers + int(index < max_procs % workers))
        _serve_until(site.make(True), stop, grace)

    run_workers(workers, work, log=log, grace=grace, on_stop=site.close)
    log("cgikit: stopped")


def _serve_here(server: Serving, grace: float) -> None:
    """One process: this one serves, until SIGTERM or SIGINT."""
    become_subreaper()
    stop = threading.Event()
    previous = {}
    for signum in (signal.SIGTERM, signal.SIGINT):  # the main thread only
        previous[signum] = signal.signal(signum, lambda *_: stop.set())
    try:
        _serve_until(server, stop, grace)
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, handler)


def _serve_until(server: Serving, stop: threading.Event, grace: float) -> None:
    """Serve on a thread until ``stop``; shut down; kill the scripts left running."""
    thread = threading.Thread(target=server.serve_forever, name="cgikit-serve")
    thread.start()
    try:
        while thread.is_alive() and not stop.wait(0.5):
            pass
        log("cgikit: shutting down")
    finally:
        server.shutdown(grace)
        thread.join(grace + 10.0)
        kill_all(log)
        warm_spawn.close_all()  # each worker reaps its own zygotes (warm mode)
