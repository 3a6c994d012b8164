"""Pick the gateway this process was started through, and serve the app with it.

A CGI server sets GATEWAY_INTERFACE (RFC 3875 §4.1.4); anything else is a person at a
terminal, who gets one emulated request.
"""

from __future__ import annotations

import os
import sys

from cgikit.options import RUN_OPTIONS, resolve

TYPE_CHECKING = False
if TYPE_CHECKING:
    from cgikit._typing import WSGIApp


def run_auto(app: WSGIApp, args: list[str] | None = None, **given: object) -> int:
    """Serve ``app``; ``args`` are the emulated request's words (default: ``sys.argv[1:]``).

    Returns:
        The exit status for the process (0 unless terminal emulation was misused).
    """
    options = resolve(RUN_OPTIONS, given, os.environ)
    if "GATEWAY_INTERFACE" in os.environ:
        from cgikit.gateways.cgi_script import serve_process

        serve_process(app, options)
        return 0
    from cgikit.gateways.terminal import emulate

    return emulate(app, sys.argv[1:] if args is None else args, options)
