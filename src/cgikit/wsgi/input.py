"""``wsgi.input``: a request body that ends exactly where the request says it ends.

RFC 3875 §4.2: the script MUST NOT read more than CONTENT_LENGTH bytes, even when more
is there (wsgiref's CGIHandler hands over raw stdin and reads past it). This stream
never asks its source for a byte past the limit, and every PEP 3333 read method
(``read``, ``read(n)``, ``readline``, ``readlines``, iteration) stops there.

The source is a ``read(n) -> bytes`` callable (``os.read`` on fd 0 for CGI, a socket
or a record stream for later gateways); b"" from it means the peer is gone.
"""

from __future__ import annotations

TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Callable, Iterator

_CHUNK = 65536


class ClientDisconnected(OSError):
    """The body ended before CONTENT_LENGTH bytes arrived: the client went away."""


class BoundedInput:
    """A read-only byte stream over at most ``length`` bytes of ``read``.

    ``length=None`` means "until the source says EOF" (a chunked body that the server
    de-chunks and ends by closing stdin; ``wsgi.input_terminated`` is then true).
    """

    __slots__ = ("_buffer", "_read", "_remaining")

    def __init__(self, read: Callable[[int], bytes], length: int | None) -> None:
        self._read = read
        self._remaining = length  # bytes not yet taken from the source
        # Taken from the source, not yet given to the app. A bytearray: appends are
        # amortized O(1) and deleting from the front is O(1) in CPython.
        self._buffer = bytearray()

    def _pull(self, want: int) -> bytes:
        """Up to ``want`` new bytes from the source (b"" at the end of the body)."""
        if self._remaining is None:
            data = self._read(want)
            if not data:
                self._remaining = 0
            return data
        if self._remaining <= 0:
            return b""
        data = self._read(min(want, self._remaining))
        if not data:
            missing = self._remaining
            self._remaining = 0
            raise ClientDisconnected(f"request body ended {missing} bytes short of CONTENT_LENGTH")
        self._remaining -= len(data)
        return data

    def read(self, size: int | None = -1) -> bytes:
        """Read ``size`` bytes, or all that is left when ``size`` is negative or None."""
        if size is None or size < 0:
            parts = [bytes(self._buffer)]
            self._buffer.clear()
            while data := self._pull(_CHUNK if self._remaining is None else self._remaining):
                parts.append(data)
            return b"".join(parts)
        return self._take(size)

    def _take(self, size: int) -> bytes:
        while len(self._buffer) < size:
            data = self._pull(size - len(self._buffer))
            if not data:
                break
            self._buffer += data
        out = bytes(self._buffer[:size])
        del self._buffer[:size]
        return out

    def readline(self, size: int | None = -1) -> bytes:
        """Read up to and including the next b"\\n", at most ``size`` bytes when given."""
        limit = -1 if size is None else size
        start = 0
        while True:
            end = self._buffer.find(b"\n", start)
            if end >= 0:
                cut = end + 1
                break
            if 0 <= limit <= len(self._buffer):
                cut = limit
                break
            start = len(self._buffer)
            data = self._pull(_CHUNK)
            if not data:
                cut = len(self._buffer)
                break
            self._buffer += data
        if 0 <= limit < cut:
            cut = limit
        out = bytes(self._buffer[:cut])
        del self._buffer[:cut]
        return out

    def readlines(self, hint: int | None = -1) -> list[bytes]:
        """Read lines until the end, or until their total size reaches ``hint``."""
        lines: list[bytes] = []
        total = 0
        while line := self.readline():
            lines.append(line)
            total += len(line)
            if hint is not None and 0 < hint <= total:
                break
        return lines

    def __iter__(self) -> Iterator[bytes]:
        return self

    def __next__(self) -> bytes:
        line = self.readline()
        if not line:
            raise StopIteration
        return line

    def close(self) -> None:
        """Nothing to release; present because some apps call it."""
