"""Run one CGI script for one request: the host side's process driver (RFC 3875 §7).

``run_script`` starts the script and returns a ``ScriptRun``. Iterating it runs the
script and yields what ``cgi_output.ScriptOutput`` makes of its stdout: one ``Head``,
``Body`` chunks as the script writes them, then ``EndOfOutput`` once the script has
closed its stdout and been reaped (if it is still running ``kill_grace`` later, it is
killed first). A WSGI app turns it into a response like this::

    run = run_script(argv, env, cwd, body, timeout=30, idle_timeout=10, ...)
    events = iter(run)
    try:
        head = next(events)  # Head
    except ScriptOutputError:  # logged, group killed and reaped: answer 502
    except ScriptTimeout:  # run.timed_out_before_head: answer 504
    start_response(f"{head.status} {head.reason}", head.headers)
    return an iterable of ev.data for the Body events left, whose close() calls run.close()

Iteration raises ``ScriptOutputError`` (malformed output) and ``ScriptTimeout`` (a
timeout before the head). A timeout after the head just ends the iteration without
``EndOfOutput``: ``run.body_cut`` is then true. ``close()`` (also ``with``, and the
caller giving up on the iteration, e.g. the client went away: research R17) kills what
is left of the script. Whatever ends a run, the whole process group is gone, the
script is reaped and every pipe is closed afterwards. A caller that may stop before
the end must call ``close()`` (or use ``with``); a ScriptRun belongs to one thread.

One thread, no helper threads: ``selectors`` pumps the three pipes at once, so a
script that writes a lot to stdout and stderr before it reads its input cannot deadlock
(R18; fcgiwrap does, issue 3 item 2). The request body is pulled from ``body(n)`` only
when the script's stdin can take more; ``body`` may block (a slow client), so its
reader needs its own socket timeout. ``timeout`` bounds the whole run, the time the
caller spends between two events included; ``idle_timeout`` bounds the silence on
stdout while the runner waits for it.

The client: with ``client_fd`` (the client's socket; the host takes it from the
environ's ``cgikit.client_fd``, which only cgikit's server sets), the loop also watches
the client once the whole request body has been given to the script (before, body
bytes are still to come, and reading them is ``body``'s job). A client that hangs up
then ends the run at once, silent script or not ("client went away": issue 3 item 4),
instead of at the script's next write or a timeout. Gone means EOF or a reset on the
socket, peeked (``MSG_PEEK``) so nothing is taken from it. Half-close: a client that
shuts down its write side after its request is taken as gone, as lighttpd does; at
the socket its FIN cannot be told from a close. Bytes from the client (a pipelined
request) stop the watch for the rest of the run, so the loop does not spin on them.
Before the head, a hang-up ends the iteration without an event (``client_gone``).

The script's process group is killed when the run ends: a background process a script
leaves behind dies with it. A script that means to leave a daemon must ``setsid`` it.
Killed grandchildren are reaped by init, or by the server when it is a child subreaper
(``prctl(PR_SET_CHILD_SUBREAPER)``; needed where PID 1 reaps nothing, as in containers
without an init): the runner reaps every member of the group that is its child.

This module owns the pipes, the selector loop, the deadlines and the events; spawning,
reaping and killing the group are ``process_group``'s, stderr lines to the log
``stderr_log``'s, the peek at the client's socket ``client_socket``'s.
"""

from __future__ import annotations

import contextlib
import os
import selectors
import time
from collections.abc import Callable, Generator, Iterator, Sequence
from types import TracebackType
from typing import IO, Final, TypeAlias

from cgikit.cgi_meta import Environment
from cgikit.cgi_output import Body, EndOfOutput, Head, NeedData, ScriptOutput, ScriptOutputError
from cgikit.client_socket import peek_client
from cgikit.process_group import ProcessGroup, Spawned, spawn
from cgikit.stderr_log import StderrLog
from cgikit.warm_spawn import WarmSpawner

Event: TypeAlias = Head | Body | EndOfOutput

READ_SIZE: Final = 65536  # bytes per read from stdout/stderr and per body() call
POLL_INTERVAL: Final = 0.05  # exit polling when there is no pidfd (not Linux)
EXIT_WAIT: Final = 0.05  # how long a script whose stdout is at EOF may take to exit

__all__ = ["ScriptRun", "ScriptTimeout", "run_script"]


