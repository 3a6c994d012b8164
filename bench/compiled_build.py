"""The optional compiled build, for the benchmarks' "(compiled)" rows.

A copy of src/ under bench/.compiled/, compiled there by ``scripts/compile`` (the modules
pyproject.toml's mypyc build hook lists), so that one run measures the pure package and
the compiled one side by side.
"""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import run

VENV_PYTHON = run.REPO_ROOT / ".venv" / "bin" / "python"
BUILD = Path(__file__).resolve().parent / ".compiled"


def build(python: str) -> Path:
    """src/ copied and compiled for ``python``; the directory to put on PYTHONPATH.

    Raises:
        SystemExit: no dev virtualenv, or one of another Python version than ``python``
            (extensions are built for the interpreter that runs mypyc), or mypyc failed.
    """
    if not VENV_PYTHON.exists():
        raise SystemExit("bench: the compiled rows need the dev venv (scripts/test makes it)")
    if _version(str(VENV_PYTHON)) != _version(python):
        raise SystemExit(f"bench: .venv is not {python}'s version; leave out the compiled rows")
    src = BUILD / "src"
    shutil.rmtree(BUILD, ignore_errors=True)
    shutil.copytree(run.REPO_ROOT / "src", src, ignore=shutil.ignore_patterns("__pycache__"))
    print("bench: compiling the optional build (scripts/compile)", flush=True)
    done = subprocess.run(
        [str(run.REPO_ROOT / "scripts" / "compile"), str(src)],
        capture_output=True, text=True, timeout=900, check=False,
    )  # fmt: skip
    if done.returncode != 0:
        raise SystemExit(f"bench: scripts/compile failed:\n{done.stderr[-3000:]}")
    return src


def _version(python: str) -> str:
    code = "import sys; print(sys.version_info[:2])"
    done = subprocess.run([python, "-c", code], capture_output=True, text=True, timeout=30)
    return done.stdout
