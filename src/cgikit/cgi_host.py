"""``CGIHost``: a WSGI application that runs the CGI scripts of a directory.

The role of Go's ``cgi.Handler`` and of Apache's ``ScriptAlias``: mount it in any WSGI
server or framework and the scripts under ``directory`` (sh, Perl, Python, C, anything
executable) answer the requests below the mount point (the environ's SCRIPT_NAME).
It composes the host side's parts: ``cgi_paths`` (which paths may reach the disk),
``host_parts.find_script`` (the walk to the script), ``cgi_meta`` (RFC 3875 §4.1
variables), ``cgi_runner`` (the process) and ``cgi_output`` (the script's response).

Decisions (research: shared/research/cgi-anchors.md):

- The path comes from ``REQUEST_URI`` when the environ has it (cgikit's own server
  passes the raw request-target), else from SCRIPT_NAME + PATH_INFO re-quoted. A WSGI
  server has already decoded PATH_INFO, so an encoded slash (``/a%2Fb``) cannot be told
  from ``/a/b`` then (P10, CVE-2014-4650): only a raw REQUEST_URI lets cgikit refuse it.
- Request headers are rebuilt from the environ's HTTP_* keys (``HTTP_X_FOO`` is sent as
  ``X-FOO``). A WSGI server that maps ``X_Foo`` to HTTP_X_FOO has made the collision
  before the host sees it (P16); cgikit's own server drops such headers.
- REMOTE_USER/AUTH_TYPE are taken from the environ: in WSGI only the server or an
  authentication middleware sets them, never the client (P17).
- A request body with CONTENT_LENGTH is streamed; one without (chunked, or
  ``wsgi.input_terminated``) is spooled and CONTENT_LENGTH set, as lighttpd (G9).
  Over ``max_body``: 413 (a declared length is refused before any byte is read).
- Errors get a short generic text body; the reason goes to ``wsgi.errors`` with the
  script's name: malformed output 502, a timeout before the head 504 (RFC 9110
  §15.6.3, §15.6.5), a script that cannot be started 500.
- A timeout after the head cuts the body: logged, and the iterable raises ``BodyCut``
  so that the server aborts the connection instead of framing a complete response.
- A local redirect (RFC 3875 §6.2.2) is followed inside the host as a GET without a
  body, at most ``MAX_REDIRECTS`` times in a row (lighttpd's limit; then 500). Its
  target must be below the mount point; one elsewhere on the server is answered as a
  client redirect (302), which the WSGI server's other routes can serve.
- A client redirect without Content-Type (§6.2.3) gets ``text/plain`` and no body: the
  RFC gives it none and PEP 3333 servers expect a Content-Type on a 302. A document
  without Content-Type is passed on without one (§6.3.1).
- HEAD: the script runs with REQUEST_METHOD=HEAD to its end; its body is dropped (R16).
- A client that hangs up ends its script at once, silent or not (issue 3 item 4), when
  the WSGI server says which socket is the client's: cgikit's own server sets
  ``environ["cgikit.client_fd"]`` (cgikit-specific; other servers do not, and then the
  script ends at its next write or a timeout). See ``cgi_runner`` for half-closes.
  Before the head, the request is then answered 502 for the log; nobody reads it.
- NPH (``nph-`` names, §5): a WSGI app cannot bypass its server, so the script's
  ``HTTP/1.x NNN reason`` line and fields become a normal response; its Date and
  Server go, the WSGI server sends its own (``host_parts.NphOutput``).
"""

from __future__ import annotations

import functools
import os
import sys
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from http import HTTPStatus
from typing import Any
from urllib.parse import quote

from cgikit import warm_spawn
from cgikit._typing import StartResponse
from cgikit.cgi_meta import (
    UnsafeHeader,
    build_meta,
    environ_fields,
    inherited_environ,
    to_envp,
)
from cgikit.cgi_output import CLIENT_REDIRECT, LOCAL_REDIRECT, Body, Head, ScriptOutputError
from cgikit.cgi_paths import (
    PATH_SAFE,
    UnsafePath,
    normalize_target,
    raw_target,
    split_script,
    split_target,
)
from cgikit.cgi_runner import ScriptRun, ScriptTimeout, run_script
from cgikit.host_options import HOST_OPTIONS, HostSettings, host_settings
from cgikit.host_parts import (
    NPH_DROPPED,
    NphOutput,
    Refused,
    RequestBody,
    Script,
    find_script,
    request_body,
)

