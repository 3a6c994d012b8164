"""``wsgi.input``: BoundedInput yields exactly CONTENT_LENGTH bytes, whatever the app calls.

The source is a ``read(n)`` callable that returns data in arbitrary split sizes, as a
pipe does; it records every ``n`` it is asked for, so the tests can check that no byte
past the limit is ever requested.
"""

from __future__ import annotations

import os
from collections.abc import Sequence

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from cgikit.wsgi_request import BoundedInput, ClientDisconnected


class Source:
    """``read(n)`` over ``data``; call i returns at most ``splits[i % len(splits)]`` bytes."""

    def __init__(self, data: bytes, splits: Sequence[int] = ()) -> None:
        self.data = data
        self.pos = 0
        self.splits = list(splits)
        self.asked: list[tuple[int, int]] = []  # (n, bytes returned before this call)
        self.calls_after_eof = 0
        self.eof = False

    def __call__(self, n: int) -> bytes:
        self.asked.append((n, self.pos))
        if self.eof:
            self.calls_after_eof += 1
        step = self.splits[(len(self.asked) - 1) % len(self.splits)] if self.splits else n
        chunk = self.data[self.pos : self.pos + min(n, step)]
        self.pos += len(chunk)
        self.eof = self.eof or not chunk
        return chunk

    def check_bounded(self, limit: int | None) -> None:
        """Never asked for 0 bytes (b"" means EOF), never for a byte past ``limit``."""
        for n, before in self.asked:
            assert n >= 1, f"source asked for {n} bytes"
            if limit is not None:
                assert n <= limit - before, f"asked {n} with {limit - before} left"
        if limit is not None:
            assert self.pos <= limit
        assert self.calls_after_eof == 0


def model_readline(rest: bytes, size: int | None = None) -> bytes:
    end = rest.find(b"\n")
    line = rest if end < 0 else rest[: end + 1]
    return line if size is None or size < 0 else line[:size]


def model_readlines(rest: bytes, hint: int | None = None) -> list[bytes]:
    lines: list[bytes] = []
    total = 0
    while rest:
        line = model_readline(rest)
        lines.append(line)
        rest = rest[len(line) :]
        total += len(line)
        if hint is not None and 0 < hint <= total:
            break
    return lines


def model_call(rest: bytes, name: str, args: tuple[int | None, ...]) -> bytes | list[bytes]:
    size = args[0] if args else None
    if name == "read":
        return rest if size is None or size < 0 else rest[:size]
    if name in ("readline", "next"):
        return model_readline(rest, size)
    if name in ("readlines", "list"):
        return model_readlines(rest, size)
    raise AssertionError(name)


def real_call(stream: BoundedInput, name: str, args: tuple[int | None, ...]) -> object:
    if name == "next":
        return next(iter(stream), b"")
    if name == "list":
        return list(stream)
    return getattr(stream, name)(*args)


_SIZE = st.one_of(st.none(), st.integers(-2, 40))
OPS = st.lists(
    st.one_of(
        st.tuples(st.sampled_from(["read", "readline", "readlines"]), st.just(())),
        st.tuples(st.sampled_from(["read", "readline", "readlines"]), st.tuples(_SIZE)),
        st.tuples(st.sampled_from(["next", "list"]), st.just(())),
    ),
    max_size=8,
)
_PIECES = st.sampled_from([b"\n", b"a", b"bc", b"\r\n", b"xyz\n", b"\n\n", b"\x00\xff"])
BODIES = st.one_of(st.lists(_PIECES, max_size=25).map(b"".join), st.binary(max_size=60))
SPLITS = st.lists(st.integers(1, 70), max_size=8)


def assert_empty_after_end(stream: BoundedInput) -> None:
    assert stream.read() == b""
    assert stream.read(5) == b""
    assert stream.read(None) == b""
    assert stream.readline() == b""
    assert stream.readline(5) == b""
    assert stream.readlines() == []
    assert stream.readlines(3) == []
    assert list(stream) == []
    with pytest.raises(StopIteration):
        next(stream)


def drive(stream: BoundedInput, expected: bytes, ops: list) -> None:
    """Run ``ops`` against the stream and the model; everything returned adds up."""
    rest, got = expected, b""
    for name, args in ops:
        out = real_call(stream, name, args)
        assert out == model_call(rest, name, args), (name, args)
        if isinstance(out, bytes):
            assert type(out) is bytes
            piece = out
        else:
            assert type(out) is list and all(type(line) is bytes for line in out)
            piece = b"".join(out)
        if name in ("readline", "readlines", "next", "list"):
            lines = out if isinstance(out, list) else [out]
            assert all(b"\n" not in line[:-1] for line in lines)
        got += piece
        rest = rest[len(piece) :]
    got += stream.read()
    assert got == expected
    assert_empty_after_end(stream)


