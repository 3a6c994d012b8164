"""The warm parent ("zygote") of warm mode: a program, run by a script's own interpreter.

``warm_spawn`` starts it as ``<#! command> -c LOADER FD PRELOAD MINE DIR`` with the
server's allow-listed environment, one per interpreter command and set of script
preloads. It imports the PRELOAD modules (the host's, comma-separated), then MINE (the
scripts' own) with DIR, their directory, leading ``sys.path`` as it does when they run
(so a thin script's app module beside it is built once, here; ``CGIKIT_ZYGOTE=1`` is
in its environment meanwhile, for ``cgikit.warm_up``'s requests; then the warm-ups of
the frameworks it preloaded, ``warm_preload``), tells its worker
``ready`` over the SOCK_SEQPACKET socket FD, and forks "spares" ahead of requests,
announced to the worker by pid, each with a socket to it. The worker sends each
request straight to the next spare, which runs the
script as ``__main__`` with exactly the CGI contract of a cold run: a new session (its
own process group), fd 0/1/2 the request's pipes and no other descriptor, the request's
environment and nothing else, the script's directory as working directory and first
``sys.path`` entry, ``sys.argv`` = [script]. The child ends as an interpreter would:
``SystemExit``'s code, a traceback and status 1 for an uncaught exception, non-daemon
threads joined, atexit handlers run, stdout flushed (status 120 if that fails). Then
its descriptors are closed (the server ends the response at that EOF, not after the
exit's teardown) and ``os._exit``: the rest of a full finalization would touch, and
so copy, every page shared with the zygote (``warm_child``).

What a cold run would do and the zygote does not: start a new interpreter (so its hash
seed is the zygote's; ``random`` is reseeded at the fork by its own at-fork hook), and
re-import the preloaded modules (their import-time side effects happened once).

The zygote has no threads and holds no descriptor but 0-2 (/dev/null), its socket, its
spares' sockets and its signal wake-up pipe: no server socket or other request's pipe
can reach a child, which closes everything above 2 anyway. A script the spare cannot
compile is exec'd (cold, as it would have been), the reason on its stderr. It reaps its
children on SIGCHLD (the handler runs between bytecodes, so even while a preload is
importing) and tells the worker each one's wait status.

Messages (NUL-separated fields; stdlib only, no cgikit import: any Python 3 runs it):
  worker -> zygote  ``took`` pid (a spare it sent a request to, or found dead)
                    ``script`` path (once a script: compiled here for later spares)
  zygote -> worker  ``ready`` | ``fail`` reason (after the preloads: it runs nothing)
                    ``forked`` pid (a spare, not ready yet: if the zygote dies, the
                    worker reaps it), then ``spare`` pid (+ a socket to it: it is
                    ready to take a coming request)
                    ``exit`` pid status (at any time: a child was reaped)
  worker -> spare   stamp count argv... cwd k=v... (+3 descriptors), then the
                    close (stamp: the script's ino:dev:mtime_ns:size, as the worker saw it)

"""

from __future__ import annotations

# The C modules _signal and _socket, not signal and socket: those build enums on each
# call, and importing them (enum, selectors) filled 1.3 MiB of the zygote, which every
# fork copies the page entries of and every child's exit tears down.
import _signal as signal  # type: ignore[import-not-found]
import _socket as socket
import array
import gc
import os
import select
import sys
import time
import types

if "warm_pages" not in globals():  # imported, not run by warm_spawn's loader (which
    from cgikit import warm_child, warm_pages, warm_preload  # runs these first)

MAX_MESSAGE = 1 << 20
SPARES = 6  # children forked ahead of requests, at most
SPARES_LOW = 2  # and at least
LEARN_EVERY = 64  # requests between two children asked to show their pages (warm_pages)
# Spares copy the learned pages ahead only while requests come less often than this (a
# moving average of the time between two), and one at a time (``Zygote.quiet``).
PREFAULT_INTERVAL = 0.010  # s
# What CPython ignores at its start (SIGXFZ where it exists): left ignored, as in a cold run.
_PYTHONS_IGNORED = frozenset(
    getattr(signal, name) for name in ("SIGPIPE", "SIGXFSZ", "SIGXFZ") if hasattr(signal, name)
)


