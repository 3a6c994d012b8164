"""One CGI script run on the event loop (script_task.ScriptTask): the fast path's driver.

The same cases as ``test_cgi_runner`` (the threaded twin, whose behaviour the task
must match), with real sh, Python and Perl scripts: the task is driven on a real
``event_loop.Loop`` by ``Run.until_end``, which calls ``tick`` between loop rounds as
the server's sweep does, and a recording owner. Every test also checks (``no_leaks``)
that this process holds the same descriptors and children after it as before, once
the task's clean-up threads are done; the module makes this process a child subreaper,
as ``serve`` does, so that killed grandchildren come back here to be reaped.
"""

from __future__ import annotations

import hashlib
import os
import random
import signal
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from cgikit import posix_spawn
from cgikit.cgi_output import Head, ScriptOutput
from cgikit.event_loop import READ, Loop
from cgikit.prefork import become_subreaper
from cgikit.script_task import ScriptTask
from drivers.proc_checks import children, open_fds, reapers, settle, write_script

PERL = Path("/usr/bin/perl")
PY = sys.executable
MIB = 1 << 20
HEAD_SH = "printf 'Content-Type: text/plain\\n\\n'"
needs_perl = pytest.mark.skipif(not PERL.exists(), reason="no /usr/bin/perl")


@pytest.fixture(scope="module", autouse=True)
def subreaper() -> Iterator[None]:
    """Grandchildren orphaned by a group kill come back here to be reaped (as in serve);
    the /dev/null kept for scripts' stdin is opened before any descriptor snapshot."""
    posix_spawn.prepare()
    become_subreaper()
    yield
    become_subreaper(False)


@pytest.fixture(autouse=True)
def no_leaks() -> Iterator[None]:
    fds, kids = open_fds(), children()
    yield
    assert settle(lambda: not reapers()), "a clean-up thread is still running"
    assert open_fds() == fds
    assert children() == kids


@pytest.fixture(autouse=True)
def bounded() -> Iterator[None]:
    """A hang on the loop's own thread (a blocking write) fails the test, not the run."""

    def expired(signum: int, frame: object) -> None:
        raise TimeoutError("the test took more than 20 s")

    previous = signal.signal(signal.SIGALRM, expired)
    signal.setitimer(signal.ITIMER_REAL, 20)
    yield
    signal.setitimer(signal.ITIMER_REAL, 0)
    signal.signal(signal.SIGALRM, previous)


_started: list[Run] = []  # this test's runs, ended at teardown should it fail half-way


@pytest.fixture
def loop() -> Iterator[Loop]:
    made = Loop()
    yield made
    for run in _started:
        if not run.task.ended:
            run.task.abort("the test is over")
    _started.clear()
    settle(lambda: not reapers())
    made.close()


def group_gone(pgid: int) -> bool:
    try:
        os.killpg(pgid, 0)
    except ProcessLookupError:
        return True
    return False


class Owner:
    """Records the task's callbacks in order; checks the group at ``script_end``."""

    def __init__(self) -> None:
        self.events: list[tuple[str, Any]] = []
        self.pgid = 0
        self.gone_at_end: bool | None = None
        self.fds_at_end: set[str] | None = None
        self.on_body: Callable[[bytes], None] | None = None

    def script_head(self, head: Head) -> None:
        self.events.append(("head", head))

    def script_body(self, data: bytes) -> None:
        self.events.append(("body", data))
        if self.on_body is not None:
            self.on_body(data)

    def script_output_end(self) -> None:
        self.events.append(("output end", group_gone(self.pgid)))

    def script_end(self, error: tuple[int, str] | None) -> None:
        self.events.append(("end", error))
        self.gone_at_end = group_gone(self.pgid)
        self.fds_at_end = open_fds()

    @property
    def kinds(self) -> list[str]:
        return [kind for kind, _ in self.events]

    @property
    def body(self) -> bytes:
        return b"".join(data for kind, data in self.events if kind == "body")

    @property
    def ended(self) -> bool:
        return any(kind == "end" for kind, _ in self.events)

    @property
    def end(self) -> tuple[int, str] | None:
        ends = [value for kind, value in self.events if kind == "end"]
        assert len(ends) == 1, self.events
        return ends[0]  # type: ignore[no-any-return]


