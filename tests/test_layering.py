"""Layering and import cost of the child side.

- The pure layers (protocol core and the WSGI seam) do no I/O and keep no clock: no
  socket, selectors, threading, asyncio, subprocess, signal, time or os imports. The one
  exception is ``os`` in the module that holds FileWrapper, for ``os.fstat`` only.
- ``import cgikit`` and the CGI path import none of the modules that cost a CGI script
  milliseconds per request (re, typing, dataclasses, enum, email, traceback), nor
  ``__future__`` (the package documents that too).
- docs/options.md (and README.md) carry the options table generated from the code.
"""

from __future__ import annotations

import ast
import os
import subprocess
import sys
from pathlib import Path

import pytest

from cgikit import RUN_OPTIONS
from cgikit.cli import markdown_table
from helpers_child import SRC, TIMEOUT, cgi_env, run_cgi, write_script

PKG = SRC / "cgikit"
ROOT = SRC.parent
# The pure layers: the WSGI seam (request and response), the error pages, and the host
# side's protocol cores (script output parser, meta-variables, request paths).
PURE_MODULES = [
    "wsgi_request.py",
    "wsgi_response.py",
    "errorpage.py",
    "cgi_output.py",
    "cgi_meta.py",
    "cgi_paths.py",
    "http_request.py",
    "http_chunked.py",
    "fastcgi_records.py",
    "fastcgi_connection.py",
    "fastcgi_whole.py",
    "scgi_request.py",
]
NO_IO = {"socket", "selectors", "threading", "asyncio", "subprocess", "signal", "os", "time"}
SLOW = {"re", "typing", "dataclasses", "enum", "email", "traceback", "__future__"}


def imported_names(tree: ast.AST) -> set[str]:
    """Top-level names of every module imported anywhere in ``tree`` (lazy ones too)."""
    names: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names.update(alias.name.split(".")[0] for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names.add(node.module.split(".")[0])
        elif isinstance(node, ast.Call) and _dynamic_import(node):
            names.add(node.args[0].value.split(".")[0])  # type: ignore[attr-defined]
    return names


def _dynamic_import(node: ast.Call) -> bool:
    func = node.func
    name = func.id if isinstance(func, ast.Name) else getattr(func, "attr", "")
    first = node.args[0] if node.args else None
    is_str = isinstance(first, ast.Constant) and isinstance(first.value, str)
    return name in ("__import__", "import_module") and is_str


def defines_file_wrapper(tree: ast.AST) -> bool:
    return any(isinstance(n, ast.ClassDef) and n.name == "FileWrapper" for n in ast.walk(tree))


def os_attributes(tree: ast.AST) -> set[str]:
    return {
        node.attr
        for node in ast.walk(tree)
        if isinstance(node, ast.Attribute)
        and isinstance(node.value, ast.Name)
        and node.value.id == "os"
    }


@pytest.mark.parametrize("name", PURE_MODULES)
def test_pure_layers_do_no_io(name: str) -> None:
    path = PKG / name
    assert path.is_file(), f"{path} is gone: update PURE_MODULES to the new layout"
    tree = ast.parse(path.read_text(), str(path))
    allowed = {"os"} if defines_file_wrapper(tree) else set()
    assert imported_names(tree) & NO_IO - allowed == set()
    if "os" in allowed and "os" in imported_names(tree):
        assert os_attributes(tree) <= {"fstat"}, "os is allowed here for os.fstat only"


def test_the_layering_check_can_fail() -> None:
    tree = ast.parse(
        "import os.path\nfrom time import monotonic\ndef f():\n    import socket\n"
        "    __import__('threading')\n    importlib.import_module('asyncio.events')\n"
    )
    assert imported_names(tree) & NO_IO == {"os", "time", "socket", "threading", "asyncio"}


def imported_modules(code: str) -> set[str]:
    """Every module ``python -S -X importtime -c code`` imports (top-level names)."""
    proc = subprocess.run(
        [sys.executable, "-S", "-X", "importtime", "-c", code],
        env={"PATH": os.environ.get("PATH", ""), "PYTHONPATH": str(SRC)},
        capture_output=True,
        text=True,
        timeout=TIMEOUT,
        check=True,
    )
    rows = [line.split("|") for line in proc.stderr.splitlines()]
    names = {row[2].strip() for row in rows if len(row) == 3 and "imported package" not in row[2]}
    assert "cgikit" in names, proc.stderr  # the parse found the import lines
    return {name.split(".")[0] for name in names}


def test_import_cgikit_is_lean() -> None:
    assert imported_modules("import cgikit") & SLOW == set()


def test_cgi_path_is_lean() -> None:
    modules = imported_modules("import cgikit, cgikit.wsgi_request, cgikit.wsgi_response")
    assert {"cgikit"} <= modules
    assert modules & SLOW == set()


def test_serving_a_request_stays_lean(tmp_path: Path) -> None:
    out = tmp_path / "modules.txt"
    script = write_script(
        tmp_path,
        f"""\
        import sys
        import cgikit

        def app(environ, start_response):
            start_response("200 OK", [("Content-Type", "text/plain")])
            return [b"hi"]

        cgikit.run(app)
        with open({str(out)!r}, "w") as f:
            f.write("\\n".join(sorted(sys.modules)))
        """,
    )
    proc = run_cgi(script, cgi_env())
    assert (
        proc.stdout == b"Status: 200 OK\r\nContent-Type: text/plain\r\nContent-Length: 2\r\n\r\nhi"
    )
    modules = {name.split(".")[0] for name in out.read_text().split()}
    assert "cgikit" in modules
    assert modules & SLOW == set()


def options_block(path: Path) -> str:
    text = path.read_text()
    start, end = "<!-- options-table -->\n", "<!-- /options-table -->"
    assert start in text and end in text, f"{path} has no {start.strip()} block"
    return text.split(start, 1)[1].split(end, 1)[0]


@pytest.mark.parametrize("name", ["docs/options.md", "README.md"])
def test_options_table_in_the_docs_is_generated(name: str) -> None:
    path = ROOT / name
    if not path.exists():
        pytest.skip(f"{name} does not exist yet")
    assert options_block(path) == markdown_table(RUN_OPTIONS)
