"""One CGI script run on an event loop: the event-driven twin of ``cgi_runner``.

``ScriptTask`` spawns a script (libc's posix_spawn, ``posix_spawn``; Popen where libc
cannot: its own session and group, /dev/null as stdin when there is no body), writes
the request body (already in memory) to its stdin, and feeds its stdout to a
``cgi_output`` parser as the loop says the pipes are ready, calling its owner back:
``script_head(Head)``, ``script_body(bytes)`` for each chunk, then exactly one
``script_end(error)``: None when the output ended and the script exited, else
``(status, reason)``: 502 for malformed or missing output, 504 for a timeout before
the head (after it, the owner cuts the body). The same rules as the threaded runner:

- stdin, stdout and stderr are watched together, so a script that writes before it
  reads cannot deadlock (research R18); a script that stops reading its stdin just
  loses the rest of the body (CVE-2014-0231). The exit is polled once at stdout's EOF;
  a script still running ``EXIT_WATCH_DELAY`` after its start gets a pidfd watched
  too, so one whose grandchild holds the pipes is seen to exit (and the group killed).
- ``timeout`` bounds the whole run; ``idle_timeout`` the silence on stdout while the
  task waits for it (not while the owner holds it back with ``pause``: the client's
  slowness is not the script's). Deadlines are checked when the owner calls ``tick``
  (every few tens of milliseconds), not by a timer object per run.
- Once stdout is at EOF the script gets ``kill_grace`` to exit; the response ends when
  it has (so the exit status is logged before the access line, as on the threaded path).
- Whatever ends the run, the process group is gone afterwards. Killing waits (SIGTERM,
  grace, SIGKILL), so it happens on a short-lived thread, never on the loop; so do the
  stderr drain and the status line of a killed script. Ending normally costs no thread.

Stderr lines go to the log prefixed with the script's name (``stderr_log``).
"""

from __future__ import annotations

import contextlib
import os
import threading
import time
from collections.abc import Callable, Sequence
from typing import IO, Final, Protocol

from cgikit import posix_spawn
from cgikit.cgi_meta import Environment
from cgikit.cgi_output import EndOfOutput, Head, NeedData, ScriptOutput, ScriptOutputError
from cgikit.event_loop import READ, WRITE, Loop
from cgikit.process_group import Process, ProcessGroup, spawn
from cgikit.stderr_log import StderrLog
from cgikit.warm_spawn import WarmChild, WarmSpawner

__all__ = ["ScriptOwner", "ScriptTask"]

READ_SIZE: Final = 65536
EXIT_WATCH_DELAY: Final = 0.05  # seconds after the start when the exit is watched
POLL_INTERVAL: Final = 0.05  # exit polling where there is no pidfd (not Linux)
EXIT_WAIT: Final = 0.005  # a script whose stdout is at EOF gets this long to be reaped
_STDERR_DRAIN: Final = 64  # reads of a stderr pipe in one go, at most


class ScriptOwner(Protocol):
    """What a task reports to: the request it answers."""

    def script_head(self, head: Head) -> None: ...
    def script_body(self, data: bytes) -> None: ...
    def script_output_end(self) -> None: ...
    def script_end(self, error: tuple[int, str] | None) -> None: ...


