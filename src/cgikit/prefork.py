"""Pre-forked worker processes: one bound socket, several processes serving it.

Owns the master's side of a multi-process server and the process roles that go with
it. ``run_workers`` forks ``count`` workers that each run ``work(index, stop)`` (the
caller's serving loop, which returns once the ``threading.Event`` is set; ``index`` in
``range(count)`` tells the workers apart, a replacement gets its predecessor's) and
supervises them until SIGTERM or SIGINT:

- A worker that dies on its own is logged and replaced; one that dies within
  ``CRASH_WINDOW`` of its start is replaced only after ``RESTART_DELAY`` (a worker that
  cannot start must not fork-loop).
- SIGTERM or SIGINT (Ctrl-C reaches every process of the foreground group): every
  worker gets SIGTERM and stops as its ``work`` does (in-flight requests finish within
  the caller's grace); one still there ``grace`` seconds later is killed.
- SIGHUP: new workers are started, then the old ones are told to stop, so no request is
  refused during the change (as Apache's graceful restart).

Why processes: spawning a script holds the GIL for the whole ``vfork`` until the child
has called ``exec`` on Python < 3.11.5 (CPython gh-104372), and each request has some
Python work of its own; a single process then caps the host at one core's worth of
spawns. Several processes, each with its own GIL, spawn in parallel as Apache's and
nginx's workers do.

The master holds no threads (``fork`` of a threaded process copies locks in unknown
states), waits for its signals with ``sigtimedwait`` (no handler runs between
syscalls) and reaps every child it gets: its workers, and, as a child subreaper,
orphans a dead worker's scripts left behind. A worker dies with the master
(``PR_SET_PDEATHSIG`` on Linux; elsewhere it notices its new parent).
"""

from __future__ import annotations

import contextlib
import os
import signal
import sys
import threading
import time
import traceback
from collections.abc import Callable
from typing import Final

__all__ = ["become_subreaper", "die_with_parent", "run_workers"]

CRASH_WINDOW: Final = 1.0  # a worker that dies this soon after its start is crashing
RESTART_DELAY: Final = 1.0  # and is replaced only after this delay
PR_SET_PDEATHSIG: Final = 1  # <linux/prctl.h>
PR_SET_CHILD_SUBREAPER: Final = 36
_MASTER_SIGNALS: Final = {signal.SIGTERM, signal.SIGINT, signal.SIGHUP, signal.SIGCHLD}


def _prctl(option: int, value: int) -> bool:
    """``prctl(option, value)`` through libc (Linux only); False where it cannot be done."""
    if sys.platform != "linux":
        return False
    import ctypes

    try:
        libc = ctypes.CDLL(None, use_errno=True)
        return int(libc.prctl(option, value, 0, 0, 0)) == 0
    except (OSError, AttributeError):
        return False


def become_subreaper(enable: bool = True) -> bool:
    """Make this process the reaper of its orphaned descendants (Linux; else a no-op).

    A script killed on a timeout dies with its process group, but a grandchild that
    outlives its parent is re-parented to the nearest subreaper, else to PID 1. In a
    container PID 1 is often this server or a shell that reaps nothing, so those
    orphans would stay zombies for ever. As a subreaper they come back here, and
    ``cgi_runner`` reaps every member of a killed group that is its child (its docstring).
    ``enable=False`` gives the role up again (tests do, after a module of them).
    """
    return _prctl(PR_SET_CHILD_SUBREAPER, int(enable))


def die_with_parent(signum: int = signal.SIGTERM) -> bool:
    """Ask for ``signum`` when the parent process dies (Linux); False elsewhere."""
    return _prctl(PR_SET_PDEATHSIG, int(signum))


def run_workers(
    count: int,
    work: Callable[[int, threading.Event], None],
    *,
    log: Callable[[str], None],
    grace: float,
    on_stop: Callable[[], None] = lambda: None,
) -> None:
    """Fork ``count`` workers running ``work(index, stop)``; supervise them until SIGTERM/SIGINT.

    ``on_stop`` runs in the master when it stops (close its copy of the listening
    socket, so new clients are refused rather than left in a backlog no one accepts
    from). Returns once every worker is gone.

    Raises:
        ValueError: ``count`` is not a positive int.
    """
    if type(count) is not int or count < 1:
        raise ValueError(f"workers must be a positive int: {count!r}")
    old_mask = signal.pthread_sigmask(signal.SIG_BLOCK, _MASTER_SIGNALS)
    try:
        _Master(count, work, log, grace, old_mask).run(on_stop)
    finally:
        signal.pthread_sigmask(signal.SIG_SETMASK, old_mask)


