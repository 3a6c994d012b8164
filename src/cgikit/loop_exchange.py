"""One request to a CGI script answered on the event loop: ``cgikit serve``'s fast path.

The same answer, byte for byte, as the WSGI path (``CGIHost`` under ``Response`` and
``http_connection.Exchange``), without a thread, a generator or a selector per request:
``CGIHost.prepare`` finds the script and builds its environment, ``script_task`` runs
it, and this module turns its events into the HTTP response:

- The head goes out with the first body byte, or alone at the end (with
  ``Content-Length: 0`` when the script sent no body), framed by
  ``http_head.frame_head`` as the threaded server frames it: chunked for HTTP/1.1,
  the close for HTTP/1.0, nothing for HEAD, 1xx, 204 and 304. The script's own
  Content-Length never frames anything (CVE-2024-24795; ``cgi_output`` drops it).
- A local redirect (RFC 3875 §6.2.2) below the mount point is re-dispatched as a GET
  without a body, at most ``MAX_REDIRECTS`` times; a client redirect gets text/plain
  and no body (§6.2.3); an NPH script's Date and Server go (§5).
- A script that cannot be found, started or understood, or that times out before its
  head, gets the host's short error answer (404/403/500/502/504) and a log line; after
  the head, the body is cut: the connection closes without the last chunk, so the
  client can tell (the threaded path's ``BodyCut``).

Only requests ``loop_server`` can answer at once take this path: a CGI directory's
script, a body (if any) already received whole and small. ``conn`` is the
``loop_connection`` connection: ``write``, ``finish``, ``stopping`` and its loop.

The script's side (start, redirects, errors, HEAD) is shared with the FastCGI bridge's
loop: ``fastcgi_exchange`` overrides only the framing hooks (``_frame_head``,
``_frame_body``, ``_complete``, ``_cut``, ``_finish``) and where lines go (``log``).
"""

from __future__ import annotations

import io
import sys
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, Protocol

from cgikit.cgi_host import (
    MAX_REDIRECTS,
    TEXT_PLAIN,
    HostRequest,
    Refused,
    error_body,
    redirect_inside,
)
from cgikit.cgi_meta import UnsafeHeader
from cgikit.cgi_output import CLIENT_REDIRECT, LOCAL_REDIRECT, Head, ScriptOutput
from cgikit.cgi_paths import UnsafePath
from cgikit.host_parts import NPH_DROPPED, NphOutput
from cgikit.http_head import frame_head
from cgikit.script_task import ScriptTask
from cgikit.wsgi_request import build_environ
from cgikit.wsgi_response import NO_BODY_STATUSES

if TYPE_CHECKING:
    from cgikit.event_loop import Loop
    from cgikit.http_request import Request
    from cgikit.loop_server import LoopConnection
    from cgikit.site_dispatch import FastRoute

__all__ = ["ExchangeConnection", "LoopExchange"]


class ExchangeConnection(Protocol):
    """What an exchange needs of its connection (``loop_connection``, ``fastcgi_loop``)."""

    loop: Loop

    def write(self, data: bytes) -> bool: ...
    def stopping(self) -> bool: ...
    def watch_client(self, on: bool) -> None: ...


def _host_log(line: str) -> None:
    """The host's lines, as ``CGIHost`` writes them to ``wsgi.errors`` (stderr)."""
    sys.stderr.write(f"cgikit: {line}\n")
    sys.stderr.flush()