class ScriptTimeout(Exception):
    """The script was killed for a timeout before its head: the caller answers 504."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


def run_script(
    argv: Sequence[bytes | str],
    env: Environment,
    cwd: str,
    body: Callable[[int], bytes],
    *,
    timeout: float,
    idle_timeout: float,
    log: Callable[[str], None],
    script_name: str,
    max_header_bytes: int = 65536,
    kill_grace: float = 2.0,
    max_drain: int = 1 << 20,
    parser: ScriptOutput | None = None,
    client_fd: int | None = None,
    warm: WarmSpawner | None = None,
) -> ScriptRun:
    """Start the script; the returned ``ScriptRun`` runs it as it is iterated.

    ``env`` is the whole environment (``cgi_meta.to_envp`` or ``to_environb``): nothing of the
    server's own is inherited (research §3 row 11). ``cwd`` is the script's directory.
    ``body(n)`` returns up to ``n`` bytes of the request body, ``b""`` at its end. When
    the script stops reading early, at most ``max_drain`` more bytes are pulled from
    ``body`` and dropped (so the connection can be kept) and its end is not waited for.
    ``kill_grace`` is the time between SIGTERM and SIGKILL. ``parser`` reads stdout
    (default: a ``ScriptOutput(max_header_bytes)``; the host passes one that first turns
    an NPH script's status line into a Status field). ``client_fd`` is the client's
    socket, watched for a hang-up (module docstring); the caller keeps owning it.
    ``warm``: warm mode's spawner, tried first (``warm_spawn``).

    Raises:
        ValueError: a timeout is not positive.
        OSError: the script cannot be started (not found, not executable); logged.
    """
    if not (timeout > 0 and idle_timeout > 0 and kill_grace >= 0 and max_drain >= 0):
        raise ValueError("timeouts must be positive, kill_grace and max_drain not negative")
    if parser is None:
        parser = ScriptOutput(max_header_bytes)  # checks max_header_bytes before any spawn
    sel = selectors.DefaultSelector()
    try:
        proc = spawn(argv, env, cwd, warm, log)  # its own process group (research §3 row 10)
    except OSError as exc:
        sel.close()
        log(f"{script_name}: cannot start: {exc}")
        raise
    limits = (timeout, idle_timeout, kill_grace, max_drain)
    return ScriptRun(proc, sel, parser, body, log, script_name, limits, client_fd)


class ScriptRun:
    """One running script, made by ``run_script``; see the module docstring.

    Attributes, for the caller and its log: ``pid`` (also the process group id),
    ``head`` (the Head once read), ``returncode`` (once reaped; negative for a signal),
    ``timed_out``, ``client_gone`` (the client hung up: the run was ended), ``killed``
    (why the runner killed the script, or None) and ``complete`` (``EndOfOutput`` was
    reached: the response is whole).
    """

    def __init__(
        self,
        proc: Spawned,
        sel: selectors.BaseSelector,
        parser: ScriptOutput,
        body: Callable[[int], bytes],
        log: Callable[[str], None],
        script_name: str,
        limits: tuple[float, float, float, int],
        client_fd: int | None = None,
    ) -> None:
        self._sel, self._parser = sel, parser
        self._body, self._log, self._name = body, log, script_name
        self._timeout, self._idle, self._grace, self._max_drain = limits
        self._group = ProcessGroup(proc, self._grace, log, script_name)
        self._stderr_log = StderrLog(log, script_name)
        self.pid = proc.pid
        self.head: Head | None = None
        self.timed_out = False
        self.client_gone = False
        self._client_fd = client_fd  # watched once the body is done, None when not
        self.killed: str | None = None
        self.complete = False
        self._ended = False
        self._body_done = False
        self._pending = memoryview(b"")
        now = time.monotonic()
        self._deadline, self._idle_deadline = now + self._timeout, now + self._idle
        self._stdin, self._stdout, self._stderr = proc.stdin, proc.stdout, proc.stderr
        self._pidfd: int | None = None
        try:
            self._register()
        except BaseException:
            self._end("the runner could not start")
            raise
        self._events = self._run()

    def _register(self) -> None:
        for stream, handler, mask in (
            (self._stdin, self._on_stdin, selectors.EVENT_WRITE),
            (self._stdout, self._on_stdout, selectors.EVENT_READ),
            (self._stderr, self._on_stderr, selectors.EVENT_READ),
        ):
            if stream is None:
                raise RuntimeError("Popen gave no pipe")
            os.set_blocking(stream.fileno(), False)
            self._sel.register(stream, mask, handler)
        # A pidfd wakes the loop when the script exits; without one, poll.
        with contextlib.suppress(AttributeError, OSError):
            self._pidfd = os.pidfd_open(self.pid)
            self._sel.register(self._pidfd, selectors.EVENT_READ, self._on_exit)

    # -- the caller's side ------------------------------------------------------------

    def __iter__(self) -> Iterator[Event]:
        """The events, resumable: a second ``iter()`` continues the same stream."""
        return self._events

    def close(self) -> None:
        """End the run now: kill the process group if it is still there, reap, close."""
        self._events.close()
        self._end("output abandoned by the caller")

    def __enter__(self) -> ScriptRun:
        return self

    def __exit__(
        self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()

    @property
    def returncode(self) -> int | None:
        """The script's exit status once reaped; negative for a signal."""
        return self._group.returncode

    @property
    def timed_out_before_head(self) -> bool:
        """Killed for a timeout before a Head: the caller answers 504."""
        return self.timed_out and self.head is None

    @property
    def body_cut(self) -> bool:
        """A Head was given but the output did not end normally: the body is cut."""
        return self.head is not None and not self.complete

    # -- the loop -----------------------------------------------------------------------

    def _run(self) -> Generator[Event, None, None]:
        try:
            while True:
                event = self._next_event()
                if event is None:  # a timeout or the client's hang-up ended the run
                    if self.head is None and self.timed_out:
                        raise ScriptTimeout(self.killed or "timeout")
                    return
                if isinstance(event, EndOfOutput):
                    self._linger()
                    self.complete = True
                    self._end("still running after its output ended")
                    yield event
                    return
                if isinstance(event, Head):
                    self.head = event
                yield event
                # The caller's time is not the script's silence.
                self._idle_deadline = time.monotonic() + self._idle
        except ScriptOutputError as exc:
            self._log(f"{self._name}: malformed CGI output: {exc.reason}")
            self._end("malformed output")
            raise
        finally:
            self._end("output abandoned by the caller")

    def _linger(self) -> None:
        """Stdout is closed: wait ``kill_grace`` at most for the exit, pumping stderr.

        A script still running then is killed by ``_end``, as Apache's cleanup does
        (SIGTERM, 3 s, SIGKILL): the response is whole and must not wait for it.
        """
        until = min(self._deadline, time.monotonic() + self._grace)
        while self.returncode is None and not self._ended and time.monotonic() < until:
            self._pump(until)

    def _next_event(self) -> Head | Body | EndOfOutput | None:
        while True:
            if self._ended:
                return None
            event = self._parser.next_event()
            if not isinstance(event, NeedData):
                return event
            self._pump()

    def _pump(self, until: float = float("inf")) -> None:
        """One select over stdin, stdout, stderr and the pidfd; then the deadlines.

        The three pipes together, never one blocking read or write: a script blocked
        writing its output while fcgiwrap blocked writing its stdin hung both (issue 3
        item 2, R18).
        """
        deadline = min(self._deadline, until)
        if self._stdout is not None:
            deadline = min(deadline, self._idle_deadline)
        wait = max(0.0, deadline - time.monotonic())
        if self._pidfd is None:
            wait = min(wait, POLL_INTERVAL)
        for key, _mask in self._sel.select(wait):
            if self._ended:  # the client went away: the selector is closed
                return
            key.data()
        if self._ended:
            return
        if self.returncode is None and self._pidfd is None and self._group.exited():
            self._on_exit()
        now = time.monotonic()
        if now >= self._deadline:
            self._expire(f"still running after {self._timeout:g} s (timeout)")
        elif self._stdout is not None and now >= self._idle_deadline:
            self._expire(f"no output for {self._idle:g} s (idle timeout)")

    def _on_stdin(self) -> None:
        if self._stdin is None:
            return
        if not self._pending:
            chunk = self._body(READ_SIZE)
            if not chunk:
                self._body_done = True
                self._watch_client()
                self._close(self._stdin)  # EOF for the script
                self._stdin = None
                return
            self._pending = memoryview(chunk)
        try:
            written = os.write(self._stdin.fileno(), self._pending)
        except BlockingIOError:
            return
        except BrokenPipeError:  # the script closed stdin or exited: not an error
            self._abandon_stdin()
            return
        self._pending = self._pending[written:]

    def _abandon_stdin(self) -> None:
        """Stop feeding the script; drop at most max_drain bytes of the rest of the body.

        Only ever writing when stdin is writable, and giving up here, is what keeps a
        script that does not read its input from hanging the server (CVE-2014-0231).
        """
        self._close(self._stdin)
        self._stdin, self._pending = None, memoryview(b"")
        left = self._max_drain
        while not self._body_done and left > 0:
            chunk = self._body(min(READ_SIZE, left))
            self._body_done = not chunk
            left -= len(chunk)
        if self._body_done:
            self._watch_client()

    def _watch_client(self) -> None:
        """The body is all read: from now on a readable client socket is news."""
        if self._client_fd is not None and not self._ended:
            with contextlib.suppress(KeyError):  # not twice
                self._sel.register(self._client_fd, selectors.EVENT_READ, self._on_client)

    def _on_client(self) -> None:
        state = peek_client(self._client_fd)
        if state == "quiet" or self._client_fd is None:
            return
        # Gone, or data (a pipelined request, not ours to read): watch no more either way,
        # so that unread bytes do not wake the loop again and again.
        self._sel.unregister(self._client_fd)
        self._client_fd = None
        if state == "gone":
            self.client_gone = True
            self._end("client went away")

    @staticmethod
    def _read(stream: IO[bytes] | None) -> bytes | None:
        """What the pipe holds, ``b""`` at EOF, None when closed here or nothing yet."""
        if stream is None:
            return None
        with contextlib.suppress(BlockingIOError):
            return os.read(stream.fileno(), READ_SIZE)
        return None

    def _on_stdout(self) -> None:
        data = self._read(self._stdout)
        if data is None:
            return
        self._idle_deadline = time.monotonic() + self._idle
        if not data:
            self._close(self._stdout)
            self._stdout = None
        self._parser.receive_data(data)

    def _on_stderr(self) -> None:
        data = self._read(self._stderr)
        if data is None:
            return
        if data:
            self._stderr_log.feed(data)
        else:
            self._close(self._stderr)
            self._stderr = None
            self._stderr_log.flush()

    def _on_exit(self) -> None:
        """The script exited: reap it, end what it left in its group, stop its input."""
        self._group.reap()
        self._close_pidfd()
        if self._group.alive():  # a grandchild would hold the pipes open
            self._log(f"{self._name}: exited, leaving processes in its group; killing them")
            self._group.kill()
        if self._stdin is not None:
            self._abandon_stdin()

    # -- the end ------------------------------------------------------------------------

    def _expire(self, why: str) -> None:
        self.timed_out = True
        self._end(why)

    def _end(self, why: str) -> None:
        """Kill the group if anything of it is left, reap, log the status, close every fd."""
        if self._ended:
            return
        self._ended = True
        if self.returncode is None and self._stdout is None:  # at EOF: likely exiting now
            self._group.wait_gone(time.monotonic() + EXIT_WAIT)
        if self.returncode is None or self._group.alive():
            self.killed = why
            self._log(f"{self._name}: {why}; killing its process group")
            self._group.kill()
        self._drain_stderr()
        for stream in (self._stdin, self._stdout, self._stderr):
            self._close(stream)
        self._stdin = self._stdout = self._stderr = None
        self._close_pidfd()
        self._sel.close()
        self._group.log_status(self.killed)

    def _drain_stderr(self) -> None:
        """Log what the dead group left in the stderr pipe, and a partial last line."""
        for _ in range(64):  # bounded: a process that escaped the group may still write
            data = self._read(self._stderr)
            if not data:
                break
            self._stderr_log.feed(data)
        self._stderr_log.flush()

    def _close_pidfd(self) -> None:
        if self._pidfd is not None:
            with contextlib.suppress(KeyError):
                self._sel.unregister(self._pidfd)
            os.close(self._pidfd)
            self._pidfd = None

    def _close(self, stream: IO[bytes] | None) -> None:
        if stream is not None:
            with contextlib.suppress(KeyError):
                self._sel.unregister(stream)
            stream.close()
