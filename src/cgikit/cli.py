"""The ``cgikit`` command line. Flags come from the options tables.

``cgikit run module:app [METHOD] [PATH?QUERY]`` serves a WSGI app through whatever
gateway started the process: as a CGI script under a web server, on a listening socket
a launcher handed over, or one emulated request from a terminal (flags:
cgikit.RUN_OPTIONS). ``cgikit run --fastcgi|--scgi|--http ADDR module:app`` serves it
until SIGTERM (flags: cgikit.gateway_options.GATEWAY_OPTIONS).

``cgikit serve [--bind ADDR] [--port N] ROOT`` serves a site's static files and CGI
scripts over HTTP; ``cgikit serve --fastcgi ADDR ROOT`` serves its CGI scripts over
FastCGI to a web server in front (flags: cgikit.site_server.SERVE_OPTIONS).
"""

from __future__ import annotations

import argparse
import importlib
import os
import sys
from typing import Any

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
        "one request from a terminal: cgikit run module:app [METHOD] [PATH?QUERY]. "
        "With --fastcgi, --scgi or --http ADDR (host:port, [::1]:port or unix:/path), "
        "serve it there until SIGTERM (docs/gateway-options.md).",
    )
    run.add_argument("app", help="the WSGI app to serve, as module:attribute")
    run.add_argument("request", nargs="*", help="[METHOD] [PATH?QUERY] when emulating")
    for option in RUN_OPTIONS:
        if option.kind is bool:
            run.add_argument(option.flag, action="store_true", default=None, help=option.help)
        else:
            run.add_argument(option.flag, metavar="VALUE", default=None, help=option.help)
    _add_gateway(run)
    _add_serve(commands)
    return parser


def _add_gateway(run: argparse.ArgumentParser) -> None:
    from cgikit.gateway_options import GATEWAY_OPTIONS, PROTOCOLS

    group = run.add_mutually_exclusive_group()
    names = {"fastcgi": "FastCGI", "scgi": "SCGI", "http": "HTTP/1.1"}
    for protocol in PROTOCOLS:
        group.add_argument(f"--{protocol}", metavar="ADDR", help=f"serve {names[protocol]} on ADDR")
    for option in GATEWAY_OPTIONS:
        metavar = "SECONDS" if option.kind is float else "N"
        run.add_argument(
            option.flag, type=option.kind, metavar=metavar, default=None, help=option.help
        )


def _add_serve(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    # Imported here: ``cgikit run`` under a web server pays for every import per request.
    from cgikit.site_server import SERVE_OPTIONS

    serve = commands.add_parser(
        "serve",
        help="serve a site's static files and CGI scripts over HTTP",
        description="Serve the files under ROOT and run the CGI scripts of ROOT/cgi-bin at "
        "/cgi-bin/ (the http.server --cgi convention), until SIGTERM or Ctrl-C. With "
        "--fastcgi ADDR, serve only the CGI scripts, over FastCGI, to a web server that "
        "serves the files (the fcgiwrap role). Every flag may instead be set by its "
        "CGIKIT_* environment variable (docs/serve-options.md).",
    )
    serve.add_argument("root", metavar="ROOT", help="the site's directory")
    for option in SERVE_OPTIONS:
        # None means "not given", so that resolve() falls back to the variable, then
        # the default; --no-FLAG turns off an option that is on by default.
        if option.kind is bool:
            action: Any = argparse.BooleanOptionalAction
            serve.add_argument(option.flag, action=action, default=None, help=option.help)
        elif option.kind is list:
            serve.add_argument(
                option.flag, action="append", metavar="VALUE", default=None, help=option.help
            )
        else:
            metavar = "ADDR" if option.name in ("bind", "fastcgi") else "N"
            serve.add_argument(
                option.flag, type=option.kind, metavar=metavar, default=None, help=option.help
            )


def main(argv: list[str] | None = None) -> int:
    """Entry point of ``cgikit`` and ``python -m cgikit``; returns the exit status."""
    args = build_parser().parse_args(argv)
    if args.command == "serve":
        return _serve(args)
    return _run(args)


def _run(args: argparse.Namespace) -> int:
    from cgikit import run_auto
    from cgikit.gateway_options import GATEWAY_OPTIONS, PROTOCOLS

    given = {option.name: getattr(args, option.name) for option in RUN_OPTIONS}
    gateway = {option.name: getattr(args, option.name) for option in GATEWAY_OPTIONS}
    protocol = next((p for p in PROTOCOLS if getattr(args, p) is not None), None)
    if protocol is None:
        return run_auto(load_app(args.app), args.request, "", gateway, **given)
    # The RUN_OPTIONS shape the CGI gateway's responses; the servers do not take them.
    misplaced = [o.flag for o in RUN_OPTIONS if given[o.name] is not None]
    if args.request or misplaced:
        extra = " ".join(misplaced + args.request)
        print(f"cgikit run --{protocol}: unexpected arguments: {extra}", file=sys.stderr)
        return 2
    from cgikit.gateway_run import run_gateway

    app = load_app(args.app)
    try:
        run_gateway(app, protocol, getattr(args, protocol), **gateway)
    except (OSError, ValueError, TypeError) as exc:  # a bad option or address
        print(f"cgikit run --{protocol}: {exc}", file=sys.stderr)
        return 2
    return 0


def _serve(args: argparse.Namespace) -> int:
    from cgikit.site_server import SERVE_OPTIONS, serve

    given = {option.name: getattr(args, option.name) for option in SERVE_OPTIONS}
    try:
        serve(args.root, **given)
    except (OSError, ValueError, TypeError) as exc:  # a bad option, root or address
        print(f"cgikit serve: {exc}", file=sys.stderr)
        return 2
    return 0


def markdown_table(options: tuple[Option, ...] = RUN_OPTIONS) -> str:
    """The options as a Markdown table, for the docs."""
    rows = ["| keyword | flag | environment | default | meaning |", "|---|---|---|---|---|"]
    for o in options:
        default = o.default
        if default is False or default is True:
            default = "on" if default else "off"
        elif default is None or default == ():
            default = "none"
        rows.append(f"| `{o.name}` | `{o.flag}` | `{o.env}` | {default} | {o.help} |")
    return "\n".join(rows) + "\n"
