"""A CGI script's process and its process group: spawn it, reap it, kill the group.

``spawn`` starts the script as the leader of a new session, so its pid is also the id
of a process group that holds everything it starts. ``ProcessGroup`` then reaps it
(``returncode``), tells whether anything of the group is left (``alive``), kills the
whole group (SIGTERM, ``grace``, SIGKILL) and logs how the script ended. The pipes,
the selector and the timeouts are ``cgi_runner``'s.

Spawning: libc's posix_spawn through ``posix_spawn`` (chdir, setsid, closefrom in one
vfork'd call, the GIL let go), else ``subprocess.Popen``, which does the same in C.

The group, not one pid, is killed: a background process a script leaves behind dies
with it. Killed grandchildren are reaped by init, or by the server when it is a child
subreaper (``prctl(PR_SET_CHILD_SUBREAPER)``; needed where PID 1 reaps nothing, as in
containers without an init): ``alive`` reaps every member of the group that is our child.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import threading
import time
from collections.abc import Callable, Sequence
from typing import IO, Final, Protocol

from cgikit import posix_spawn
from cgikit.cgi_meta import Environment, environb_of
from cgikit.warm_spawn import WarmChild, WarmSpawner

KILL_WAIT: Final = 1.0  # how long a SIGKILLed group may take to disappear

__all__ = ["Process", "ProcessGroup", "Spawned", "kill_all", "spawn"]

_live: set[ProcessGroup] = set()  # groups not yet gone, for kill_all
_live_lock = threading.Lock()


def spawn(
    argv: Sequence[bytes | str],
    env: Environment,
    cwd: str,
    warm: WarmSpawner | None = None,
    log: Callable[[str], None] = lambda line: None,
) -> Spawned:
    """Start the script in ``cwd`` with exactly ``env``, its three pipes non-inherited.

    ``warm``: a Python script is forked by warm mode's zygote if it can be
    (``warm_spawn``; ``log`` takes its messages), else started as below.

    libc's posix_spawn where it can do all of it (``posix_spawn.available``): a ctypes
    call that lets go of the GIL, where ``Popen`` holds it through the whole vfork on
    Python < 3.11.5 (CPython gh-104372), stalling every other thread of the server.

    Raises:
        OSError: the script cannot be started (not found, not executable).
    """
    args = [os.fsdecode(a) for a in argv]
    if warm is not None:
        child = warm.spawn(args, env, cwd, null_stdin=False, log=log)
        if child is not None:
            return _Spawned(child)
    if posix_spawn.available():
        return _Spawned(posix_spawn.spawn(args, env, cwd))
    return subprocess.Popen(
        argv,
        bufsize=0,
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        cwd=cwd,
        env=environb_of(env),  # bytes, exactly these: no inheritance
        close_fds=True,
        start_new_session=True,  # its own process group (research §3 row 10)
    )


class _Spawned:
    """A ``posix_spawn.Child`` with Popen's face: its pipes as unbuffered file objects."""

    def __init__(self, child: posix_spawn.Child | WarmChild) -> None:
        self._child, self.pid = child, child.pid
        if child.stdin is None:
            raise RuntimeError("a pipe was asked for stdin")
        self.stdin: IO[bytes] | None = open(child.stdin, "wb", buffering=0)  # noqa: SIM115
        self.stdout: IO[bytes] | None = open(child.stdout, "rb", buffering=0)  # noqa: SIM115
        self.stderr: IO[bytes] | None = open(child.stderr, "rb", buffering=0)  # noqa: SIM115

    def poll(self) -> int | None:
        return self._child.poll()

    def wait(self) -> int:
        return self._child.wait()


class Process(Protocol):
    """What the group needs of a spawned script: Popen, or ``posix_spawn.Child``."""

    pid: int

    def poll(self) -> int | None: ...
    def wait(self) -> int: ...


class Spawned(Process, Protocol):
    """A script started by ``spawn``: Popen, or posix_spawn's child with file objects."""

    stdin: IO[bytes] | None
    stdout: IO[bytes] | None
    stderr: IO[bytes] | None


