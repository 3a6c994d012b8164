"""A WSGI app as a long-running gateway: ``cgikit run --fastcgi|--scgi|--http ADDR``.

Owns ``run_gateway`` (a listening socket bound or taken over, then ``workers`` processes
each serving it with a threaded FastCGI, SCGI or HTTP server; a worker retiring after
``max_requests``; the start-up line) and ``serve_inherited``, the listening socket a
launcher hands over, which ``cgikit.run`` looks for when there is no CGI environment:

- fd 0 a listening socket: FCGI_LISTENSOCK_FILENO (FastCGI 1.0 §2.2), how Apache
  mod_fcgid, lighttpd ``bin-path`` and spawn-fcgi start an app. It moves to a new
  descriptor (close-on-exec) and fd 0 becomes /dev/null, so that a subprocess the app
  starts inherits neither the socket nor a closed stdin.
- systemd socket activation: LISTEN_PID is this process and LISTEN_FDS >= 1; the socket
  is fd 3 (sd_listen_fds(3)). The variables are removed, as sd_listen_fds does when
  asked, so that a child does not take the socket for its own.

Such a socket speaks FastCGI unless CGIKIT_GATEWAY says scgi or http. Each server is
told its process model for PEP 3333's ``wsgi.multiprocess`` (more than one worker, or a
socket on fd 0, whose launcher may run more processes of the app: mod_fcgid, lighttpd's
``max-procs``) and ``wsgi.multithread`` (more than one thread). A FastCGI server admits
the web servers FCGI_WEB_SERVER_ADDRS lists (``gateway_peers``); a bad list fails before
the socket is bound. The options are ``gateway_options``'s table; the protocols are
``fastcgi_server``, ``scgi_server`` and ``http_server``'s; the master and its signals
(SIGTERM or SIGINT drain and stop, SIGHUP replaces the workers) are ``prefork``'s. The
app is imported once, by the master, before the fork: SIGHUP replaces the processes,
not the code.
"""

from __future__ import annotations

import contextlib
import os
import random
import socket
import sys
import threading
from collections.abc import Callable, Iterable, Mapping
from typing import Any, Final, Protocol

from cgikit.gateway_options import DEFAULT_THREADS, GATEWAY_ENV, PROTOCOLS, gateway_settings
from cgikit.gateway_peers import parse_peers
from cgikit.gateway_socket import Address, listen, parse_address
from cgikit.prefork import run_workers

TYPE_CHECKING = False
if TYPE_CHECKING:
    from cgikit._typing import StartResponse, WSGIApp

__all__ = ["inherited_listener", "listener", "run_gateway", "serve_inherited"]

FCGI_LISTENSOCK_FILENO: Final = 0
SD_LISTEN_FDS_START: Final = 3
BUSY_DEFER: Final = 0.05  # HTTP: seconds a worker with no free thread leaves a connection
JITTER: Final = 0.1  # max_requests is raised by up to this fraction, per worker


class _Server(Protocol):
    def serve_forever(self) -> None: ...
    def shutdown(self, timeout: float = 10.0) -> None: ...


ServerFactory = Callable[["WSGIApp", socket.socket], _Server]


