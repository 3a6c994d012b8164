"""``cgikit serve``: static files and CGI scripts of a site, on cgikit's HTTP/1.1 server.

(Not ``cgikit/serve.py``: ``cgikit.serve`` is the CGI gateway's function in __init__, and a
submodule of that name would replace it as the package's attribute once imported.)

The composition of the host side: ``Dispatcher`` (a WSGI app) routes each request to a
``CGIHost`` (cgi_host) or to ``StaticFiles`` (static_files); ``make_server`` puts it
behind ``LoopServer`` (loop_server: an event loop answers CGI directory requests,
``HTTPServer``'s threads the rest); ``serve`` binds that, gives up root and runs it
until SIGTERM or Ctrl-C (the processes: site_workers). With ``fastcgi=ADDR`` (``cgikit
serve --fastcgi``), ``serve`` puts a ``Dispatcher`` made with ``files=False`` (scripts
only, every other path a 404) behind FastCGI servers instead: fastcgi_bridge, whose
docstring has what the bridge takes from the web server and what it ignores.

Routing and ``max_procs``: site_dispatch.

Process hygiene: the serving process is a child subreaper on Linux (site_workers).
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Mapping

from cgikit import Option, resolve
from cgikit.host_options import HOST_OPTIONS
from cgikit.http_server import HTTPServer
from cgikit.loop_server import LoopServer
from cgikit.prefork import become_subreaper
from cgikit.privileges import drop_privileges
from cgikit.site_dispatch import PROC_WAIT, Dispatcher, no_slot, url_segments
from cgikit.site_workers import Listening, Serving, log, serve_site

__all__ = [
    "PROC_WAIT",
    "SERVE_OPTIONS",
    "Dispatcher",
    "become_subreaper",
    "make_server",
    "serve",
]

SHUTDOWN_GRACE = 10.0  # seconds in-flight requests get to finish on SIGTERM / Ctrl-C
MAX_AUTO_WORKERS = 4  # the default worker count: one per CPU, at most this
BUSY_DEFER = 0.05  # seconds a worker with no free thread leaves a new connection to others

SERVE_OPTIONS = (
    Option("bind", "CGIKIT_BIND", str, "127.0.0.1", "Address to listen on; an IPv6 address "
           "(::1) binds IPv6. Give 0.0.0.0 to be reachable from other machines."),
    Option("port", "CGIKIT_PORT", int, 8000,
           "TCP port; 0 picks a free one (the start-up line shows which)."),
    Option("fastcgi", "CGIKIT_FASTCGI", str, None,
           "Serve FastCGI on ADDR (host:port, [::1]:port or unix:/path) instead of HTTP, "
           "for a web server in front (the fcgiwrap role): the same CGI routing, no static "
           "files (404); bind and port are unused. See docs/deploy/nginx-cgi-bridge.conf."),
    Option("cgi_dir", "CGIKIT_CGI_DIR", list, (),
           "More CGI directories, URLPATH=DIR (repeatable); /cgi-bin=ROOT/cgi-bin is always "
           "mapped when it exists, unless a cgi_dir gives /cgi-bin. Nothing below URLPATH "
           "is ever sent as a file."),
    Option("cgi_ext", "CGIKIT_CGI_EXT", list, (),
           "Extensions (.cgi, repeatable) of files run as CGI scripts anywhere under "
           "ROOT, never sent as files."),
    Option("max_procs", "CGIKIT_MAX_PROCS", int, None,
           "Most scripts running at once; a request waits up to 5 s for a slot, then "
           "gets 503. None: only threads bounds them."),
    Option("threads", "CGIKIT_THREADS", int, 16,
           "Threads per worker process, each serving one connection at a time."),
    Option("workers", "CGIKIT_WORKERS", int, None,
           "Server processes sharing the socket (each with its own threads); None: one "
           "per CPU, at most 4. max_procs is shared out among them."),
    Option("grace", "CGIKIT_GRACE", float, SHUTDOWN_GRACE,
           "Seconds in-flight requests get to finish on SIGTERM or Ctrl-C; scripts still "
           "running then are killed."),
    Option("user", "CGIKIT_USER", str, None,
           "The user the server and its scripts run as once the socket is bound, when "
           "started as root; None: nobody (as http.server ran scripts); root keeps root."),
    *HOST_OPTIONS,
)  # fmt: skip
_HOST_NAMES = frozenset(o.name for o in HOST_OPTIONS)


def _cgi_dirs(root: str, entries: Iterable[str]) -> dict[str, str]:
    """The URL prefix -> directory map: /cgi-bin by default, then the ``cgi_dir`` entries."""
    dirs: dict[str, str] = {}
    default = os.path.join(root, "cgi-bin")
    if os.path.isdir(default):
        dirs["/cgi-bin"] = default
    for entry in entries:
        url, equals, directory = str(entry).partition("=")
        if not equals or not url.startswith("/") or not directory:
            raise ValueError(f"cgi_dir entries are URLPATH=DIR: {entry!r}")
        url = "".join("/" + s for s in url_segments(url))
        if not url:
            raise ValueError(f"a CGI directory cannot be mounted at /: {entry!r}")
        dirs[url] = directory
    return dirs


def _settings(given: Mapping[str, object]) -> dict[str, object]:
    unknown = set(given) - {o.name for o in SERVE_OPTIONS}
    if unknown:
        raise TypeError(f"unknown serve option(s): {', '.join(sorted(unknown))}")
    values = resolve(SERVE_OPTIONS, given, os.environ)
    for name in ("port", "threads"):
        if type(values[name]) is not int:
            raise TypeError(f"{name} must be an int, not {values[name]!r}")
    grace = values["grace"]
    if type(grace) not in (int, float) or not 0 <= grace < 86400:  # type: ignore[operator]
        raise ValueError(f"grace must be a number of seconds: {grace!r}")
    workers = values["workers"]
    if workers is None:
        values["workers"] = min(os.cpu_count() or 1, MAX_AUTO_WORKERS)
    elif type(workers) is not int or workers < 1:
        raise ValueError(f"workers must be a positive int: {workers!r}")
    port = values["port"]
    if not 0 <= port <= 65535:  # type: ignore[operator]
        raise ValueError(f"port out of range: {port!r}")
    for name in ("cgi_dir", "cgi_ext"):
        if isinstance(values[name], str):
            raise TypeError(f"{name} must be a list of strings, not {values[name]!r}")
    if values["fastcgi"] is not None and not isinstance(values["fastcgi"], str):
        raise TypeError(f"fastcgi must be an address string, not {values['fastcgi']!r}")
    return values


def make_server(root: str | os.PathLike[str], **options: object) -> tuple[HTTPServer, str]:
    """The site's server, bound and listening, and its start-up line.

    ``options`` are the ``SERVE_OPTIONS`` keywords; one not given comes from its
    ``CGIKIT_*`` environment variable, else its default (``cgikit.resolve``). The
    server is one process (``workers`` and ``user`` are ``serve``'s business), HTTP
    (``fastcgi`` is ``serve``'s too).

    Raises:
        TypeError, ValueError: an unknown option or a bad value.
        NotADirectoryError: ``root`` or a CGI directory is not a directory.
        OSError: the address cannot be bound.
    """
    values = _settings(options)
    if values["fastcgi"] is not None:
        raise ValueError("make_server serves HTTP; serve(root, fastcgi=ADDR) serves FastCGI")
    return _build(root, values)


def _dispatcher(
    root: str | os.PathLike[str], values: dict[str, object], files: bool = True
) -> tuple[Dispatcher, str]:
    """The site's app, and its CGI routes as the start-up line shows them."""
    root_path = os.path.realpath(root)
    dirs = _cgi_dirs(root_path, values["cgi_dir"])  # type: ignore[arg-type]
    exts: tuple[str, ...] = tuple(values["cgi_ext"])  # type: ignore[arg-type]
    app = Dispatcher(
        root_path,
        dirs,
        exts,
        values["max_procs"],  # type: ignore[arg-type]
        host_options={name: values[name] for name in _HOST_NAMES},
        files=files,
    )
    return app, ", ".join([*dirs, *("*" + ext for ext in exts)]) or "none"


def _build(root: str | os.PathLike[str], values: dict[str, object]) -> tuple[HTTPServer, str]:
    app, cgi = _dispatcher(root, values)
    server = LoopServer(
        app,
        str(values["bind"]),
        values["port"],  # type: ignore[arg-type]
        threads=values["threads"],  # type: ignore[arg-type]
        max_body_bytes=values["max_body"],  # type: ignore[arg-type]
    )
    host, port = server.server_address
    shown = f"[{host}]" if ":" in host else host
    root_path = app.static.root
    return server, f"cgikit: serving {root_path} at http://{shown}:{port}/ (CGI: {cgi})"


def _listen_http(root: str | os.PathLike[str], values: dict[str, object]) -> Listening:
    server, line = _build(root, values)
    app: Dispatcher = server.app  # type: ignore[assignment]

    def make(shared: bool) -> Serving:
        if shared:  # another process may have a free thread: let it take the connection
            server.defer_when_busy = BUSY_DEFER
        return server  # made before the fork, as it always was

    return Listening(app, line, server.threads, make, server.socket.close, no_slot)


def serve(root: str | os.PathLike[str], **options: object) -> None:
    """Serve the site under ``root`` until SIGTERM or Ctrl-C; then stop cleanly.

    ``options`` are the ``SERVE_OPTIONS`` keywords (``make_server``); with ``fastcgi``,
    its CGI scripts over FastCGI instead (``fastcgi_bridge``). Binds, gives up root
    (``user``: privileges), then serves in ``workers`` processes (prefork; one serves in
    this process). Writes the start-up line to stderr, and over HTTP an access log line
    per request. In-flight requests get ``grace`` seconds to finish; scripts still
    running after that are killed. Call it from the main thread.

    Raises:
        as ``make_server``; PermissionError: ``user`` cannot be switched to.
    """
    values = _settings(options)
    if values["fastcgi"] is None:
        site = _listen_http(root, values)
    else:
        from cgikit import fastcgi_bridge  # the FastCGI server only when asked for

        app, cgi = _dispatcher(root, values, files=False)
        threads: int = values["threads"]  # type: ignore[assignment]
        max_body: int = values["max_body"]  # type: ignore[assignment]
        address = str(values["fastcgi"])
        site = fastcgi_bridge.listen_site(app, cgi, address, threads, max_body)
    try:
        try:
            user = drop_privileges(values["user"], log)  # type: ignore[arg-type]
        except BaseException:
            site.close()
            raise
        serve_site(site, user, values)
    finally:
        site.release()
