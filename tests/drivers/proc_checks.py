"""Descriptor and child-process snapshots shared by the driver tests of the fast path.

The same checks as ``test_cgi_runner``'s ``no_leaks`` fixture: the descriptors this
process holds and the children it has (a zombie is still a child), read from /proc.
"""

from __future__ import annotations

import os
import textwrap
import threading
import time
from collections.abc import Callable
from pathlib import Path


def open_fds() -> set[str]:
    return set(os.listdir("/proc/self/fd"))


def children() -> set[str]:
    found: set[str] = set()
    for task in os.listdir("/proc/self/task"):
        try:
            with open(f"/proc/self/task/{task}/children") as f:
                found.update(f.read().split())
        except FileNotFoundError:  # a thread that ended while we looked
            pass
    return found


def reapers() -> list[threading.Thread]:
    """The clean-up threads ``script_task`` starts (a group kill off the loop)."""
    return [t for t in threading.enumerate() if t.name == "cgikit-reaper"]


def settle(check: Callable[[], bool], timeout: float = 5.0) -> bool:
    """Poll ``check`` until it is true or ``timeout`` passes; its last answer."""
    deadline = time.monotonic() + timeout
    while not check():
        if time.monotonic() >= deadline:
            return check()
        time.sleep(0.01)
    return True


def write_script(tmp_path: Path, name: str, text: str, interpreter: str = "/bin/sh") -> Path:
    directory = tmp_path / "cgi-bin"
    directory.mkdir(exist_ok=True)
    path = directory / name
    path.write_text(f"#!{interpreter}\n" + textwrap.dedent(text).lstrip())
    path.chmod(0o755)
    return path