def main() -> None:
    del sys.path[0]  # "" for -c: the zygote's directory is nothing to scripts
    orig = getattr(sys, "orig_argv", [sys.executable, "-c"])
    command = orig[: len(orig) - 1 - orig[::-1].index("-c")]  # the interpreter, its flags
    sock = socket.socket(fileno=int(sys.argv[1]))
    _default_signals()
    failure = warm_preload.preload(sys.argv[2].split(","), sys.argv[3].split(","), sys.argv[4])
    sock.send(b"fail\0" + _text(failure) if failure else b"ready")
    if failure:
        _drain_until_closed(sock)  # runs nothing; exits when the worker lets it go
        return
    zygote = Zygote(sock, command)
    signal.signal(signal.SIGCHLD, zygote.reap)  # before any child: none goes unreaped
    # A SIGCHLD that comes just before a blocking recvmsg would wait, handler and all,
    # for the next message (and the worker for the exit status): so the C handler
    # writes to a pipe that is polled with the socket.
    wakeup, wakeup_w = os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)
    signal.set_wakeup_fd(wakeup_w)
    poller = zygote.poller
    poller.register(sock, select.POLLIN)
    poller.register(wakeup, select.POLLIN)
    try:
        zygote.top_up()
        while True:
            for fd, _events in poller.poll():  # the handler runs when poll returns
                if fd == wakeup:
                    _drain(wakeup)
                    zygote.learn()
                    zygote.top_up()
                else:
                    message, fds = _receive(sock)
                    _close(fds)
                    if not message:
                        return  # the worker is gone
                    zygote.handle(message.split(b"\0"))
    except ConnectionError:  # the worker went while we told it something
        return
    finally:
        zygote.release_spares()
        zygote.learn()  # a child that stopped for it goes on, and exits


def _default_signals() -> None:
    """The signals as a fresh interpreter started by ``posix_spawn`` would have them,
    before the preloads run (they may set their own): what the server ignores (SIGHUP
    in a worker, SIGINT and SIGQUIT if a shell started it in the background) reaches
    neither the zygote nor the scripts, as it reaches no cold script. SIGPIPE and
    SIGXFSZ stay ignored (Python's own), SIGINT gets Python's handler."""
    for signum in range(1, signal.NSIG):
        if signum in _PYTHONS_IGNORED or signal.getsignal(signum) != signal.SIG_IGN:
            continue
        handler = signal.default_int_handler if signum == signal.SIGINT else signal.SIG_DFL
        try:
            signal.signal(signum, handler)
        except (OSError, ValueError):  # not settable (libc's own)
            pass


def _drain_until_closed(sock: socket.socket) -> None:
    while True:
        try:
            message, fds = _receive(sock)
        except OSError:
            return
        _close(fds)
        if not message:
            return


def _drain(fd: int) -> None:
    try:
        while os.read(fd, 512):
            pass
    except BlockingIOError:
        pass


