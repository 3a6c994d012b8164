"""Spawning scripts with libc's posix_spawn through ctypes (posix_spawn.spawn).

What the script gets: exactly the given environment, the given directory, only
descriptors 0-2, its own session, SIGPIPE back to its default and nothing blocked;
stdin a pipe or the shared /dev/null. What the server keeps: non-blocking,
close-on-exec ends, and no descriptor or child left over, errors included. Every test
checks (``no_leaks``) that this process holds the same descriptors and children after
it as before; the shared /dev/null is opened once by the module fixture first.
"""

from __future__ import annotations

import json
import os
import random
import select
import signal
import subprocess
import sys
import textwrap
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from cgikit import posix_spawn
from cgikit.cgi_meta import Environment
from drivers.proc_checks import children, open_fds, write_script

pytestmark = pytest.mark.skipif(
    not posix_spawn.available(), reason="no posix_spawn with chdir and closefrom here"
)

PATH_ONLY = {b"PATH": b"/usr/bin:/bin"}
MIB = 1 << 20


@pytest.fixture(scope="module", autouse=True)
def prepared() -> None:
    """The /dev/null kept for scripts' stdin is opened once, before any snapshot."""
    assert posix_spawn.prepare()


@pytest.fixture(autouse=True)
def no_leaks() -> Iterator[None]:
    fds, kids = open_fds(), children()
    yield
    assert open_fds() == fds
    assert children() == kids


def communicate(
    child: posix_spawn.Child, data: bytes = b"", timeout: float = 10.0
) -> tuple[bytes, bytes, int]:
    """Feed ``data`` to the child's stdin, read stdout and stderr to their ends, reap it.

    Closes the parent's ends. A child not done within ``timeout`` is killed and fails
    the test.
    """
    out, err = bytearray(), bytearray()
    sinks = {child.stdout: out, child.stderr: err}
    pending = memoryview(data)
    poller = select.poll()
    open_ends = [fd for fd in (child.stdin, child.stdout, child.stderr) if fd is not None]
    for fd in sinks:
        poller.register(fd, select.POLLIN)
    stdin = child.stdin
    if stdin is not None:
        if pending:
            poller.register(stdin, select.POLLOUT)
        else:
            os.close(stdin)
            open_ends.remove(stdin)
            stdin = None
    deadline = time.monotonic() + timeout
    try:
        while sinks or stdin is not None:
            left = deadline - time.monotonic()
            if left <= 0:
                os.kill(child.pid, signal.SIGKILL)
                child.wait()
                raise AssertionError(f"the child did not finish in {timeout} s")
            for fd, _events in poller.poll(left * 1000):
                if fd == stdin:
                    try:
                        pending = pending[os.write(fd, pending) :]
                    except BlockingIOError:
                        continue
                    except BrokenPipeError:
                        pending = memoryview(b"")
                    if not pending:
                        poller.unregister(fd)
                        os.close(fd)
                        open_ends.remove(fd)
                        stdin = None
                elif fd in sinks:
                    try:
                        chunk = os.read(fd, 65536)
                    except BlockingIOError:
                        continue
                    if chunk:
                        sinks[fd] += chunk
                    else:
                        poller.unregister(fd)
                        del sinks[fd]
        return bytes(out), bytes(err), child.wait()
    finally:
        for fd in open_ends:
            os.close(fd)


def wait_for(child: posix_spawn.Child, timeout: float = 5.0) -> int | None:
    """The exit code by polling, a bounded time (a child that lives on is killed)."""
    deadline = time.monotonic() + timeout
    while child.poll() is None:
        if time.monotonic() >= deadline:
            os.kill(child.pid, signal.SIGKILL)
            child.wait()
            return None
        time.sleep(0.005)
    return child.returncode


def run(
    argv: list[str],
    env: Environment | None = None,
    cwd: str = "/",
    data: bytes = b"",
    *,
    null_stdin: bool = False,
) -> tuple[bytes, bytes, int]:
    child = posix_spawn.spawn(argv, PATH_ONLY if env is None else env, cwd, null_stdin=null_stdin)
    return communicate(child, data)


# -- what the script gets ---------------------------------------------------------------


