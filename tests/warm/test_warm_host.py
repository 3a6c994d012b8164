"""Warm mode through ``CGIHost`` (the threaded runner): every Python script gives the same
response warm as cold, runs isolated, and a fault costs only its own request."""

from __future__ import annotations

import json
import os
import signal
import sys
import sysconfig
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from cgikit import posix_spawn, warm_request, warm_spawn
from cgikit.cgi_host import CGIHost
from cgikit.warm_zygote import SPARES, SPARES_LOW
from host.hostkit import FAST, SRC, call, write_script

PY = sys.executable
pytestmark = pytest.mark.skipif(not warm_spawn.available(), reason="warm mode is Linux-only")

# name: script text (after a #! line for this interpreter). Each runs cold and warm.
SCRIPTS = {
    "env.py": """\
        import json, os, subprocess, sys
        body = sys.stdin.buffer.read().decode("latin-1")
        os.environ["SET_BY_SCRIPT"] = "yes"  # libc's environ too: what exec'd programs get
        execd = subprocess.run(["/usr/bin/env", "-0"], capture_output=True).stdout
        print("Content-Type: application/json\\n")
        print(json.dumps({
            "execd": sorted(execd.decode("latin-1").split("\\0")),
            "env": dict(os.environ), "cwd": os.getcwd(), "argv": sys.argv,
            "path0": sys.path[0], "file": __file__, "name": __name__, "body": body,
            "enc": [sys.stdout.encoding, sys.stdin.encoding, sys.stderr.encoding],
            "buffered": [sys.stdout.line_buffering, sys.stderr.line_buffering],
            "umask": os.umask(0), "sigpipe": str(__import__("signal").getsignal(13)),
            "main": sorted(k for k in globals() if not k.startswith("__")),
            "dunder": sorted(k for k in globals() if k.startswith("__")),
            "package": __package__, "spec": repr(__spec__),
        }, sort_keys=True))
        """,
    # Signals as a fresh interpreter has them, whatever the server ignores (SIGHUP in a
    # worker): the kernel's masks of the standard signals (a glibc posix_spawn ignores
    # glibc's own 32 and 33 in its child), and Python's view of a few.
    "signals.py": """\
        import json, signal
        with open("/proc/self/status") as f:
            masks = {line[:6]: int(line[7:], 16) & (1 << 31) - 1 for line in f
                     if line.startswith(("SigIgn", "SigBlk", "SigCgt"))}
        names = ["SIGHUP", "SIGINT", "SIGQUIT", "SIGTERM", "SIGPIPE", "SIGXFSZ", "SIGCHLD"]
        print("Content-Type: application/json\\n")
        print(json.dumps({"masks": masks,
                          "python": {n: str(signal.getsignal(getattr(signal, n))) for n in names}}))
        """,
    "status.py": 'print("Status: 404 Not Here\\nContent-Type: text/plain\\n\\nmissing")',
    "redirect.py": 'print("Location: http://example.com/elsewhere\\n")',
    "raises_before.py": """\
        def inner():
            raise ValueError("boom before")
        inner()
        """,
    "raises_after.py": """\
        import sys
        print("Content-Type: text/plain\\n\\npartial", flush=True)
        raise RuntimeError("boom after")
        """,
    "exit_code.py": 'import sys\nprint("Content-Type: text/plain\\n\\nbye")\nsys.exit(3)',
    "exit_message.py": 'import sys\nprint("Content-Type: text/plain\\n\\nbye")\nsys.exit("why")',
    "big.py": """\
        import sys
        sys.stdout.write("Content-Type: application/octet-stream\\n\\n")
        sys.stdout.flush()
        for i in range(256):
            sys.stdout.buffer.write(bytes([i % 256]) * 4096)
        """,
    "writes_first.py": """\
        import sys
        out = sys.stdout.buffer
        out.write(b"Content-Type: text/plain\\n\\n" + b"x" * 200_000)
        out.flush()
        data = sys.stdin.buffer.read()
        out.write(b"\\nread %d\\n" % len(data))
        """,
    "at_exit.py": """\
        import atexit
        atexit.register(lambda: print("from atexit"))
        print("Content-Type: text/plain\\n\\nbody")
        """,
    "thread.py": """\
        import threading, time
        print("Content-Type: text/plain\\n", flush=True)
        def late():
            time.sleep(0.1)
            print("from a thread")
        threading.Thread(target=late).start()
        """,
    "unicode.py": 'print("Content-Type: text/plain; charset=utf-8\\n\\nh\\u00e9llo \\u2603")',
    "left_open.py": """\
        import os
        f = open(os.environ["QUERY_STRING"], "w")
        f.write("written, never closed")
        print("Content-Type: text/plain\\n\\nok")
        """,
}


