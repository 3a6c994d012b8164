"""Warm mode's child: what a spare does once it has its request (issue 5). It becomes
the script's process, as a cold start would have made it, runs the script as
``__main__`` and exits as an interpreter would.

Stdlib only, like ``warm_zygote``, whose loader runs this file beside it. Every line run
here after the fork copies pages shared with the zygote: so the work is kept small, and
the environment goes to libc in one assignment.
"""

from __future__ import annotations

# Signal calls go to the C module: ``signal``'s wrappers build enums.
import _signal  # type: ignore[import-not-found]
import array
import atexit
import builtins
import ctypes
import itertools
import os
import sys
import types
from importlib.machinery import SourceFileLoader

# Whether this interpreter gives ``__main__`` an ``__annotations__`` dict before the
# script runs (3.11-3.13 do): looked at in our own ``__main__``, before any import.
_ANNOTATIONS = "__annotations__" in vars(sys.modules["__main__"])


class Script:
    """A compiled script: its code, its path, its real directory (``sys.path[0]``)."""

    __slots__ = ("code", "directory", "path")

    def __init__(self, code: types.CodeType, path: str, directory: str) -> None:
        self.code, self.path, self.directory = code, path, directory


def detach() -> None:
    """A forked child's first step: the zygote's SIGCHLD handler and mask undone, and a
    session (and process group) of its own (research §3 row 10)."""
    _signal.signal(_signal.SIGCHLD, _signal.SIG_DFL)
    _signal.set_wakeup_fd(-1)
    _signal.pthread_sigmask(_signal.SIG_SETMASK, ())
    os.setsid()


def exec_cold(argv: list[bytes], cwd: str, env: list[bytes], fds: list[int], why: str) -> None:
    """Run the script as the cold path would (exec), saying why on its stderr (the
    server's log): what a spare does with a script it cannot run itself."""
    status = 127
    try:
        for target, fd in enumerate(fds):
            os.dup2(fd, target)
        os.closerange(3, os.sysconf("SC_OPEN_MAX"))
        os.chdir(cwd)
        os.write(2, why.encode("utf-8", "replace") + b"\n")
        environ = dict(entry.partition(b"=")[::2] for entry in env)
        os.execve(argv[0], argv, environ)
    except BaseException as exc:
        os.write(2, f"cannot start: {exc}\n".encode("utf-8", "replace"))
    os._exit(status)


def become(
    script: Script, cwd: str, env: list[bytes], fds: list[int], command: list[str], *, learner: bool
) -> None:
    """In a forked child: run the script, exit with its status (never returns).

    Its descriptors are closed first: the exit's teardown of an address space mapped
    like the zygote's takes a millisecond or two, and the server ends the response at
    the EOF. Then it yields the CPU: the server, woken by the EOF, often on this CPU,
    would otherwise wait behind that teardown. A learner then stops for the zygote to
    read its pages (``Zygote.learn``): after the EOF, so that no client waits for that."""
    status = 127
    try:
        _enter(script, cwd, env, fds, command)
        status = _run(script.code, script.path)
        os.closerange(0, os.sysconf("SC_OPEN_MAX"))  # and any copy of them (cgikit.run's)
        os.sched_yield()  # the server, woken by the EOF, goes first (cgikit.yield_cpu)
        if learner:
            os.kill(os.getpid(), _signal.SIGSTOP)
    except BaseException:
        try:
            import traceback

            traceback.print_exc()
            sys.stderr.flush()
        finally:
            os._exit(status)
    os._exit(status)


def _enter(script: Script, cwd: str, env: list[bytes], fds: list[int], command: list[str]) -> None:
    """Become the script's process: what ``posix_spawn`` and the interpreter's start
    would have set up for a cold run (``_detach`` has been)."""
    for target, fd in enumerate(fds):
        os.dup2(fd, target)
    os.closerange(3, os.sysconf("SC_OPEN_MAX"))
    os.chdir(cwd)
    _set_environ(env)
    sys.argv[:] = [script.path]
    if hasattr(sys, "orig_argv"):
        sys.orig_argv[:] = [*command, script.path]
    sys.path.insert(0, script.directory)