class ProcessGroup:
    """The spawned script (``pid``, also the group id) and its group, for one run.

    ``returncode`` is set once the script is reaped (negative for a signal). ``grace``
    is the time between SIGTERM and SIGKILL; ``log`` and ``name`` are the runner's.
    """

    def __init__(
        self,
        proc: Process,
        grace: float,
        log: Callable[[str], None],
        name: str,
    ) -> None:
        self._proc, self._grace, self._log, self._name = proc, grace, log, name
        self.pid = proc.pid
        self.returncode: int | None = None
        with _live_lock:
            _live.add(self)

    def exited(self) -> bool:
        """Whether the script has exited (a poll; it is reaped by ``reap``)."""
        return self._proc.poll() is not None

    def reap(self) -> int:
        """Wait for the script itself, which has exited or is about to."""
        self.returncode = self._proc.wait()
        return self.returncode

    def kill(self) -> None:
        """SIGTERM the whole group, wait ``grace`` for it to go, then SIGKILL it.

        The group, not one pid: Apache and Go kill the direct child only, and
        fcgiwrap's ``kill(SIGTERM, pid)`` has its arguments swapped (PR #44), so a
        grandchild holding the pipes lived on (research §3 rows 9 and 10, R17).
        """
        self._signal(signal.SIGTERM)
        if self.wait_gone(time.monotonic() + self._grace):
            return
        self._log(f"{self._name}: still there {self._grace:g} s after SIGTERM; sending SIGKILL")
        self._signal(signal.SIGKILL)
        self.wait_gone(time.monotonic() + KILL_WAIT)

    def _signal(self, signum: int) -> None:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(self.pid, signum)

    def wait_gone(self, deadline: float) -> bool:
        """Reap the script, then wait until its group is empty; False at the deadline."""
        while True:
            if self.returncode is None:
                self.returncode = self._proc.poll()
            if self.returncode is not None and not self.alive():
                return True
            if time.monotonic() >= deadline:
                return False
            time.sleep(0.01)

    def alive(self) -> bool:
        """Whether the group has members; reaps those that are our children first.

        Only after the script itself is reaped: its pid, the group id, cannot be reused
        while the group has members (POSIX), so the probe cannot hit a stranger.
        """
        if not self._probe():  # the usual answer, and it needs no reaping first: a
            return False  # zombie member still counts as one for the probe
        with contextlib.suppress(ChildProcessError):
            while os.waitpid(-self.pid, os.WNOHANG)[0]:
                pass
        return self._probe()

    def _probe(self) -> bool:
        try:
            os.killpg(self.pid, 0)
        except ProcessLookupError:
            return False
        except PermissionError:  # a member that changed its user: still a member
            pass
        return True

    def log_status(self, killed: str | None) -> None:
        """Log how the script ended; ``killed`` is why the runner killed it, or None.

        The run is over: the group leaves the set ``kill_all`` works on.
        """
        with _live_lock:
            _live.discard(self)
        code = self.returncode
        if code is None:
            self._log(f"{self._name}: pid {self.pid} did not die after SIGKILL")
        elif code > 0:  # after a valid response too: logged, the response stands
            self._log(f"{self._name}: exited with status {code}")
        elif code < 0 and killed is None:
            self._log(f"{self._name}: killed by signal {-code}")


def kill_all(log: Callable[[str], None]) -> int:
    """SIGKILL every group whose run has not ended; the number of groups killed.

    For a server that stops: its in-flight requests had their grace period, and a
    script must not outlive the server that ran it (the threads driving the runs are
    about to die with the process, so no one else would end them).
    """
    with _live_lock:
        groups = list(_live)
        _live.clear()
    for group in groups:
        log(f"{group._name}: still running at shutdown; killing its process group")
        group._signal(signal.SIGKILL)
        group.wait_gone(time.monotonic() + KILL_WAIT)
    return len(groups)
