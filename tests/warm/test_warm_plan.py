"""warm_plan: which scripts run warm, under which command, with which preloads."""

from __future__ import annotations

import pytest

from cgikit.warm_plan import Cold, WarmPlan, plan

EXE = "/opt/py/bin/python3.11"

# (#! line, expected command or None for cold)
SHEBANGS = [
    (b"#!/usr/bin/python3", ("/usr/bin/python3",)),
    (b"#!/usr/bin/python", ("/usr/bin/python",)),
    (b"#!/usr/local/bin/python3.12", ("/usr/local/bin/python3.12",)),
    (b"#! /usr/bin/python3", ("/usr/bin/python3",)),
    (b"#!/usr/bin/python3\r", ("/usr/bin/python3",)),  # a CRLF script
    (b"#!/usr/bin/python3 -u", ("/usr/bin/python3", "-u")),
    (b"#!/usr/bin/python3 -u -B", ("/usr/bin/python3", "-u -B")),  # Linux: one word
    (b"#!/usr/bin/env python3", ("/usr/bin/env", "python3")),
    (b"#!/usr/bin/env python", ("/usr/bin/env", "python")),
    (b"#!/usr/bin/env -S python3 -u", None),
    (b"#!/usr/bin/env perl", None),
    (b"#!/usr/bin/perl", None),
    (b"#!/bin/sh", None),
    (b"#!/usr/bin/python2x", None),
    (b"#!python3", None),  # not an absolute path: the kernel refuses it too
    (b"#!/usr/bin/ipython3", None),
    (b"#!/usr/bin/pythonista", None),
    (b"\x7fELF\x02\x01", None),  # a binary
    (b"", None),
    (b"#!/usr/bin/\xffpython3", None),
]


@pytest.mark.parametrize(("line", "command"), SHEBANGS)
def test_the_shebang_decides(line: bytes, command: tuple[str, ...] | None) -> None:
    got = plan(["/cgi/x"], line + b"\nprint()\n", EXE)
    if command is None:
        assert isinstance(got, Cold) and not got.mistake
    else:
        assert got == WarmPlan(command, ())


def test_a_py_file_run_through_the_hosts_python_uses_that_python() -> None:
    assert plan([EXE, "/cgi/x.py"], b"print('no shebang')\n", EXE) == WarmPlan((EXE,), ())
    assert isinstance(plan(["/usr/bin/other", "/cgi/x.py"], b"", EXE), Cold)


# (lines after the #! line, expected preloads or a Cold with mistake flag)
DIRECTIVES = [
    (b"# cgikit-preload: flask, jinja2\n", ("flask", "jinja2")),
    (b"#cgikit-preload:flask\n", ("flask",)),
    (
        b"# -*- coding: utf-8 -*-\n\n# cgikit-preload: json,  xml.dom.minidom ,\n",
        ("json", "xml.dom.minidom"),
    ),
    (b"import os\n# cgikit-preload: flask\n", ()),  # after code: not a directive
    (b"# cgikit-warm: yes\n", ()),
    (b"# cgikit-warm: no\n", Cold("it opts out (# cgikit-warm: no)")),
    (b"# cgikit-warm: off\n# cgikit-preload: json\n", Cold("it opts out (# cgikit-warm: no)")),
    (b"# cgikit-preload: os; rm -rf\n", Cold("", mistake=True)),
    (b"# cgikit-preload: a\n# cgikit-preload: b\n", Cold("", mistake=True)),
]


@pytest.mark.parametrize(("rest", "expected"), DIRECTIVES)
def test_directives_in_the_leading_comment_block(
    rest: bytes, expected: tuple[str, ...] | Cold
) -> None:
    got = plan(["/cgi/x"], b"#!/usr/bin/python3\n" + rest, EXE)
    if isinstance(expected, Cold):
        assert isinstance(got, Cold) and got.mistake == expected.mistake
        if expected.reason:
            assert got.reason == expected.reason
    else:
        assert got == WarmPlan(("/usr/bin/python3",), expected)


def test_only_the_first_lines_hold_directives() -> None:
    late = b"#!/usr/bin/python3\n" + b"#\n" * 40 + b"# cgikit-warm: no\n"
    assert isinstance(plan(["/cgi/x"], late, EXE), WarmPlan)
