"""``wsgi.file_wrapper`` (PEP 3333 "Optional Platform-Specific File Handling").

A gateway that can copy file descriptors (``os.sendfile``) asks ``span()`` for the part
of the file still to send; any other gateway just iterates, one block at a time, so a
large file never sits in memory whole.
"""

from __future__ import annotations

import os

TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Iterator
    from typing import IO


class FileWrapper:
    """Iterate ``filelike`` in ``blksize`` blocks; ``close()`` closes it."""

    __slots__ = ("blksize", "filelike")

    def __init__(self, filelike: IO[bytes], blksize: int = 65536) -> None:
        self.filelike = filelike
        self.blksize = blksize

    def __iter__(self) -> Iterator[bytes]:
        read = self.filelike.read
        while block := read(self.blksize):
            yield block

    def span(self) -> tuple[int, int, int] | None:
        """``(fd, offset, count)`` still to send from a regular file, or None if unknown."""
        try:
            fd = self.filelike.fileno()
            offset = self.filelike.tell()
            info = os.fstat(fd)
        except (AttributeError, OSError, ValueError):
            return None
        if info.st_mode & 0o170000 != 0o100000:  # not S_ISREG (stat is not imported)
            return None
        return fd, offset, max(0, info.st_size - offset)

    def close(self) -> None:
        close = getattr(self.filelike, "close", None)
        if close is not None:
            close()
