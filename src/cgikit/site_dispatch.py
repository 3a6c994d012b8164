"""``Dispatcher``: a site as one WSGI app, CGI directories, ``cgi_ext`` scripts and files.

The router of ``cgikit serve`` (site_server) and of its FastCGI bridge
(fastcgi_bridge); ``fast_route`` is the same routing for the event loop's fast path
(loop_server).

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
"""

from __future__ import annotations

import os
import stat
import threading
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass
from http import HTTPStatus
from typing import Any

from cgikit._typing import StartResponse
from cgikit.cgi_host import CGIHost
from cgikit.cgi_paths import UnsafePath, normalize_target, raw_target, split_target
from cgikit.host_options import host_settings
from cgikit.static_files import StaticFiles

__all__ = ["PROC_WAIT", "Dispatcher", "FastRoute", "no_slot", "url_segments"]

PROC_WAIT = 5.0  # seconds a request waits for a script slot under max_procs, then 503


def url_segments(url_path: str) -> list[str]:
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
            segments = url_segments(url)
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
                release = no_slot
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


# Read-only by convention, not frozen (here and below): made per request, and a frozen
# dataclass's __init__ costs three times as much (an object.__setattr__ call a field,
# in the compiled build too).
@dataclass(slots=True)
class FastRoute:
    """A request routed to a CGI directory: its host, mount URL and path below it;
    ``release`` gives the script slot back once the response is done."""

    host: CGIHost
    mount: str
    rest: str
    release: Callable[[], object]


def no_slot() -> None:
    """Nothing to give back: without ``max_procs`` no slot was taken."""


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
