"""Warm mode's spawner: a Python script forked from a warm parent, not exec'd (issue 5).

``WarmSpawner.spawn`` is tried before the cold spawn (``posix_spawn`` / Popen) when a
host runs with ``warm``. For a script ``warm_plan`` accepts, it sends the request's
pipes, argv, directory and environment straight to the next of the children its zygote
(``warm_zygote``, one per interpreter command and set of the scripts' own preloads,
with their directory; started on first use with the server's allow-listed
environment) forked ahead, and announced with its pid and a socket to it; that child
runs the script; and the spawner returns a
``WarmChild``: what ``ProcessGroup``, ``cgi_runner`` and ``script_task`` already
drive (pid = process group, non-blocking pipe ends). Anything that keeps a script from
running warm gives ``None``, and the caller runs it cold, so no request is lost to
warm mode: a zygote still starting, one whose preloads failed (logged once), one that
has died (logged; a new one is started, at most once every ``RESTART_DELAY`` seconds
for one that keeps dying young). A script that does not compile is exec'd by the
child, as cold, with the reason in the log.

The child is the zygote's, not ours: its exit is seen through a pidfd (readable once
it has exited, whoever its parent), and its status is the one the zygote reports when
it reaps it. Linux only (``available()``); elsewhere every script runs cold.

Zygotes belong to the process that started them: a forked worker starts its own.
"""

from __future__ import annotations

import functools
import os
import sys
import threading
import time
from collections.abc import Callable, Sequence
from typing import Final

from cgikit import posix_spawn
from cgikit.cgi_meta import Environment
from cgikit.warm_link import WarmChild, Zygote, ZygoteKey
from cgikit.warm_plan import HEAD_BYTES, Cold, WarmPlan, plan

__all__ = ["WarmChild", "WarmSpawner", "available", "close_all", "spawner"]

RESTART_DELAY: Final = 5.0
# How long a request waits for its zygote to start before it runs cold: none, so that
# no request waits on an import (tests set it, to run every script warm).
START_WAIT = 0.0
Log = Callable[[str], None]


@functools.cache
def available() -> bool:
    """Whether warm mode can work here: Linux's pidfds and /proc."""
    return hasattr(os, "pidfd_open") and os.path.isdir("/proc/self")


