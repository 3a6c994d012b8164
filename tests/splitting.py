"""Feeding a sans-IO parser its input whole, byte by byte and at every split point."""

from __future__ import annotations

from collections.abc import Iterator


def splits(data: bytes) -> Iterator[list[bytes]]:
    """Whole, byte by byte, and every two-chunk split."""
    yield [data] if data else []
    yield [data[i : i + 1] for i in range(len(data))]
    for i in range(1, len(data)):
        yield [data[:i], data[i:]]