@pytest.fixture
def cgi(tmp_path: Path) -> Path:
    root = tmp_path / "cgi"
    for name, text in SCRIPTS.items():
        write_script(root, name, PY, text)
    return root


@pytest.fixture
def hosts(cgi: Path) -> Iterator[tuple[CGIHost, CGIHost]]:
    """A cold host and a warm one on the same directory, the warm one's zygote ready."""
    cold, warm = CGIHost(cgi, **FAST), CGIHost(cgi, warm=True, **FAST)
    spawner = warm.warm_spawner()
    assert spawner is not None
    assert spawner.prepare([str(cgi / "env.py")], print)
    yield cold, warm
    warm_spawn.close_all()


def _warm_count(host: CGIHost) -> int:
    spawner = host.warm_spawner()
    return spawner.forks if spawner is not None else 0


@pytest.mark.parametrize("name", sorted(set(SCRIPTS) - {"left_open.py"}))
def test_same_response_warm_and_cold(hosts: tuple[CGIHost, CGIHost], name: str) -> None:
    cold_host, warm_host = hosts
    body = b"q=1&" + b"z" * 1_000_000 if name == "writes_first.py" else b"a=1"
    forks = _warm_count(warm_host)
    cold = call(cold_host, f"/{name}", "POST", body, CONTENT_LENGTH=str(len(body)))
    warm = call(warm_host, f"/{name}", "POST", body, CONTENT_LENGTH=str(len(body)))
    assert _warm_count(warm_host) == forks + 1  # it did run warm
    assert (warm.status, warm.headers) == (cold.status, cold.headers)
    assert warm.body == cold.body
    # The log too: the same traceback, stderr lines and exit status, line for line.
    assert warm.log == cold.log


def test_what_the_server_ignores_no_script_inherits(cgi: Path) -> None:
    """A worker ignores SIGHUP (its master's business); a server started in the
    background by a shell ignores SIGINT and SIGQUIT. Cold (posix_spawn) and warm (the
    zygote, started while they are ignored) alike, the script has them at their
    defaults, as a fresh interpreter would: SIGINT with Python's handler."""
    ignored = (signal.SIGHUP, signal.SIGINT, signal.SIGQUIT)
    previous = {signum: signal.signal(signum, signal.SIG_IGN) for signum in ignored}
    try:
        cold, warm = CGIHost(cgi, **FAST), CGIHost(cgi, warm=True, **FAST)
        spawner = warm.warm_spawner()
        assert spawner is not None
        assert spawner.prepare([str(cgi / "signals.py")], print)  # its zygote: now
        answers = [json.loads(call(host, "/signals.py").body) for host in (cold, warm)]
        assert spawner.forks == 1
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, handler)
        warm_spawn.close_all()
    if posix_spawn.available():  # Popen's fallback resets only SIGPIPE and SIGXFSZ
        assert answers[0] == answers[1]
    python = answers[1]["python"]
    assert (python["SIGHUP"], python["SIGQUIT"]) == ("0", "0")  # SIG_DFL
    assert python["SIGINT"] == str(signal.default_int_handler)
    assert answers[1]["masks"]["SigIgn"] == 1 << signal.SIGPIPE - 1 | 1 << signal.SIGXFSZ - 1


