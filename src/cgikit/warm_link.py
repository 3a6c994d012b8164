"""Warm mode's link to one zygote, on the worker's side: the zygote process, the
socket to it, the spares it announced, and the children it forked for this worker's
requests (``WarmChild``). ``warm_spawn`` decides which script goes to which zygote;
``warm_zygote`` (run by the script's own interpreter, with ``warm_pages`` and
``warm_child`` beside it) is the other end.
"""

from __future__ import annotations

import array
import collections
import contextlib
import os
import select
import socket
import subprocess
import threading
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Final

from cgikit.cgi_meta import Environment, envp_of

__all__ = ["REPLY_TIMEOUT", "WarmChild", "Zygote", "ZygoteKey"]

# The zygote's program, read now and handed over on a pipe: a server started as root
# reads it before it gives root up, and the user it then runs scripts as may not be
# able to read the file (a checkout in a private directory). The command line stays
# short: a loader that reads the pipe, named so that ps shows what the process is.
# Four files: the _HELPERS run first, each as a module object the zygote finds in its
# globals (no import: scripts' interpreters need not have cgikit), then warm_zygote.py.
_HELPERS: Final = ("warm_pages", "warm_child", "warm_preload")
ZYGOTE_SOURCE: Final = b"\0".join(
    (Path(__file__).parent / f"{name}.py").read_bytes() for name in (*_HELPERS, "warm_zygote")
)
_LOADER: Final = (
    "import os, sys, types  # cgikit warm_zygote\n"
    "fd, code = int(sys.argv.pop(1)), b''\n"
    "while chunk := os.read(fd, 65536):\n"
    "    code += chunk\n"
    "os.close(fd)\n"
    "*helpers, code = code.split(b'\\0')\n"
    f"for name, text in zip({_HELPERS!r}, helpers):\n"
    "    globals()[name] = types.ModuleType(name)\n"
    "    exec(compile(text, f'cgikit-{name}', 'exec'), vars(globals()[name]))\n"
    "exec(compile(code, 'cgikit-warm-zygote', 'exec'))\n"
)
REPLY_TIMEOUT: Final = 5.0  # a zygote slower to name a spare or an exit is taken for dead
_MAX_MESSAGE: Final = 1 << 20
Fds = tuple[int, int, int]
ZygoteKey = tuple[tuple[str, ...], tuple[str, ...], str]  # command, own preloads, dir


class WarmChild:
    """A script forked by a zygote (module docstring): ``poll`` and ``wait`` as Popen's;
    its pipes as ``posix_spawn.Child``'s (non-blocking). Not a subclass of it: that
    one is compiled in the optional build, and a compiled class takes none."""

    __slots__ = ("_pidfd", "_zygote", "pid", "returncode", "stderr", "stdin", "stdout")

    def __init__(self, pid: int, ends: tuple[int | None, int, int], zygote: Zygote) -> None:
        self.pid = pid
        self.stdin, self.stdout, self.stderr = ends
        self.returncode: int | None = None
        self._zygote = zygote
        try:
            self._pidfd = os.pidfd_open(pid)
        except ProcessLookupError:  # a quick script, exited and reaped already:
            self._pidfd = -1  # its status is on the way from the zygote

    def poll(self) -> int | None:
        if self.returncode is None and (self._pidfd < 0 or _readable(self._pidfd, 0.0)):
            self._collect()
        return self.returncode

    def wait(self) -> int:
        while self.returncode is None:
            if self._pidfd >= 0:
                _readable(self._pidfd, None)
            self._collect()
        return self.returncode

    def _collect(self) -> None:
        with _collect_lock:  # the loop and a reaper thread may both ask
            if self.returncode is None:
                self.returncode = self._zygote.exit_code(self.pid)
                if self._pidfd >= 0:
                    os.close(self._pidfd)
                    self._pidfd = -1


_collect_lock = threading.Lock()


def _readable(fd: int, timeout: float | None) -> bool:
    return bool(select.select([fd], [], [], timeout)[0])


_ONE_FD: Final = socket.CMSG_SPACE(array.array("i").itemsize)


