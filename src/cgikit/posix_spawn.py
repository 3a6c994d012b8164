"""Start a CGI script with libc's ``posix_spawn``: the event-driven path's spawner.

Why not ``subprocess.Popen``: it is correct but costs ~100 us of Python per spawn (an
error pipe, file objects, an environment re-encoded per variable), more than the rest
of a request on ``loop_server``; and ``os.posix_spawn`` cannot set the working
directory in Python 3.11, which RFC 3875 §7.2 asks for. So the C function is called
through ctypes, with everything in one call that glibc runs in a vfork'd child:

- the three pipe ends dup2'ed onto 0, 1 and 2; every other descriptor closed
  (``addclosefrom_np``: what Popen's ``close_fds`` does, for any descriptor the server
  may hold without close-on-exec);
- the script's directory as working directory (``addchdir_np``, glibc 2.29);
- a new session, so the script leads its own process group (research §3 row 10);
- every signal back to its default, an empty signal mask: a script starts as a fresh
  process would, not with what the server ignores (SIGPIPE and SIGXFSZ, which Python
  ignores; SIGHUP, which a worker leaves to the master; SIGINT and SIGQUIT for a server
  started in the background by a shell). Popen's ``restore_signals`` resets only the
  first two. One ``sigaction`` per signal in the vfork'd child: given none, glibc asks
  each disposition before it resets a handler, twice the calls.

``available()`` says whether this libc has all of it (glibc >= 2.34); otherwise
``process_group.spawn`` (Popen) is used. Errors (no such file, not executable, a bad
interpreter line) come back as the OSError Popen would raise.
"""

from __future__ import annotations

import array
import ctypes
import fcntl
import itertools
import os
import signal
import threading
from collections.abc import Sequence
from typing import Final

from cgikit.cgi_meta import Environment, envp_of

__all__ = ["Child", "available", "close_ends", "pipes", "prepare", "spawn"]

_STRUCT_SIZE: Final = 1024  # room for glibc's posix_spawn_file_actions_t / attr_t (<400)
_POINTER: Final = "Q" if ctypes.sizeof(ctypes.c_void_p) == 8 else "I"  # array typecode
_SETSIGDEF: Final = 0x04  # POSIX_SPAWN_SETSIGDEF
_SETSIGMASK: Final = 0x08  # POSIX_SPAWN_SETSIGMASK
_UNCATCHABLE: Final = frozenset({signal.SIGKILL, signal.SIGSTOP})  # no disposition to set
_SETSID: Final = 0x80  # POSIX_SPAWN_SETSID (glibc 2.26)
_NEEDED: Final = (
    "posix_spawn",
    "posix_spawn_file_actions_init",
    "posix_spawn_file_actions_destroy",
    "posix_spawn_file_actions_adddup2",
    "posix_spawn_file_actions_addchdir_np",
    "posix_spawn_file_actions_addclosefrom_np",
    "posix_spawnattr_init",
    "posix_spawnattr_setflags",
    "posix_spawnattr_setsigdefault",
    "posix_spawnattr_setsigmask",
    "sigemptyset",
    "sigaddset",
)


class Child:
    """A spawned script: ``pid`` and the parent's ends of its pipes (raw descriptors,
    already non-blocking).

    ``poll`` and ``wait`` reap it as Popen's do, so ``process_group`` can use either.
    """

    __slots__ = ("pid", "returncode", "stderr", "stdin", "stdout")

    def __init__(self, pid: int, stdin: int | None, stdout: int, stderr: int) -> None:
        self.pid, self.stdin, self.stdout, self.stderr = pid, stdin, stdout, stderr
        self.returncode: int | None = None

    def poll(self) -> int | None:
        if self.returncode is None:
            pid, status = os.waitpid(self.pid, os.WNOHANG)
            if pid:
                self.returncode = os.waitstatus_to_exitcode(status)
        return self.returncode

    def wait(self) -> int:
        if self.returncode is None:
            self.returncode = os.waitstatus_to_exitcode(os.waitpid(self.pid, 0)[1])
        return self.returncode