def test_environment_is_exactly_the_given_one(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CGIKIT_SERVER_SECRET", "must not leak")
    env = {
        b"PATH": b"/usr/bin:/bin",
        b"PATH_INFO": b"/caf\xe9",
        b"HTTP_X_ODD": b"\xff\x80 raw",
        b"EMPTY": b"",
        b"WITH_EQUALS": b"a=b=c",
    }
    out, err, code = run(["/usr/bin/env"], env)
    assert (code, err) == (0, b"")
    assert out == b"".join(k + b"=" + v + b"\n" for k, v in env.items())


def test_an_environment_of_strings_arrives_whole_and_in_order() -> None:
    """As the host passes it (cgi_meta.to_envp): NAME=value strings, many, of every
    length, one of them longer than a page."""
    envp = [b"PATH=/usr/bin:/bin", b"E=", b"Q=a=b"]
    envp += [b"V_%d=%s" % (n, b"x" * n) for n in range(0, 300, 7)]
    envp.append(b"LONG=" + b"\xe9" * 5000)
    out, err, code = run(["/usr/bin/env"], envp)
    assert (code, err) == (0, b"")
    assert out == b"".join(entry + b"\n" for entry in envp)


def test_an_empty_environment_stays_empty() -> None:
    out, err, code = run(["/usr/bin/env"], {})
    assert (out, err, code) == (b"", b"", 0)


def test_working_directory_is_the_given_one(tmp_path: Path) -> None:
    where = tmp_path / "cgi bin é"
    where.mkdir()
    out, err, code = run(["/bin/sh", "-c", "pwd -P"], cwd=str(where))
    assert (code, err) == (0, b"")
    assert out == os.fsencode(os.path.realpath(where)) + b"\n"
    assert os.getcwd() != str(where)  # the server's own directory is untouched


def test_only_descriptors_0_to_2_reach_the_script() -> None:
    inheritable_r, inheritable_w = os.pipe()  # what closefrom(3) must close regardless
    os.set_inheritable(inheritable_r, True)
    os.set_inheritable(inheritable_w, True)
    try:
        out, err, code = run(["/bin/ls", "/proc/self/fd"])
    finally:
        os.close(inheritable_r)
        os.close(inheritable_w)
    assert (code, err) == (0, b"")
    assert out.split() == [b"0", b"1", b"2", b"3"]  # 3: the directory ls itself reads


def test_the_script_leads_its_own_session_and_group() -> None:
    child = posix_spawn.spawn(
        ["/bin/sh", "-c", "read go; echo $$; ps -o sid=,pgid= -p $$"], PATH_ONLY, "/"
    )
    try:
        assert os.getsid(child.pid) == child.pid == os.getpgid(child.pid)
        assert os.getsid(child.pid) != os.getsid(0)
    finally:
        out, err, code = communicate(child, b"go\n")
    assert (code, err) == (0, b"")
    pid, sid, pgid = out.split()
    assert int(pid) == int(sid) == int(pgid) == child.pid


def status_masks(text: str) -> dict[str, int]:
    return {
        name: int(value, 16)
        for name, value in (line.split(":\t") for line in text.splitlines() if ":\t" in line)
        if name in ("SigIgn", "SigBlk", "SigCgt")
    }


def bit(signum: int) -> int:
    return 1 << (signum - 1)


def test_signals_default_and_nothing_blocked_whatever_the_parent_has() -> None:
    """Nothing the server ignores reaches the script: not SIGPIPE and SIGXFSZ (Python's),
    SIGHUP (a worker's: the master's business), SIGINT and SIGQUIT (a shell's
    background job's) or a real-time one; and nothing the server blocks."""
    assert signal.getsignal(signal.SIGPIPE) == signal.SIG_IGN  # what Python does
    blocked = {signal.SIGPIPE, signal.SIGUSR1, signal.SIGTERM}
    ignored = (signal.SIGXFSZ, signal.SIGHUP, signal.SIGINT, signal.SIGQUIT, signal.SIGRTMIN + 1)
    old = signal.pthread_sigmask(signal.SIG_BLOCK, blocked)
    previous = {signum: signal.signal(signum, signal.SIG_IGN) for signum in ignored}
    try:
        with open("/proc/thread-self/status") as f:
            mine = status_masks(f.read())
        assert mine["SigBlk"] & bit(signal.SIGPIPE) and mine["SigBlk"] & bit(signal.SIGUSR1)
        assert all(mine["SigIgn"] & bit(signum) for signum in (signal.SIGPIPE, *ignored))
        out, err, code = run(["/bin/cat", "/proc/self/status"])
    finally:
        signal.pthread_sigmask(signal.SIG_SETMASK, old)
        for signum, handler in previous.items():
            signal.signal(signum, handler)
    assert (code, err) == (0, b"")
    theirs = status_masks(out.decode())
    assert theirs["SigBlk"] == 0
    # Every signal at its default but glibc's own 32 and 33, which it ignores in a child.
    assert theirs["SigIgn"] & ~(bit(32) | bit(33)) == 0


def test_a_script_writing_to_a_closed_pipe_dies_of_sigpipe() -> None:
    """The default SIGPIPE at work: with it ignored, ``yes`` would exit 1 on EPIPE."""
    child = posix_spawn.spawn(["/usr/bin/yes"], PATH_ONLY, "/", null_stdin=True)
    os.close(child.stdout)  # no reader any more
    try:
        code = wait_for(child)
        os.set_blocking(child.stderr, True)
        err = os.read(child.stderr, 65536)  # it is dead: whatever it wrote, then EOF
    finally:
        os.close(child.stderr)
    assert (code, err) == (-signal.SIGPIPE, b"")


def test_stdin_from_a_pipe_delivers_the_bytes() -> None:
    data = random.Random(7).randbytes(300_000)  # more than a pipe holds
    out, err, code = run(["/bin/cat"], data=data)
    assert (code, err) == (0, b"")
    assert out == data


def test_null_stdin_is_an_immediate_eof() -> None:
    child = posix_spawn.spawn(["/bin/sh", "-c", "wc -c; cat"], PATH_ONLY, "/", null_stdin=True)
    assert child.stdin is None
    began = time.monotonic()
    out, err, code = communicate(child)
    assert (out.strip(), err, code) == (b"0", b"", 0)
    assert time.monotonic() - began < 2


def test_null_stdin_shares_one_descriptor_across_spawns() -> None:
    before = open_fds()
    kids = [
        posix_spawn.spawn(["/bin/sh", "-c", "exit 0"], {}, "/", null_stdin=True) for _ in range(3)
    ]
    during = open_fds() - before
    for kid in kids:
        communicate(kid)
    assert len(during) == 2 * 3  # stdout and stderr of each; no new /dev/null


def test_the_parents_ends_are_non_blocking_and_close_on_exec() -> None:
    child = posix_spawn.spawn(["/bin/cat"], PATH_ONLY, "/")
    ends = (child.stdin, child.stdout, child.stderr)
    try:
        for fd in ends:
            assert fd is not None and fd > 2
            assert not os.get_blocking(fd)
            assert not os.get_inheritable(fd)
    finally:
        communicate(child)


def test_the_scripts_ends_are_blocking() -> None:
    script = "for fd in 0 1 2; do sed -n 's/^flags:\\t*/'$fd' /p' /proc/$$/fdinfo/$fd >&2; done"
    for null_stdin in (False, True):
        out, err, code = run(["/bin/sh", "-c", script], null_stdin=null_stdin)
        assert (out, code) == (b"", 0)
        flags = dict(line.split() for line in err.decode().splitlines())
        assert sorted(flags) == ["0", "1", "2"]
        for fd, value in flags.items():
            assert not int(value, 8) & os.O_NONBLOCK, (fd, value, null_stdin)


def test_one_mib_to_a_slow_reader_works() -> None:
    """The script's stdout blocks when full; a non-blocking one would fail with EAGAIN."""
    child = posix_spawn.spawn(
        ["/bin/sh", "-c", f"head -c {MIB} /dev/zero; echo status=$? >&2"], PATH_ONLY, "/"
    )
    assert child.stdin is not None
    os.close(child.stdin)
    child.stdin = None  # communicate() below takes stdout and stderr only
    got = 0
    try:
        time.sleep(0.2)  # the pipe fills up and the writer has to wait
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            select.select([child.stdout], [], [], 1)
            try:
                chunk = os.read(child.stdout, 16384)
            except BlockingIOError:
                continue
            if not chunk:
                break
            assert chunk.count(0) == len(chunk)
            got += len(chunk)
            time.sleep(0.001)
        _, err, code = communicate(child)
    finally:
        if child.returncode is None:
            os.kill(child.pid, signal.SIGKILL)
            child.wait()
            os.close(child.stdout)
            os.close(child.stderr)
    assert got == MIB
    assert (err, code) == (b"status=0\n", 0)


# -- errors -----------------------------------------------------------------------------


def test_a_missing_file_raises_file_not_found(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError) as caught:
        posix_spawn.spawn([str(tmp_path / "nothing.cgi")], PATH_ONLY, str(tmp_path))
    assert caught.value.filename == str(tmp_path / "nothing.cgi")


def test_a_file_that_is_not_executable_raises_permission_error(tmp_path: Path) -> None:
    path = write_script(tmp_path, "noexec.cgi", "echo hi\n")
    path.chmod(0o644)
    for null_stdin in (False, True):
        with pytest.raises(PermissionError):
            posix_spawn.spawn([str(path)], PATH_ONLY, str(path.parent), null_stdin=null_stdin)


def test_a_bad_interpreter_line_raises_file_not_found(tmp_path: Path) -> None:
    path = write_script(tmp_path, "badinterp.cgi", "echo hi\n", "/no/such/interpreter")
    with pytest.raises(FileNotFoundError):
        posix_spawn.spawn([str(path)], PATH_ONLY, str(path.parent))


def test_a_missing_working_directory_raises_file_not_found(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError):
        posix_spawn.spawn(["/bin/true"], PATH_ONLY, str(tmp_path / "gone"))


def test_many_failed_spawns_leak_nothing(tmp_path: Path) -> None:
    before = open_fds()
    for i in range(50):
        with pytest.raises(OSError):
            posix_spawn.spawn([str(tmp_path / "nothing")], {}, "/", null_stdin=bool(i % 2))
    assert open_fds() == before


# -- reaping ----------------------------------------------------------------------------


def test_poll_and_wait_give_the_exit_code() -> None:
    child = posix_spawn.spawn(["/bin/sh", "-c", "read go; exit 7"], PATH_ONLY, "/")
    time.sleep(0.05)
    assert child.poll() is None and child.returncode is None
    out, err, code = communicate(child, b"go\n")
    assert (out, err, code) == (b"", b"", 7)
    assert child.poll() == 7 and child.wait() == 7  # cached: reaped once only


def test_poll_reaps_a_child_that_exited() -> None:
    child = posix_spawn.spawn(["/bin/true"], PATH_ONLY, "/", null_stdin=True)
    deadline = time.monotonic() + 5
    while child.poll() is None and time.monotonic() < deadline:
        time.sleep(0.01)
    assert child.returncode == 0
    assert str(child.pid) not in children()  # reaped: no zombie
    os.close(child.stdout)
    os.close(child.stderr)


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGKILL, signal.SIGPIPE])
def test_a_signal_gives_a_negative_code(signum: int) -> None:
    child = posix_spawn.spawn(["/bin/sh", "-c", "exec sleep 100"], PATH_ONLY, "/")
    time.sleep(0.05)
    os.kill(child.pid, signum)
    assert wait_for(child) == -signum
    assert child.poll() == -signum
    communicate(child)