def _descriptor(ancillary: list[tuple[int, int, bytes]]) -> int | None:
    """The one descriptor a message carries (a spare's socket), if any."""
    fds = array.array("i")
    for level, kind, data in ancillary:
        if level == socket.SOL_SOCKET and kind == socket.SCM_RIGHTS:
            fds.frombytes(data[: len(data) - len(data) % fds.itemsize])
    for extra in fds[1:]:
        os.close(extra)
    return fds[0] if fds else None


class Zygote:
    """One running ``warm_zygote`` and the worker's end of its socket.

    Its messages are read under ``_lock`` by whoever needs one: ``exit`` reports are
    filed in ``_statuses``, ``spare`` announcements queued in ``spares`` (the children
    forked ahead, which take the requests in that order: each with its pid and our end
    of a socket to it), ``ready``/``fail`` set the
    state. The zygote is not on a request's way: one process less to wake.
    """

    def __init__(self, key: ZygoteKey, preload: Sequence[str], env: dict[str, str]):
        self.key = command, mine, directory = key
        self.name = " ".join(command) + (f" (preload {','.join(mine)})" if mine else "")
        ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        ours.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, _MAX_MESSAGE)
        source, source_w = os.pipe()
        try:
            os.write(source_w, ZYGOTE_SOURCE)  # less than a pipe holds: no wait
            os.close(source_w)
            args = [str(source), *_args(theirs.fileno(), preload, mine, directory)]
            self.proc = subprocess.Popen(
                [*command, "-c", _LOADER, *args],
                pass_fds=(theirs.fileno(), source),
                stdin=subprocess.DEVNULL,
                stdout=subprocess.DEVNULL,
                env=env,
                cwd="/",
                start_new_session=True,  # a signal to the server's group is not its
            )
        except BaseException:
            ours.close()
            raise
        finally:
            theirs.close()
            os.close(source)
        self.sock = ours
        self.started = time.monotonic()
        self.ready = False
        self.failure: str | None = None  # the preloads failed: it never runs anything
        self.failure_logged = False
        self._lock = threading.Lock()
        self._statuses: dict[int, int] = {}
        self.spares: collections.deque[tuple[int, socket.socket]] = collections.deque()
        self.forked: set[int] = set()  # its spares not given a request yet, ready or not
        self._told: set[str] = set()  # the scripts it was told of (to compile ahead)

    def check(self) -> bool:
        """Whether it takes a request now (``ready`` read, without waiting).

        Raises:
            ConnectionError: it has died.
        """
        with self._lock:
            if not self.ready:
                self._pump(0.0, lambda: self.ready)
            return self.ready

    def wait_ready(self, timeout: float) -> bool:
        """Wait until it has imported its preloads (``WarmSpawner.prepare``)."""
        with self._lock:
            self._pump(timeout, lambda: self.ready or self.failure is not None)
            return self.ready

    def run(
        self, argv: Sequence[str], cwd: str, env: Environment, fds: Fds, stamp: bytes = b""
    ) -> int:
        """Send the request to the next spare child, whose pid this returns: no answer
        to wait for (a spare that cannot compile the script execs it, as cold). A spare
        that has died since its announcement is passed over.

        Raises:
            ConnectionError, OSError: the zygote is dead or stuck.
        """
        fields = [stamp, b"%d" % len(argv), *map(os.fsencode, argv), os.fsencode(cwd)]
        fields += envp_of(env)
        rights = [(socket.SOL_SOCKET, socket.SCM_RIGHTS, array.array("i", fds))]
        with self._lock:
            # Gone? One waitpid, not the messages it sent since (read when needed: its
            # exits by ``exit_code``, its spares when none is left), on a request's way.
            if self.proc.poll() is not None:
                raise ConnectionError(f"it exited ({self.proc.returncode})")
            while True:
                if not self._pump(REPLY_TIMEOUT, lambda: bool(self.spares)):
                    raise TimeoutError(f"no spare child in {REPLY_TIMEOUT:g} s")
                pid, spare = self.spares.popleft()
                self.forked.discard(pid)
                try:
                    spare.sendmsg([b"\0".join(fields)], rights)
                    sent = True
                except OSError:
                    sent = False  # it is gone: its exit comes from the zygote all the same
                finally:
                    spare.close()
                # The zygote counts its spares by this (not by theirs: under load one may
                # wait a while for a CPU before it runs), and forks more when none is left.
                self.sock.send(b"took\0%d" % pid)
                if sent:
                    break
            if argv[-1] not in self._told:  # for the spares to come: compiled once, ahead
                self._told.add(argv[-1])
                self.sock.send(b"script\0" + os.fsencode(argv[-1]))
            return pid

    def exit_code(self, pid: int) -> int:
        """The exit code of its child ``pid``, which has exited (Popen's convention)."""
        with self._lock:
            try:
                self._pump(REPLY_TIMEOUT, lambda: pid in self._statuses)
            except OSError:
                pass  # it died: its orphans were re-parented, maybe to us
            status = self._statuses.pop(pid, None)
        if status is None:
            with contextlib.suppress(ChildProcessError):
                status = os.waitpid(pid, os.WNOHANG)[1] or None
        return 255 if status is None else os.waitstatus_to_exitcode(status)

    def _pump(self, timeout: float, done: Callable[[], bool]) -> bool:
        """Read messages until ``done()``, for at most ``timeout`` seconds."""
        deadline = time.monotonic() + timeout
        while not done():
            try:
                message, ancillary, _flags, _addr = self.sock.recvmsg(
                    _MAX_MESSAGE, _ONE_FD, socket.MSG_DONTWAIT | socket.MSG_CMSG_CLOEXEC
                )
            except BlockingIOError:
                left = deadline - time.monotonic()
                if left <= 0 or not _readable(self.sock.fileno(), left):
                    return False
                continue
            self._file(message, _descriptor(ancillary))
        return True

    def _file(self, message: bytes, fd: int | None) -> None:
        if not message:
            raise ConnectionError("it exited")
        kind, _, text = message.partition(b"\0")
        if kind == b"spare" and fd is not None:
            # Its kind given: socket() would otherwise ask the kernel (three calls).
            spare = socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET, 0, fileno=fd)
            self.spares.append((int(text), spare))
            return
        if fd is not None:
            os.close(fd)  # carried by no other message
        if kind == b"exit":
            pid, _, status = text.partition(b"\0")
            self._statuses[int(pid)] = int(status)
        elif kind == b"forked":
            self.forked.add(int(text))
        elif kind == b"ready":
            self.ready = True
        elif kind == b"fail":
            self.failure = text.decode("utf-8", "replace")
        else:
            raise ConnectionError(f"unexpected message {kind!r}")

    def read_pending(self) -> None:
        """File what it sent and was not read yet (it may have died since)."""
        with self._lock, contextlib.suppress(OSError):
            self._pump(0.0, lambda: False)

    def reap_spares(self) -> None:
        """After its death: its spare children, orphaned, exit at once (their sockets'
        end); reaped here if they came to us (a subreaper), not left as zombies."""
        self._let_spares_go()
        deadline = time.monotonic() + 1.0
        for pid in self.forked:
            while time.monotonic() < deadline:
                try:
                    if os.waitpid(pid, os.WNOHANG)[0]:
                        break
                except ChildProcessError:
                    break  # init's, or reaped: not ours to wait for
                time.sleep(0.005)

    def _let_spares_go(self) -> None:
        """Close our ends of the spares' sockets: each spare exits at their EOF."""
        with self._lock:
            spares, self.spares = list(self.spares), collections.deque()
        for _pid, spare in spares:
            spare.close()

    def close(self) -> None:
        """End it (its socket's EOF makes it exit), by its pid if it does not."""
        self._let_spares_go()
        self.sock.close()
        try:
            self.proc.wait(1.0)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()


def _args(fd: int, preload: Sequence[str], mine: Sequence[str], directory: str) -> list[str]:
    """The zygote's arguments: its socket, the host's preloads, the scripts', their dir."""
    return [str(fd), ",".join(preload), ",".join(mine), directory]