class _Libc:
    """The libc functions and the spawn attributes, which are the same for every spawn."""

    def __init__(self) -> None:
        libc = ctypes.CDLL(None, use_errno=True)
        for name in _NEEDED:
            getattr(libc, name)  # AttributeError: this libc lacks it
        self.libc = libc
        self.attr = ctypes.create_string_buffer(_STRUCT_SIZE)
        defaults = ctypes.create_string_buffer(_STRUCT_SIZE)  # a sigset_t
        empty = ctypes.create_string_buffer(_STRUCT_SIZE)
        libc.sigemptyset(defaults)
        libc.sigemptyset(empty)
        for signum in range(1, signal.NSIG):
            if signum not in _UNCATCHABLE:
                libc.sigaddset(defaults, signum)  # EINVAL for libc's own 32 and 33,
                # which glibc sets to SIG_IGN in the child whatever the set says
        _check(libc.posix_spawnattr_init(self.attr))
        _check(libc.posix_spawnattr_setflags(self.attr, _SETSID | _SETSIGDEF | _SETSIGMASK))
        _check(libc.posix_spawnattr_setsigdefault(self.attr, defaults))
        _check(libc.posix_spawnattr_setsigmask(self.attr, empty))


_libc: _Libc | None = None
_missing = False


def prepare() -> bool:
    """Load libc and open the /dev/null kept for scripts' stdin now, not on the first
    request (a server's descriptor count stays flat from its start); ``available()``."""
    if available():
        _devnull()
    return _libc is not None


def available() -> bool:
    """Whether ``spawn`` works here (Linux with glibc >= 2.34, or a libc alike)."""
    global _libc, _missing
    if _libc is None and not _missing:
        try:
            _libc = _Libc()
        except (AttributeError, OSError):
            _missing = True
    return _libc is not None


def spawn(argv: Sequence[str], env: Environment, cwd: str, *, null_stdin: bool = False) -> Child:
    """Start ``argv`` in ``cwd`` with exactly ``env`` and new pipes for 0, 1 and 2
    (``null_stdin``: stdin is /dev/null, and ``Child.stdin`` None).

    Raises:
        OSError: the script cannot be started; RuntimeError: not ``available()``.
    """
    if not available() or _libc is None:
        raise RuntimeError("posix_spawn with chdir and closefrom is not available")
    path = os.fsencode(argv[0])
    args = [os.fsencode(a) for a in argv]
    envp = envp_of(env)
    parents, children = pipes(null_stdin=null_stdin)
    try:
        pid = _spawn(_libc, path, args, envp, os.fsencode(cwd), *children)
    except BaseException:
        close_ends(parents + children)
        raise
    close_ends(children)
    return Child(pid, *parents)


def pipes(*, null_stdin: bool) -> tuple[tuple[int | None, int, int], tuple[int, int, int]]:
    """A script's three pipes: the parent's ends (stdin's None with ``null_stdin``), then
    the script's (for its 0, 1 and 2; the shared /dev/null for stdin with ``null_stdin``).

    The parent's ends are non-blocking (for the event loop), the script's blocking; all
    close-on-exec and none of them 0-2, or a dup2 onto 0-2 would clobber one.
    """
    ins = (_devnull(), -1) if null_stdin else _pipe(child_reads=True)
    ends: tuple[int, ...] = (*ins, *_pipe(child_reads=False), *_pipe(child_reads=False))
    if min(fd for fd in ends if fd >= 0) < 3:
        ends = tuple(_above_stdio(fd) for fd in ends)
    stdin = None if null_stdin else ends[1]
    return (stdin, ends[2], ends[4]), (ends[0], ends[3], ends[5])


def close_ends(fds: Sequence[int | None]) -> None:
    """Close the pipe ends of ``pipes`` that are this call's (not the shared /dev/null)."""
    for fd in fds:
        if fd is not None and fd not in (-1, _null_fd):
            os.close(fd)


_null_fd = -1


def _devnull() -> int:
    """One /dev/null descriptor for the process, close-on-exec, dup2'ed into scripts."""
    global _null_fd
    if _null_fd < 0:
        _null_fd = _above_stdio(os.open(os.devnull, os.O_RDONLY | os.O_CLOEXEC))
    return _null_fd