# -- a server started with 0-2 closed ---------------------------------------------------

CLOSED_STDIO = textwrap.dedent(
    """\
    import json, os, sys
    report = sys.argv[1]
    from cgikit import posix_spawn
    for fd in (0, 1, 2):
        os.close(fd)
    results = []
    script = "cat; echo out; echo err >&2; ls /proc/self/fd"
    for null_stdin in (False, True, False):
        child = posix_spawn.spawn(["/bin/sh", "-c", script], {b"PATH": b"/usr/bin:/bin"}, "/",
                                  null_stdin=null_stdin)
        ends = [fd for fd in (child.stdin, child.stdout, child.stderr) if fd is not None]
        for fd in ends:
            os.set_blocking(fd, True)
        if child.stdin is not None:
            os.write(child.stdin, b"in\\n")
            os.close(child.stdin)
        out = b"".join(iter(lambda: os.read(child.stdout, 65536), b""))
        err = b"".join(iter(lambda: os.read(child.stderr, 65536), b""))
        os.close(child.stdout)
        os.close(child.stderr)
        results.append({
            "null_stdin": null_stdin, "ends": ends, "out": out.decode(), "err": err.decode(),
            "code": child.wait(),
            "low_open": [fd for fd in (0, 1, 2) if os.path.exists(f"/proc/self/fd/{fd}")],
        })
    with open(report, "w") as f:
        json.dump(results, f)
    """
)


def test_a_server_started_with_stdio_closed_still_spawns_right(tmp_path: Path) -> None:
    report = tmp_path / "report.json"
    done = subprocess.run(
        [sys.executable, "-c", CLOSED_STDIO, str(report)],
        stdin=subprocess.DEVNULL,
        capture_output=True,
        timeout=20,
    )
    assert done.returncode == 0, done.stderr.decode()
    results = json.loads(report.read_text())
    assert [r["null_stdin"] for r in results] == [False, True, False]
    for r in results:
        assert all(fd > 2 for fd in r["ends"]), r
        expected_in = "" if r["null_stdin"] else "in\n"
        assert r["out"] == f"{expected_in}out\n0\n1\n2\n3\n", r
        assert (r["err"], r["code"]) == ("err\n", 0), r
        assert r["low_open"] == [], r  # the server's 0-2 are still free