@st.composite
def data_and_length(draw: st.DrawFn) -> tuple[bytes, int]:
    data = draw(BODIES) + draw(st.binary(max_size=10))  # extra bytes past the limit
    return data, draw(st.integers(0, len(data)))


@settings(max_examples=400, deadline=None)
@given(data_and_length(), SPLITS, OPS)
def test_any_calls_yield_exactly_content_length(
    case: tuple[bytes, int], splits: list[int], ops: list
) -> None:
    data, length = case
    source = Source(data, splits)
    drive(BoundedInput(source, length), data[:length], ops)
    source.check_bounded(length)


@settings(max_examples=200, deadline=None)
@given(BODIES, SPLITS, OPS)
def test_unknown_length_reads_to_eof(body: bytes, splits: list[int], ops: list) -> None:
    source = Source(body, splits)
    drive(BoundedInput(source, None), body, ops)
    source.check_bounded(None)


BODY = b"first line\nsecond\n\nno newline at the end"
EXTRA = b"EXTRA\nMORE"
READERS = {
    "read()": lambda s: s.read(),
    "read(None)": lambda s: s.read(None),
    "read(3) loop": lambda s: b"".join(iter(lambda: s.read(3), b"")),
    "readline() loop": lambda s: b"".join(iter(s.readline, b"")),
    "readline(4) loop": lambda s: b"".join(iter(lambda: s.readline(4), b"")),
    "readlines()": lambda s: b"".join(s.readlines()),
    "readlines(5) loop": lambda s: b"".join(
        b"".join(ls) for ls in iter(lambda: s.readlines(5), [])
    ),
    "iteration": lambda s: b"".join(s),
}


@pytest.mark.parametrize("reader", READERS.values(), ids=READERS.keys())
def test_byte_by_byte_source(reader) -> None:
    source = Source(BODY + EXTRA, [1])
    assert reader(BoundedInput(source, len(BODY))) == BODY
    source.check_bounded(len(BODY))
    assert source.pos == len(BODY)


@pytest.mark.parametrize("reader", READERS.values(), ids=READERS.keys())
def test_every_split_point(reader) -> None:
    for cut in range(len(BODY) + 1):
        source = Source(BODY + EXTRA, [cut or 1, 10_000])
        stream = BoundedInput(source, len(BODY))
        assert reader(stream) == BODY, cut
        assert_empty_after_end(stream)
        source.check_bounded(len(BODY))


@pytest.mark.parametrize("reader", READERS.values(), ids=READERS.keys())
def test_short_source_is_client_disconnected(reader) -> None:
    source = Source(b"abc\ndef", [2])
    stream = BoundedInput(source, 100)
    with pytest.raises(ClientDisconnected):
        reader(stream)
    calls = len(source.asked)
    stream.read()  # whatever was buffered; the source is not asked again
    assert stream.read() == b""
    assert len(source.asked) == calls


def test_client_disconnected_is_an_oserror() -> None:
    assert issubclass(ClientDisconnected, OSError)


def test_zero_sized_reads_do_not_touch_the_source() -> None:
    source = Source(b"abc", [])
    stream = BoundedInput(source, 3)
    assert stream.read(0) == b""
    assert stream.readline(0) == b""
    assert source.asked == []
    assert stream.read() == b"abc"


def test_zero_length_never_reads() -> None:
    source = Source(b"do not read me", [])
    stream = BoundedInput(source, 0)
    assert_empty_after_end(stream)
    assert source.asked == []


def test_close_is_harmless() -> None:
    stream = BoundedInput(Source(b"ab", []), 2)
    stream.close()
    assert stream.read() == b"ab"


def pipe_with(data: bytes) -> int:
    read_end, write_end = os.pipe()
    os.write(write_end, data)
    os.close(write_end)
    return read_end


@pytest.mark.parametrize("reader", READERS.values(), ids=READERS.keys())
def test_real_pipe_leaves_the_extra_bytes_unread(reader) -> None:
    fd = pipe_with(BODY + EXTRA)
    try:
        assert reader(BoundedInput(lambda n: os.read(fd, n), len(BODY))) == BODY
        assert os.read(fd, 100) == EXTRA
    finally:
        os.close(fd)


@pytest.mark.parametrize("length", [10**15, 2**63])
def test_absurd_content_length_with_short_body(length: int) -> None:
    # A client (or a server) that claims a huge body and sends 3 bytes: the app's
    # read() must end in ClientDisconnected, not in MemoryError/OverflowError from
    # asking os.read() for the whole claimed length at once.
    fd = pipe_with(b"abc")
    try:
        with pytest.raises(ClientDisconnected):
            BoundedInput(lambda n: os.read(fd, n), length).read()
    finally:
        os.close(fd)