class WarmSpawner:
    """The zygotes of one process and one host configuration (``preload``, ``env``:
    the server's allow-listed environment the zygotes start with)."""

    def __init__(self, preload: Sequence[str], env: dict[str, str]) -> None:
        self._preload, self._env = tuple(preload), env
        self._zygotes: dict[ZygoteKey, Zygote] = {}
        self._retry_at: dict[ZygoteKey, float] = {}
        # Per script path: its stamp (ino:dev:mtime_ns:size, what a spare is told too),
        # its plan, and its zygote's key (a realpath).
        self._plans: dict[str, tuple[bytes, WarmPlan | Cold, ZygoteKey]] = {}
        self._lock = threading.Lock()
        self.forks = 0  # scripts run warm, for tests and benchmarks
        self.closed = False

    def spawn(
        self, argv: Sequence[str], env: Environment, cwd: str, *, null_stdin: bool, log: Log
    ) -> WarmChild | None:
        """The script forked by its zygote, or None: run it cold (module docstring)."""
        with self._lock:
            how, key, stamp = self._plan(argv, log)
            zygote = self._usable(key, log) if isinstance(how, WarmPlan) else None
            if zygote is None:
                return None
            parents, children = posix_spawn.pipes(null_stdin=null_stdin)
            try:
                pid = zygote.run(argv, cwd, env, children, stamp)
            except OSError as exc:  # ConnectionError, TimeoutError: it is dead or stuck
                posix_spawn.close_ends(parents)
                self._drop(zygote, f"stopped answering ({exc}); running the script cold", log)
                return None
            finally:
                posix_spawn.close_ends(children)
            self.forks += 1
            return WarmChild(pid, parents, zygote)

    def prepare(self, argv: Sequence[str], log: Log, timeout: float = 30.0) -> bool:
        """Start the script's zygote with its preloads and wait until it is ready (the
        first requests are otherwise run cold while it starts); whether it runs warm."""
        with self._lock:
            how, key, _stamp = self._plan(argv, log)
            if not isinstance(how, WarmPlan):
                return False
            deadline = time.monotonic() + timeout
            while self._usable(key, log) is None:
                if key not in self._zygotes or time.monotonic() > deadline:
                    return False
                waiting = self._zygotes[key]
                if waiting.failure is not None:
                    return False
                try:
                    waiting.wait_ready(max(0.0, deadline - time.monotonic()))
                except OSError:
                    pass  # dead: ``_usable`` says so and starts another
            return True

    def _plan(self, argv: Sequence[str], log: Log) -> tuple[WarmPlan | Cold, ZygoteKey, bytes]:
        """``warm_plan.plan`` for the script, its zygote's key and the file's stamp,
        cached per version of the file."""
        path = argv[-1]
        try:
            info = os.stat(path)
        except OSError as exc:
            return Cold(f"cannot stat it: {exc.strerror}"), ((), (), ""), b""
        stamp = b"%d:%d:%d:%d" % (info.st_ino, info.st_dev, info.st_mtime_ns, info.st_size)
        cached = self._plans.get(path)
        if cached is not None and cached[0] == stamp:
            return cached[1], cached[2], stamp
        try:
            with open(path, "rb") as f:
                head = f.read(HEAD_BYTES)
        except OSError as exc:
            how: WarmPlan | Cold = Cold(f"cannot read it: {exc.strerror}")
        else:
            how = plan(argv, head, sys.executable)
        if isinstance(how, Cold) and how.mistake:
            log(f"{path}: runs cold: {how.reason}")
        zygote = _key(how, argv) if isinstance(how, WarmPlan) else ((), (), "")
        self._plans[path] = (stamp, how, zygote)
        return how, zygote, stamp

    def _usable(self, key: ZygoteKey, log: Log) -> Zygote | None:
        """The key's zygote if it takes a request now; starts one if there is none."""
        zygote = self._zygotes.get(key)
        if zygote is None:
            if time.monotonic() < self._retry_at.get(key, 0.0):
                return None
            try:
                zygote = self._zygotes[key] = Zygote(key, self._preload, self._env)
            except OSError as exc:
                log(f"warm mode: cannot start {' '.join(key[0])}: {exc}")
                self._retry_at[key] = time.monotonic() + RESTART_DELAY
                return None
        try:
            ready = zygote.check() or (START_WAIT > 0 and zygote.wait_ready(START_WAIT))
        except ConnectionError as exc:
            self._drop(zygote, str(exc), log)
            return None
        if zygote.failure is not None:  # its preloads failed: every script runs cold
            if not zygote.failure_logged:
                zygote.failure_logged = True
                log(f"warm mode: {zygote.name}: {zygote.failure}; its scripts run cold")
            return None
        return zygote if ready else None

    def _drop(self, zygote: Zygote, why: str, log: Log) -> None:
        log(f"warm mode: the zygote for {zygote.name} {why}; starting another")
        self._zygotes.pop(zygote.key, None)
        if time.monotonic() - zygote.started < RESTART_DELAY:  # it dies young: wait
            self._retry_at[zygote.key] = time.monotonic() + RESTART_DELAY
        zygote.proc.kill()  # by its pid: it is our child
        zygote.read_pending()  # the spares it named before it died
        zygote.close()
        zygote.reap_spares()

    def close(self) -> None:
        """Stop every zygote (scripts already forked run on)."""
        with self._lock:
            zygotes, self._zygotes, self.closed = list(self._zygotes.values()), {}, True
        for zygote in zygotes:
            zygote.close()


def _key(how: WarmPlan, argv: Sequence[str]) -> ZygoteKey:
    """Scripts share a zygote when they share an interpreter command and their own
    preloads; with some, also their directory (a module there may be one of them)."""
    directory = os.path.dirname(os.path.realpath(argv[-1])) if how.preload else ""
    return how.command, how.preload, directory


_spawners: dict[tuple[object, ...], WarmSpawner] = {}
_owner = 0  # the process the spawners belong to
_spawners_lock = threading.Lock()


def spawner(preload: Sequence[str], env: dict[str, str]) -> WarmSpawner:
    """This process's spawner for a host configuration (one per process: a forked
    worker gets its own zygotes, not its parent's)."""
    global _owner
    key = (tuple(preload), tuple(sorted(env.items())))
    with _spawners_lock:
        if _owner != os.getpid():
            _spawners.clear()  # the parent's: their sockets are the parent's business
            _owner = os.getpid()
        found = _spawners.get(key)
        if found is None:
            found = _spawners[key] = WarmSpawner(preload, env)
        return found


def close_all() -> None:
    """Stop this process's zygotes (a server that stops; tests)."""
    with _spawners_lock:
        spawners = list(_spawners.values()) if _owner == os.getpid() else []
        _spawners.clear()
    for each in spawners:
        each.close()