class _Master:
    """The supervisor's state: live workers (pid -> index, start time), what is next."""

    def __init__(
        self,
        count: int,
        work: Callable[[int, threading.Event], None],
        log: Callable[[str], None],
        grace: float,
        child_mask: set[int | signal.Signals],
    ) -> None:
        self.count, self.work, self.log, self.grace = count, work, log, grace
        self.child_mask = child_mask
        self.workers: dict[int, tuple[int, float]] = {}
        self.retiring: set[int] = set()
        self.restart_at: float | None = None

    def run(self, on_stop: Callable[[], None]) -> None:
        become_subreaper()  # a dead worker's orphans come back here and are reaped
        for _ in range(self.count):
            self.start_worker()
        try:
            while (signum := self.wait_signal()) not in (signal.SIGTERM, signal.SIGINT):
                if signum == signal.SIGHUP:
                    self.replace_all()
                self.reap()
                self.top_up()
        finally:
            on_stop()
            self.stop_all()

    def wait_signal(self) -> int | None:
        """The next signal for the master, or None after a second (to retry restarts)."""
        info = signal.sigtimedwait(_MASTER_SIGNALS, 1.0)
        return None if info is None else info.si_signo

    def start_worker(self) -> None:
        used = {index for pid, (index, _) in self.workers.items() if pid not in self.retiring}
        index = min(set(range(self.count)) - used)
        pid = os.fork()
        if pid == 0:  # the worker: never returns
            _worker_main(lambda stop: self.work(index, stop), self.child_mask, self.log)
        self.workers[pid] = (index, time.monotonic())

    def reap(self) -> None:
        """Reap every child that has exited; a worker's death is logged."""
        while True:
            try:
                pid, status = os.waitpid(-1, os.WNOHANG)
            except ChildProcessError:
                return
            if pid == 0:
                return
            worker = self.workers.pop(pid, None)
            if worker is None or pid in self.retiring:
                self.retiring.discard(pid)
                continue  # an orphaned script, or a worker told to go
            self.log(f"worker {pid} {_describe(status)}; starting another")
            if time.monotonic() - worker[1] < CRASH_WINDOW:
                self.restart_at = time.monotonic() + RESTART_DELAY

    def top_up(self) -> None:
        """Start workers until there are ``count`` that are not retiring."""
        if self.restart_at is not None and time.monotonic() < self.restart_at:
            return
        self.restart_at = None
        while len(self.workers) - len(self.retiring) < self.count:
            self.start_worker()

    def replace_all(self) -> None:
        """SIGHUP: start a new set of workers, then let the old set finish and go."""
        old = [pid for pid in self.workers if pid not in self.retiring]
        self.log(f"SIGHUP: replacing {len(old)} worker(s)")
        self.retiring.update(old)
        self.top_up()
        for pid in old:
            _signal(pid, signal.SIGTERM)

    def stop_all(self) -> None:
        """SIGTERM every worker; SIGKILL the ones still there after the grace period."""
        self.retiring.update(self.workers)
        for pid in self.workers:
            _signal(pid, signal.SIGTERM)
        deadline = time.monotonic() + self.grace + 5.0
        while self.workers and time.monotonic() < deadline:
            self.reap()
            signal.sigtimedwait({signal.SIGCHLD}, 0.1)
        for pid in list(self.workers):
            self.log(f"worker {pid} still running {self.grace:g} s after SIGTERM; killing it")
            _signal(pid, signal.SIGKILL)
            with contextlib.suppress(ChildProcessError):
                os.waitpid(pid, 0)
        self.workers.clear()


def _worker_main(
    work: Callable[[threading.Event], None],
    mask: set[int | signal.Signals],
    log: Callable[[str], None],
) -> None:
    """The forked worker: signals to ``stop``, run ``work``, then ``os._exit``."""
    status = 1
    try:
        stop = threading.Event()
        master = os.getppid()
        for signum in (signal.SIGTERM, signal.SIGINT):
            signal.signal(signum, lambda *_: stop.set())
        signal.signal(signal.SIGHUP, signal.SIG_IGN)  # the master's business
        signal.signal(signal.SIGCHLD, signal.SIG_DFL)
        signal.pthread_sigmask(signal.SIG_SETMASK, mask)
        if not die_with_parent() or os.getppid() != master:
            _watch_parent(master, stop)
        become_subreaper()  # its scripts' orphans are its own to reap
        work(stop)
        status = 0
    except BaseException:
        with contextlib.suppress(Exception):
            log(f"worker {os.getpid()} failed:\n{traceback.format_exc().rstrip()}")
    finally:
        with contextlib.suppress(Exception):
            sys.stdout.flush()
            sys.stderr.flush()
        os._exit(status)


def _watch_parent(master: int, stop: threading.Event) -> None:
    """Without PR_SET_PDEATHSIG: a thread that sets ``stop`` once the master is gone."""

    def watch() -> None:
        while not stop.wait(0.5):
            if os.getppid() != master:
                stop.set()

    threading.Thread(target=watch, name="cgikit-parent-watch", daemon=True).start()


def _signal(pid: int, signum: int) -> None:
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, signum)


def _describe(status: int) -> str:
    if os.WIFSIGNALED(status):
        return f"was killed by signal {os.WTERMSIG(status)}"
    return f"exited with status {os.waitstatus_to_exitcode(status)}"
