"""``cgikit serve --fastcgi ADDR ROOT``: the CGI scripts of a site, served over FastCGI.

The fcgiwrap role: nginx (which speaks no CGI) sends FastCGI, cgikit runs CGI scripts.
Nothing new runs a script here. The bridge is composition: ``site_server.Dispatcher``
(built with ``files=False``) is the WSGI app of each worker's ``FastCGIServer``; the
Dispatcher's ``CGIHost``s apply the same rules as under HTTP (meta-variables, path
safety, ``timeout``, ``idle_timeout``, ``max_body``, ``max_procs``, ``pass_env``...),
and ``cgi_runner`` pumps the script's stdin, stdout and stderr at once. So a script that
writes 200 KB before it reads a 1 MiB body does not deadlock (fcgiwrap does: research
shared/research/fastcgi-anchors.md §6 B16), a script past ``timeout`` is killed with
its process group (B17, B18), and its stderr reaches the web server's error log as
FCGI_STDERR (B19). Each worker's front is ``fastcgi_loop``: an event loop runs the
common request (a CGI directory's script, a small body) itself with the same host rules
and the same bytes out, and hands every other one to these threads. Prefork workers,
giving up root and the grace on SIGTERM are ``site_server.serve``'s, as for HTTP. This
module owns the listening socket and each worker's server.

What ROOT maps to (the decision):

- The script comes from the request's URL path, mapped under ROOT exactly as
  ``cgikit serve ROOT`` maps it over HTTP: ``/cgi-bin/`` -> ROOT/cgi-bin (when it
  exists), ``--cgi-dir URLPATH=DIR``, ``--cgi-ext .cgi`` (the routing in
  ``site_server``'s docstring). The path is the REQUEST_URI that nginx's stock
  ``fastcgi_params`` send (``$request_uri``: the client's raw request-target, so an
  encoded slash or dot is still visible to ``cgi_paths``); without REQUEST_URI, the
  SCRIPT_NAME + PATH_INFO the web server sent.
- SCRIPT_FILENAME, DOCUMENT_ROOT, PATH_TRANSLATED and the web server's SCRIPT_NAME and
  PATH_INFO are never trusted: fcgiwrap runs whatever SCRIPT_FILENAME names, so one
  wrong ``fastcgi_param`` runs any file on the machine. cgikit computes them again for
  the script, as its HTTP host does (DOCUMENT_ROOT is the CGI directory).
- A consequence: an nginx ``rewrite`` does not change which script runs (REQUEST_URI
  is the URL before rewriting). Give the URL its own CGI directory (``--cgi-dir``).
- Static files are the web server's job: the bridge serves only scripts, and any other
  path (a file of ROOT included) is a 404. ``bind`` and ``port`` are unused.
- The request's other variables (REMOTE_ADDR, SERVER_NAME, SERVER_PORT, HTTPS, the
  HTTP_* headers) are the web server's, taken as a WSGI server's environ is: nginx's
  HTTP_CONTENT_LENGTH and HTTP_PROXY are dropped, Authorization only with
  ``pass_auth``.
- The request body is read whole (into memory, a temporary file past 1 MiB) before the
  script starts: nginx stops sending a request body once it has the response's head
  (seen with nginx 1.22 over a Unix socket: a script that answered before it had read
  its 1 MiB body then waited for the rest for ever). nginx has the whole body already
  (``fastcgi_request_buffering`` on, the default), so nothing waits on a slow client. A
  body over ``max_body`` is not read: the host answers 413.
- A Unix socket file is made with the process umask, as root before root is given up:
  the web server's user needs write permission on it (umask 0111, or a directory only
  that user and cgikit can reach). It is removed at the end when cgikit still may.

The web server's side: docs/deploy/nginx-cgi-bridge.conf.
"""

from __future__ import annotations

import os
import socket
import tempfile
from collections.abc import Iterable, Iterator
from typing import IO, Any

