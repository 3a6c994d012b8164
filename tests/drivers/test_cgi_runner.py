"""The process driver of the host side (cgi_runner): real scripts in sh, Python and Perl.

Every test also checks (autouse fixture ``no_leaks``) that the descriptors of this
process and its children are the same after the test as before: no leaked pipe, pidfd
or selector, no zombie. The module makes this process a child subreaper (Linux), as a
server in a container should be, so the grandchildren a group kill orphans come back
here to be reaped instead of staying zombies in the group under a PID 1 that reaps
nothing (as in this test machine's VM).
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import random
import signal
import socket
import sys
import textwrap
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from cgikit.cgi_output import Body, EndOfOutput, Head, ScriptOutputError
from cgikit.cgi_runner import ScriptRun, ScriptTimeout, run_script
from cgikit.site_server import become_subreaper

PERL = Path("/usr/bin/perl")
PY = sys.executable
MIB = 1 << 20
HEAD_SH = "printf 'Content-Type: text/plain\\n\\n'"


@pytest.fixture(scope="module", autouse=True)
def subreaper() -> Iterator[None]:
    """Grandchildren orphaned by a group kill come back here to be reaped (as in serve)."""
    become_subreaper()
    yield
    become_subreaper(False)


def open_fds() -> set[str]:
    return set(os.listdir("/proc/self/fd"))


def children() -> set[str]:
    found: set[str] = set()
    for task in os.listdir("/proc/self/task"):
        with open(f"/proc/self/task/{task}/children") as f:
            found.update(f.read().split())
    return found


@pytest.fixture(autouse=True)
def no_leaks() -> Iterator[None]:
    fds, kids = open_fds(), children()
    yield
    assert open_fds() == fds
    assert children() == kids


class Feeder:
    """The request body as ``run_script`` pulls it; counts what was taken."""

    def __init__(self, data: bytes = b"") -> None:
        self.data = memoryview(data)
        self.taken = 0

    def __call__(self, size: int) -> bytes:
        if size <= 0:
            raise AssertionError(f"body({size})")
        chunk = bytes(self.data[self.taken : self.taken + size])
        self.taken += len(chunk)
        return chunk

    @property
    def exhausted(self) -> bool:
        return self.taken == len(self.data)


def write_script(tmp_path: Path, name: str, text: str, interpreter: str = "/bin/sh") -> Path:
    directory = tmp_path / "cgi-bin"
    directory.mkdir(exist_ok=True)
    path = directory / name
    path.write_text(f"#!{interpreter}\n" + textwrap.dedent(text).lstrip())
    path.chmod(0o755)
    return path


def base_env(**extra: bytes) -> dict[bytes, bytes]:
    env = {b"PATH": b"/usr/bin:/bin", b"GATEWAY_INTERFACE": b"CGI/1.1", b"REQUEST_METHOD": b"GET"}
    env.update({name.encode(): value for name, value in extra.items()})
    return env


class Started:
    def __init__(self, path: Path, body: bytes, env: dict[bytes, bytes] | None, **kw: Any):
        self.logs: list[str] = []
        self.feeder = Feeder(body)
        options: dict[str, Any] = {"timeout": 5.0, "idle_timeout": 5.0, "kill_grace": 0.5}
        options.update(kw)
        self.run: ScriptRun = run_script(
            [str(path)],
            base_env() if env is None else env,
            str(path.parent),
            self.feeder,
            log=self.logs.append,
            script_name=path.name,
            **options,
        )

    def body(self, events: list[Any]) -> bytes:
        return b"".join(e.data for e in events if isinstance(e, Body))


def start(
    path: Path, body: bytes = b"", env: dict[bytes, bytes] | None = None, **kw: Any
) -> Started:
    return Started(path, body, env, **kw)


def assert_group_gone(run: ScriptRun) -> None:
    with pytest.raises(ProcessLookupError):
        os.killpg(run.pid, 0)


def complete(started: Started) -> list[Any]:
    events = list(started.run)
    assert isinstance(events[0], Head)
    assert isinstance(events[-1], EndOfOutput)
    assert started.run.complete and not started.run.body_cut
    assert_group_gone(started.run)
    return events


# -- environment, input, streaming ------------------------------------------------------

DUMPERS = {
    "sh": ("/bin/sh", f'{HEAD_SH}\nenv\necho "cwd=$(pwd -P)"\n'),
    "python": (
        PY,
        """\
        import os, sys
        out = sys.stdout.buffer
        out.write(b"Content-Type: text/plain\\n\\n")
        for name, value in sorted(os.environb.items()):
            out.write(name + b"=" + value + b"\\n")
        out.write(b"cwd=" + os.path.realpath(os.getcwdb()) + b"\\n")
        """,
    ),
    "perl": (
        str(PERL),
        """\
        use Cwd;
        print "Content-Type: text/plain\\n\\n";
        print "$_=$ENV{$_}\\n" for sort keys %ENV;
        print "cwd=", Cwd::realpath(Cwd::getcwd()), "\\n";
        """,
    ),
}
# What the interpreters add themselves: dash sets PWD, Python coerces the C locale.
INTERPRETER_VARS = {b"PWD", b"LC_CTYPE", b"OLDPWD", b"SHLVL", b"_"}
needs_perl = pytest.mark.skipif(not PERL.exists(), reason="no /usr/bin/perl")
LANGS = ["sh", "python", pytest.param("perl", marks=needs_perl)]


@pytest.mark.parametrize("lang", LANGS)
def test_env_is_exactly_the_given_one_and_cwd_the_script_dir(
    tmp_path: Path, lang: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("CGIKIT_SERVER_SECRET", "must not leak")  # research §3 row 11
    interpreter, text = DUMPERS[lang]
    path = write_script(tmp_path, f"env-{lang}.cgi", text, interpreter)
    env = base_env(PATH_INFO=b"/caf\xe9", HTTP_X_ODD=b"\xff\x80 raw", QUERY_STRING=b"a=b")
    started = start(path, env=env)
    lines = started.body(complete(started)).splitlines()
    dumped = dict(line.split(b"=", 1) for line in lines)
    cwd = dumped.pop(b"cwd")
    assert cwd == os.path.realpath(path.parent).encode()
    assert {k: v for k, v in dumped.items() if k not in INTERPRETER_VARS} == env
    assert started.run.returncode == 0
    assert started.logs == []


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


@pytest.mark.parametrize("lang", LANGS)
def test_echo_one_mib_of_input(tmp_path: Path, lang: str) -> None:
    interpreter, text = ECHOERS[lang]
    path = write_script(tmp_path, f"echo-{lang}.cgi", text, interpreter)
    data = random.Random(lang).randbytes(MIB)
    started = start(path, data, env=base_env(CONTENT_LENGTH=str(MIB).encode()))
    out = started.body(complete(started))
    assert hashlib.sha256(out).hexdigest() == hashlib.sha256(data).hexdigest()
    assert started.feeder.exhausted


def test_echo_without_pidfd_polls_for_the_exit(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delattr(os, "pidfd_open", raising=False)  # as on macOS
    path = write_script(tmp_path, "echo.cgi", ECHOERS["sh"][1])
    started = start(path, b"abc" * 100_000)
    assert started.body(complete(started)) == b"abc" * 100_000


def test_empty_body_gives_the_script_eof(tmp_path: Path) -> None:
    path = write_script(tmp_path, "len.cgi", f'{HEAD_SH}\nprintf "%s" "$(wc -c)"\n')
    started = start(path)
    assert started.body(complete(started)) == b"0"


def test_body_chunks_arrive_as_the_script_writes_them(tmp_path: Path) -> None:
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
    started = start(path, env=base_env(MARKER=str(marker).encode()))
    events = iter(started.run)
    assert isinstance(next(events), Head)
    first = next(events)
    assert first == Body(b"first\n")
    assert not marker.exists()  # the script is still waiting: this chunk was streamed
    marker.touch()
    rest = list(events)
    assert rest == [Body(b"rest\n"), EndOfOutput()]
    assert_group_gone(started.run)


def test_no_deadlock_when_output_comes_before_input_r18(tmp_path: Path) -> None:
    """1 MiB to stdout and 1 MiB to stderr before reading 1 MiB: fcgiwrap hangs here."""
    path = write_script(
        tmp_path,
        "r18.cgi",
        """\
        import hashlib, sys
        out, err = sys.stdout.buffer, sys.stderr.buffer
        out.write(b"Content-Type: application/octet-stream\\n\\n" + b"o" * (1 << 20))
        out.flush()
        err.write((b"e" * 1023 + b"\\n") * 1024)
        err.flush()
        out.write(hashlib.sha256(sys.stdin.buffer.read()).hexdigest().encode())
        """,
        PY,
    )
    data = random.Random(18).randbytes(MIB)
    started = start(path, data, env=base_env(CONTENT_LENGTH=str(MIB).encode()))
    out = started.body(complete(started))
    assert out == b"o" * MIB + hashlib.sha256(data).hexdigest().encode()
    assert started.logs == ["r18.cgi: " + "e" * 1023] * 1024


def test_stderr_lines_are_logged_prefixed_cut_and_escaped(tmp_path: Path) -> None:
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
    started = start(path)
    complete(started)
    assert started.logs == [
        "err.cgi: one",
        "err.cgi: two",
        "err.cgi: " + "x" * 8192 + " [cut]",
        "err.cgi: after",
        "err.cgi: esc\\x1b[31m \\xff",
        "err.cgi: partial",
    ]


# -- input the script does not read ----------------------------------------------------


def test_script_that_never_reads_its_input(tmp_path: Path) -> None:
    """CVE-2014-0231: a body the script ignores is dropped, up to max_drain."""
    path = write_script(tmp_path, "noread.cgi", f"{HEAD_SH}\nprintf ok\n")
    started = start(path, b"z" * (8 * MIB), max_drain=MIB)
    assert started.body(complete(started)) == b"ok"
    assert started.feeder.taken <= 2 * MIB  # what the pipe took, plus max_drain
    assert started.logs == []


def test_script_that_closes_stdin_early_epipe_is_no_error(tmp_path: Path) -> None:
    path = write_script(tmp_path, "close0.cgi", f"exec 0<&-\nsleep 0.3\n{HEAD_SH}\nprintf ok\n")
    started = start(path, b"z" * MIB)
    assert started.body(complete(started)) == b"ok"
    assert started.feeder.exhausted  # drained quietly: the connection can be kept
    assert started.logs == []


# -- failures ---------------------------------------------------------------------------


def test_timeout_before_the_head_is_a_504(tmp_path: Path) -> None:
    path = write_script(tmp_path, "sleep.cgi", "sleep 1000\n")
    began = time.monotonic()
    started = start(path, timeout=0.5, idle_timeout=10)
    with pytest.raises(ScriptTimeout, match="timeout"):
        list(started.run)
    assert time.monotonic() - began < 3
    run = started.run
    assert run.timed_out and run.timed_out_before_head and not run.body_cut
    assert run.returncode == -signal.SIGTERM
    assert started.logs == [
        "sleep.cgi: still running after 0.5 s (timeout); killing its process group"
    ]
    assert_group_gone(run)


def test_idle_timeout_after_the_head_cuts_the_body(tmp_path: Path) -> None:
    path = write_script(tmp_path, "silent.cgi", f"{HEAD_SH}\nprintf first\nsleep 1000\n")
    started = start(path, timeout=10, idle_timeout=0.5)
    events = list(started.run)
    assert isinstance(events[0], Head)
    assert events[1:] == [Body(b"first")]  # no EndOfOutput
    run = started.run
    assert run.timed_out and run.body_cut and not run.timed_out_before_head
    assert started.logs == [
        "silent.cgi: no output for 0.5 s (idle timeout); killing its process group"
    ]
    assert_group_gone(run)


def test_sigkill_after_the_grace_when_sigterm_is_ignored(tmp_path: Path) -> None:
    path = write_script(tmp_path, "stubborn.cgi", "trap '' TERM\nsleep 1000\n")
    began = time.monotonic()
    started = start(path, timeout=0.3, kill_grace=0.5)
    with pytest.raises(ScriptTimeout):
        list(started.run)
    assert 0.8 <= time.monotonic() - began < 4
    assert started.run.returncode == -signal.SIGKILL
    assert started.logs[-1] == "stubborn.cgi: still there 0.5 s after SIGTERM; sending SIGKILL"
    assert_group_gone(started.run)


def test_a_background_grandchild_holding_stdout_is_killed(tmp_path: Path) -> None:
    path = write_script(tmp_path, "bg.cgi", f"{HEAD_SH}\nprintf done\nsleep 1000 &\nexit 0\n")
    began = time.monotonic()
    started = start(path, timeout=10, idle_timeout=10)
    assert started.body(complete(started)) == b"done"
    assert time.monotonic() - began < 3
    assert started.run.returncode == 0 and not started.run.timed_out
    assert started.logs == ["bg.cgi: exited, leaving processes in its group; killing them"]


def test_a_grandchild_is_killed_without_pidfd_too(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delattr(os, "pidfd_open", raising=False)
    path = write_script(tmp_path, "bg.cgi", f"{HEAD_SH}\nprintf done\nsleep 1000 &\n")
    started = start(path, timeout=10, idle_timeout=10)
    assert started.body(complete(started)) == b"done"


def test_a_script_still_running_after_closing_stdout_is_ended(tmp_path: Path) -> None:
    path = write_script(tmp_path, "linger.cgi", f"{HEAD_SH}\nprintf ok\nexec >&-\nsleep 1000\n")
    began = time.monotonic()
    started = start(path, timeout=30, idle_timeout=30, kill_grace=0.5)
    assert started.body(complete(started)) == b"ok"
    assert time.monotonic() - began < 3  # not the 30 s timeout
    assert started.run.killed == "still running after its output ended"
    assert not started.run.timed_out
    assert started.logs == [
        "linger.cgi: still running after its output ended; killing its process group"
    ]


def test_crash_without_output_is_a_502(tmp_path: Path) -> None:
    path = write_script(tmp_path, "crash.cgi", "exit 1\n")
    started = start(path)
    with pytest.raises(ScriptOutputError, match="no output"):
        list(started.run)
    assert started.run.returncode == 1
    assert started.logs == [
        "crash.cgi: malformed CGI output: no output",
        "crash.cgi: exited with status 1",
    ]
    assert_group_gone(started.run)


def test_garbage_output_is_a_502_and_the_script_is_killed(tmp_path: Path) -> None:
    path = write_script(tmp_path, "garbage.cgi", "echo 'this is not a header'\nsleep 1000\n")
    started = start(path)
    with pytest.raises(ScriptOutputError, match="not a header field"):
        list(started.run)
    assert started.run.killed == "malformed output"
    assert started.logs[0].startswith("garbage.cgi: malformed CGI output: line 1 is not")
    assert_group_gone(started.run)


@pytest.mark.parametrize("limit", [65536, 1000])
def test_huge_headers_are_a_502(tmp_path: Path, limit: int) -> None:
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
    started = start(path, max_header_bytes=limit)
    with pytest.raises(ScriptOutputError, match=f"larger than {limit} bytes"):
        list(started.run)
    assert_group_gone(started.run)


def test_nonzero_exit_after_a_valid_response_is_logged_only(tmp_path: Path) -> None:
    path = write_script(tmp_path, "exit3.cgi", f"{HEAD_SH}\nprintf ok\nexit 3\n")
    started = start(path)
    assert started.body(complete(started)) == b"ok"
    assert started.run.returncode == 3
    assert started.logs == ["exit3.cgi: exited with status 3"]


def test_cannot_start_a_file_that_is_not_executable(tmp_path: Path) -> None:
    path = write_script(tmp_path, "noexec.cgi", "echo hi\n")
    path.chmod(0o644)
    logs: list[str] = []
    with pytest.raises(PermissionError):
        run_script(
            [str(path)], base_env(), str(tmp_path), Feeder(), timeout=1, idle_timeout=1,
            log=logs.append, script_name="noexec.cgi",
        )  # fmt: skip
    assert len(logs) == 1 and logs[0].startswith("noexec.cgi: cannot start: ")


@pytest.mark.parametrize(
    "bad", [{"timeout": 0}, {"idle_timeout": -1}, {"kill_grace": -1}, {"max_header_bytes": 0}]
)
def test_bad_limits_are_refused_before_any_spawn(tmp_path: Path, bad: dict[str, Any]) -> None:
    marker = tmp_path / "ran"
    options: dict[str, Any] = {"timeout": 1, "idle_timeout": 1, **bad}
    with pytest.raises(ValueError):
        run_script(
            ["/bin/touch", str(marker)], {}, str(tmp_path), Feeder(), log=print,
            script_name="x", **options,
        )  # fmt: skip
    assert not marker.exists()


def test_an_error_in_the_body_reader_kills_the_script(tmp_path: Path) -> None:
    """The client went away while sending its body: the script must not live on."""

    class Broken(Feeder):
        def __call__(self, size: int) -> bytes:
            if self.taken >= 200_000:
                raise ConnectionResetError("client gone")
            return super().__call__(size)

    path = write_script(tmp_path, "echo.cgi", ECHOERS["sh"][1])
    logs: list[str] = []
    run = run_script(
        [str(path)], base_env(), str(path.parent), Broken(b"x" * MIB), timeout=5,
        idle_timeout=5, kill_grace=0.5, log=logs.append, script_name="echo.cgi",
    )  # fmt: skip
    with pytest.raises(ConnectionResetError):
        list(run)
    assert logs == ["echo.cgi: output abandoned by the caller; killing its process group"]
    assert run.body_cut
    assert_group_gone(run)


# -- the caller gives up (client gone, R17) -------------------------------------------

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


def test_close_after_the_first_body_event_kills_the_group(tmp_path: Path) -> None:
    path = write_script(tmp_path, "forever.cgi", FOREVER, PY)
    started = start(path)
    events = iter(started.run)
    assert isinstance(next(events), Head)
    assert next(events) == Body(b"first")
    started.run.close()
    run = started.run
    assert run.body_cut and run.killed == "output abandoned by the caller"
    assert run.returncode == -signal.SIGTERM
    assert started.logs == [
        "forever.cgi: output abandoned by the caller; killing its process group"
    ]
    assert_group_gone(run)
    assert list(events) == []  # the iteration is over
    run.close()  # twice is fine


def test_close_before_iterating_and_with_block(tmp_path: Path) -> None:
    path = write_script(tmp_path, "forever.cgi", FOREVER, PY)
    started = start(path)
    started.run.close()
    assert_group_gone(started.run)
    with start(path).run as run:
        assert isinstance(next(iter(run)), Head)
    assert run.body_cut
    assert_group_gone(run)


def test_generator_dropped_mid_body_kills_the_group(tmp_path: Path) -> None:
    path = write_script(tmp_path, "forever.cgi", FOREVER, PY)
    started = start(path)
    for event in started.run:
        if isinstance(event, Body):
            break
    started.run.close()
    assert_group_gone(started.run)


# -- the client hangs up while the script is silent (issue 3 item 4) ----------------------

QUIET = f"""\
case "$QUERY_STRING" in
  after*) {HEAD_SH}; echo first; sleep 20; echo late;;
  *) sleep 20; {HEAD_SH}; echo late;;