def _log(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def run_gateway(
    app: WSGIApp, protocol: str, address: str | Address | socket.socket, **options: object
) -> None:
    """Serve ``app`` over ``protocol`` on ``address`` until SIGTERM or Ctrl-C.

    ``protocol``: ``"fastcgi"``, ``"scgi"`` or ``"http"``. ``address``: ``host:port``,
    ``[::1]:port``, ``unix:/path`` (a stale socket file is replaced, and removed at the
    end) or a listening socket, which is taken over. ``options`` are the
    ``GATEWAY_OPTIONS`` keywords; one not given comes from its ``CGIKIT_*`` variable,
    else its default. Forks the workers: call it from the main thread of a process that
    has no other threads. Writes a start-up line to stderr.

    Raises:
        ValueError, TypeError: an unknown protocol or option, a bad value or address.
        OSError: the address cannot be bound.
    """
    _run_gateway(app, protocol, address, options, False)


def _run_gateway(
    app: WSGIApp,
    protocol: str,
    address: str | Address | socket.socket,
    options: Mapping[str, object],
    others: bool,
) -> None:
    """``run_gateway``; ``others``: processes this one did not start serve the app too."""
    values = gateway_settings(options)
    if values["threads"] is None:
        values["threads"] = DEFAULT_THREADS.get(protocol, 1)
    make = _factory(protocol, values, others)
    sock, release = listener(address)
    try:
        workers: int = values["workers"]  # type: ignore[assignment]
        grace: float = values["grace"]  # type: ignore[assignment]
        _log(
            f"cgikit: {protocol} on {_shown(sock)}, {workers} worker process(es) x "
            f"{values['threads']} threads"
        )

        def work(index: int, stop: threading.Event) -> None:
            _work(make, app, sock, values, stop)

        run_workers(workers, work, log=_log, grace=grace, on_stop=sock.close)
    finally:
        sock.close()
        release()
    _log("cgikit: stopped")


def _factory(protocol: str, values: Mapping[str, object], others: bool = False) -> ServerFactory:
    """How a worker makes its server for ``protocol`` (its module imported only now)."""
    threads = values["threads"]
    timeout, idle = values["timeout"], values["idle_timeout"]
    # PEP 3333: wsgi.multiprocess says whether other processes serve the same app
    # (prefork, or a launcher's other processes), wsgi.multithread whether other
    # threads of this one do.
    shared = values["workers"] != 1 or others
    kw: dict[str, Any] = {"threads": threads}
    if protocol == "http":
        from cgikit.http_server import HTTPServer

        kw |= {"header_timeout": timeout} if timeout is not None else {}
        kw |= {"idle_timeout": idle} if idle is not None else {}
        flags = {"wsgi.multiprocess": shared, "wsgi.multithread": threads != 1}

        def make_http(app: WSGIApp, sock: socket.socket) -> _Server:
            server = HTTPServer(_Flagged(app, flags), sock=sock, **kw)
            if shared:  # another process may have a free thread: let it take the connection
                server.defer_when_busy = BUSY_DEFER
            return server

        return make_http
    if protocol == "fastcgi":
        from cgikit.fastcgi_server import FastCGIServer as cls

        _check_peers(cls.peers_variable)
    elif protocol == "scgi":
        from cgikit.scgi_server import SCGIServer as cls  # type: ignore[assignment]
    else:
        raise ValueError(f"protocol must be one of {', '.join(PROTOCOLS)}: {protocol!r}")
    kw |= {"timeout": timeout} if timeout is not None else {}
    kw |= {"idle_timeout": idle} if idle is not None else {}
    kw["multiprocess"] = shared
    return lambda app, sock: cls(app, sock, **kw)


def _check_peers(variable: str | None) -> None:
    """A bad FCGI_WEB_SERVER_ADDRS fails here, once, not in every worker it would kill."""
    if variable is not None and variable in os.environ:
        parse_peers(os.environ[variable], variable)


class _Flagged:
    """The app with the WSGI process-model values set for it (the HTTP server's environ
    says one threaded process whatever the workers)."""

    def __init__(self, app: WSGIApp, flags: Mapping[str, bool]) -> None:
        self.app, self.flags = app, flags

    def __call__(self, environ: dict[str, Any], start_response: StartResponse) -> Iterable[bytes]:
        environ.update(self.flags)
        return self.app(environ, start_response)


def listener(address: str | Address | socket.socket) -> tuple[socket.socket, Callable[[], None]]:
    """The listening socket, and what removes its Unix socket file at the end (if ours)."""
    if isinstance(address, socket.socket):
        return address, lambda: None
    if isinstance(address, str):
        address = parse_address(address)
    sock = listen(address, backlog=1024)
    path = address.path
    if path is None:
        return sock, lambda: None
    inode = os.stat(path).st_ino

    def release() -> None:
        with contextlib.suppress(OSError):
            if os.stat(path).st_ino == inode:  # ours, not a successor's
                os.unlink(path)

    return sock, release


def _shown(sock: socket.socket) -> str:
    name = sock.getsockname()
    if not isinstance(name, tuple):
        return f"unix:{os.fsdecode(name)}"
    return str(Address(host=name[0], port=name[1]))


# -- a worker ---------------------------------------------------------------------------


def _work(
    make: ServerFactory,
    app: WSGIApp,
    sock: socket.socket,
    values: Mapping[str, object],
    stop: threading.Event,
) -> None:
    """Serve in this worker until ``stop`` (a signal, or the request limit reached)."""
    limit: int = values["max_requests"]  # type: ignore[assignment]
    if limit:
        limit += random.randint(0, int(limit * JITTER))
        app = _Retiring(app, limit, stop)
    grace: float = values["grace"]  # type: ignore[assignment]
    # Each worker makes its own server: a server's wake-up pair made before the fork
    # would be shared, and one worker's shutdown would stop them all.
    server = make(app, sock)
    begin = getattr(server, "begin_shutdown", None)  # FastCGI, SCGI; HTTP polls ``stop``
    if isinstance(app, _Retiring) and begin is not None:
        app.retire = lambda: begin(grace)
    thread = threading.Thread(target=server.serve_forever, name="cgikit-gateway")
    thread.start()
    try:
        while thread.is_alive() and not stop.wait(0.5):
            pass
    finally:
        server.shutdown(grace)
        thread.join(grace + 10.0)
    if isinstance(app, _Retiring) and app.calls >= limit:
        _log(f"cgikit: worker {os.getpid()} served {app.calls} requests; retiring")


class _Retiring:
    """The app, counted: its ``limit``-th call sets ``stop`` and calls ``retire`` (the
    server stops accepting at once, not when the worker's main thread next looks);
    that request still finishes."""

    def __init__(self, app: WSGIApp, limit: int, stop: threading.Event) -> None:
        self.app, self.limit, self.stop = app, limit, stop
        self.calls = 0
        self._lock = threading.Lock()
        self.retire: Callable[[], object] = lambda: None

    def __call__(self, environ: dict[str, Any], start_response: StartResponse) -> Iterable[bytes]:
        with self._lock:
            self.calls += 1
            reached = self.calls == self.limit
        if reached:
            self.stop.set()
            self.retire()
        return self.app(environ, start_response)


# -- a socket handed over by a launcher ---------------------------------------------------


def inherited_listener(environ: dict[str, str] | None = None) -> socket.socket | None:
    """The listening socket a launcher handed this process (module docstring), or None.

    Raises:
        OSError: systemd's fd 3 is not a listening stream socket.
    """
    env: Any = os.environ if environ is None else environ
    count = _systemd_count(env)
    if count:
        for name in ("LISTEN_PID", "LISTEN_FDS", "LISTEN_FDNAMES"):
            env.pop(name, None)
        if count > 1:
            _log(f"cgikit: systemd passed {count} sockets; serving the first (fd 3)")
        sock = _listening(SD_LISTEN_FDS_START)
        if sock is None:
            raise OSError("systemd's fd 3 is not a listening stream socket")
        sock.set_inheritable(False)
        return sock
    sock = _listening(FCGI_LISTENSOCK_FILENO)
    if sock is None:
        return None
    moved = socket.socket(fileno=os.dup(sock.detach()))  # os.dup: close-on-exec
    devnull = os.open(os.devnull, os.O_RDONLY)
    os.dup2(devnull, FCGI_LISTENSOCK_FILENO)
    os.close(devnull)
    return moved


def _systemd_count(env: Mapping[str, str]) -> int:
    """How many sockets systemd passed this process (LISTEN_FDS for LISTEN_PID); or 0."""
    count = env.get("LISTEN_FDS", "")
    if env.get("LISTEN_PID") == str(os.getpid()) and count.isdigit():
        return int(count)
    return 0


def _listening(fd: int) -> socket.socket | None:
    """``fd`` as a socket object if it is a listening stream socket; else None (untouched)."""
    try:
        sock = socket.socket(fileno=fd)
    except OSError:  # ENOTSOCK, EBADF
        return None
    try:
        listening = sock.type == socket.SOCK_STREAM and bool(
            sock.getsockopt(socket.SOL_SOCKET, socket.SO_ACCEPTCONN)
        )
    except OSError:
        listening = False
    if not listening:
        sock.detach()  # not ours to close
        return None
    return sock


def serve_inherited(app: WSGIApp, options: Mapping[str, object]) -> int | None:
    """Serve ``app`` on an inherited listening socket until SIGTERM; its exit status.

    None when there is no such socket (the caller emulates a request instead).
    ``options`` are ``GATEWAY_OPTIONS`` keywords; None means "not given".
    """
    try:
        # A launcher that hands over fd 0 may run more processes of the app (mod_fcgid,
        # lighttpd's max-procs, spawn-fcgi -F); systemd's socket is this service's.
        launcher = _systemd_count(os.environ) == 0
        sock = inherited_listener()
        if sock is None:
            return None
        with sock:
            protocol = os.environ.get(GATEWAY_ENV, "").strip().lower() or "fastcgi"
            if protocol not in PROTOCOLS:
                choices = ", ".join(PROTOCOLS)
                raise ValueError(f"{GATEWAY_ENV} must be one of {choices}: {protocol!r}")
            _run_gateway(app, protocol, sock, options, launcher)
    except (OSError, ValueError, TypeError) as exc:
        _log(f"cgikit: cannot serve the inherited socket: {exc}")
        return 2
    return 0
