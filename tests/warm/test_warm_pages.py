"""``warm_pages``: a stopped child's own pages are found, and populating them ahead
takes the copy-on-write faults off the code that writes them later."""

from __future__ import annotations

import ctypes
import mmap
import os
import re
import resource
import signal
import socket

import pytest
from hypothesis import given
from hypothesis import strategies as st

from cgikit import warm_pages

PAGES = 256


@pytest.fixture
def shared_buffer() -> tuple[mmap.mmap, int]:
    """PAGES private pages, each written here: a child forked now shares them all."""
    buf = mmap.mmap(-1, PAGES * warm_pages.PAGE, flags=mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS)
    for page in range(PAGES):
        buf[page * warm_pages.PAGE] = 1
    return buf, _address(buf)


def _address(buf: mmap.mmap) -> int:
    view = ctypes.c_char.from_buffer(buf)
    try:
        return ctypes.addressof(view)
    finally:
        del view  # the buffer may be closed


def _covered(runs: list[tuple[int, int]], start: int, pages: int) -> int:
    """How many of the pages [start, start + pages) the runs hold."""
    end = start + pages * warm_pages.PAGE
    total = 0
    for run_start, run_pages in runs:
        run_end = run_start + run_pages * warm_pages.PAGE
        total += max(0, min(end, run_end) - max(start, run_start)) // warm_pages.PAGE
    return total


def _stopped_child(buf: mmap.mmap, written: range) -> int:
    """A child that writes the pages ``written`` of ``buf``, then stops itself."""
    pid = os.fork()
    if pid == 0:
        try:
            for page in written:
                buf[page * warm_pages.PAGE] = 2
            os.kill(os.getpid(), signal.SIGSTOP)
        finally:
            os._exit(0)
    _, status = os.waitpid(pid, os.WUNTRACED)
    assert os.WIFSTOPPED(status)
    return pid


def _finish(pid: int) -> None:
    os.kill(pid, signal.SIGCONT)
    _, status = os.waitpid(pid, 0)
    assert os.WIFEXITED(status) and os.WEXITSTATUS(status) == 0


def test_learn_finds_the_pages_a_child_copied_and_not_those_it_only_shares(
    shared_buffer: tuple[mmap.mmap, int],
) -> None:
    buf, start = shared_buffer
    pid = _stopped_child(buf, range(0, PAGES // 2))
    try:
        runs = warm_pages.learn(pid)
    finally:
        _finish(pid)
    assert _covered(runs, start, PAGES // 2) == PAGES // 2  # every page it wrote
    half = start + PAGES // 2 * warm_pages.PAGE
    assert _covered(runs, half, PAGES // 2) == 0  # none it left shared with us
    assert sum(pages for _, pages in runs) <= warm_pages.MAX_PAGES


def test_learn_gives_nothing_for_a_process_that_is_not_there() -> None:
    pid = os.fork()
    if pid == 0:
        os._exit(0)
    os.waitpid(pid, 0)
    assert warm_pages.learn(pid) == []


def test_the_cap_keeps_the_longest_runs(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(warm_pages, "MAX_PAGES", 10)
    runs = [(0x1000, 3), (0x10000, 8), (0x20000, 2), (0x30000, 1)]
    assert warm_pages._cap(runs) == [(0x10000, 8), (0x20000, 2)]
    assert warm_pages._cap(runs[2:]) == runs[2:]


def test_prefault_takes_the_faults_off_the_writes_that_follow(
    shared_buffer: tuple[mmap.mmap, int],
) -> None:
    if not warm_pages.available():
        pytest.skip("no madvise through ctypes here")
    buf, start = shared_buffer
    reader, writer = os.pipe()
    quiet, _other = socket.socketpair()
    pid = os.fork()
    if pid == 0:
        try:
            done = warm_pages.prefault([(start, PAGES)], quiet)
            before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
            for page in range(PAGES):
                buf[page * warm_pages.PAGE] = 3
            faults = resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before
            os.write(writer, f"{done} {faults}".encode())
        finally:
            os._exit(0)
    os.close(writer)
    done, faults = map(int, os.read(reader, 100).split())
    os.close(reader)
    os.waitpid(pid, 0)
    quiet.close()
    _other.close()
    if done == 0:
        pytest.skip("this kernel has no MADV_POPULATE_WRITE")
    assert done == PAGES
    assert faults < PAGES // 8  # without it, one fault a page
    assert buf[0] == 1  # the child's writes were its own


def test_prefault_stops_when_a_request_is_there(shared_buffer: tuple[mmap.mmap, int]) -> None:
    _buf, start = shared_buffer
    ours, theirs = socket.socketpair()
    theirs.send(b"request")
    try:
        assert warm_pages.prefault([(start, PAGES)], ours) == 0
    finally:
        ours.close()
        theirs.close()


def test_prefault_skips_what_is_not_mapped(shared_buffer: tuple[mmap.mmap, int]) -> None:
    if not warm_pages.available():
        pytest.skip("no madvise through ctypes here")
    _buf, start = shared_buffer
    hole = mmap.mmap(-1, 4 * warm_pages.PAGE)
    gone = _address(hole)
    hole.close()  # unmapped now: populating it fails, and the next run still counts
    ours, theirs = socket.socketpair()
    try:
        done = warm_pages.prefault([(gone, 4), (start, 8)], ours)
    finally:
        ours.close()
        theirs.close()
    assert done in (0, 8)  # 0: this kernel has no such advice


def test_runs_close_together_are_joined() -> None:
    page, gap = warm_pages.PAGE, warm_pages.GAP
    runs = [(0, 2), (page * (2 + gap - 1), 1), (page * 100, 1), (page * 101, 3)]
    assert warm_pages._joined(runs) == [(0, 2 + gap - 1 + 1), (page * 100, 4)]
    assert warm_pages._joined([]) == []


@given(st.lists(st.sampled_from([0, 1]), max_size=200), st.integers(0, 1 << 20))
def test_runs_are_every_stretch_of_own_pages(flags: list[int], first: int) -> None:
    own = bytes(flags)
    expected = [
        (warm_pages.PAGE * (first + m.start()), m.end() - m.start())
        for m in re.finditer(rb"\x01+", own)
    ]
    assert warm_pages._runs(own, first) == expected