__all__ = [
    "HOST_OPTIONS",
    "MAX_REDIRECTS",
    "TEXT_PLAIN",
    "BodyCut",
    "CGIHost",
    "HostRequest",
    "Launch",
    "Refused",
    "error_body",
    "redirect_inside",
]

MAX_REDIRECTS = 5
TEXT_PLAIN = ("Content-Type", "text/plain; charset=utf-8")  # the host's own answers
Log = Callable[[str], None]


# Read-only by convention, not frozen (here and below): made per request, and a frozen
# dataclass's __init__ costs three times as much (an object.__setattr__ call a field,
# in the compiled build too).
@dataclass(slots=True)
class Launch:
    """How to start the script of a request: ``argv`` in ``cwd`` with exactly ``env``."""

    script: Script
    argv: list[str]
    env: list[bytes]  # execve's NAME=value strings
    cwd: str
    nph: bool  # RFC 3875 §5: its output starts with an HTTP status line
    warm: warm_spawn.WarmSpawner | None  # warm mode's spawner, tried first (None: exec it)


class BodyCut(Exception):
    """The script's output ended abnormally after its head: the response is incomplete."""


class HostRequest:
    """What the host takes from the environ; ``redirect`` makes the internal GET."""

    def __init__(self, environ: dict[str, Any], settings: HostSettings) -> None:
        self.environ = environ
        self.method: str = environ["REQUEST_METHOD"]
        target = raw_target(environ)
        self.path, query = split_target(target)
        self.query = query.decode("latin-1")
        self.uri = target.decode("latin-1")
        self.mount = list(_mount_segments(environ.get("SCRIPT_NAME", "")))
        self.fields = environ_fields(environ)  # HTTP_* name -> values (cgi_meta)
        self.body = request_body(environ, settings.max_body)

    def redirect(self, location: str) -> None:
        """Turn this request into the GET of a local redirect (RFC 3875 §6.2.2)."""
        self.body.close()
        # As a GET (§6.2.2), with no body (§4.1.2); a HEAD stays a HEAD, as Apache's
        # header_only, so the client still gets no body.
        self.method = "HEAD" if self.method == "HEAD" else "GET"
        self.body = RequestBody(None, -1)
        self.path, query = split_target(location.encode("latin-1"))
        self.query, self.uri = query.decode("latin-1"), location
        self.fields = {n: v for n, v in self.fields.items() if n != "HTTP_CONTENT_TYPE"}

    def below_mount(self) -> list[str] | None:
        """The normalised segments below the mount point, None if outside it."""
        segments = normalize_target(self.path)
        if segments[: len(self.mount)] != self.mount:
            return None
        return segments[len(self.mount) :]


@functools.lru_cache(maxsize=64)
def _mount_segments(script_name: str) -> tuple[str, ...]:
    """The mount point's normalised segments: a host has one or a few, so once each,
    not once a request."""
    mount = quote(script_name.encode("latin-1"), safe=PATH_SAFE)
    return tuple(s for s in normalize_target(mount.encode("latin-1")) if s) if mount else ()


def _logger(environ: dict[str, Any]) -> Log:
    errors = environ.get("wsgi.errors") or sys.stderr

    def log(line: str) -> None:
        errors.write(f"cgikit: {line}\n")

    return log


def error_body(status: int) -> tuple[str, list[tuple[str, str]], bytes]:
    """The status line, fields and short generic body of the host's error answers."""
    reason = HTTPStatus(status).phrase
    body = f"{status} {reason}\n".encode("ascii")
    return f"{status} {reason}", [TEXT_PLAIN, ("Content-Length", str(len(body)))], body


def _error(start_response: StartResponse, status: int, method: str) -> list[bytes]:
    line, headers, body = error_body(status)
    start_response(line, headers)
    return [] if method == "HEAD" else [body]