_environ: list[object] = []  # what libc's environ points into: it must outlive us
_POINTER = "Q" if ctypes.sizeof(ctypes.c_void_p) == 8 else "I"  # array typecode
try:
    _ENVIRON: ctypes.c_void_p | None = ctypes.c_void_p.in_dll(ctypes.CDLL(None), "environ")
except (AttributeError, ValueError, OSError):  # no such symbol here: the setenv way
    _ENVIRON = None


def _set_environ(env: list[bytes]) -> None:
    """Make ``env`` (``NAME=value`` strings) the process's environment: libc's (what
    exec'd programs get) and ``os.environ`` (which shares one dict with os.environb,
    filled directly, not through its MutableMapping methods).

    libc's ``environ`` is pointed at two arrays made here: the NUL-ended strings in one
    buffer, and the NULL-ended pointers into it. One assignment, where a setenv and an
    unsetenv per variable took a tenth of a millisecond; and no ctypes array, whose type
    (one per length) a child would make anew each time, for half the cost again. libc
    copes with an environ it did not allocate: a later setenv or putenv copies it.
    Without ctypes, the setenv way.
    """
    data = os.environ._data  # type: ignore[attr-defined]
    names = list(data)
    data.clear()
    for entry in env:
        name, _, value = entry.partition(b"=")
        data[name] = value
    if _ENVIRON is None:
        for name in names:
            os.unsetenv(name)
        for name, value in data.items():
            os.putenv(name, value)
        return
    # The layout of posix_spawn._environment_block (execve's envp), made with array
    # here: this file runs where cgikit may not be importable.
    strings = array.array("B", b"\0".join(env) + b"\0")
    lengths = [len(entry) + 1 for entry in env]
    pointers = array.array(_POINTER, itertools.accumulate(lengths, initial=_address(strings)))
    pointers[-1] = 0  # the NULL that ends environ
    _environ[:] = [strings, pointers]
    _ENVIRON.value = _address(pointers)


def _address(buffer: array.array[int]) -> int:
    return buffer.buffer_info()[0]


def _run(code: types.CodeType, path: str) -> int:
    """Run the script as ``__main__``; its exit status, after the interpreter's exit."""
    main = types.ModuleType("__main__")
    main.__dict__.update(
        __file__=path,
        __cached__=None,
        __builtins__=builtins,
        __loader__=SourceFileLoader("__main__", path),
    )
    if _ANNOTATIONS:
        main.__annotations__ = {}
    sys.modules["__main__"] = main
    try:
        exec(code, main.__dict__)
        status = 0
    except SystemExit as exc:
        status = _exit_status(exc.code)
    except BaseException as exc:  # the interpreter's way: a traceback, then status 1
        tb = exc.__traceback__.tb_next if exc.__traceback__ else None
        sys.excepthook(type(exc), exc.with_traceback(tb), tb)
        status = 1
        if isinstance(exc, KeyboardInterrupt):
            status = 130
    return _finish(status, main)


def _exit_status(code: object) -> int:
    if code is None:
        return 0
    if isinstance(code, int):
        return code & 0xFF
    try:
        print(code, file=sys.stderr)
    except Exception:
        pass
    return 1


def _finish(status: int, main: types.ModuleType) -> int:
    """The interpreter's exit, less the parts that cannot be seen from outside."""
    threading = sys.modules.get("threading")
    if threading is not None:
        threading._shutdown()  # non-daemon threads are joined, as at a real exit
    atexit._run_exitfuncs()
    main.__dict__.clear()  # the script's objects go: files it left open are flushed
    try:
        sys.stdout.flush()
    except Exception:
        status = status or 120
    try:
        sys.stderr.flush()
    except Exception:
        pass
    return status