class Run:
    """A ScriptTask for ``path`` on ``loop``, its owner and its log."""

    def __init__(
        self,
        loop: Loop,
        path: Path,
        body: bytes = b"",
        env: dict[bytes, bytes] | None = None,
        limits: tuple[float, float, float] = (5.0, 5.0, 0.5),
        parser: ScriptOutput | None = None,
    ) -> None:
        self.loop = loop
        self.logs: list[str] = []
        self.owner = Owner()
        self.fds_before = open_fds()
        self.began = time.monotonic()
        self.task = ScriptTask(
            loop,
            ([str(path)], base_env() if env is None else env, str(path.parent)),
            body,
            ScriptOutput() if parser is None else parser,
            self.owner,
            self.logs.append,
            path.name,
            limits,
        )
        self.pgid = self.owner.pgid = self.task.group.pid
        _started.append(self)

    def until(self, done: Callable[[], bool], timeout: float = 10.0) -> float:
        """Run the loop (ticking the task) until ``done()``; the seconds it took."""
        deadline = time.monotonic() + timeout
        while not done() and time.monotonic() < deadline:
            self.loop.run_once(0.02)
            self.task.tick(time.monotonic())
        return time.monotonic() - self.began

    def until_end(self, timeout: float = 10.0) -> float:
        elapsed = self.until(lambda: self.owner.ended, timeout)
        assert self.owner.ended, f"no script_end in {timeout} s: {self.owner.events}"
        return elapsed

    def for_a_while(self, seconds: float) -> None:
        deadline = time.monotonic() + seconds
        self.until(lambda: time.monotonic() >= deadline, seconds + 1)

    def complete(self) -> bytes:
        """Run to a normal end: a head, the body, script_output_end, script_end(None);
        everything cleaned up."""
        self.until_end()
        owner = self.owner
        assert owner.kinds[0] == "head" and owner.kinds[-2:] == ["output end", "end"]
        assert set(owner.kinds[1:-2]) <= {"body"}, owner.events
        assert owner.end is None
        self.check_clean_end()
        return owner.body

    def check_clean_end(self) -> None:
        """At script_end: the group was gone, the task's descriptors closed, the script
        reaped (no zombie among this process's children)."""
        assert self.owner.gone_at_end is True
        assert self.owner.fds_at_end == self.fds_before
        assert self.task.ended
        assert self.task.group.returncode is not None
        assert str(self.pgid) not in children()


def base_env(**extra: bytes) -> dict[bytes, bytes]:
    env = {b"PATH": b"/usr/bin:/bin", b"GATEWAY_INTERFACE": b"CGI/1.1", b"REQUEST_METHOD": b"GET"}
    env.update({name.encode(): value for name, value in extra.items()})
    return env