class CGIHost:
    """A WSGI app running the CGI scripts under ``directory`` (module docstring).

    ``options`` are the keywords of ``HOST_OPTIONS`` (cgikit.host_options).

    Raises:
        TypeError, ValueError: an unknown option or a bad value.
        NotADirectoryError: ``directory`` is not a directory.
    """

    def __init__(self, directory: str | os.PathLike[str], **options: object) -> None:
        self.settings = host_settings(options)
        self.directory = os.path.realpath(directory)
        if not os.path.isdir(self.directory):
            raise NotADirectoryError(f"not a directory: {self.directory!r}")
        # What of the server's own environment a script may see (research §3 row 11):
        # filtered once here, not per request (the filter gives the same on its result).
        self._warm: tuple[int, warm_spawn.WarmSpawner] | None = None
        self._server_environ = inherited_environ(
            {
                os.fsencode(k).decode("latin-1"): os.fsencode(v).decode("latin-1")
                for k, v in os.environ.items()
            },
            self.settings.pass_env,
        )

    def __call__(self, environ: dict[str, Any], start_response: StartResponse) -> Iterable[bytes]:
        log = _logger(environ)
        method = environ.get("REQUEST_METHOD", "GET")
        try:
            request = HostRequest(environ, self.settings)
        except (Refused, UnsafePath, UnsafeHeader) as exc:
            log(f"{environ.get('PATH_INFO', '')!r}: {exc.reason} ({exc.status})")
            return _error(start_response, exc.status, method)
        except UnicodeEncodeError as bad:  # not a PEP 3333 "bytes as str" environ
            log(f"a request variable is not latin-1: {bad}")
            return _error(start_response, 400, method)
        try:
            return self._dispatch(request, start_response, log)
        except BaseException:
            request.body.close()
            raise

    def _dispatch(
        self, request: HostRequest, start_response: StartResponse, log: Log
    ) -> Iterable[bytes]:
        """Run the script for the request, following local redirects (RFC 3875 §6.2.2)."""
        method = request.method
        for hop in range(MAX_REDIRECTS + 1):
            try:
                run, head, events, script = self._start(request, log)
            except Refused as exc:
                log(f"{request.uri}: {exc.reason}")
                request.body.close()
                return _error(start_response, exc.status, method)
            location = head.location or ""
            if head.kind != LOCAL_REDIRECT:
                return self._respond(request, run, head, events, script, start_response)
            if not self.settings.local_redirects or not redirect_inside(request, location):
                return self._respond(request, run, head, events, script, start_response)
            run.close()
            if hop == MAX_REDIRECTS:
                break
            request.redirect(location)
        log(f"{request.uri}: more than {MAX_REDIRECTS} local redirects in a row")
        return _error(start_response, 500, method)

    def prepare(self, request: HostRequest) -> Launch:
        """Find the script for the request and its environment; nothing started yet.

        Raises:
            Refused: the path is unsafe or names no runnable script, or a variable is bad.
        """
        try:
            rest = request.below_mount()
            if rest is None:
                raise Refused(404, "outside the mount point")
            script = find_script(self.directory, rest, self.settings.run_python)
            meta = self._meta(request, rest, script)
        except (UnsafePath, UnsafeHeader) as exc:
            raise Refused(exc.status, exc.reason) from None
        except ValueError as bad:
            raise Refused(500, f"cannot build the environment: {bad}") from None
        # RFC 3875 §7.2: the script's directory is its working directory (research G10).
        cwd = os.path.dirname(script.filename)
        argv, env = list(script.argv), to_envp(meta)
        return Launch(script, argv, env, cwd, _is_nph(script), self.warm_spawner())

    def warm_spawner(self) -> warm_spawn.WarmSpawner | None:
        """This process's warm-mode spawner for the host, if ``warm`` is on (and can be);
        looked up once per process (a forked worker gets its own)."""
        if not (self.settings.warm and warm_spawn.available()):
            return None
        if self._warm is None or self._warm[0] != os.getpid() or self._warm[1].closed:
            env = dict(self._server_environ)
            env.update(self.settings.env)  # the zygote starts with what every script gets
            self._warm = os.getpid(), warm_spawn.spawner(self.settings.preload, env)
        return self._warm[1]

    def _start(
        self, request: HostRequest, log: Log
    ) -> tuple[ScriptRun, Head, Iterator[Any], Script]:
        """Find and start the script; run it up to its head."""
        launch = self.prepare(request)
        script = launch.script
        try:
            run = run_script(
                launch.argv,
                launch.env,
                launch.cwd,
                request.body,
                timeout=self.settings.timeout,
                idle_timeout=self.settings.idle_timeout,
                log=log,
                script_name=script.name,
                parser=NphOutput() if launch.nph else None,
                client_fd=_client_fd(request.environ),
                warm=launch.warm,
            )
        except OSError as exc:  # logged by the runner
            raise Refused(500, f"{script.name}: cannot start: {exc.strerror}") from None
        return run, *self._head(run, script), script

    @staticmethod
    def _head(run: ScriptRun, script: Script) -> tuple[Head, Iterator[Any]]:
        events = iter(run)
        try:
            first = next(events)
        except ScriptOutputError as exc:  # logged by the runner
            run.close()
            raise Refused(502, f"{script.name}: {exc.reason}") from None
        except ScriptTimeout as late:
            run.close()
            raise Refused(504, f"{script.name}: {late.reason}") from None
        except StopIteration:
            run.close()
            why = "the client went away" if run.client_gone else "no response"
            raise Refused(502, f"{script.name}: {why}") from None
        if not isinstance(first, Head):
            run.close()
            raise Refused(502, f"{script.name}: no response head")
        return first, events

    def _meta(self, request: HostRequest, rest: list[str], script: Script) -> dict[str, str]:
        environ = request.environ
        all_segments = request.mount + rest
        script_name, path_info = split_script(all_segments, len(request.mount) + script.count)
        port = str(environ.get("REMOTE_PORT", ""))
        length = request.body.length
        return build_meta(
            method=request.method,
            script_name=script_name,
            path_info=path_info,
            query_string=request.query,
            request_uri=request.uri,
            headers=(),
            fields=request.fields,
            content_length=length if length >= 0 else None,
            server_name=environ.get("SERVER_NAME", "localhost"),
            server_port=int(environ.get("SERVER_PORT", "80")),
            remote_addr=environ.get("REMOTE_ADDR", ""),
            remote_port=int(port) if port.isascii() and port.isdigit() else None,
            server_addr=environ.get("SERVER_ADDR"),
            document_root=self.directory,
            script_filename=script.filename,
            scheme=environ.get("wsgi.url_scheme", "http"),
            protocol=environ.get("SERVER_PROTOCOL", "HTTP/1.1"),
            remote_user=environ.get("REMOTE_USER"),
            auth_type=environ.get("AUTH_TYPE"),
            pass_auth=self.settings.pass_auth,
            server_environ=self._server_environ,
            pass_env=self.settings.pass_env,
            env=self.settings.env,
        )

    def _respond(
        self,
        request: HostRequest,
        run: ScriptRun,
        head: Head,
        events: Iterator[Any],
        script: Script,
        start_response: StartResponse,
    ) -> Iterable[bytes]:
        method, headers = request.method, head.headers
        if os.path.basename(script.filename).startswith("nph-"):
            headers = [(n, v) for n, v in headers if n.lower() not in NPH_DROPPED]
        emit = method != "HEAD" and head.body_allowed
        if head.kind in (CLIENT_REDIRECT, LOCAL_REDIRECT):  # §6.2.3: no document
            headers, emit = [*headers, TEXT_PLAIN], False
        try:
            start_response(f"{head.status} {head.reason or 'Unknown'}", headers)
        except BaseException:
            run.close()
            raise
        log = _logger(request.environ)
        return _ScriptBody(run, events, request.body, log, script.name, emit)