# Imported here, by serve() before it gives up root and forks: not in each worker,
# where the user cgikit became may not be able to read the package.
from cgikit.fastcgi_loop import FastCGILoopServer
from cgikit.fastcgi_server import FastCGIServer
from cgikit.gateway_run import listener
from cgikit.gateway_socket import Address
from cgikit.host_parts import READ_SIZE, SPOOL_MEMORY
from cgikit.site_workers import Listening, Serving

TYPE_CHECKING = False
if TYPE_CHECKING:
    from cgikit._typing import StartResponse, WSGIApp
    from cgikit.site_dispatch import Dispatcher

__all__ = ["BodyFirst", "listen_site", "make_server", "shown"]


def listen_site(app: Dispatcher, cgi: str, address: str, threads: int, max_body: int) -> Listening:
    """The site's scripts (``app``, made with ``files=False``) bound on ``address`` for
    ``site_workers``; ``cgi`` lists its CGI routes for the start-up line.

    Raises:
        ValueError: a bad address; OSError: it cannot be bound.
    """
    sock, release = listener(address)  # and its Unix socket file removed at the end
    line = (
        f"cgikit: serving the CGI scripts of {app.static.root} over FastCGI on "
        f"{shown(sock)} (CGI: {cgi})"
    )

    body_first = BodyFirst(app, max_body)

    def make(shared: bool) -> Serving:
        return FastCGILoopServer(body_first, app, sock, threads, shared)

    return Listening(app, line, threads, make, sock.close, release)


def make_server(
    app: WSGIApp, sock: socket.socket, threads: int, shared: bool = False
) -> FastCGIServer:
    """One worker's FastCGI server on the listening socket (``shared``: with other
    worker processes, which ``wsgi.multiprocess`` says).

    Made in the worker, after the fork: a server's wake-up pair made before it would be
    shared, and one worker's shutdown would stop them all.
    """
    return FastCGIServer(app, sock, threads=threads, multiprocess=shared)


def shown(sock: socket.socket) -> str:
    """The bound address as ADDR is written (``unix:/path``, ``[::1]:9000``)."""
    name = sock.getsockname()
    if not isinstance(name, tuple):
        return f"unix:{os.fsdecode(name)}"
    return str(Address(host=name[0], port=name[1]))


class BodyFirst:
    """``app`` called once the whole request body has been read (the module docstring).

    A declared body up to ``max_body`` bytes is spooled and becomes ``wsgi.input``; a
    request without CONTENT_LENGTH or over ``max_body`` goes to ``app`` as it came (the
    host spools an undeclared body itself, and answers 413 to one that is too large).
    """

    def __init__(self, app: WSGIApp, max_body: int) -> None:
        self.app, self.max_body = app, max_body

    def __call__(self, environ: dict[str, Any], start_response: StartResponse) -> Iterable[bytes]:
        text = environ.get("CONTENT_LENGTH", "")
        if not (text.isascii() and text.isdigit()) or not 0 < int(text) <= self.max_body:
            return self.app(environ, start_response)
        spool: IO[bytes] = tempfile.SpooledTemporaryFile(max_size=SPOOL_MEMORY)  # noqa: SIM115
        try:
            _copy(environ["wsgi.input"], spool, int(text))
            environ["wsgi.input"] = spool
            return _Closing(self.app(environ, start_response), spool)
        except BaseException:
            spool.close()
            raise


def _copy(source: IO[bytes], spool: IO[bytes], length: int) -> None:
    """``length`` bytes of ``source`` into ``spool``, rewound; fewer if ``source`` ends
    (the host then sees a short body and logs it)."""
    left = length
    while left > 0 and (chunk := source.read(min(READ_SIZE, left))):
        spool.write(chunk)
        left -= len(chunk)
    spool.seek(0)


class _Closing:
    """A response body that closes the spooled request body with itself (PEP 3333)."""

    def __init__(self, body: Iterable[bytes], spool: IO[bytes]) -> None:
        self._body, self._spool = body, spool

    def __iter__(self) -> Iterator[bytes]:
        return iter(self._body)

    def close(self) -> None:
        try:
            close = getattr(self._body, "close", None)
            if close is not None:
                close()
        finally:
            self._spool.close()
