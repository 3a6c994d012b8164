"""The optional compiled build, for the benchmarks' "(compiled)" rows.

A copy of src/ under bench/.compiled/ with the modules that pyproject.toml's mypyc build
hook lists compiled there by the dev virtualenv's mypyc (as scripts/compile does in
place), so that one run measures the pure package and the compiled one side by side.
"""

from __future__ import annotations

import shutil
import subprocess
import tomllib
from pathlib import Path

import run

VENV_PYTHON = run.REPO_ROOT / ".venv" / "bin" / "python"
BUILD = Path(__file__).resolve().parent / ".compiled"


def modules() -> list[str]:
    """The compiled modules, as paths below src/ (pyproject.toml's one list)."""
    with (run.REPO_ROOT / "pyproject.toml").open("rb") as f:
        hooks = tomllib.load(f)["tool"]["hatch"]["build"]["targets"]["wheel"]["hooks"]
    return [path.removeprefix("src/") for path in hooks["mypyc"]["include"]]


def build(python: str) -> Path:
    """src/ copied and compiled for ``python``; the directory to put on PYTHONPATH.

    Raises:
        SystemExit: no dev virtualenv, or one of another Python version than ``python``
            (extensions are built for the interpreter that runs mypyc), or mypyc failed.
    """
    if not VENV_PYTHON.exists():
        raise SystemExit("bench: the compiled rows need the dev venv (scripts/test makes it)")
    if _version(str(VENV_PYTHON)) != _version(python):
        raise SystemExit(f"bench: .venv is not {python}'s version; give --no-compiled")
    src = BUILD / "src"
    shutil.rmtree(BUILD, ignore_errors=True)
    ignore = shutil.ignore_patterns("__pycache__", "*.so")
    shutil.copytree(run.REPO_ROOT / "src", src, ignore=ignore)
    print(f"bench: compiling {len(modules())} modules with mypyc", flush=True)
    done = subprocess.run(
        [str(VENV_PYTHON), "-m", "mypyc", *modules()],
        cwd=src, capture_output=True, text=True, timeout=900, check=False,
    )  # fmt: skip
    if done.returncode != 0:
        raise SystemExit(f"bench: mypyc failed:\n{done.stdout[-3000:]}{done.stderr[-3000:]}")
    shutil.rmtree(src / "build", ignore_errors=True)
    return src


def _version(python: str) -> str:
    code = "import sys; print(sys.version_info[:2])"
    return subprocess.run([python, "-c", code], capture_output=True, text=True).stdout
