"""The fast path's event loop (event_loop.Loop): readiness callbacks, timers, soon calls.

Every test runs on both pollers the loop knows (epoll, and poll where there is no
epoll), on real socket pairs and pipes; each checks that the loop and its test left no
descriptor open.
"""

from __future__ import annotations

import os
import select
import socket
import threading
import time
from collections.abc import Callable, Iterator

import pytest

from cgikit.event_loop import READ, WRITE, Loop
from drivers.proc_checks import open_fds


@pytest.fixture(autouse=True)
def no_fd_leaks() -> Iterator[None]:
    before = open_fds()
    yield
    assert open_fds() == before


@pytest.fixture(params=["epoll", "poll"])
def loop(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> Iterator[Loop]:
    if request.param == "poll":
        monkeypatch.delattr(select, "epoll", raising=False)  # as on macOS
    elif not hasattr(select, "epoll"):
        pytest.skip("no epoll here")
    made = Loop()
    assert hasattr(made._poller, "close") == (request.param == "epoll")  # the one asked for
    yield made
    made.close()


@pytest.fixture
def pair() -> Iterator[tuple[socket.socket, socket.socket]]:
    a, b = socket.socketpair()
    a.setblocking(False)
    yield a, b
    a.close()
    b.close()


class Calls:
    """Records ``(name, mask)`` for each callback made through ``cb(name)``."""

    def __init__(self) -> None:
        self.seen: list[tuple[str, int]] = []

    def cb(self, name: str) -> Callable[[int], None]:
        def callback(mask: int) -> None:
            self.seen.append((name, mask))

        return callback

    def plain(self, name: str) -> Callable[[], None]:
        def callback() -> None:
            self.seen.append((name, 0))

        return callback

    @property
    def names(self) -> list[str]:
        return [name for name, _ in self.seen]


def test_read_readiness_only_once_there_is_data(
    loop: Loop, pair: tuple[socket.socket, ...]
) -> None:
    a, b = pair
    calls = Calls()
    loop.add(a.fileno(), READ, calls.cb("a"))
    loop.run_once(0)
    assert calls.seen == []
    b.send(b"x")
    loop.run_once(2)
    assert calls.seen == [("a", READ)]
    loop.run_once(0)  # level-triggered: still readable, called again
    assert calls.seen == [("a", READ)] * 2
    assert a.recv(10) == b"x"
    loop.run_once(0)
    assert calls.seen == [("a", READ)] * 2


def test_write_readiness_and_both(loop: Loop, pair: tuple[socket.socket, ...]) -> None:
    a, b = pair
    calls = Calls()
    loop.add(a.fileno(), WRITE, calls.cb("w"))
    loop.add(b.fileno(), READ | WRITE, calls.cb("rw"))
    loop.run_once(2)
    assert sorted(calls.seen) == [("rw", WRITE), ("w", WRITE)]  # nothing to read yet
    calls.seen.clear()
    a.send(b"x")  # b readable and writable; a still only writable
    loop.run_once(2)
    assert sorted(calls.seen) == [("rw", READ | WRITE), ("w", WRITE)]


def test_the_mask_passed_is_limited_to_what_is_watched(
    loop: Loop, pair: tuple[socket.socket, ...]
) -> None:
    a, b = pair
    b.send(b"x")  # a is readable and writable
    calls = Calls()
    loop.add(a.fileno(), WRITE, calls.cb("a"))
    loop.run_once(2)
    assert calls.seen == [("a", WRITE)]


def test_pipe_ends_and_a_hang_up(loop: Loop) -> None:
    r, w = os.pipe()
    try:
        calls = Calls()
        loop.add(r, READ, calls.cb("r"))
        loop.add(w, WRITE, calls.cb("w"))
        loop.run_once(2)
        assert calls.seen == [("w", WRITE)]
        loop.remove(w)
        os.write(w, b"data")
        calls.seen.clear()
        loop.run_once(2)
        assert calls.seen == [("r", READ)]
        assert os.read(r, 10) == b"data"
        os.close(w)  # the writer's hang-up wakes the reader, as READ (os.read gives EOF)
        w = -1
        calls.seen.clear()
        loop.run_once(2)
        assert calls.seen == [("r", READ)]
        assert os.read(r, 10) == b""
    finally:
        loop.remove(r)
        os.close(r)
        if w >= 0:
            os.close(w)


def test_a_closed_reader_wakes_the_writer(loop: Loop) -> None:
    r, w = os.pipe()
    try:
        os.set_blocking(w, False)
        while True:  # fill the pipe: no WRITE readiness from room any more
            try:
                os.write(w, b"z" * 65536)
            except BlockingIOError:
                break
        calls = Calls()
        loop.add(w, WRITE, calls.cb("w"))
        loop.run_once(0.05)
        assert calls.seen == []
        os.close(r)
        r = -1
        loop.run_once(2)
        assert calls.seen == [("w", WRITE)]  # POLLERR reaches a writer
    finally:
        loop.remove(w)
        os.close(w)
        if r >= 0:
            os.close(r)


def test_modify_changes_mask_and_callback_and_zero_removes(
    loop: Loop, pair: tuple[socket.socket, ...]
) -> None:
    a, b = pair
    b.send(b"x")  # a is readable and writable from here on
    calls = Calls()
    fd = a.fileno()
    loop.add(fd, READ, calls.cb("first"))
    loop.run_once(2)
    assert calls.seen == [("first", READ)]
    loop.modify(fd, WRITE, calls.cb("second"))
    loop.run_once(2)
    assert calls.seen[1:] == [("second", WRITE)]
    loop.modify(fd, WRITE, calls.cb("third"))  # same mask, new callback
    loop.run_once(2)
    assert calls.seen[2:] == [("third", WRITE)]
    loop.modify(fd, 0, calls.cb("gone"))
    loop.run_once(0.05)
    assert calls.names == ["first", "second", "third"]
    loop.add(fd, READ | WRITE, calls.cb("again"))  # really removed
    loop.run_once(2)
    assert calls.seen[3:] == [("again", READ | WRITE)]


def test_modify_of_an_unwatched_fd_adds_it(loop: Loop, pair: tuple[socket.socket, ...]) -> None:
    a, _ = pair
    calls = Calls()
    loop.modify(a.fileno(), WRITE, calls.cb("a"))
    loop.run_once(2)
    assert calls.seen == [("a", WRITE)]


def test_remove_of_an_unwatched_fd_is_a_no_op(loop: Loop, pair: tuple[socket.socket, ...]) -> None:
    a, b = pair
    loop.remove(a.fileno())
    loop.remove(10_000)  # not even open
    calls = Calls()
    loop.add(b.fileno(), WRITE, calls.cb("b"))
    loop.remove(b.fileno())
    loop.remove(b.fileno())  # twice
    loop.run_once(0.05)
    assert calls.seen == []


def test_adding_a_watched_fd_again_raises(loop: Loop, pair: tuple[socket.socket, ...]) -> None:
    a, _ = pair
    calls = Calls()
    loop.add(a.fileno(), WRITE, calls.cb("first"))
    with pytest.raises(KeyError):
        loop.add(a.fileno(), READ, calls.cb("second"))
    loop.run_once(2)
    assert calls.seen == [("first", WRITE)]  # the first registration stands


def test_a_callback_removing_another_ready_fd_stops_its_call(loop: Loop) -> None:
    pairs = [socket.socketpair() for _ in range(2)]
    try:
        fds = [a.fileno() for a, _ in pairs]
        for _, b in pairs:
            b.send(b"x")  # both ready in the same round
        called: list[int] = []

        def make(mine: int, other: int) -> Callable[[int], None]:
            def callback(mask: int) -> None:
                called.append(mine)
                loop.remove(other)

            return callback

        loop.add(fds[0], READ, make(fds[0], fds[1]))
        loop.add(fds[1], READ, make(fds[1], fds[0]))
        loop.run_once(2)
        assert len(called) == 1  # whichever came first removed the other
        loop.run_once(0.05)
        assert len(called) == 2  # the first is still watched and still readable
        assert called[0] == called[1]
    finally:
        for fd in fds:
            loop.remove(fd)
        for a, b in pairs:
            a.close()
            b.close()


def test_timers_fire_in_time_order_ties_in_scheduling_order(loop: Loop) -> None:
    calls = Calls()
    now = time.monotonic()
    loop.call_at(now + 0.06, calls.plain("late"))
    loop.call_at(now + 0.03, calls.plain("tie1"))
    loop.call_at(now + 0.01, calls.plain("first"))
    loop.call_at(now + 0.03, calls.plain("tie2"))
    loop.call_later(0.03, calls.plain("tie3"))  # later: a bit after
    loop.call_at(now + 0.03, calls.plain("tie4"))
    deadline = now + 2
    while len(calls.seen) < 6 and time.monotonic() < deadline:
        loop.run_once(1)
    assert calls.names == ["first", "tie1", "tie2", "tie4", "tie3", "late"]
    assert time.monotonic() - now >= 0.06


def test_a_timer_does_not_fire_early_and_shortens_the_wait(loop: Loop) -> None:
    fired: list[float] = []
    began = time.monotonic()
    when = began + 0.15
    loop.call_at(when, lambda: fired.append(time.monotonic()))
    loop.run_once(0.02)
    assert fired == []
    loop.run_once(5)  # the timer, not the 5 s, ends this wait
    assert len(fired) == 1
    assert when <= fired[0] < began + 1.0


def test_a_cancelled_timer_never_fires(loop: Loop) -> None:
    calls = Calls()
    timer = loop.call_later(0.02, calls.plain("cancelled"))
    loop.call_later(0.04, calls.plain("kept"))
    timer.cancel()
    deadline = time.monotonic() + 2
    while not calls.seen and time.monotonic() < deadline:
        loop.run_once(1)
    loop.run_once(0.05)
    assert calls.names == ["kept"]


def test_call_soon_runs_after_the_rounds_callbacks(loop: Loop) -> None:
    pairs = [socket.socketpair() for _ in range(2)]
    try:
        order: list[str] = []
        for _, b in pairs:
            b.send(b"x")

        def ready(name: str) -> Callable[[int], None]:
            def callback(mask: int) -> None:
                order.append(name)
                loop.remove(pairs[int(name)][0].fileno())
                loop.call_soon(lambda: order.append(f"soon{name}"))

            return callback

        for i, (a, _) in enumerate(pairs):
            loop.add(a.fileno(), READ, ready(str(i)))
        loop.run_once(2)
        assert sorted(order[:2]) == ["0", "1"]
        assert order[2:] == [f"soon{order[0]}", f"soon{order[1]}"]
    finally:
        for a, b in pairs:
            a.close()
            b.close()


def test_call_soon_queued_by_a_soon_callback_runs_in_the_same_round(loop: Loop) -> None:
    order: list[str] = []
    loop.call_later(0, lambda: None)  # something due, so the round does not wait
    loop.call_soon(lambda: loop.call_soon(lambda: order.append("second")))
    loop.run_once(0)
    assert order == ["second"]


def test_call_soon_from_a_timer_callback_does_not_wait(loop: Loop) -> None:
    ran: list[float] = []
    loop.call_later(0, lambda: loop.call_soon(lambda: ran.append(time.monotonic())))
    loop.run_once(0)  # runs the timer and, in this same round, what it queued
    assert len(ran) == 1


def test_call_soon_made_before_a_round_does_not_wait(loop: Loop) -> None:
    ran: list[float] = []
    loop.call_soon(lambda: ran.append(time.monotonic()))
    began = time.monotonic()
    loop.run_once(0.5)  # nothing ready, no timer: only the queued call
    assert ran and ran[0] - began < 0.2


def test_a_raising_callback_goes_to_on_error_and_the_round_goes_on(
    loop: Loop, pair: tuple[socket.socket, ...]
) -> None:
    a, _ = pair
    errors: list[tuple[str, object]] = []
    loop.on_error = lambda exc, callback: errors.append((str(exc), callback))
    order: list[str] = []

    def bad_fd(mask: int) -> None:
        order.append("fd")
        loop.remove(a.fileno())
        raise ValueError("fd")

    def bad_soon() -> None:
        order.append("soon")
        raise ValueError("soon")

    def bad_timer() -> None:
        order.append("timer")
        raise ValueError("timer")

    loop.add(a.fileno(), WRITE, bad_fd)
    loop.call_soon(bad_soon)
    loop.call_soon(lambda: order.append("soon2"))
    loop.call_later(0, bad_timer)
    loop.call_later(0, lambda: order.append("timer2"))
    loop.run_once(0)
    assert order == ["fd", "soon", "soon2", "timer", "timer2"]
    assert errors == [("fd", bad_fd), ("soon", bad_soon), ("timer", bad_timer)]


def test_by_default_a_raising_callback_propagates(
    loop: Loop, pair: tuple[socket.socket, ...]
) -> None:
    a, _ = pair

    def bad(mask: int) -> None:
        raise ValueError("a bug")

    loop.add(a.fileno(), WRITE, bad)
    with pytest.raises(ValueError, match="a bug"):
        loop.run_once(0)


def test_call_soon_threadsafe_wakes_a_loop_blocked_for_ever(loop: Loop) -> None:
    # A failsafe descriptor, so that a broken wake fails the test instead of hanging it.
    safety_r, safety_w = socket.socketpair()
    failsafe = threading.Timer(3.0, lambda: safety_w.send(b"!"))
    ran: list[int] = []
    try:
        loop.add(safety_r.fileno(), READ, lambda mask: None)
        poker = threading.Timer(0.1, loop.call_soon_threadsafe, [lambda: ran.append(0)])
        ran.clear()
        failsafe.start()
        began = time.monotonic()
        poker.start()
        loop.run_once(None)
        elapsed = time.monotonic() - began
        poker.join()
    finally:
        failsafe.cancel()
        failsafe.join()
        loop.remove(safety_r.fileno())
        safety_r.close()
        safety_w.close()
    assert ran == [0]
    assert 0.05 <= elapsed < 1.0


def test_the_callback_runs_on_the_loops_thread_and_wakes_coalesce(loop: Loop) -> None:
    threads: list[int] = []
    done = threading.Event()

    def poke() -> None:
        for _ in range(1000):  # far more than the wake pair buffers: no error, no block
            loop.wake()
        loop.call_soon_threadsafe(lambda: threads.append(threading.get_ident()))
        done.set()

    worker = threading.Thread(target=poke)
    worker.start()
    assert done.wait(5)
    worker.join()
    deadline = time.monotonic() + 2
    while not threads and time.monotonic() < deadline:
        loop.run_once(0.5)
    assert threads == [threading.get_ident()]
    loop.run_once(0)  # the wake bytes were all taken: nothing left to spin on
    began = time.monotonic()
    loop.run_once(0.1)
    assert time.monotonic() - began >= 0.08


def test_run_until_stops(loop: Loop) -> None:
    ticks: list[bool] = []

    def tick() -> None:
        ticks.append(loop.running)
        if len(ticks) < 3:
            loop.call_later(0.01, tick)

    loop.call_later(0.01, tick)
    assert not loop.running
    began = time.monotonic()
    loop.run(lambda: len(ticks) >= 3)
    assert time.monotonic() - began < 1.0
    assert ticks == [True, True, True]
    assert not loop.running


def test_run_checks_until_before_waiting(loop: Loop) -> None:
    began = time.monotonic()
    loop.run(lambda: True)  # nothing registered: would block for ever if it waited first
    assert time.monotonic() - began < 0.5


@pytest.mark.parametrize("poller", ["epoll", "poll"])
def test_close_releases_the_poller_and_the_wake_pair(
    poller: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    if poller == "poll":
        monkeypatch.delattr(select, "epoll", raising=False)
    before = open_fds()
    made = Loop()
    opened = open_fds() - before
    assert len(opened) == (3 if poller == "epoll" else 2)  # epoll fd + the wake pair
    a, b = socket.socketpair()
    made.add(a.fileno(), READ | WRITE, lambda mask: None)
    made.call_later(10, lambda: None)
    made.close()
    a.close()
    b.close()
    assert open_fds() == before


@pytest.mark.parametrize("exclusive", [True, False])
def test_an_exclusive_listener_wakes_one_blocked_loop_per_connection(exclusive: bool) -> None:
    """Several worker loops watch one listening socket: with ``exclusive`` a connection
    wakes one of them (EPOLLEXCLUSIVE), without it every one (the thundering herd)."""
    if not getattr(select, "EPOLLEXCLUSIVE", 0):
        pytest.skip("no EPOLLEXCLUSIVE here")
    listener = socket.create_server(("127.0.0.1", 0))
    listener.setblocking(False)
    loops = [Loop(), Loop(), Loop()]
    woken: list[int] = []
    lock = threading.Lock()

    def watch(index: int, loop: Loop) -> None:
        def on_ready(mask: int) -> None:
            with lock:
                woken.append(index)
            loop.remove(listener.fileno())  # seen: a woken loop does not take it

        loop.add(listener.fileno(), READ, on_ready, exclusive=exclusive)
        loop.run_once(2.0)  # blocked in epoll_wait when the connection comes

    threads = [threading.Thread(target=watch, args=(i, lp)) for i, lp in enumerate(loops)]
    for thread in threads:
        thread.start()
    time.sleep(0.3)  # every loop is waiting
    client = socket.create_connection(listener.getsockname())
    try:
        for thread in threads:
            thread.join(5)
    finally:
        client.close()
        for made in loops:
            made.close()
        listener.close()
    assert len(woken) == (1 if exclusive else 3)
