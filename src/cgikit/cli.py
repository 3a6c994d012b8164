"""The ``cgikit`` command line. Flags come from the options table (cgikit.RUN_OPTIONS).

``cgikit run module:app [METHOD] [PATH?QUERY]`` serves a WSGI app through whatever
gateway started the process: as a CGI script under a web server, or one emulated
request from a terminal.
"""

from __future__ import annotations

import argparse
import importlib
import os
import sys

from cgikit import RUN_OPTIONS, Option, __version__

TYPE_CHECKING = False
if TYPE_CHECKING:
    from cgikit._typing import WSGIApp


def load_app(spec: str) -> WSGIApp:
    """Import ``module:attr`` (``module`` alone means ``module:app``)."""
    module_name, _, attr = spec.partition(":")
    if os.getcwd() not in sys.path and "" not in sys.path:
        sys.path.insert(0, os.getcwd())
    module = importlib.import_module(module_name)
    app: object = module
    for part in (attr or "app").split("."):
        app = getattr(app, part)
    if not callable(app):
        raise TypeError(f"{spec} is not callable")
    return app


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="cgikit", description=__doc__.splitlines()[0])
    parser.add_argument("--version", action="version", version=f"cgikit {__version__}")
    commands = parser.add_subparsers(dest="command", required=True)
    run = commands.add_parser(
        "run",
        help="serve a WSGI app through the gateway that started this process",
        description="Serve module:app as a CGI script under a web server, or emulate "
        "one request from a terminal: cgikit run module:app [METHOD] [PATH?QUERY].",
    )
    run.add_argument("app", help="the WSGI app to serve, as module:attribute")
    run.add_argument("request", nargs="*", help="[METHOD] [PATH?QUERY] when emulating")
    for option in RUN_OPTIONS:
        if option.kind is bool:
            run.add_argument(option.flag, action="store_true", default=None, help=option.help)
        else:
            run.add_argument(option.flag, metavar="VALUE", default=None, help=option.help)
    return parser


def main(argv: list[str] | None = None) -> int:
    """Entry point of ``cgikit`` and ``python -m cgikit``; returns the exit status."""
    args = build_parser().parse_args(argv)
    from cgikit import run_auto

    app = load_app(args.app)
    given = {option.name: getattr(args, option.name) for option in RUN_OPTIONS}
    return run_auto(app, args.request, "", **given)


def markdown_table(options: tuple[Option, ...] = RUN_OPTIONS) -> str:
    """The options as a Markdown table, for the docs."""
    rows = ["| keyword | flag | environment | default | meaning |", "|---|---|---|---|---|"]
    for o in options:
        default = "off" if o.default is False else ("none" if o.default is None else o.default)
        rows.append(f"| `{o.name}` | `{o.flag}` | `{o.env}` | {default} | {o.help} |")
    return "\n".join(rows) + "\n"