esac
"""


@pytest.mark.parametrize("hangup", ["close", "half-close"])
@pytest.mark.parametrize("when", ["before-head", "after-head"])
def test_a_client_that_hangs_up_ends_the_silent_script(
    tmp_path: Path, when: str, hangup: str
) -> None:
    """A socketpair stands in for the client; a half-close counts as gone (lighttpd)."""
    path = write_script(tmp_path, "quiet.cgi", QUIET)
    server, client = socket.socketpair()
    hang_up = client.close if hangup == "close" else lambda: client.shutdown(socket.SHUT_WR)
    timer = threading.Timer(0.3, hang_up)
    try:
        env = base_env(QUERY_STRING=when.encode())
        started = start(path, env=env, timeout=20, idle_timeout=20, client_fd=server.fileno())
        began = time.monotonic()
        timer.start()
        events = list(started.run)  # no ScriptTimeout: the run just ends
        elapsed = time.monotonic() - began
    finally:
        timer.join()
        server.close()
        client.close()
    run = started.run
    assert elapsed < 3.0, elapsed
    assert run.client_gone and run.killed == "client went away" and not run.timed_out
    assert [type(e) for e in events] == ([Head, Body] if when == "after-head" else [])
    assert run.body_cut == (when == "after-head")
    assert "quiet.cgi: client went away; killing its process group" in started.logs
    assert_group_gone(run)


def test_a_client_that_stays_or_sends_more_does_not_end_the_script(tmp_path: Path) -> None:
    """Pipelined bytes are left in the socket, and the loop does not spin on them."""
    path = write_script(tmp_path, "late.cgi", f"sleep 0.5\n{HEAD_SH}\necho late\n")
    server, client = socket.socketpair()
    with server, client:
        for pipelined in (b"", b"GET /next HTTP/1.1\r\n"):
            client.sendall(pipelined)
            cpu = time.thread_time()
            started = start(path, b"body", client_fd=server.fileno())
            assert started.body(complete(started)) == b"late\n"
            assert time.thread_time() - cpu < 0.25  # a spin would burn the 0.5 s
            assert not started.run.client_gone and started.run.killed is None
            server.setblocking(False)
            with contextlib.suppress(BlockingIOError):
                assert server.recv(100) == pipelined
            server.setblocking(True)


# -- many runs ------------------------------------------------------------------------


def test_two_hundred_sequential_runs_leave_nothing_behind(tmp_path: Path) -> None:
    """A quick version of issue 3's 10,000-request check (the long one is for bench/)."""
    path = write_script(tmp_path, "tiny.cgi", f"{HEAD_SH}\nprintf hi\n")
    fds, kids = open_fds(), children()
    for _ in range(200):
        started = start(path)
        with contextlib.closing(started.run):
            assert started.body(list(started.run)) == b"hi"
        assert started.run.returncode == 0
    assert open_fds() == fds
    assert children() == kids
