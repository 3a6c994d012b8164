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

Routing, in this order, on the normalised request path (``cgi_paths.normalize_target``
of the raw request-target, the same rules everywhere):

1. A CGI directory's URL prefix (default ``/cgi-bin`` -> ROOT/cgi-bin when it exists,
   the ``http.server --cgi`` convention; more with ``cgi_dir``, ``URLPATH=DIR``, the
   longest prefix first): the directory's ``CGIHost``, mounted at the prefix. Nothing
   below a prefix is ever a static file: a missing script is a 404, not a file.
2. A path whose walk on the disk reaches a regular file with one of the ``cgi_ext``
   extensions (case-insensitive, for case-insensitive file systems): a ``CGIHost`` of
   ROOT. Its local redirects are answered 302 rather than followed: followed inside a
   host of all of ROOT they would run any executable file there, not only ``cgi_ext``
   ones, and a redirect to a page (``Location: /thanks.html``) could not be served.
3. Anything else: static files, unless the file's real path lies in a CGI directory
   (compared by device and inode, so ``/CGI-BIN/x`` on a case-insensitive file system or
   a symlink into cgi-bin cannot send a script's source): then 404. Hard links to a
   script outside the CGI directories are not detected.

``max_procs`` bounds the scripts running at once with a semaphore held from the start of
a script until its response is closed; a request waits up to ``PROC_WAIT`` seconds for
a slot, then gets a 503 with Retry-After and a log line (issue 3, behaviour 4).

Process hygiene: the serving process is a child subreaper on Linux (site_workers).
"""

from __future__ import annotations

import os
import stat
import threading
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass
from http import HTTPStatus
from typing import Any

from cgikit import Option, resolve
from cgikit._typing import StartResponse
from cgikit.cgi_host import CGIHost
from cgikit.cgi_paths import UnsafePath, normalize_target, raw_target, split_target
from cgikit.host_options import HOST_OPTIONS, host_settings
from cgikit.http_server import HTTPServer
from cgikit.loop_server import LoopServer
from cgikit.prefork import become_subreaper
from cgikit.privileges import drop_privileges
from cgikit.site_workers import Listening, Serving, log, serve_site
from cgikit.static_files import StaticFiles

__all__ = [
    "PROC_WAIT",
    "SERVE_OPTIONS",
    "Dispatcher",
    "become_subreaper",
    "make_server",
    "serve",
]

PROC_WAIT = 5.0  # seconds a request waits for a script slot under max_procs, then 503
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


def _segments(url_path: str) -> list[str]:
    """A mount prefix as normalised segments (``/cgi-bin/`` and ``/cgi-bin`` alike)."""
    try:
        return [s for s in normalize_target(url_path.encode("latin-1")) if s]
    except (UnsafePath, UnicodeEncodeError):
        raise ValueError(f"invalid CGI URL path: {url_path!r}") from None


def _identity(path: str) -> tuple[int, int] | None:
    try:
        info = os.stat(path)
    except OSError:
        return None
    return info.st_dev, info.st_ino


class Dispatcher:
    """The site as one WSGI app: CGI directories, ``cgi_exts`` scripts, static files.

    Mounted at the root of a site (the module docstring has the routing). ``cgi_dirs``
    maps URL prefixes to directories; ``host_options`` holds ``HOST_OPTIONS`` keywords
    for every ``CGIHost``; ``proc_wait`` is the wait for a ``max_procs`` slot.

    Raises:
        NotADirectoryError: ``root`` or a CGI directory is not a directory.
        ValueError, TypeError: a bad prefix, extension or option.
    """

    def __init__(
        self,
        root: str | os.PathLike[str],
        cgi_dirs: Mapping[str, str | os.PathLike[str]],
        cgi_exts: Iterable[str] = (),
        max_procs: int | None = None,
        proc_wait: float = PROC_WAIT,
        host_options: Mapping[str, object] | None = None,
        files: bool = True,
    ) -> None:
        self.files = files  # False: scripts only, the rest is a 404 (the FastCGI bridge)
        host_options = dict(host_options or {})
        host_settings(host_options)  # checked even when no CGIHost is made (no cgi-bin)
        self.static = StaticFiles(root)
        self.mounts: list[tuple[list[str], str, CGIHost]] = []
        for url, directory in cgi_dirs.items():
            segments = _segments(url)
            host = CGIHost(directory, **host_options)
            self.mounts.append((segments, "".join("/" + s for s in segments), host))
        self.mounts.sort(key=lambda mount: -len(mount[0]))  # the longest prefix wins
        self._cgi_ids = {_identity(host.directory) for _, _, host in self.mounts}
        self.cgi_exts = tuple(ext.lower() for ext in cgi_exts)
        if not all(ext.startswith(".") and len(ext) > 1 for ext in self.cgi_exts):
            raise ValueError(f"CGI extensions start with '.': {self.cgi_exts!r}")
        no_redirects = {**host_options, "local_redirects": False}
        self.ext_host = CGIHost(self.static.root, **no_redirects) if self.cgi_exts else None
        if max_procs is not None and (type(max_procs) is not int or max_procs < 1):
            raise ValueError(f"max_procs must be a positive int: {max_procs!r}")
        self._slots = threading.BoundedSemaphore(max_procs) if max_procs else None
        self.proc_wait = proc_wait

    def limit_procs(self, max_procs: int) -> None:
        """Set ``max_procs`` before serving (a worker process's share of the site's)."""
        if type(max_procs) is not int or max_procs < 1:
            raise ValueError(f"max_procs must be a positive int: {max_procs!r}")
        self._slots = threading.BoundedSemaphore(max_procs)

    def __call__(self, environ: dict[str, Any], start_response: StartResponse) -> Iterable[bytes]:
        try:
            segments = normalize_target(split_target(raw_target(environ))[0])
        except (UnsafePath, UnicodeEncodeError) as exc:
            if not self.files:
                return _refuse(environ, start_response, exc)
            return self.static(environ, start_response)  # answers the same error
        for prefix, url, host in self.mounts:
            if segments[: len(prefix)] == prefix:
                rest = "".join("/" + s for s in segments[len(prefix) :])
                mounted = {**environ, "SCRIPT_NAME": url, "PATH_INFO": rest}
                return self._run(host, mounted, start_response)
        if self.ext_host is not None and self._ext_script(segments):
            mounted = {**environ, "SCRIPT_NAME": ""}
            return self._run(self.ext_host, mounted, start_response)
        if not self.files:  # the web server in front serves the files
            return _answer(start_response, "404 Not Found", environ)
        if self._in_cgi_dir(segments):
            environ["wsgi.errors"].write("cgikit: a CGI directory's file asked as static\n")
            return _answer(start_response, "404 Not Found", environ)
        return self.static(environ, start_response)

    def fast_route(self, uri: str) -> FastRoute | None:
        """The CGI directory mount a request-target goes to, with a script slot taken.

        For the event-driven path (``loop_server``): None when the request is anything
        else (``cgi_ext``, static, an unsafe path: the WSGI path answers it) or when
        ``max_procs`` has no free slot now (the WSGI path waits for one).
        """
        try:
            segments = normalize_target(split_target(uri.encode("latin-1"))[0])
        except (UnsafePath, UnicodeEncodeError):
            return None
        for prefix, url, host in self.mounts:
            if segments[: len(prefix)] == prefix:
                release = _no_slot
                if self._slots is not None:
                    if not self._slots.acquire(blocking=False):
                        return None
                    release = self._slots.release
                return FastRoute(
                    host, url, "".join("/" + s for s in segments[len(prefix) :]), release
                )
        return None

    def _ext_script(self, segments: list[str]) -> bool:
        """Whether the walk to the path reaches a regular file with a ``cgi_ext``."""
        path = self.static.root
        for segment in segments:
            if segment == "":
                return False
            path = os.path.join(path, os.fsdecode(segment.encode("latin-1")))
            try:
                info = os.stat(path)
            except OSError:
                return False
            if not stat.S_ISDIR(info.st_mode):
                return stat.S_ISREG(info.st_mode) and segment.lower().endswith(self.cgi_exts)
        return False

    def _in_cgi_dir(self, segments: list[str]) -> bool:
        """Whether the real path, or a directory above it, is a CGI directory."""
        path = os.path.realpath(self.static.path_of(segments))
        while True:
            identity = _identity(path)
            if identity is not None and identity in self._cgi_ids:
                return True
            parent = os.path.dirname(path)
            if parent == path:
                return False
            path = parent

    def _run(
        self, host: CGIHost, environ: dict[str, Any], start_response: StartResponse
    ) -> Iterable[bytes]:
        """Run the host under the ``max_procs`` semaphore, held until ``close()``."""
        slots = self._slots
        if slots is None:
            return host(environ, start_response)
        if not slots.acquire(timeout=self.proc_wait):
            environ["wsgi.errors"].write(
                f"cgikit: {environ.get('REQUEST_URI', '')}: 503: every script slot "
                f"busy for {self.proc_wait:g} s (max_procs)\n"
            )
            return _answer(start_response, "503 Service Unavailable", environ, retry=True)
        try:
            result = host(environ, start_response)
        except BaseException:
            slots.release()
            raise
        return _Holding(result, slots)


@dataclass(frozen=True, slots=True)
class FastRoute:
    """A request routed to a CGI directory: its host, mount URL and path below it;
    ``release`` gives the script slot back once the response is done."""

    host: CGIHost
    mount: str
    rest: str
    release: Callable[[], object]


def _no_slot() -> None:
    pass


class _Holding:
    """A response body that holds a script slot until it is closed (PEP 3333)."""

    def __init__(self, body: Iterable[bytes], slots: threading.BoundedSemaphore) -> None:
        self._body, self._slots, self._held = body, slots, True

    def __iter__(self) -> Iterator[bytes]:
        return iter(self._body)

    def close(self) -> None:
        try:
            close = getattr(self._body, "close", None)
            if close is not None:
                close()
        finally:
            if self._held:
                self._held = False
                self._slots.release()


def _answer(
    start_response: StartResponse, status: str, environ: dict[str, Any], retry: bool = False
) -> list[bytes]:
    body = f"{status}\n".encode("ascii")
    headers = [("Content-Type", "text/plain; charset=utf-8"), ("Content-Length", str(len(body)))]
    if retry:
        headers.append(("Retry-After", "1"))
    start_response(status, headers)
    return [] if environ.get("REQUEST_METHOD") == "HEAD" else [body]


def _refuse(environ: dict[str, Any], start_response: StartResponse, exc: ValueError) -> list[bytes]:
    """The answer to a path no route may take: 400 or 404 (``cgi_paths``), logged."""
    status = exc.status if isinstance(exc, UnsafePath) else 400
    reason = exc.reason if isinstance(exc, UnsafePath) else "the path is not latin-1"
    environ["wsgi.errors"].write(f"cgikit: {environ.get('REQUEST_URI', '')!r}: {reason}\n")
    return _answer(start_response, f"{status} {HTTPStatus(status).phrase}", environ)


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
        url = "".join("/" + s for s in _segments(url))
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

    return Listening(app, line, server.threads, make, server.socket.close, _no_slot)


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
