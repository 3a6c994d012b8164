"""One FastCGI request answered on the event loop: the bridge's fast path (``fastcgi_loop``).

``LoopExchange`` owns what a script's run means (``CGIHost.prepare``, ``script_task``,
local redirects, NPH, the host's error answers, HEAD); this module only frames it as the
threaded bridge (``fastcgi_server`` under ``wsgi_response.Response``) does, byte for
byte: the head is ``serialize_cgi``'s CGI header block (``Status:`` line, fields, blank
line), with ``Content-Length: 0`` when the script sent no body (not for HEAD), followed
by the body; the connection wraps every byte in FCGI_STDOUT records and ends the request
with END_REQUEST. The host's log lines and the script's stderr go to the web server as
FCGI_STDERR (nginx's error log), ``cgikit: ``-prefixed as ``CGIHost`` writes them to
``wsgi.errors``.

One difference on purpose: a body cut after its head (a timeout, a broken output) ends
with a closed connection and no END_REQUEST, so that nginx cuts the client's response
too (the threaded bridge ends it normally: the client cannot tell).
"""

from __future__ import annotations

import io
import threading
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, Protocol

from cgikit.loop_exchange import LoopExchange
from cgikit.wsgi_request import build_environ
from cgikit.wsgi_response import (
    DEFAULT_CONTENT_TYPE,
    NO_BODY_STATUSES,
    find_header,
    serialize_cgi,
)

if TYPE_CHECKING:
    from cgikit._typing import ErrorStream
    from cgikit.event_loop import Loop
    from cgikit.site_dispatch import FastRoute

__all__ = ["FastCGIExchange", "RecordConnection"]


class RecordConnection(Protocol):
    """What the exchange needs of ``fastcgi_loop``'s connection."""

    loop: Loop

    def write(self, data: bytes) -> bool: ...  # as STDOUT records; False: pause
    def send_stderr(self, data: bytes) -> None: ...
    def stopping(self) -> bool: ...
    def watch_client(self, on: bool) -> None: ...
    def end_request(self) -> None: ...  # the empty STDOUT, END_REQUEST
    def cut(self) -> None: ...  # close without END_REQUEST
    def note(self, message: str) -> None: ...  # the server's log (not the web server's)


class _Errors:
    """``wsgi.errors`` of the environ: text as FCGI_STDERR, as the threaded bridge's."""

    def __init__(self, conn: RecordConnection) -> None:
        self._conn = conn

    def write(self, s: str) -> int:
        self._conn.send_stderr(s.encode("utf-8", "backslashreplace"))
        return len(s)

    def writelines(self, seq: list[str]) -> None:
        for s in seq:
            self.write(s)

    def flush(self) -> None:
        """Each write is sent at once."""


class FastCGIExchange(LoopExchange):
    """A script's run framed as a CGI response in FastCGI records (module docstring)."""

    def __init__(
        self,
        conn: RecordConnection,
        meta: dict[str, str],
        body: bytes,
        length: int | None,
        route: FastRoute,
    ) -> None:
        """``meta``: the PARAMS; ``length``: CONTENT_LENGTH (``wsgi_request.content_length``).

        Raises:
            EnvironError: ``meta`` cannot make an environ (the threaded path answers it).
        """
        self.conn = conn
        self.records = conn  # what only FastCGI's has: STDERR, END_REQUEST, the cut
        errors: ErrorStream = _Errors(conn)
        environ: dict[str, Any] = build_environ(meta, io.BytesIO(body), errors, length)
        self._prepare(route, environ)
        self.keep_alive = True  # KEEP_CONN is the connection's to honour

    def log(self, line: str) -> None:
        self.records.send_stderr(f"cgikit: {line}\n".encode("utf-8", "backslashreplace"))

    def _script_log(self) -> Callable[[str], None]:
        """The task's lines go to STDERR, on the loop's thread (a killed group is buried
        on another); once the request is answered, to the server's log."""
        loop_thread = threading.get_ident()

        def log(line: str) -> None:
            if threading.get_ident() != loop_thread:
                self.conn.loop.call_soon_threadsafe(lambda: log(line))
            elif not self.done:
                self.log(line)
            else:
                self.records.note(line)

        return log

    def _send_head(self, length: int | None) -> bytes:
        """As ``Response`` sends it: a body without Content-Type gets the default (RFC
        3875 §6.3.1), and nosniff. ``length`` None with a GET: a body goes with it."""
        if length is None and self.method != "HEAD" and self._head is not None:
            status, headers = self._head
            if int(status[:3]) not in NO_BODY_STATUSES and not find_header(headers, "content-type"):
                sent = DEFAULT_CONTENT_TYPE
                self.records.note(f"app sent a body without Content-Type; sent {sent}")
                sniff = ("X-Content-Type-Options", "nosniff")
                self._head = (status, [*headers, ("Content-Type", DEFAULT_CONTENT_TYPE), sniff])
        return super()._send_head(length)

    def _frame_body(self, data: bytes) -> bytes:
        return data

    def _frame_head(self, status: str, headers: list[tuple[str, str]]) -> bytes:
        return serialize_cgi(status, headers)

    def _end_body(self) -> None:
        pass  # the stream's end goes with END_REQUEST, once the script is gone

    def _complete(self) -> None:
        self._finish(keep=True)

    def _cut(self) -> None:
        self._end()
        self.records.cut()

    def _finish(self, *, keep: bool) -> None:
        """END_REQUEST, also after an abort (FastCGI §5.4); ``keep`` is the core's."""
        if self._end():
            self.records.end_request()

    def _end(self) -> bool:
        """Mark the exchange done and give its slot back; False if it was already."""
        if self.done:
            return False
        self.done = True
        self.route.release()
        self.conn.watch_client(False)
        self.elapsed = time.monotonic() - self.started
        return True