def _spawn(
    lib: _Libc, path: bytes, args: list[bytes], envp: list[bytes], cwd: bytes, *fds: int
) -> int:
    actions = _actions(lib, cwd, fds)
    pid = ctypes.c_int()
    argv_c = (ctypes.c_char_p * (len(args) + 1))(*args, None)
    envp_c = _environment_block(envp)
    err = lib.libc.posix_spawn(ctypes.byref(pid), path, actions, lib.attr, argv_c, envp_c)
    if err:
        raise OSError(err, os.strerror(err), os.fsdecode(path))
    return pid.value


def _environment_block(envp: list[bytes]) -> ctypes.Array[ctypes.c_char]:
    """execve's envp in one buffer: the NULL-ended pointer array, then the strings it
    points to. A c_char_p array converts each of the twenty-odd strings by itself, at
    several times the cost; and one object keeps the strings alive through the call
    (a compiled build may free a local after its last use, before the call)."""
    strings = b"\0".join(envp) + b"\0"
    head = (len(envp) + 1) * ctypes.sizeof(ctypes.c_void_p)
    block = ctypes.create_string_buffer(head + len(strings))
    start = ctypes.addressof(block) + head
    pointers = list(itertools.accumulate([len(entry) + 1 for entry in envp], initial=start))
    pointers[-1] = 0  # the NULL that ends envp
    ctypes.memmove(block, array.array(_POINTER, pointers).tobytes() + strings, len(block))
    return block


class _Actions(threading.local):
    """This thread's file actions, by (cwd, fds): a server's pipes come back with the
    same numbers request after request, and a script directory is the same, so they
    are built once rather than per spawn (building costs eight calls into libc, and
    glibc checks each descriptor against RLIMIT_NOFILE: seven getrlimit syscalls).
    posix_spawn only reads them; each thread has its own, so none is destroyed while
    another thread spawns with it."""

    def __init__(self) -> None:
        self.made = _Kept()


class _Kept(dict[tuple[bytes, tuple[int, ...]], "ctypes.Array[ctypes.c_char]"]):
    """One thread's file actions; destroyed with it (libc holds memory for each)."""

    def __del__(self) -> None:
        if _libc is not None:
            for actions in self.values():
                _libc.libc.posix_spawn_file_actions_destroy(actions)


_ACTIONS_KEPT: Final = 32  # per thread: the descriptors and directories seen lately
_cached = _Actions()


def _actions(lib: _Libc, cwd: bytes, fds: tuple[int, ...]) -> ctypes.Array[ctypes.c_char]:
    made = _cached.made
    key = (cwd, fds)
    actions = made.get(key)
    if actions is not None:
        return actions
    libc = lib.libc
    actions = ctypes.create_string_buffer(_STRUCT_SIZE)
    _check(libc.posix_spawn_file_actions_init(actions))
    # Non-zero is an errno; the first failure stops the chain.
    err = (
        libc.posix_spawn_file_actions_adddup2(actions, fds[0], 0)
        or libc.posix_spawn_file_actions_adddup2(actions, fds[1], 1)
        or libc.posix_spawn_file_actions_adddup2(actions, fds[2], 2)
        or libc.posix_spawn_file_actions_addchdir_np(actions, cwd)
        or libc.posix_spawn_file_actions_addclosefrom_np(actions, 3)
    )
    if err:
        libc.posix_spawn_file_actions_destroy(actions)
        raise OSError(err, os.strerror(err))
    if len(made) >= _ACTIONS_KEPT:  # the oldest goes (dicts keep insertion order)
        libc.posix_spawn_file_actions_destroy(made.pop(next(iter(made))))
    made[key] = actions
    return actions


def _pipe(*, child_reads: bool) -> tuple[int, int]:
    """A close-on-exec pipe whose parent end is non-blocking: two calls, not five."""
    read, write = os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)
    fcntl.fcntl(read if child_reads else write, fcntl.F_SETFL, 0)  # the script's end
    return read, write


def _above_stdio(fd: int) -> int:
    """``fd``, or a close-on-exec copy of it above 2 (a server started with 0-2 closed)."""
    if fd > 2 or fd == -1:
        return fd
    try:
        return fcntl.fcntl(fd, fcntl.F_DUPFD_CLOEXEC, 3)
    finally:
        os.close(fd)


def _check(err: int) -> None:
    if err:
        raise OSError(err, os.strerror(err))
