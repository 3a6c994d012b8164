"""Whether a cgikit module is the compiled build's (scripts/compile), for the few tests
whose subject differs there: mypyc checks argument types at the call (a TypeError), and
a function replaced on a compiled module is not what its own module calls."""

from __future__ import annotations

from pathlib import Path
from types import ModuleType


def is_compiled(module: ModuleType) -> bool:
    return Path(str(module.__file__)).suffix != ".py"


def source_of(module: ModuleType) -> Path:
    """The module's .py file, also beside its compiled extension."""
    path = Path(str(module.__file__))
    return path if path.suffix == ".py" else path.with_name(module.__name__.rsplit(".")[-1] + ".py")