def test_the_environment_is_exactly_the_requests(
    hosts: tuple[CGIHost, CGIHost], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("CGIKIT_TEST_SECRET", "server-only")
    cold_host, warm_host = hosts
    warm = call(warm_host, "/env.py?x=1", HTTP_X_THING="t").json()
    cold = call(cold_host, "/env.py?x=1", HTTP_X_THING="t").json()
    assert warm == cold
    assert "CGIKIT_TEST_SECRET" not in warm["env"]
    assert "SET_BY_SCRIPT=yes" in warm["execd"] and "HTTP_X_THING=t" in warm["execd"]
    assert not any(line.startswith("CGIKIT_TEST_SECRET=") for line in warm["execd"])
    assert warm["env"]["HTTP_X_THING"] == "t" and warm["env"]["QUERY_STRING"] == "x=1"


def test_files_the_script_left_open_are_flushed(
    hosts: tuple[CGIHost, CGIHost], tmp_path: Path
) -> None:
    target = tmp_path / "out.txt"
    result = call(hosts[1], f"/left_open.py?{target}")
    assert result.body == b"ok\n"
    assert target.read_text() == "written, never closed"


# -- isolation ------------------------------------------------------------------------

ISOLATION = {
    "state.py": """\
        # cgikit-preload: json, random
        import json, os, random
        json.cgikit_counter = getattr(json, "cgikit_counter", 0) + 1
        fds = []
        for fd in range(3, 1024):
            try:
                os.fstat(fd)
            except OSError:
                continue
            fds.append(fd)
        print("Content-Type: application/json\\n")
        print(json.dumps({
            "counter": json.cgikit_counter, "random": random.random(), "fds": fds,
            "ppid": os.getppid(), "pid": os.getpid(), "pgid": os.getpgid(0),
            "sid": os.getsid(0),
        }))
        """,
    "optout.py": "# cgikit-warm: no\nimport os\nprint('Content-Type: text/plain\\n')\n"
    "print(os.getppid())",
}


@pytest.fixture
def warm_host(tmp_path: Path) -> Iterator[CGIHost]:
    root = tmp_path / "cgi"
    for name, text in ISOLATION.items():
        write_script(root, name, PY, text)
    write_script(root, "shell.sh", "/bin/sh", "printf 'Content-Type: text/plain\\n\\n%s' $PPID")
    host = CGIHost(root, warm=True, **FAST)
    spawner = host.warm_spawner()
    assert spawner is not None and spawner.prepare([str(root / "state.py")], print)
    yield host
    warm_spawn.close_all()


def test_each_request_gets_fresh_state_and_a_fresh_random_stream(warm_host: CGIHost) -> None:
    runs = [call(warm_host, "/state.py").json() for _ in range(4)]
    zygote = runs[0]["ppid"]
    assert zygote != os.getpid() and "warm_zygote" in Path(f"/proc/{zygote}/cmdline").read_text()
    assert [r["ppid"] for r in runs] == [zygote] * 4  # all forked warm, by one zygote
    assert [r["counter"] for r in runs] == [1, 1, 1, 1]  # a preloaded module, mutated
    assert len({r["random"] for r in runs}) == 4
    for r in runs:  # its own session and group; no descriptor but 0-2
        assert r["pgid"] == r["sid"] == r["pid"]
        assert r["fds"] == []


def test_the_zygote_has_no_threads_and_no_descriptor_but_its_own(warm_host: CGIHost) -> None:
    zygote = call(warm_host, "/state.py").json()["ppid"]
    assert os.listdir(f"/proc/{zygote}/task") == [str(zygote)]
    fds = {
        int(fd): os.readlink(f"/proc/{zygote}/fd/{fd}") for fd in os.listdir(f"/proc/{zygote}/fd")
    }
    # Its socket to us, one to each spare child it forked ahead of the next requests,
    # and its signal wake-up pipe; none reaches a script (test_each_request_gets_fresh
    # _state: no fd above 2 there).
    sockets = [fd for fd in fds if fds[fd].startswith("socket:")]
    pipes = [fd for fd in fds if fds[fd].startswith("pipe:")]
    assert 1 + SPARES_LOW <= len(sockets) <= 1 + SPARES and len(pipes) == 2
    assert {fd for fd in fds if fd > 2} == {*sockets, *pipes}
    assert all(fds[fd] == "/dev/null" for fd in (0, 1))


def test_scripts_that_opt_out_and_other_languages_run_cold(warm_host: CGIHost) -> None:
    forks = _warm_count(warm_host)
    assert call(warm_host, "/optout.py").body.strip() == str(os.getpid()).encode()
    assert call(warm_host, "/shell.sh").body.strip() == str(os.getpid()).encode()
    assert _warm_count(warm_host) == forks


# -- faults ---------------------------------------------------------------------------


def test_a_hanging_script_is_killed_and_the_zygote_serves_on(tmp_path: Path) -> None:
    root = tmp_path / "cgi"
    write_script(root, "hang.py", PY, "import time\ntime.sleep(30)")
    write_script(root, "ok.py", PY, "print('Content-Type: text/plain\\n\\nok')")
    host = CGIHost(root, warm=True, timeout=1.0, idle_timeout=10.0)
    try:
        assert host.warm_spawner().prepare([str(root / "ok.py")], print)  # type: ignore[union-attr]
        started = time.monotonic()
        result = call(host, "/hang.py")
        assert result.code == 504 and time.monotonic() - started < 5
        assert "hang.py: still running after 1 s (timeout); killing its process group" in result.log
        assert call(host, "/ok.py").body == b"ok\n"
        assert _warm_count(host) == 2
    finally:
        warm_spawn.close_all()


def test_a_script_that_exhausts_memory_costs_only_its_request(tmp_path: Path) -> None:
    root = tmp_path / "cgi"
    write_script(
        root,
        "hog.py",
        PY,
        """\
        import resource
        resource.setrlimit(resource.RLIMIT_AS, (1 << 30, 1 << 30))
        hog = [bytearray(1 << 20) for _ in range(4096)]
        """,
    )
    write_script(root, "ok.py", PY, "print('Content-Type: text/plain\\n\\nok')")
    host = CGIHost(root, warm=True, **FAST)
    try:
        assert host.warm_spawner().prepare([str(root / "ok.py")], print)  # type: ignore[union-attr]
        result = call(host, "/hog.py")
        assert result.code == 502 and "MemoryError" in result.log
        assert call(host, "/ok.py").body == b"ok\n"
        assert _warm_count(host) == 2
    finally:
        warm_spawn.close_all()


def test_a_dead_zygote_costs_no_request_and_is_replaced(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(warm_spawn, "RESTART_DELAY", 0.0)
    root = tmp_path / "cgi"
    write_script(
        root, "who.py", PY, "import os\nprint('Content-Type: text/plain\\n')\nprint(os.getppid())"
    )
    host = CGIHost(root, warm=True, **FAST)
    spawner = host.warm_spawner()
    assert spawner is not None
    try:
        assert spawner.prepare([str(root / "who.py")], print)
        first = int(call(host, "/who.py").body)
        os.kill(first, signal.SIGKILL)
        time.sleep(0.2)
        met = call(host, "/who.py")  # meets the dead zygote: served cold
        assert met.code == 200 and int(met.body) == os.getpid()
        assert "warm mode: the zygote for" in met.log and "starting another" in met.log
        assert spawner.prepare([str(root / "who.py")], print)
        second = int(call(host, "/who.py").body)
        assert second not in (first, os.getpid())
    finally:
        warm_spawn.close_all()


def test_scripts_and_preloads_that_cannot_be_imported_run_cold(tmp_path: Path) -> None:
    root = tmp_path / "cgi"
    write_script(root, "broken.py", PY, "print('Content-Type: text/plain\\n')\ndef (:\n")
    write_script(
        root,
        "needs.py",
        PY,
        "# cgikit-preload: cgikit_no_such_module\nimport os\n"
        "print('Content-Type: text/plain\\n')\nprint(os.getppid())",
    )
    host = CGIHost(root, warm=True, **FAST)
    spawner = host.warm_spawner()
    assert spawner is not None
    try:
        assert spawner.prepare([str(root / "broken.py")], print)  # it has no preloads
        broken = call(host, "/broken.py")
        assert broken.code == 502
        assert "broken.py: runs cold: it does not compile" in broken.log
        assert "SyntaxError" in broken.log  # the cold run's own traceback
        logs = []
        for _ in range(50):  # its zygote starts, fails its preload, says so once
            needs = call(host, "/needs.py")
            assert needs.code == 200 and int(needs.body) == os.getpid()
            logs.append(needs.log)
            if "failed" in needs.log:
                break
            time.sleep(0.05)
        text = "".join(logs)
        assert text.count("preload cgikit_no_such_module failed: ModuleNotFoundError") == 1
        assert call(host, "/needs.py").log == ""
        assert spawner.forks == 1  # broken.py's spare, which exec'd it
    finally:
        warm_spawn.close_all()


def test_a_preloaded_codec_is_looked_up_once_in_the_zygote(tmp_path: Path) -> None:
    # encodings.idna, preloaded, is in the encodings package's search cache of every
    # child: no child searches for it again (werkzeug encodes host names with it).
    root = tmp_path / "cgi"
    text = (
        "# cgikit-preload: encodings.idna\nimport encodings\n"
        "print('Content-Type: text/plain\\n')\nprint('idna' in encodings._cache)"
    )
    write_script(root, "codec.py", PY, text)
    host = CGIHost(root, warm=True, **FAST)
    spawner = host.warm_spawner()
    assert spawner is not None
    try:
        assert spawner.prepare([str(root / "codec.py")], print)
        assert call(host, "/codec.py").body == b"True\n"
        assert spawner.forks == 1
    finally:
        warm_spawn.close_all()


def test_an_edited_script_runs_as_edited_on_the_next_request(tmp_path: Path) -> None:
    # The spares waiting already hold the old version, compiled: the worker's stat of
    # the file (sent with the request) tells them it changed.
    root = tmp_path / "cgi"
    path = write_script(root, "edited.py", PY, "print('Content-Type: text/plain\\n')\nprint(1)")
    host = CGIHost(root, warm=True, **FAST)
    spawner = host.warm_spawner()
    assert spawner is not None
    try:
        assert spawner.prepare([str(path)], print)
        # Past the first batch of spares (forked before the zygote knew the script): the
        # ones now waiting were forked with it compiled.
        assert [call(host, "/edited.py").body for _ in range(SPARES + 1)] == [b"1\n"] * (SPARES + 1)
        text = path.read_text().replace("print(1)", "print(2)")  # the same size
        path.write_text(text)
        info = path.stat()
        os.utime(path, ns=(info.st_atime_ns, info.st_mtime_ns + 1_000_000_000))
        assert [call(host, "/edited.py").body for _ in range(3)] == [b"2\n"] * 3
        assert spawner.forks == SPARES + 4
    finally:
        warm_spawn.close_all()


def test_a_failing_global_preload_runs_everything_cold_with_one_log_line(tmp_path: Path) -> None:
    root = tmp_path / "cgi"
    write_script(
        root, "who.py", PY, "import os\nprint('Content-Type: text/plain\\n')\nprint(os.getppid())"
    )
    host = CGIHost(root, warm=True, preload=["cgikit_missing_preload"], **FAST)
    try:
        logs = []
        for _ in range(30):
            result = call(host, "/who.py")
            assert result.code == 200 and int(result.body) == os.getpid()
            logs.append(result.log)
            if any("cgikit_missing_preload" in log for log in logs):
                break
            time.sleep(0.1)
        text = "".join(logs)
        assert text.count("preload cgikit_missing_preload failed: ModuleNotFoundError") == 1
        assert "scripts run cold" in text
        assert call(host, "/who.py").log == ""  # said once
    finally:
        warm_spawn.close_all()


def test_a_preload_that_starts_a_thread_makes_its_scripts_cold(tmp_path: Path) -> None:
    lib = tmp_path / "lib"
    lib.mkdir()
    (lib / "cgikit_threaded.py").write_text(
        "import threading, time\n"
        "threading.Thread(target=time.sleep, args=(60,), daemon=True).start()\n"
    )
    root = tmp_path / "cgi"
    who = "import os\nprint('Content-Type: text/plain\\n')\nprint(os.getppid())"
    write_script(root, "ok.py", PY, who)
    write_script(root, "threads.py", PY, "# cgikit-preload: cgikit_threaded\n" + who)
    host = CGIHost(root, warm=True, env={"PYTHONPATH": str(lib)}, **FAST)
    spawner = host.warm_spawner()
    assert spawner is not None
    try:
        assert spawner.prepare([str(root / "ok.py")], print)
        said: list[str] = []
        assert not spawner.prepare([str(root / "threads.py")], said.append)
        assert said == [
            f"warm mode: {PY} (preload cgikit_threaded): preload cgikit_threaded started a"
            " thread (forking would be unsafe); its scripts run cold"
        ]
        result = call(host, "/threads.py")
        assert int(result.body) == os.getpid()  # cold: its zygote forks nothing
        assert int(call(host, "/ok.py").body) != os.getpid()  # another zygote: warm
        assert spawner.forks == 1
    finally:
        warm_spawn.close_all()


def test_a_module_next_to_the_script_can_be_preloaded_and_built_once(tmp_path: Path) -> None:
    root = tmp_path / "cgi"
    root.mkdir()
    (root / "cgikit_app_module.py").write_text("import os\nbuilt_in = os.getpid()\nrequests = []\n")
    write_script(
        root,
        "thin.py",
        PY,
        """\
        # cgikit-preload: cgikit_app_module
        import os
        import cgikit_app_module as app
        app.requests.append(1)
        print("Content-Type: text/plain\\n")
        print(app.built_in == os.getppid(), len(app.requests))
        """,
    )
    host = CGIHost(root, warm=True, **FAST)
    spawner = host.warm_spawner()
    assert spawner is not None
    try:
        assert spawner.prepare([str(root / "thin.py")], print)
        for _ in range(3):  # built in the zygote; each request sees it fresh
            assert call(host, "/thin.py").body == b"True 1\n"
        assert spawner.forks == 3
        cold = CGIHost(root, **FAST)
        assert call(cold, "/thin.py").body == b"False 1\n"  # cold: built by the script
    finally:
        warm_spawn.close_all()


def test_a_child_killed_at_once_reports_its_exit_at_once(tmp_path: Path) -> None:
    """A client that goes away at once gets its script's group killed, perhaps before
    the zygote has handed the request to the spare: its exit must still be reported
    (it once was not: the worker waited 5 s, its event loop with it)."""
    root = tmp_path / "cgi"
    script = write_script(root, "slow.py", PY, "import time\ntime.sleep(5)")
    spawner = CGIHost(root, warm=True, **FAST).warm_spawner()
    assert spawner is not None
    try:
        assert spawner.prepare([str(script)], print)
        env = {b"PATH": b"/usr/bin:/bin"}
        for _ in range(20):
            child = spawner.spawn([str(script)], env, str(root), null_stdin=False, log=print)
            assert child is not None
            os.killpg(child.pid, signal.SIGTERM)
            started = time.monotonic()
            assert child.wait() == -signal.SIGTERM
            assert time.monotonic() - started < 1.0
            for fd in (child.stdin, child.stdout, child.stderr):
                assert fd is not None
                os.close(fd)
    finally:
        warm_spawn.close_all()


def test_a_preloaded_module_names_what_it_imports_lazily(tmp_path: Path) -> None:
    root = tmp_path / "cgi"
    root.mkdir()
    (root / "cgikit_lazy_parent.py").write_text(
        '__cgikit_preload__ = ("cgikit_lazy_child",)\n'
        "def use():\n    import cgikit_lazy_child\n    return cgikit_lazy_child\n"
    )
    (root / "cgikit_lazy_child.py").write_text("import os\nbuilt_in = os.getpid()\n")
    write_script(
        root,
        "lazy.py",
        PY,
        """\
        # cgikit-preload: cgikit_lazy_parent
        import os
        import cgikit_lazy_parent
        print("Content-Type: text/plain\\n")
        print(cgikit_lazy_parent.use().built_in == os.getppid())
        """,
    )
    host = CGIHost(root, warm=True, **FAST)
    spawner = host.warm_spawner()
    assert spawner is not None
    try:
        assert spawner.prepare([str(root / "lazy.py")], print)
        assert call(host, "/lazy.py").body == b"True\n"  # imported in the zygote
    finally:
        warm_spawn.close_all()


def test_cgikit_names_the_modules_its_run_imports() -> None:
    """What ``cgikit.run`` imports when it runs is what cgikit asks a zygote to preload."""
    import subprocess

    import cgikit

    code = (
        "import sys, cgikit\n"
        "before = set(sys.modules)\n"
        "def app(environ, start_response):\n"
        "    start_response('200 OK', [('Content-Type', 'text/plain')])\n"
        "    return [b'x']\n"
        "cgikit.run(app)\n"
        "sys.stderr.write(' '.join(sorted(set(sys.modules) - before)))\n"
    )
    env = {"GATEWAY_INTERFACE": "CGI/1.1", "REQUEST_METHOD": "GET", "PYTHONPATH": str(SRC)}
    env |= {"SERVER_PROTOCOL": "HTTP/1.1", "SERVER_NAME": "x", "SERVER_PORT": "80"}
    done = subprocess.run([PY, "-c", code], env=env, capture_output=True, timeout=30)
    assert done.returncode == 0 and done.stdout.startswith(b"Status: 200")
    imported = {name for name in done.stderr.decode().split() if name.startswith("cgikit")}
    assert imported == set(cgikit.__cgikit_preload__)


WARM_APP = """\
import os, cgikit
seen = []  # what the app saw, and in which process

def app(environ, start_response):
    seen.append([os.getpid(), environ["SCRIPT_NAME"], environ["PATH_INFO"],
                 environ["QUERY_STRING"], environ.get("HTTP_USER_AGENT")])
    if environ["PATH_INFO"] == "/boom":
        raise RuntimeError("warm-up boom")
    start_response("404 Not Found" if environ["PATH_INFO"] == "/gone" else "200 OK",
                   [("Content-Type", "text/plain")])
    return [b"x" * 200_000]  # more than a pipe holds: the warm-up must not block

warmed = cgikit.warm_up(app, os.environ.get("WARM_PATH", "/ping?x=1"), script_name="/app")
"""
WARM_SCRIPT = """\
# cgikit-preload: cgikit_warm_app
import json, os, cgikit_warm_app as mod
print("Content-Type: application/json\\n")
print(json.dumps({"warmed": mod.warmed, "zygote": [s[0] == os.getppid() for s in mod.seen],
                  "seen": [s[1:] for s in mod.seen], "flag": os.environ.get("CGIKIT_ZYGOTE")}))
"""


def _warm_up_host(root: Path, warm_path: str) -> CGIHost:
    (root / "cgikit_warm_app.py").write_text(WARM_APP)
    write_script(root, "thin.py", PY, WARM_SCRIPT)
    env = [f"PYTHONPATH={SRC}", f"WARM_PATH={warm_path}"]
    return CGIHost(root, warm=True, env=env, **FAST)


def test_warm_up_makes_its_requests_in_the_zygote_and_children_inherit_them(
    tmp_path: Path,
) -> None:
    root = tmp_path / "cgi"
    root.mkdir()
    host = _warm_up_host(root, "/ping?x=1")
    spawner = host.warm_spawner()
    assert spawner is not None
    try:
        assert spawner.prepare([str(root / "thin.py")], print)
        for _ in range(2):  # the zygote's requests, in each child; none of its own
            got = json.loads(call(host, "/thin.py").body)
            assert got == {
                "warmed": True,
                "zygote": [True] * warm_request.REQUESTS,
                "seen": [["/app", "/ping", "x=1", "cgikit-warm-up"]] * warm_request.REQUESTS,
                "flag": None,  # a child's environment is its request's
            }
        assert spawner.forks == 2
        cold = CGIHost(root, env=[f"PYTHONPATH={SRC}"], **FAST)
        got = json.loads(call(cold, "/thin.py").body)
        assert got == {"warmed": False, "zygote": [], "seen": [], "flag": None}  # a no-op
    finally:
        warm_spawn.close_all()


@pytest.mark.parametrize(
    ("warm_path", "logged"),
    [("/boom", "RuntimeError: warm-up boom"), ("/gone", "answered 404 Not Found")],
)
def test_a_failing_warm_up_is_logged_and_the_zygote_serves_on(
    tmp_path: Path, capfd: pytest.CaptureFixture[str], warm_path: str, logged: str
) -> None:
    root = tmp_path / "cgi"
    root.mkdir()
    host = _warm_up_host(root, warm_path)
    spawner = host.warm_spawner()
    assert spawner is not None
    try:
        assert spawner.prepare([str(root / "thin.py")], print)  # warm all the same
        got = json.loads(call(host, "/thin.py").body)
        assert got["warmed"] is False and got["zygote"] == [True]  # not made again
        assert spawner.forks == 1
    finally:
        warm_spawn.close_all()
    errors = capfd.readouterr().err  # the zygote's stderr is the server's
    assert f"cgikit: warm-up GET /app{warm_path}: " in errors
    assert errors.count(logged) == 1  # the first failure ends the warm-up


def test_warm_up_outside_a_zygote_imports_nothing() -> None:
    import subprocess

    code = (
        "import sys, cgikit\n"
        "before = set(sys.modules)\n"
        "assert cgikit.warm_up(lambda e, s: [b''], '/') is False\n"
        "print(' '.join(sorted(set(sys.modules) - before)))\n"
    )
    env = {"PYTHONPATH": str(SRC), "CGIKIT_ZYGOTE": "0"}
    done = subprocess.run([PY, "-c", code], env=env, capture_output=True, timeout=30)
    assert done.returncode == 0, done.stderr
    assert done.stdout.split() == []  # a cold script pays nothing for the call


# A script that builds its Flask app itself, and says (before it does) whether Flask's
# and werkzeug's app-building code has run here already: specialized or quickened
# instructions (PEP 659) are the zygote's warm-up (cgikit.warm_flask), inherited.
FLASK_BUILT = """\
# cgikit-preload: flask
import dis, os, sys
import flask
from werkzeug.routing import Rule

def ran(function):
    return any(i.opname not in dis.opmap for i in dis.get_instructions(function, adaptive=True))

before = {"flask": ran(flask.Flask.__init__), "rule": ran(Rule.__init__),
          "context": flask.has_app_context(), "module": "cgikit.warm_flask" in sys.modules,
          "forked": os.getppid() != int(os.environ["QUERY_STRING"])}
app = flask.Flask(__name__)

@app.route("/")
def hello():
    return flask.jsonify(before)

import cgikit
cgikit.run(app)
"""


@pytest.mark.skipif(
    bool(sysconfig.get_config_var("Py_GIL_DISABLED")),
    reason="a free-threaded CPython does not specialize bytecode",
)
def test_a_preloaded_flask_is_warmed_for_scripts_that_build_their_own_app(
    tmp_path: Path,
) -> None:
    root = tmp_path / "cgi"
    write_script(root, "built.py", PY, FLASK_BUILT)
    env = [f"PYTHONPATH={SRC}"]
    warm, cold = CGIHost(root, warm=True, env=env, **FAST), CGIHost(root, env=env, **FAST)
    spawner = warm.warm_spawner()
    assert spawner is not None
    try:
        assert spawner.prepare([str(root / "built.py")], print)
        query = {"QUERY_STRING": str(os.getpid())}
        for _ in range(2):
            got = json.loads(call(warm, "/built.py/", **query).body)
            assert got == {"flask": True, "rule": True, "context": False, "module": True,
                           "forked": True}  # fmt: skip
        assert spawner.forks == 2
        got = json.loads(call(cold, "/built.py/", **query).body)
        assert got == {"flask": False, "rule": False, "context": False, "module": False,
                       "forked": False}  # fmt: skip
    finally:
        warm_spawn.close_all()


# Not Flask: a module of that name beside the script, preloaded in its place.
FAKE_FLASK = """\
import threading, time

class Flask:
    def __init__(self, *args, **kwargs):
        if THREAD:
            threading.Thread(target=time.sleep, args=(60,), daemon=True).start()
        raise RuntimeError("not this flask")

def render_template_string(*args, **kwargs):
    return ""
"""
WHO = "# cgikit-preload: flask\nimport os\nprint('Content-Type: text/plain\\n')\n"
WHO += "print(os.getppid())"


@pytest.mark.parametrize(
    ("flags", "logged"),
    [
        ("", "cgikit: warm-up GET /cgikit-warm-flask/: failed to build the app: "
             "RuntimeError: not this flask"),
        # -S: no site-packages, so no cgikit for this interpreter (nor Flask: the fake)
        (" -S", "cgikit: warm-up skipped: preload cgikit.warm_flask failed: "
                "ModuleNotFoundError: No module named 'cgikit'"),
    ],
)  # fmt: skip
def test_a_framework_warm_up_that_fails_is_logged_once_and_the_zygote_forks_on(
    tmp_path: Path, capfd: pytest.CaptureFixture[str], flags: str, logged: str
) -> None:
    root = tmp_path / "cgi"
    write_script(root, "who.py", PY + flags, WHO)
    (root / "flask.py").write_text("THREAD = False\n" + FAKE_FLASK)
    env = [] if flags else [f"PYTHONPATH={SRC}"]  # -S keeps PYTHONPATH: none for it
    host = CGIHost(root, warm=True, env=env, **FAST)
    spawner = host.warm_spawner()
    assert spawner is not None
    try:
        assert spawner.prepare([str(root / "who.py")], print)
        for _ in range(2):
            assert int(call(host, "/who.py").body) != os.getpid()  # forked: warm
        assert spawner.forks == 2
    finally:
        warm_spawn.close_all()
    assert capfd.readouterr().err.count(logged) == 1


def test_a_framework_warm_up_that_starts_a_thread_makes_its_scripts_cold(
    tmp_path: Path,
) -> None:
    root = tmp_path / "cgi"
    write_script(root, "who.py", PY, WHO)
    (root / "flask.py").write_text("THREAD = True\n" + FAKE_FLASK)
    host = CGIHost(root, warm=True, env=[f"PYTHONPATH={SRC}"], **FAST)
    spawner = host.warm_spawner()
    assert spawner is not None
    try:
        said: list[str] = []
        assert not spawner.prepare([str(root / "who.py")], said.append)
        assert said == [
            f"warm mode: {PY} (preload flask): preload cgikit.warm_flask started a thread"
            " (forking would be unsafe); its scripts run cold"
        ]
        assert int(call(host, "/who.py").body) == os.getpid()  # cold: nothing forked
        assert spawner.forks == 0
    finally:
        warm_spawn.close_all()
