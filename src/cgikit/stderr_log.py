"""A CGI script's stderr, line by line, to the server's log.

``StderrLog`` is fed the bytes of the stderr pipe as they come (``feed``) and logs
each complete line as ``name: line``; ``flush`` logs a partial last line at EOF. A
line over ``MAX_LOG_LINE`` is logged cut, the rest of it dropped. Controls are
escaped, so a script cannot forge log lines. Reading the pipe is ``cgi_runner``'s.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Final

MAX_LOG_LINE: Final = 8192  # a longer stderr line is logged cut
# Controls in a stderr line are escaped: a script must not forge log lines (CR, ESC).
_ESCAPES: Final = {c: f"\\x{c:02x}" for c in [*range(32), 127] if c != 9}

__all__ = ["MAX_LOG_LINE", "StderrLog"]


class StderrLog:
    """The stderr lines of one script, logged through ``log`` as ``name: line``."""

    def __init__(self, log: Callable[[str], None], name: str) -> None:
        self._log, self._name = log, name
        self._line = bytearray()
        self._skip = False  # dropping the rest of an overlong stderr line

    def feed(self, data: bytes) -> None:
        """Log each complete line as ``name: line``; cut lines over MAX_LOG_LINE."""
        buf = self._line
        buf += data
        start = 0
        while (end := buf.find(b"\n", start)) >= 0:
            if not self._skip:
                self._log_line(buf[start:end])
            self._skip = False
            start = end + 1
        del buf[:start]
        if len(buf) > MAX_LOG_LINE:
            if not self._skip:
                self._log_line(buf)
            self._skip = True
            buf.clear()

    def flush(self) -> None:
        """Log a partial last line (stderr is at its end)."""
        if self._line and not self._skip:
            self._log_line(self._line)
        self._line.clear()

    def _log_line(self, line: bytes | bytearray) -> None:
        cut = len(line) > MAX_LOG_LINE
        text = bytes(line[:MAX_LOG_LINE]).removesuffix(b"\r").decode("utf-8", "backslashreplace")
        self._log(f"{self._name}: {text.translate(_ESCAPES)}{' [cut]' if cut else ''}")
