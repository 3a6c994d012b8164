"""Type aliases for PEP 3333 objects. Imported only under TYPE_CHECKING (``typing`` is slow)."""

from __future__ import annotations

from collections.abc import Callable, Iterable
from types import TracebackType
from typing import Any, Protocol, TypeAlias

ExcInfo: TypeAlias = tuple[type[BaseException], BaseException, TracebackType | None]
OptExcInfo: TypeAlias = ExcInfo | tuple[None, None, None]
Environ: TypeAlias = dict[str, Any]
Headers: TypeAlias = list[tuple[str, str]]
WriteBody: TypeAlias = Callable[[bytes], object]


class StartResponse(Protocol):
    def __call__(
        self, status: str, headers: Headers, exc_info: OptExcInfo | None = ..., /
    ) -> WriteBody: ...


WSGIApp: TypeAlias = Callable[[Environ, StartResponse], Iterable[bytes]]


class ErrorStream(Protocol):
    def write(self, s: str, /) -> object: ...
    def flush(self) -> object: ...