class Zygote:
    def __init__(self, sock: socket.socket, command: list[str]) -> None:
        self.sock, self.command = sock, command
        self.codes: dict[str, tuple[bytes, warm_child.Script]] = {}  # by path, with stamps
        self.spares: dict[int, Spare] = {}  # announced, not taken yet: by pid
        self.starting: list[Spare] = []  # forked, not ready yet
        self.poller = select.poll()  # the main loop's: the worker's socket, the wake-up
        # Page learning (warm_pages): the pages a child of ours copied, which spares copy
        # ahead; the child asked to stop for it (0: none), and whether it has; requests
        # until the next one is asked (the first request is).
        self.learned: warm_pages.Ranges = []
        self.learner, self.learner_stopped = 0, False
        self.until_learning = 0 if warm_pages.available() else -1
        self.interval, self.last_took = 1.0, 0.0  # s between two requests, and the last
        self.running: set[int] = set()  # the children given a request, not reaped yet
        self.gone: set[int] = set()  # reaped before the worker's ``took`` was read

    def reap(self, signum: int = 0, frame: object = None) -> None:
        """SIGCHLD: reap the children that have exited and tell the worker how."""
        while True:
            try:
                pid, status = os.waitpid(-1, os.WNOHANG | os.WUNTRACED)
            except ChildProcessError:
                return
            if not pid:
                return
            if os.WIFSTOPPED(status):
                # The learner, stopped for the main loop to read its pages; any other
                # stop is the script's own business, and no exit.
                self.learner_stopped = self.learner_stopped or pid == self.learner
                continue
            if pid in self.running:
                self.running.discard(pid)
            elif len(self.gone) < 1024:  # a spare that died unused is never took'd
                self.gone.add(pid)
            if pid == self.learner:
                self.learner, self.learner_stopped = 0, False  # it ended some other way
            # Every child, even a spare not yet given its request: the worker may have
            # sent it one, and killed it (its client went away), before it got here.
            try:
                self.sock.send(b"exit\0%d\0%d" % (pid, status))
            except OSError:
                pass  # the worker is gone; the main loop sees it

    def top_up(self) -> None:
        """Below SPARES_LOW spares, fork them up to SPARES, each announced to the worker
        with a socket to it: so no request waits for a fork, nor for the zygote. Called
        when a child has exited, not when a spare takes a request: forks then compete
        with no request for the CPU (unless none is left). In batches: after a fork,
        each page the zygote writes is copied (shared with the new child); between
        batches it copies its working set once, not once per request."""
        if len(self.spares) >= SPARES_LOW:
            return
        for path in list(self.codes):
            try:
                self.compiled(path)  # changed since: the spares get the new version
            except (OSError, SyntaxError, ValueError):
                del self.codes[path]  # gone or broken: each spare finds out itself
        forked = self.starting
        while len(self.spares) + len(forked) < SPARES:
            forked.append(Spare(self, self.asks_to_learn()))
            self.sock.send(b"forked\0%d" % forked[-1].pid)  # if we die, the worker reaps it
        while forked:
            spare = forked.pop(0)
            # Announced once it leads its own session: the worker may signal its group
            # as soon as it knows the pid (a client that goes away at once).
            if spare.control.recv(1) == b"k":
                self.announce(spare)
            else:
                spare.close()
                if spare.learner:
                    self.learner, self.learner_stopped = 0, False  # died young: ask another

    def announce(self, spare: Spare) -> None:
        """Hand the worker its socket to ``spare`` (ours is closed: the spare's request
        comes from the worker alone). Our end of its control socket stays open until
        the worker says it took the spare: its close is how a waiting spare would know
        that the zygote is gone."""
        message = b"spare\0%d" % spare.pid
        rights = [(socket.SOL_SOCKET, socket.SCM_RIGHTS, array.array("i", [spare.worker_end]))]
        try:
            self.sock.sendmsg([message], rights)
        finally:
            os.close(spare.worker_end)
            spare.worker_end = -1
        self.spares[spare.pid] = spare

    def quiet(self) -> bool:
        """Whether a spare forked now is to copy the learned pages ahead: only while
        requests come less often than every PREFAULT_INTERVAL and one at a time. Under
        load the machine has no idle time to copy in, and the copying would take CPU
        from the requests (a quarter of the throughput, measured)."""
        return self.interval > PREFAULT_INTERVAL and len(self.running) <= 1

    def handle(self, fields: list[bytes]) -> None:
        """``took`` pid: the worker has sent the spare a request (or found it dead);
        only when none is left is one forked at once, else after the next exit.
        ``script`` path: compile it now, for the spares to come (a spare that finds it
        new or changed compiles it itself, or runs it cold if it cannot)."""
        if fields[0] == b"took" and len(fields) == 2:
            now = time.monotonic()
            self.interval = 0.8 * self.interval + 0.2 * min(now - self.last_took, 1.0)
            self.last_took = now
            spare = self.spares.pop(int(fields[1]), None)
            if spare is not None:
                spare.close()
                if spare.pid in self.gone:
                    self.gone.discard(spare.pid)
                else:
                    self.running.add(spare.pid)
            if not self.spares:
                self.top_up()
        elif fields[0] == b"script" and len(fields) == 2:
            try:
                self.compiled(os.fsdecode(fields[1]))
            except (OSError, SyntaxError, ValueError):
                pass  # each spare finds out too, and runs it cold

    def asks_to_learn(self) -> bool:
        """Whether the spare about to be forked is to stop after its script for
        ``learn`` (the first, then one in LEARN_EVERY, one at a time)."""
        if self.until_learning < 0 or self.learner:
            return False
        if self.until_learning > 0:
            self.until_learning -= 1
            return False
        self.until_learning, self.learner = LEARN_EVERY - 1, -1  # its pid once forked
        return True

    def learn(self) -> None:
        """Read the stopped learner's own pages (the spares forked from now on copy them
        ahead) and let it go on to its exit."""
        if not self.learner_stopped:
            return
        pid, self.learner, self.learner_stopped = self.learner, 0, False
        self.learned = warm_pages.learn(pid) or self.learned
        try:
            os.kill(pid, signal.SIGCONT)
        except ProcessLookupError:
            pass

    def release_spares(self) -> None:
        """Reap the spares not given a request (at exit: or they would be zombies
        elsewhere). Each exits once its request socket is closed: by us if it was not
        announced yet, else by the worker (it does when it sees our end); a second at
        most, then whatever is left goes to init with the zygote's other children."""
        spares = [*self.spares.values(), *self.starting]
        for spare in spares:
            spare.close()
        deadline = time.monotonic() + 1.0
        left = {spare.pid for spare in spares}
        while left and time.monotonic() < deadline:
            for pid in list(left):
                try:
                    if os.waitpid(pid, os.WNOHANG)[0]:
                        left.discard(pid)
                except ChildProcessError:
                    left.discard(pid)
            time.sleep(0.005)

    def compiled(self, path: str) -> warm_child.Script:
        """The script's code and directory, once per version of the file."""
        info = os.stat(path)
        key = b"%d:%d:%d:%d" % (info.st_ino, info.st_dev, info.st_mtime_ns, info.st_size)
        cached = self.codes.get(path)
        if cached is not None and cached[0] == key:
            return cached[1]
        with open(path, "rb") as f:
            source = f.read()
        code: types.CodeType = compile(source, path, "exec", dont_inherit=True)
        script = warm_child.Script(code, path, os.path.dirname(os.path.realpath(path)))
        self.codes[path] = (key, script)
        return script


