#!/usr/bin/env python3
"""A WSGI app run as a CGI script by cgikit.run: the same code runs under any WSGI server."""

import os
import sys

try:
    import cgikit
except ImportError:  # from a checkout: the repository's src/, found from this file
    here = os.path.dirname(os.path.realpath(__file__))
    sys.path.insert(0, os.path.join(here, "..", "..", "..", "src"))
    import cgikit


def app(environ, start_response):
    lines = [
        "Hello from Python (WSGI through cgikit.run)",
        f"PATH_INFO={environ.get('PATH_INFO', '')}",
        f"QUERY_STRING={environ.get('QUERY_STRING', '')}",
        f"GREETING={os.environ.get('GREETING', '')}",
    ]
    body = ("\n".join(lines) + "\n").encode("utf-8")
    start_response("200 OK", [("Content-Type", "text/plain; charset=utf-8")])
    return [body]


cgikit.run(app)