def no_pidfd(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delattr(os, "pidfd_open", raising=False)  # as on macOS: exit polled


# -- normal runs ------------------------------------------------------------------------


@pytest.mark.parametrize("pidfd", [True, False])
@pytest.mark.parametrize("delay", ["0", "0.2"])  # before or after the exit is watched
def test_hello_gives_head_body_end_and_is_reaped(
    loop: Loop, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, pidfd: bool, delay: str
) -> None:
    if not pidfd:
        no_pidfd(monkeypatch)
    path = write_script(tmp_path, "hello.cgi", f"sleep {delay}\n{HEAD_SH}\nprintf hello\n")
    run = Run(loop, path)
    assert run.complete() == b"hello"
    head = run.owner.events[0][1]
    assert (head.status, head.headers) == (200, [("Content-Type", "text/plain")])
    assert run.task.group.returncode == 0
    assert run.task.killed is None
    assert run.logs == []
    assert run.until_end() < 3


def test_the_output_ends_at_its_eof_and_the_run_at_the_exit(loop: Loop, tmp_path: Path) -> None:
    # A script that closes its stdout, then takes a while to exit (as a warm child
    # tearing down its address space does): the owner hears of the output's end while
    # the script is still there, and of the run's end once it is gone.
    text = f"{HEAD_SH}\nprintf hello\nexec >&-\nsleep 0.3\n"
    run = Run(loop, write_script(tmp_path, "linger.cgi", text))
    assert run.complete() == b"hello"
    assert ("output end", False) in run.owner.events  # the group was not gone yet
    assert run.task.group.returncode == 0 and run.logs == []


@pytest.mark.parametrize("body", [b"", b"input"])
def test_the_popen_fallback_where_posix_spawn_is_missing(
    loop: Loop, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, body: bytes
) -> None:
    monkeypatch.setattr(posix_spawn, "available", lambda: False)
    path = write_script(tmp_path, "echo.cgi", ECHOERS["sh"][1])
    run = Run(loop, path, body)
    assert run.complete() == body
    assert run.task.group.returncode == 0 and run.logs == []


def test_the_environment_and_directory_are_the_given_ones(
    loop: Loop, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("CGIKIT_SERVER_SECRET", "must not leak")
    path = write_script(tmp_path, "env.cgi", f'{HEAD_SH}\nenv\necho "cwd=$(pwd -P)"\n')
    env = base_env(PATH_INFO=b"/caf\xe9", HTTP_X_ODD=b"\xff\x80 raw", QUERY_STRING=b"a=b")
    run = Run(loop, path, env=env)
    dumped = dict(line.split(b"=", 1) for line in run.complete().splitlines())
    assert dumped.pop(b"cwd") == os.path.realpath(path.parent).encode()
    assert {k: v for k, v in dumped.items() if k != b"PWD"} == env  # dash sets PWD


ECHOERS = {
    "sh": ("/bin/sh", f"{HEAD_SH}\nexec cat\n"),
    "python": (
        PY,
        """\
        import sys
        out = sys.stdout.buffer
        out.write(b"Content-Type: application/octet-stream\\n\\n")
        while chunk := sys.stdin.buffer.read1(65536):
            out.write(chunk)
        """,
    ),
    "perl": (
        str(PERL),
        """\
        $| = 1; binmode STDIN; binmode STDOUT;
        print "Content-Type: application/octet-stream\\n\\n";
        while (read(STDIN, my $buf, 65536)) { print $buf }
        """,
    ),
}


@pytest.mark.parametrize("lang", ["sh", "python", pytest.param("perl", marks=needs_perl)])
def test_echo_one_mib_of_input(loop: Loop, tmp_path: Path, lang: str) -> None:
    interpreter, text = ECHOERS[lang]
    path = write_script(tmp_path, f"echo-{lang}.cgi", text, interpreter)
    data = random.Random(lang).randbytes(MIB)
    run = Run(loop, path, data, env=base_env(CONTENT_LENGTH=str(MIB).encode()))
    out = run.complete()
    assert len(out) == MIB
    assert hashlib.sha256(out).hexdigest() == hashlib.sha256(data).hexdigest()
    assert run.logs == []


def test_echo_without_pidfd(loop: Loop, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    no_pidfd(monkeypatch)
    path = write_script(tmp_path, "echo.cgi", ECHOERS["sh"][1])
    run = Run(loop, path, b"abc" * 100_000)
    assert run.complete() == b"abc" * 100_000


def test_an_empty_body_gives_the_script_eof(loop: Loop, tmp_path: Path) -> None:
    path = write_script(tmp_path, "len.cgi", f'{HEAD_SH}\nprintf "%s" "$(wc -c)"\n')
    run = Run(loop, path)
    assert run.complete() == b"0"


def test_no_deadlock_when_output_comes_before_input_r18(loop: Loop, tmp_path: Path) -> None:
    """200 KB to stdout and to stderr before reading 1 MiB: more than the pipes hold."""
    path = write_script(
        tmp_path,
        "r18.cgi",
        """\
        import hashlib, sys
        out, err = sys.stdout.buffer, sys.stderr.buffer
        out.write(b"Content-Type: application/octet-stream\\n\\n" + b"o" * 200_000)
        out.flush()
        err.write((b"e" * 999 + b"\\n") * 200)
        err.flush()
        out.write(hashlib.sha256(sys.stdin.buffer.read()).hexdigest().encode())
        """,
        PY,
    )
    data = random.Random(18).randbytes(MIB)
    run = Run(loop, path, data, env=base_env(CONTENT_LENGTH=str(MIB).encode()))
    out = run.complete()
    assert out == b"o" * 200_000 + hashlib.sha256(data).hexdigest().encode()
    assert run.logs == ["r18.cgi: " + "e" * 999] * 200


def test_body_chunks_arrive_as_the_script_writes_them(loop: Loop, tmp_path: Path) -> None:
    marker = tmp_path / "go-on"
    path = write_script(
        tmp_path,
        "stream.cgi",
        f"""\
        {HEAD_SH}
        printf 'first\\n'
        while [ ! -e "$MARKER" ]; do sleep 0.01; done
        printf 'rest\\n'
        """,
    )
    run = Run(loop, path, env=base_env(MARKER=str(marker).encode()))
    run.until(lambda: "body" in run.owner.kinds)
    assert run.owner.events[1:] == [("body", b"first\n")]
    assert not marker.exists()  # the script is still waiting: this chunk was streamed
    marker.touch()
    assert run.complete() == b"first\nrest\n"


def test_stderr_lines_are_logged_prefixed_cut_and_escaped(loop: Loop, tmp_path: Path) -> None:
    path = write_script(
        tmp_path,
        "err.cgi",
        """\
        import sys
        err = sys.stderr.buffer
        err.write(b"one\\ntwo\\r\\n" + b"x" * 10000 + b"\\nafter\\nesc\\x1b[31m \\xff\\n")
        err.flush()
        sys.stdout.buffer.write(b"Content-Type: text/plain\\n\\nok")
        sys.stdout.flush()
        err.write(b"partial")
        """,
        PY,
    )
    run = Run(loop, path)
    assert run.complete() == b"ok"
    assert run.logs == [
        "err.cgi: one",
        "err.cgi: two",
        "err.cgi: " + "x" * 8192 + " [cut]",
        "err.cgi: after",
        "err.cgi: esc\\x1b[31m \\xff",
        "err.cgi: partial",
    ]


def test_nonzero_exit_after_a_valid_response_is_logged_only(loop: Loop, tmp_path: Path) -> None:
    path = write_script(tmp_path, "exit3.cgi", f"{HEAD_SH}\nprintf ok\nexit 3\n")
    run = Run(loop, path)
    assert run.complete() == b"ok"
    assert run.task.group.returncode == 3
    assert run.logs == ["exit3.cgi: exited with status 3"]


# -- input the script does not read -----------------------------------------------------


def test_a_script_that_never_reads_its_input(loop: Loop, tmp_path: Path) -> None:
    """CVE-2014-0231: the rest of a body the script ignores is dropped."""
    path = write_script(tmp_path, "noread.cgi", f"{HEAD_SH}\nprintf ok\n")
    run = Run(loop, path, b"z" * (8 * MIB))
    assert run.complete() == b"ok"
    assert run.logs == []


def test_a_script_that_closes_stdin_early_epipe_is_no_error(loop: Loop, tmp_path: Path) -> None:
    path = write_script(tmp_path, "close0.cgi", f"exec 0<&-\nsleep 0.3\n{HEAD_SH}\nprintf ok\n")
    run = Run(loop, path, b"z" * MIB)
    assert run.complete() == b"ok"
    assert run.logs == []


# -- failures ---------------------------------------------------------------------------


def test_timeout_before_the_head_is_a_504_after_the_group_is_gone(
    loop: Loop, tmp_path: Path
) -> None:
    path = write_script(tmp_path, "sleep.cgi", "sleep 1000 &\nsleep 1000\n")
    run = Run(loop, path, limits=(0.5, 10, 0.5))
    elapsed = run.until_end()
    assert 0.5 <= elapsed < 3
    assert run.owner.events == [("end", (504, "still running after 0.5 s (timeout)"))]
    run.check_clean_end()
    assert run.task.group.returncode == -signal.SIGTERM
    assert run.task.killed == "still running after 0.5 s (timeout)"
    assert run.logs == ["sleep.cgi: still running after 0.5 s (timeout); killing its process group"]


def test_idle_timeout_after_the_head_is_a_504_with_the_head_given(
    loop: Loop, tmp_path: Path
) -> None:
    path = write_script(tmp_path, "silent.cgi", f"{HEAD_SH}\nprintf first\nsleep 1000\n")
    run = Run(loop, path, limits=(10, 0.5, 0.5))
    elapsed = run.until_end()
    assert 0.5 <= elapsed < 3
    assert run.owner.kinds == ["head", "body", "end"]
    assert run.owner.body == b"first"
    assert run.owner.end == (504, "no output for 0.5 s (idle timeout)")
    run.check_clean_end()
    assert run.logs == ["silent.cgi: no output for 0.5 s (idle timeout); killing its process group"]


def test_sigkill_after_the_grace_when_sigterm_is_ignored(loop: Loop, tmp_path: Path) -> None:
    path = write_script(tmp_path, "stubborn.cgi", "trap '' TERM\nsleep 1000\n")
    run = Run(loop, path, limits=(0.3, 10, 0.5))
    elapsed = run.until_end()
    assert 0.8 <= elapsed < 4
    assert run.owner.end == (504, "still running after 0.3 s (timeout)")
    run.check_clean_end()
    assert run.task.group.returncode == -signal.SIGKILL
    assert run.logs[-1] == "stubborn.cgi: still there 0.5 s after SIGTERM; sending SIGKILL"


def test_garbage_output_is_a_502_and_the_script_is_killed(loop: Loop, tmp_path: Path) -> None:
    path = write_script(tmp_path, "garbage.cgi", "echo 'this is not a header'\nsleep 1000\n")
    run = Run(loop, path)
    assert run.until_end() < 3
    error = run.owner.end
    assert error is not None and error[0] == 502 and "not a header field" in error[1]
    assert run.owner.kinds == ["end"]
    run.check_clean_end()
    assert run.task.killed == "malformed output"
    assert run.logs[0].startswith("garbage.cgi: malformed CGI output: line 1 is not")
    assert run.logs[1:] == ["garbage.cgi: malformed output; killing its process group"]


def test_crash_without_output_is_a_502(loop: Loop, tmp_path: Path) -> None:
    path = write_script(tmp_path, "crash.cgi", "exit 1\n")
    run = Run(loop, path)
    run.until_end()
    assert run.owner.events == [("end", (502, "no output"))]
    run.check_clean_end()
    assert run.task.group.returncode == 1
    assert run.logs[0] == "crash.cgi: malformed CGI output: no output"
    assert run.logs[-1] == "crash.cgi: exited with status 1"


def test_crash_without_output_logs_as_the_threaded_runner(loop: Loop, tmp_path: Path) -> None:
    path = write_script(tmp_path, "crash.cgi", "exit 1\n")
    run = Run(loop, path)
    run.until_end()
    assert run.owner.events == [("end", (502, "no output"))]
    assert run.task.killed is None
    assert run.logs == [
        "crash.cgi: malformed CGI output: no output",
        "crash.cgi: exited with status 1",
    ]


def test_stderr_written_before_the_output_ended_is_logged_before_the_verdict(
    loop: Loop, tmp_path: Path
) -> None:
    # A warm child closes stdout and stderr at once: both are ready in the same round.
    # Its traceback must still come before "no output", as a cold script's does.
    flag = tmp_path / "closed"
    path = write_script(
        tmp_path, "crash.cgi", 'echo "boom before" >&2\nexec 1>&- 2>&-\ntouch "$FLAG"\nsleep 0.2\n'
    )
    run = Run(loop, path, env=base_env(FLAG=str(flag).encode()))
    deadline = time.monotonic() + 10
    while not flag.exists() and time.monotonic() < deadline:
        time.sleep(0.01)  # the loop does not run: both pipes are ready when it looks
    # As a warm worker that registers the pipes after a quick child is done: watched
    # again now, stdout is the first ready (epoll lists what is ready at the add).
    task = run.task
    for fd, callback in ((task._stdout, task._on_stdout), (task._stderr, task._on_stderr)):
        assert fd is not None
        loop.remove(fd)
        loop.add(fd, READ, callback)
    run.until_end()
    assert run.owner.events == [("end", (502, "no output"))]
    assert run.logs[:2] == ["crash.cgi: boom before", "crash.cgi: malformed CGI output: no output"]


@pytest.mark.parametrize("limit", [65536, 1000])
def test_huge_headers_are_a_502(loop: Loop, tmp_path: Path, limit: int) -> None:
    path = write_script(
        tmp_path,
        "huge.cgi",
        """\
        import sys, time
        sys.stdout.buffer.write(b"Content-Type: text/plain\\nX-Big: " + b"a" * 70000)
        sys.stdout.flush()
        time.sleep(1000)
        """,
        PY,
    )
    run = Run(loop, path, parser=ScriptOutput(limit))
    run.until_end()
    assert run.owner.events == [("end", (502, f"header block larger than {limit} bytes"))]
    run.check_clean_end()


@pytest.mark.parametrize("pidfd", [True, False])
def test_a_background_grandchild_holding_stdout_is_killed(
    loop: Loop, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, pidfd: bool
) -> None:
    if not pidfd:
        no_pidfd(monkeypatch)
    path = write_script(tmp_path, "bg.cgi", f"{HEAD_SH}\nprintf done\nsleep 1000 &\nexit 0\n")
    run = Run(loop, path, limits=(10, 10, 0.5))
    assert run.complete() == b"done"
    assert run.until_end() < 3
    assert run.task.group.returncode == 0
    assert run.logs == ["bg.cgi: exited, leaving processes in its group; killing them"]


def test_a_background_process_not_holding_stdout_is_killed_too(loop: Loop, tmp_path: Path) -> None:
    path = write_script(
        tmp_path, "daemon.cgi", f"{HEAD_SH}\nprintf done\nsleep 1000 >/dev/null 2>&1 &\n"
    )
    run = Run(loop, path, limits=(10, 10, 0.5))
    assert run.complete() == b"done"  # check_clean_end: the group was gone at the end
    assert run.until_end() < 3
    assert run.task.group.returncode == 0 and run.task.killed is None
    assert run.logs == ["daemon.cgi: exited, leaving processes in its group; killing them"]


def test_a_script_still_running_after_closing_stdout_is_ended(loop: Loop, tmp_path: Path) -> None:
    path = write_script(tmp_path, "linger.cgi", f"{HEAD_SH}\nprintf ok\nexec >&-\nsleep 1000\n")
    run = Run(loop, path, limits=(30, 30, 0.5))
    assert run.complete() == b"ok"
    assert 0.5 <= run.until_end() < 3  # the grace, not the 30 s timeout
    assert run.task.killed == "still running after its output ended"
    assert run.task.group.returncode == -signal.SIGTERM
    assert run.logs == [
        "linger.cgi: still running after its output ended; killing its process group"
    ]


def test_cannot_start_a_file_that_is_not_executable(loop: Loop, tmp_path: Path) -> None:
    path = write_script(tmp_path, "noexec.cgi", "echo hi\n")
    path.chmod(0o644)
    before = open_fds()
    with pytest.raises(PermissionError):
        Run(loop, path, b"some body")
    assert open_fds() == before


def test_cannot_start_logs_once(loop: Loop, tmp_path: Path) -> None:
    logs: list[str] = []
    owner = Owner()
    with pytest.raises(FileNotFoundError):
        ScriptTask(
            loop, ([str(tmp_path / "none.cgi")], base_env(), str(tmp_path)), b"", ScriptOutput(),
            owner, logs.append, "none.cgi", (5, 5, 0.5),
        )  # fmt: skip
    assert len(logs) == 1 and logs[0].startswith("none.cgi: cannot start: ")
    assert owner.events == []


# -- the owner's side: pause, resume, abort ---------------------------------------------


def test_pause_stops_body_callbacks_until_resume(loop: Loop, tmp_path: Path) -> None:
    """Paused longer than the idle timeout: the client's slowness is not the script's."""
    marker = tmp_path / "go-on"
    path = write_script(
        tmp_path,
        "paused.cgi",
        f"""\
        {HEAD_SH}
        printf first
        while [ ! -e "$MARKER" ]; do sleep 0.01; done
        printf second
        printf third
        """,
    )
    run = Run(loop, path, env=base_env(MARKER=str(marker).encode()), limits=(10, 0.3, 0.5))
    run.owner.on_body = lambda data: run.task.pause()
    run.until(lambda: "body" in run.owner.kinds)
    assert run.owner.events[1:] == [("body", b"first")]
    marker.touch()  # the script writes the rest and exits while the task is paused
    run.for_a_while(0.6)
    assert run.owner.kinds == ["head", "body"]  # no body, and no idle timeout either
    run.owner.on_body = None
    run.task.resume()
    assert run.complete() == b"firstsecondthird"
    assert run.logs == []


def test_pause_and_resume_twice_are_harmless(loop: Loop, tmp_path: Path) -> None:
    path = write_script(tmp_path, "hello.cgi", f"{HEAD_SH}\nprintf hello\n")
    run = Run(loop, path)
    run.task.pause()
    run.task.pause()
    run.for_a_while(0.2)
    assert run.owner.events == []
    run.task.resume()
    run.task.resume()
    assert run.complete() == b"hello"


FOREVER = """\
import sys, time
out = sys.stdout.buffer
out.write(b"Content-Type: text/plain\\n\\nfirst")
out.flush()
while True:
    time.sleep(0.01)
    out.write(b"more")
    out.flush()
"""


@pytest.mark.parametrize("where", ["outside", "in-callback"])
def test_abort_kills_and_no_more_callbacks_come(loop: Loop, tmp_path: Path, where: str) -> None:
    path = write_script(tmp_path, "forever.cgi", FOREVER, PY)
    run = Run(loop, path)
    if where == "in-callback":
        run.owner.on_body = lambda data: run.task.abort("client went away")
    run.until(lambda: "body" in run.owner.kinds)
    if where == "outside":
        run.task.abort("client went away")
    seen = list(run.owner.events)
    assert [kind for kind, _ in seen] == ["head", "body"]
    assert run.task.ended
    assert settle(lambda: group_gone(run.pgid))
    run.for_a_while(0.3)  # the kill's thread finishes; nothing more for the owner
    assert run.owner.events == seen
    assert settle(lambda: not reapers())
    assert run.task.killed == "client went away"
    assert run.task.group.returncode == -signal.SIGTERM
    assert run.logs == ["forever.cgi: client went away; killing its process group"]
    run.task.abort("again")  # twice is fine
    assert run.logs == ["forever.cgi: client went away; killing its process group"]


def test_abort_after_the_end_does_nothing(loop: Loop, tmp_path: Path) -> None:
    path = write_script(tmp_path, "hello.cgi", f"{HEAD_SH}\nprintf hello\n")
    run = Run(loop, path)
    assert run.complete() == b"hello"
    run.task.abort("too late")
    run.task.tick(time.monotonic() + 1000)  # a late sweep neither
    run.for_a_while(0.1)
    assert run.owner.kinds == ["head", "body", "output end", "end"]
    assert run.task.killed is None and run.logs == []


def test_a_task_left_alone_is_not_ended_by_ticks_before_its_deadlines(
    loop: Loop, tmp_path: Path
) -> None:
    path = write_script(tmp_path, "slow.cgi", f"sleep 0.4\n{HEAD_SH}\nprintf late\n")
    run = Run(loop, path, limits=(5, 5, 0.5))
    assert run.complete() == b"late"


# -- many runs --------------------------------------------------------------------------


def test_a_hundred_sequential_runs_leave_nothing_behind(loop: Loop, tmp_path: Path) -> None:
    path = write_script(tmp_path, "tiny.cgi", f"{HEAD_SH}\nprintf hi\n")
    fds, kids = open_fds(), children()
    for i in range(100):
        run = Run(loop, path, b"body" if i % 2 else b"")
        assert run.complete() == b"hi"
        assert run.task.group.returncode == 0
    assert open_fds() == fds
    assert children() == kids


def test_concurrent_runs_on_one_loop(loop: Loop, tmp_path: Path) -> None:
    path = write_script(tmp_path, "echo.cgi", ECHOERS["sh"][1])
    datas = [random.Random(i).randbytes(200_000) for i in range(8)]
    runs = [Run(loop, path, data) for data in datas]
    deadline = time.monotonic() + 10
    while not all(r.owner.ended for r in runs) and time.monotonic() < deadline:
        loop.run_once(0.02)
        for r in runs:
            r.task.tick(time.monotonic())
    for r, data in zip(runs, datas, strict=True):
        assert r.owner.kinds[0] == "head" and r.owner.end is None
        assert r.owner.body == data
        assert r.owner.gone_at_end