class ScriptTask:
    """A running script (module docstring). ``limits`` = (timeout, idle, kill_grace).

    Raises (from the constructor):
        OSError: the script cannot be started (logged).
    """

    _stdin: int | None
    _stdout: int | None
    _stderr: int | None

    def __init__(
        self,
        loop: Loop,
        launch: tuple[Sequence[str], Environment, str],
        body: bytes,
        parser: ScriptOutput,
        owner: ScriptOwner,
        log: Callable[[str], None],
        name: str,
        limits: tuple[float, float, float],
        warm: WarmSpawner | None = None,
    ) -> None:
        self._loop, self._parser, self.owner, self._log, self.name = loop, parser, owner, log, name
        self._timeout, self._idle, self._grace = limits
        try:
            proc, fds = _start(*launch, no_input=not body, warm=warm, log=log)
        except OSError as exc:
            log(f"{name}: cannot start: {exc}")
            raise
        self.group = ProcessGroup(proc, self._grace, log, name)
        self._stdin, self._stdout, self._stderr = fds
        if not isinstance(proc, posix_spawn.Child | WarmChild):  # Popen's pipes block
            for fd in fds:
                if fd is not None:
                    os.set_blocking(fd, False)
        loop.add(fds[1], READ, self._on_stdout)
        loop.add(fds[2], READ, self._on_stderr)
        self._stderr_log = StderrLog(log, name)
        self._pending = memoryview(body)
        self.head: Head | None = None
        self.ended = self._paused = self._output_done = False
        self.killed: str | None = None
        now = time.monotonic()
        self._deadline, self._idle_deadline = now + self._timeout, now + self._idle
        self.wake_at = 0.0  # when ``tick`` has something to check
        self._pidfd: int | None = None
        # The exit is watched (a pidfd, else polling) only if the output has not ended
        # by then: most scripts are done sooner, and their exit is polled once at EOF.
        self._exit_watch: float | None = now + EXIT_WATCH_DELAY
        self._polling = False
        self._leftover = False  # the script exited leaving processes in its group
        self._feed_stdin(WRITE)
        self._arm()

    # -- start -----------------------------------------------------------------------------

    def _watch_exit(self) -> None:
        """Wake on the script's exit from now on: a pidfd, or polling without one."""
        self._exit_watch = None
        try:
            self._pidfd = os.pidfd_open(self.group.pid)
        except (AttributeError, OSError):  # no pidfd (not Linux): poll with the timer
            self._polling = True
        else:
            self._loop.add(self._pidfd, READ, self._on_exit)

    def _arm(self) -> None:
        """When the next deadline is due (or a poll of the exit without a pidfd)."""
        when = self._deadline
        if self._stdout is not None and not self._paused:
            when = min(when, self._idle_deadline)
        if self._exit_watch is not None:
            when = min(when, self._exit_watch)
        if self._polling:
            when = min(when, time.monotonic() + POLL_INTERVAL)
        self.wake_at = when

    def tick(self, now: float) -> None:
        """The owner's periodic check (every few tens of milliseconds): timeouts."""
        if now >= self.wake_at and not self.ended:
            self._on_timer()

    # -- the owner's side ----------------------------------------------------------------

    def pause(self) -> None:
        """Stop reading stdout (the client is not taking the body fast enough)."""
        if not self._paused and not self.ended:
            self._paused = True
            if self._stdout is not None:
                self._loop.remove(self._stdout)

    def resume(self) -> None:
        if self._paused and not self.ended:
            self._paused = False
            self._idle_deadline = time.monotonic() + self._idle  # the wait was the client's
            if self._stdout is not None:
                self._loop.add(self._stdout, READ, self._on_stdout)
            self._arm()
            self._events()

    def abort(self, why: str) -> None:
        """End the run now (the client went away, the server stops): no more callbacks."""
        self._end(why)

    # -- the pipes -----------------------------------------------------------------------

    def _feed_stdin(self, mask: int) -> None:
        stdin = self._stdin
        if stdin is None:
            return
        try:
            while self._pending:
                # Not inside the subscript: mypyc (scripts/compile) evaluates a slice's
                # bound twice, and this one writes.
                written = os.write(stdin, self._pending)
                self._pending = self._pending[written:]
        except BlockingIOError:
            self._loop.modify(stdin, WRITE, self._feed_stdin)
            return
        except BrokenPipeError:  # the script closed stdin or exited: not an error
            pass
        self._close_stdin()

    def _close_stdin(self) -> None:
        if self._stdin is not None:
            self._loop.remove(self._stdin)
            os.close(self._stdin)
            self._stdin, self._pending = None, memoryview(b"")

    def _on_stdout(self, mask: int) -> None:
        # Two reads at most: a quick script's output and its EOF are often both there,
        # and taking the EOF now saves a round of the loop.
        for _ in range(2):
            stdout = self._stdout
            if stdout is None or self._paused or self.ended:
                return
            try:
                data = os.read(stdout, READ_SIZE)
            except BlockingIOError:
                return
            self._idle_deadline = time.monotonic() + self._idle
            if not data:
                self._loop.remove(stdout)
                os.close(stdout)
                self._stdout = None
                self._drain_stderr()
            try:
                self._parser.receive_data(data)
            except ScriptOutputError as exc:
                self._malformed(exc)
                return
            self._events()
            if not data:
                return

    def _events(self) -> None:
        """Hand the parser's events to the owner while it takes them."""
        while not (self.ended or self._paused or self._output_done):
            try:
                event = self._parser.next_event()
            except ScriptOutputError as exc:
                self._malformed(exc)
                return
            if isinstance(event, NeedData):
                return
            if isinstance(event, Head):
                self.head = event
                self.owner.script_head(event)
            elif isinstance(event, EndOfOutput):
                self._output_done = True
                self.owner.script_output_end()
                self._settle()
            else:
                self.owner.script_body(event.data)

    def _on_stderr(self, mask: int) -> None:
        self._read_stderr()

    def _read_stderr(self) -> bool:
        """One read of the script's stderr into the log; whether it had data."""
        stderr = self._stderr
        if stderr is None:
            return False
        try:
            data = os.read(stderr, READ_SIZE)
        except BlockingIOError:
            return False
        if data:
            self._stderr_log.feed(data)
            return True
        self._loop.remove(stderr)
        os.close(stderr)
        self._stderr = None
        self._stderr_log.flush()
        return False

    def _drain_stderr(self) -> None:
        """At the output's end: what the script wrote to stderr by then is logged before
        the host's verdict on that output (a traceback, then "no output"), as it is when
        the script's exit comes later than its stderr. A warm child closes both at once,
        so both are often ready in the same round. Bounded: a script may still write."""
        for _ in range(_STDERR_DRAIN):
            if not self._read_stderr():
                return

    def _on_exit(self, mask: int = READ) -> None:
        """The script exited: reap it; what it left in its group is killed."""
        if self.group.returncode is not None or not self.group.exited():
            return  # a stale readiness (a reused descriptor number), or reaped already
        self._close_pidfd()
        self._reaped()
        self._close_stdin()
        self._settle()

    def _reaped(self) -> None:
        self.group.reap()
        self._leftover = self.group.alive()
        if self._leftover:
            self._log(f"{self.name}: exited, leaving processes in its group; killing them")
            if not self._output_done:  # a grandchild would hold the pipes open
                _in_background(self.group.kill)

    # -- the end -------------------------------------------------------------------------

    def _settle(self) -> None:
        """The output is whole: once the script is gone too, the run is complete."""
        if not self._output_done or self.ended:
            return
        if self.group.returncode is None and self.group.exited():
            self._close_pidfd()
            self._reaped()
        if self.group.returncode is not None:
            self._end(None, then=lambda: self.owner.script_end(None))
            return
        if self._pidfd is None and not self._polling:
            self._watch_exit()
        self._deadline = min(self._deadline, time.monotonic() + self._grace)
        self._arm()

    def _on_timer(self) -> None:
        if self.ended:
            return
        now = time.monotonic()
        if self._exit_watch is not None and now >= self._exit_watch:
            self._watch_exit()
        if self._pidfd is None and self.group.returncode is None and self.group.exited():
            self._on_exit()
            if self.ended:
                return
        if now >= self._deadline:
            if self._output_done:
                why = "still running after its output ended"
                self._end(why, then=lambda: self.owner.script_end(None))
                return
            self._fail(504, f"still running after {self._timeout:g} s (timeout)")
        elif self._stdout is not None and not self._paused and now >= self._idle_deadline:
            self._fail(504, f"no output for {self._idle:g} s (idle timeout)")
        else:
            self._arm()

    def _malformed(self, exc: ScriptOutputError) -> None:
        self._log(f"{self.name}: malformed CGI output: {exc.reason}")
        self._fail(502, exc.reason, why="malformed output")

    def _fail(self, status: int, reason: str, why: str | None = None) -> None:
        self._end(why or reason, then=lambda: self.owner.script_end((status, reason)))

    def _end(self, why: str | None, then: Callable[[], None] | None = None) -> None:
        """Stop watching; kill the group if anything of it is left; log how it ended.

        ``then`` runs on the loop once the group is gone (as the threaded runner, which
        answers only after its kill): at once, or after the kill on its thread.
        """
        if self.ended:
            return
        self.ended = True
        if self._stdout is None and self.group.returncode is None:
            self._await_exit()  # at EOF the script is most likely exiting: not a kill
        stderr = self._stderr
        fds = [fd for fd in (self._stdin, self._stdout, stderr) if fd is not None]
        for fd in fds:
            self._loop.remove(fd)
        self._close_pidfd()
        self._stdin = self._stdout = self._stderr = None
        group = self.group
        if group.returncode is None:
            self.killed = why or "output abandoned"
            self._log(f"{self.name}: {self.killed}; killing its process group")
        if group.returncode is None or (self._leftover and group.alive()):
            _in_background(lambda: self._bury(fds, stderr, kill=True, then=then))
        else:
            self._bury(fds, stderr, kill=False)
            if then is not None:
                then()

    def _await_exit(self) -> None:
        """Its stdout closed, the script is about to exit: wait a moment (at most
        ``EXIT_WAIT``) and reap it, as the threaded runner does, so that a script that
        ended itself (with bad output, say) is not logged and killed as a hung one."""
        deadline = time.monotonic() + EXIT_WAIT
        while not self.group.exited():
            if time.monotonic() >= deadline:
                return
            time.sleep(0.0005)
        self._reaped()

    def _bury(
        self,
        fds: list[int],
        stderr: int | None,
        *,
        kill: bool,
        then: Callable[[], None] | None = None,
    ) -> None:
        """Kill (maybe), log the stderr left and the exit status, close the pipes."""
        try:
            if kill:
                self.group.kill()
            for _ in range(_STDERR_DRAIN if stderr is not None else 0):
                try:  # bounded: a process that escaped the group may still write
                    data = os.read(stderr, READ_SIZE)  # type: ignore[arg-type]
                except OSError:
                    break
                if not data:
                    break
                self._stderr_log.feed(data)
        finally:
            for fd in fds:
                os.close(fd)
            self._stderr_log.flush()
            self.group.log_status(self.killed)
            if then is not None:
                self._loop.call_soon_threadsafe(then)

    def _close_pidfd(self) -> None:
        if self._pidfd is not None:
            self._loop.remove(self._pidfd)
            os.close(self._pidfd)
            self._pidfd = None