def _text(text: str) -> bytes:
    return text.replace("\0", " ").encode("utf-8", "replace")


def _close(fds: list[int]) -> None:
    for fd in fds:
        try:
            os.close(fd)
        except OSError:
            pass


class Spare:
    """A child forked ahead of the next request: it waits, in its own session, on a
    socket of its own for that request (the worker holds the other end), so that a
    request waits for no fork. On a second socket it says it is ready, and its close
    tells the zygote it has a request."""

    def __init__(self, zygote: Zygote, learner: bool) -> None:
        self.learner = learner  # to stop after its script for ``Zygote.learn``
        self.control, control = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        worker, request = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        worker.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, MAX_MESSAGE)
        self.worker_end = worker.detach()  # handed over by ``Zygote.announce``
        self.pid = _fork()
        if self.pid == 0:
            for each in [*zygote.spares.values(), *zygote.starting, self]:
                each.close()  # the zygote's ends: a spare holds only its own
            zygote.sock.close()  # or the worker would not see the zygote's end
            _wait_as_spare(control, request, zygote, learner)
        if learner:
            zygote.learner = self.pid
        control.close()
        request.close()

    def close(self) -> None:
        self.control.close()
        if self.worker_end >= 0:
            os.close(self.worker_end)
            self.worker_end = -1


def _wait_as_spare(
    control: socket.socket, request: socket.socket, zygote: Zygote, learner: bool
) -> None:
    """The spare's life: its request, then the script's run (never returns). A learner
    copies nothing ahead: the pages it holds alone at the end must be its request's, or
    each learned set would hold the one before it, and grow."""
    try:
        warm_child.detach()  # before it is announced: its group can be signalled from then on
        control.send(b"k")
        if not learner and zygote.quiet():  # idle time to copy ahead in
            warm_pages.prefault(zygote.learned, request)
        poller = select.poll()
        poller.register(request, select.POLLIN)
        poller.register(control, select.POLLIN)
        if all(fd != request.fileno() for fd, _events in poller.poll()):
            os._exit(0)  # the zygote is gone: none would report our exit, or reap us
        message, fds = _receive(request, sized=True)
    except BaseException:
        os._exit(0)
    if not message:
        os._exit(0)  # let go: by the worker, or by the zygote before its announcement
    stamp, count, *fields = message.split(b"\0")
    argv, (cwd, *env) = fields[: int(count)], fields[int(count) :]
    path = os.fsdecode(argv[-1])
    cached = zygote.codes.get(path)
    # Compiled in the zygote before this spare was forked, unless new or changed: the
    # worker's stamp of the file says which, and saves a stat of our own.
    try:
        fresh = cached is not None and cached[0] == stamp
        script = cached[1] if cached is not None and fresh else zygote.compiled(path)
    except (OSError, SyntaxError, ValueError) as exc:
        warm_child.exec_cold(
            argv, os.fsdecode(cwd), env, fds, f"runs cold: it does not compile: {exc}"
        )
    warm_child.become(script, os.fsdecode(cwd), env, fds, zygote.command, learner=learner)


def _receive(sock: socket.socket, sized: bool = False) -> tuple[bytes, list[int]]:
    """A message and the descriptors it carries (``socket.recv_fds``, in fewer lines).
    ``sized``: its length asked first (MSG_PEEK | MSG_TRUNC), for a buffer of that
    size: a request's is a few KiB, and a MAX_MESSAGE buffer is an mmap and an mremap
    on the way of a spare's request."""
    size = MAX_MESSAGE
    if sized:
        size = min(size, max(1, sock.recv_into(bytearray(1), 1, _PEEK_SIZE)))
    message, ancillary, _flags, _addr = sock.recvmsg(size, _RIGHTS_SPACE)
    fds = array.array("i")
    for level, kind, data in ancillary:
        if level == socket.SOL_SOCKET and kind == socket.SCM_RIGHTS:
            fds.frombytes(data[: len(data) - len(data) % fds.itemsize])
    return message, list(fds)


_RIGHTS_SPACE = socket.CMSG_SPACE(3 * array.array("i").itemsize)
_PEEK_SIZE = socket.MSG_PEEK | socket.MSG_TRUNC  # Linux: recv's result is the whole length


def _fork() -> int:
    if hasattr(gc, "freeze"):
        gc.freeze()  # what the zygote has is not the child's to scan (fewer pages copied)
    return os.fork()


if __name__ == "__main__":
    main()
