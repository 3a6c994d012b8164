"""Which scripts warm mode may run, and under which interpreter (issue 5): no I/O.

``plan(argv, head, executable)`` reads the start of a script (its ``#!`` line and the
comment block under it) and says either how to run it warm, a ``WarmPlan`` (the
interpreter command that starts its zygote, the modules it asks to be preloaded), or
why it runs cold (a ``str``). The rules:

- A Python script only: an interpreter named ``python``, ``python3``, ``python3.12``
  and the like, by path (``#!/usr/bin/python3``) or through ``env``
  (``#!/usr/bin/env python3``); or a ``.py`` file the host runs with its own
  interpreter (``run_python``: ``argv`` is ``(executable, path)``). Anything else
  (sh, Perl, a binary, ``env -S ...``) runs cold.
- The zygote is started with the very command the kernel would use (the ``#!`` line's
  interpreter and its one optional argument, Linux passes the rest as one word), so a
  warm script gets the interpreter, flags and ``sys.path`` a cold one gets.
- Directives, in ``#`` lines of the leading comment block (the first
  ``DIRECTIVE_LINES`` lines):
  ``# cgikit-warm: no`` opts the script out (it keeps exec'ing);
  ``# cgikit-preload: flask, jinja2`` names modules the zygote imports before it forks
  the script, so the script's own ``import flask`` costs nothing.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Final

__all__ = ["HEAD_BYTES", "Cold", "WarmPlan", "plan"]

HEAD_BYTES: Final = 4096  # how much of a script is read for its #! line and directives
DIRECTIVE_LINES: Final = 30
_PYTHON: Final = re.compile(r"python(\d+(\.\d+)?)?")
_DIRECTIVE: Final = re.compile(r"#\s*cgikit-(warm|preload)\s*:\s*(.*?)\s*$")
_MODULE: Final = re.compile(r"[A-Za-z_][A-Za-z0-9_]*(\.[A-Za-z_][A-Za-z0-9_]*)*")


@dataclass(frozen=True, slots=True)
class WarmPlan:
    """A script that runs warm: ``command`` starts its zygote (one per command),
    ``preload`` is what the script asks the zygote to import first."""

    command: tuple[str, ...]
    preload: tuple[str, ...]


@dataclass(frozen=True, slots=True)
class Cold:
    """A script that runs cold, and why; ``mistake``: a directive of it is wrong (worth
    a log line, where a shell script running cold is not)."""

    reason: str
    mistake: bool = False


def plan(argv: Sequence[str], head: bytes, executable: str) -> WarmPlan | Cold:
    """How to run the script of ``argv`` (the cold path's argv: ``(path,)``, or
    ``(executable, path)`` for a ``.py`` file run through the host's Python), whose
    first bytes are ``head``: a ``WarmPlan``, or ``Cold`` with the reason."""
    lines = head.split(b"\n", DIRECTIVE_LINES)[:DIRECTIVE_LINES]
    if len(argv) == 2 and argv[0] == executable:
        command: tuple[str, ...] | str = (executable,)
    elif len(argv) == 1:
        command = _interpreter(lines[0] if head.startswith(b"#!") else b"")
    else:
        command = "not a script the host runs by itself"
    if isinstance(command, str):
        return Cold(command)
    try:
        directives = _directives(lines[1:] if head.startswith(b"#!") else lines)
    except ValueError as exc:
        return Cold(str(exc), mistake=True)
    if directives.get("warm", "yes").lower() in ("no", "off", "false", "0"):
        return Cold("it opts out (# cgikit-warm: no)")
    names = tuple(n.strip() for n in directives.get("preload", "").split(",") if n.strip())
    bad = [name for name in names if not _MODULE.fullmatch(name)]
    if bad:
        return Cold(f"cgikit-preload names no module: {bad[0]!r}", mistake=True)
    return WarmPlan(command, names)


def _interpreter(line: bytes) -> tuple[str, ...] | str:
    """The #! line's command if it runs Python, else why not."""
    if not line:
        return "no #! line"
    try:
        text = line[2:].decode().strip()
    except UnicodeDecodeError:
        return "the #! line is not UTF-8"
    # Linux: the interpreter path, then everything else as a single argument.
    interpreter, _, argument = text.partition(" ")
    argument = argument.strip(" \t\r")
    interpreter = interpreter.rstrip("\r")
    name = interpreter.rsplit("/", 1)[-1]
    if name == "env" and argument and " " not in argument and _PYTHON.fullmatch(argument):
        return (interpreter, argument)
    if _PYTHON.fullmatch(name) and interpreter.startswith("/"):
        return (interpreter, argument) if argument else (interpreter,)
    return f"not a Python script (#!{text})"


def _directives(lines: list[bytes]) -> dict[str, str]:
    """``cgikit-*`` directives of the leading comment block (blank lines allowed)."""
    found: dict[str, str] = {}
    for raw in lines:
        line = raw.decode("utf-8", "replace").strip()
        if not line:
            continue
        if not line.startswith("#"):
            break
        match = _DIRECTIVE.match(line)
        if match:
            if match.group(1) in found:
                raise ValueError(f"cgikit-{match.group(1)} is given twice")
            found[match.group(1)] = match.group(2)
    return found