class LoopExchange:
    """One request and its response on a ``LoopConnection`` (module docstring)."""

    def __init__(
        self,
        conn: LoopConnection,
        request: Request,
        body: bytes,
        route: FastRoute,
        meta: dict[str, str],
    ) -> None:
        # Typed as the protocol: a subclass (fastcgi_exchange) brings its own connection.
        self.conn: ExchangeConnection = conn
        self.http = conn  # what only HTTP's has: the access log, the client's address
        self.request = request
        length = None if request.chunked else (request.content_length or 0)
        self._prepare(route, build_environ(meta, io.BytesIO(body), sys.stderr, length))
        self.keep_alive = request.keep_alive
        self.framing = "none"

    def _prepare(self, route: FastRoute, environ: dict[str, Any]) -> None:
        """The state every framing shares (the HTTP one here, ``fastcgi_exchange``'s)."""
        self.route = route
        self.started = time.monotonic()
        environ["SCRIPT_NAME"], environ["PATH_INFO"] = route.mount, route.rest
        environ["wsgi.input_terminated"] = True
        self.environ = environ
        self.method = environ["REQUEST_METHOD"]
        self.status = "000"
        self.body_sent = 0
        self.task: ScriptTask | None = None
        self.hops = 0
        self.emit = False
        self.nph = False
        self._head: tuple[str, list[tuple[str, str]]] | None = None  # not sent yet
        self.done = False
        self.body_ended = False  # the client has the body's end (script_output_end)

    def log(self, line: str) -> None:
        """A host line (the framing may send it elsewhere: FastCGI's STDERR)."""
        _host_log(line)

    def _script_log(self) -> Callable[[str], None]:
        """Where the next script's task logs (its stderr, its exit)."""
        return self.log

    def start(self) -> None:
        """Find and start the script, or answer the error at once."""
        environ = self.environ
        try:
            self.host_request = HostRequest(environ, self.route.host.settings)
        except (Refused, UnsafePath, UnsafeHeader) as exc:
            self.log(f"{environ.get('PATH_INFO', '')!r}: {exc.reason} ({exc.status})")
            self._error(exc.status)
            return
        except UnicodeEncodeError as bad:
            self.log(f"a request variable is not latin-1: {bad}")
            self._error(400)
            return
        self._launch()

    def _launch(self) -> None:
        request, host = self.host_request, self.route.host
        try:
            launch = host.prepare(request)
        except Refused as exc:
            self.log(f"{request.uri}: {exc.reason}")
            self._error(exc.status)
            return
        settings, name = host.settings, launch.script.name
        parser = NphOutput() if launch.nph else ScriptOutput()
        body = request.body(max(request.body.length, 0))
        self.nph = launch.nph
        try:
            self.task = ScriptTask(
                self.conn.loop,
                (launch.argv, launch.env, launch.cwd),
                body,
                parser,
                self,
                self._script_log(),
                name,
                (settings.timeout, settings.idle_timeout, 2.0),
                launch.warm,
            )
        except OSError as failed:  # logged by the task
            self.log(f"{request.uri}: {name}: cannot start: {failed.strerror}")
            self._error(500)
            return
        self.conn.watch_client(True)

    # -- the script's events ---------------------------------------------------------

    def script_head(self, head: Head) -> None:
        location = head.location or ""
        request = self.host_request
        redirects = self.route.host.settings.local_redirects
        if head.kind == LOCAL_REDIRECT and redirects and redirect_inside(request, location):
            self._redirect(location)
            return
        headers = head.headers
        if self.nph:
            headers = [(n, v) for n, v in headers if n.lower() not in NPH_DROPPED]
        self.emit = request.method != "HEAD" and head.body_allowed
        if head.kind in (CLIENT_REDIRECT, LOCAL_REDIRECT):  # §6.2.3: no document
            headers, self.emit = [*headers, TEXT_PLAIN], False
        self._head = (f"{head.status} {head.reason or 'Unknown'}", headers)

    def _redirect(self, location: str) -> None:
        """RFC 3875 §6.2.2: the response is that of a GET of ``location``."""
        task, self.task = self.task, None  # first: its last lines are not this answer's
        if task is not None:
            task.abort("output abandoned by the caller")
        request = self.host_request
        if self.hops == MAX_REDIRECTS:
            self.log(f"{request.uri}: more than {MAX_REDIRECTS} local redirects in a row")
            self._error(500)
            return
        self.hops += 1
        request.redirect(location)
        self._launch()

    def script_body(self, data: bytes) -> None:
        if not self.emit or not data:
            return
        self.body_sent += len(data)
        head = self._send_head(None) if self._head is not None else b""
        data = head + self._frame_body(data)
        if not self.conn.write(data) and self.task is not None:
            self.task.pause()  # the client's pace: read no more until it drains

    def drained(self) -> None:
        """The connection has sent everything written so far."""
        if self.task is not None and not self.done:
            self.task.resume()

    def script_output_end(self) -> None:
        """The script's output is whole, though it may not have exited yet: the body's
        end goes out now. The exit can take a while (a warm child's address space torn
        down, its status relayed by its zygote: 1-2 ms), and the client need not wait
        for it. The exchange itself ends, access line and all, with ``script_end``."""
        if self.done or self.body_ended:
            return
        self.body_ended = True
        if self._head is not None:  # no body came: the head goes alone
            length = None if self.method == "HEAD" else 0
            self.conn.write(self._send_head(length))
        self._end_body()

    def script_end(self, error: tuple[int, str] | None) -> None:
        if self.done:  # answered already (the client went away, the server stopped)
            return
        task, self.task = self.task, None
        name = task.name if task is not None else "?"
        if error is None:
            self.script_output_end()
            self._complete()
            return
        status, reason = error
        if self.status != "000":  # the head is out: only a close can tell the client
            self.log(f"{name}: response body cut: {reason}")
            self._cut()
            return
        if self._head is not None:  # a head, nothing sent: the WSGI path's answer, 500
            self.log(f"{name}: response body cut: {reason}")
            self._head, status = None, 500
        else:
            self.log(f"{self.host_request.uri}: {name}: {reason}")
        self._error(status)

    def abandon(self, why: str) -> None:
        """The connection is going (shutdown, an internal error): end the script and
        give its slot back; nothing more is sent or logged."""
        task, self.task = self.task, None
        if task is not None:
            task.abort(why)
        if not self.done:
            self.done = True
            self.route.release()

    def client_gone(self) -> None:
        """The client hung up: end the script; nothing more is sent."""
        task, self.task = self.task, None
        if task is not None:
            task.abort("client went away")
        self._finish(keep=False)

    # -- the response: HTTP/1.1 framing (``fastcgi_exchange`` frames it as CGI) -------

    def _frame_body(self, data: bytes) -> bytes:
        if self.framing == "chunked":  # RFC 9112 §7.1: chunk-size CRLF data CRLF
            return b"%x\r\n%b\r\n" % (len(data), data)
        return data

    def _end_body(self) -> None:
        """The head is out and the body whole: its end, as framed."""
        if self.framing == "chunked":
            self.conn.write(b"0\r\n\r\n")  # RFC 9112 §7.1: the last chunk, no trailer

    def _complete(self) -> None:
        """The script ended well, and the body's end is out."""
        self._finish(keep=self.keep_alive and self.framing != "close")

    def _cut(self) -> None:
        """The body is cut after the head: only a close can tell the client."""
        self._finish(keep=False)

    def _send_head(self, length: int | None) -> bytes:
        """The head, framed now that it is known whether a body follows."""
        if self._head is None:
            raise RuntimeError("the head was sent already")
        status, headers = self._head
        self._head = None
        if length is not None and int(status[:3]) not in NO_BODY_STATUSES:
            headers = [*headers, ("Content-Length", str(length))]
        self.status = status
        return self._frame_head(status, headers)

    def _frame_head(self, status: str, headers: list[tuple[str, str]]) -> bytes:
        keep = self.keep_alive and not self.conn.stopping()
        head, self.framing, self.keep_alive, _ = frame_head(
            status, headers, self.method, self.request.version, keep
        )
        return head

    def _error(self, status: int) -> None:
        line, headers, body = error_body(status)
        self._head = (line, headers)
        head = self._send_head(None)
        self.conn.write(head if self.method == "HEAD" else head + body)
        if self.method != "HEAD":
            self.body_sent = len(body)
        self._finish(keep=self.keep_alive)

    def _finish(self, *, keep: bool) -> None:
        if self.done:
            return
        self.done = True
        self.route.release()
        self.conn.watch_client(False)
        request = self.request
        self.http.finish(
            keep,
            f'{self.http.remote[0]} - "{request.method} {request.target.decode("ascii")} '
            f'HTTP/{request.version[0]}.{request.version[1]}" {self.status[:3]} '
            f"{self.body_sent} {time.monotonic() - self.started:.3f}s",
        )