def _start(
    argv: Sequence[str],
    env: Environment,
    cwd: str,
    no_input: bool,
    warm: WarmSpawner | None,
    log: Callable[[str], None],
) -> tuple[Process, tuple[int | None, int, int]]:
    """Spawn the script: forked by warm mode's zygote if ``warm`` can, else posix_spawn
    where libc can, else Popen (same contract).

    ``no_input``: the request has no body, so stdin is /dev/null, not a pipe: the
    script reads EOF at once either way, for one pipe and three calls less.
    """
    if warm is not None:
        forked = warm.spawn(argv, env, cwd, null_stdin=no_input, log=log)
        if forked is not None:
            return forked, (forked.stdin, forked.stdout, forked.stderr)
    if posix_spawn.available():
        child = posix_spawn.spawn(argv, env, cwd, null_stdin=no_input)
        return child, (child.stdin, child.stdout, child.stderr)
    proc = spawn(argv, env, cwd)
    fds = tuple(_take(stream) for stream in (proc.stdin, proc.stdout, proc.stderr))
    return proc, fds  # type: ignore[return-value]


def _take(stream: IO[bytes] | None) -> int:
    """The descriptor of a Popen pipe, owned from now on by the task."""
    if stream is None:
        raise RuntimeError("Popen gave no pipe")
    fd = os.dup(stream.fileno())
    stream.close()
    return fd


def _in_background(work: Callable[[], None]) -> None:
    """Blocking clean-up (a group kill waits up to its grace) off the loop's thread."""
    with contextlib.suppress(RuntimeError):  # interpreter shutdown: kill_all does it
        threading.Thread(target=work, name="cgikit-reaper", daemon=True).start()
