"""The walk from a CGI directory to its script (host_parts.find_script), on a real tree."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest

from cgikit.cgi_paths import UnsafePath
from cgikit.host_parts import find_script


@pytest.fixture
def tree(tmp_path: Path) -> Path:
    root = tmp_path / "cgi-bin"
    (root / "sub").mkdir(parents=True)
    for name in ("run.cgi", "sub/deep.cgi"):
        (root / name).write_text("#!/bin/sh\n")
        (root / name).chmod(0o755)
    (root / "plain.py").write_text("print()\n")
    (root / "data.txt").write_text("x\n")
    os.mkfifo(root / "fifo")
    (tmp_path / "outside.cgi").write_text("#!/bin/sh\n")
    (tmp_path / "outside.cgi").chmod(0o755)
    (root / "escape.cgi").symlink_to(tmp_path / "outside.cgi")
    (root / "alias.cgi").symlink_to(root / "sub" / "deep.cgi")
    return root


@pytest.mark.parametrize(
    ("segments", "filename", "count", "name"),
    [
        (["run.cgi"], "run.cgi", 1, "run.cgi"),
        (["run.cgi", "extra", "path"], "run.cgi", 1, "run.cgi"),
        (["sub", "deep.cgi", ""], "sub/deep.cgi", 2, "sub/deep.cgi"),
        (["alias.cgi", "x"], "alias.cgi", 1, "alias.cgi"),  # a symlink inside: its name
    ],
)
def test_found(tree: Path, segments: list[str], filename: str, count: int, name: str) -> None:
    script = find_script(str(tree), segments, run_python=False)
    assert script.filename == f"{tree}/{filename}"
    assert (script.count, script.name) == (count, name)
    assert script.argv == (f"{tree}/{filename}",)


def test_a_python_file_runs_through_the_interpreter_only_when_asked(tree: Path) -> None:
    script = find_script(str(tree), ["plain.py"], run_python=True)
    assert script.argv == (sys.executable, f"{tree}/plain.py")
    with pytest.raises(UnsafePath) as refused:
        find_script(str(tree), ["plain.py"], run_python=False)
    assert refused.value.status == 403


@pytest.mark.parametrize(
    ("segments", "status"),
    [
        (["missing.cgi"], 404),
        (["sub"], 404),  # a directory names no script
        (["sub", ""], 404),
        ([], 404),
        (["data.txt"], 403),  # not executable
        (["fifo"], 403),  # not a regular file
        (["escape.cgi"], 403),  # a symlink out of the directory
    ],
)
def test_refused(tree: Path, segments: list[str], status: int) -> None:
    with pytest.raises(UnsafePath) as refused:
        find_script(str(tree), segments, run_python=False)
    assert refused.value.status == status


def test_the_root_directory_joins_without_a_double_slash() -> None:
    env = os.path.realpath("/usr/bin/env")
    assert env.startswith("/")
    script = find_script("/", ["usr", "bin", "env"], run_python=False)
    assert script.filename == "/usr/bin/env"
    assert (script.count, script.name) == (3, "usr/bin/env")