def redirect_inside(request: HostRequest, location: str) -> bool:
    """Whether a local redirect's path is below the mount point (else: 302)."""
    path = split_target(location.encode("latin-1"))[0]
    try:
        segments = normalize_target(path)
    except UnsafePath:
        return False
    return segments[: len(request.mount)] == request.mount


class _ScriptBody:
    """The response body: the script's Body events; ``close()`` ends the script (R17)."""

    def __init__(
        self,
        run: ScriptRun,
        events: Iterator[Any],
        body: RequestBody,
        log: Log,
        name: str,
        emit: bool,
    ) -> None:
        self._run, self._events, self._body = run, events, body
        self._log, self._name, self._emit = log, name, emit
        self._chunks = self._generate()

    def __iter__(self) -> Iterator[bytes]:
        return self._chunks

    def _generate(self) -> Iterator[bytes]:
        try:
            for event in self._events:
                if isinstance(event, Body) and self._emit:
                    yield event.data
        except ScriptOutputError as exc:  # logged by the runner
            raise BodyCut(f"{self._name}: {exc.reason}") from None
        if self._run.body_cut:
            why = self._run.killed or "output ended early"
            self._log(f"{self._name}: response body cut: {why}")
            raise BodyCut(f"{self._name}: {why}")
        if self._body.short:
            self._log(f"{self._name}: the request body ended before CONTENT_LENGTH")

    def close(self) -> None:
        """Kill what is left of the script, reap it, close the pipes and the spool."""
        try:
            self._chunks.close()  # type: ignore[attr-defined]
        finally:
            self._run.close()
            self._body.close()


def _client_fd(environ: dict[str, Any]) -> int | None:
    """The client socket's descriptor from cgikit's server (module docstring), or None."""
    fd = environ.get("cgikit.client_fd")
    return fd if isinstance(fd, int) and not isinstance(fd, bool) and fd >= 0 else None


def _is_nph(script: Script) -> bool:
    """RFC 3875 §5: a script whose file name starts with ``nph-`` writes an HTTP response."""
    return os.path.basename(script.filename).startswith("nph-")
