#!/usr/bin/env python3
"""A POST form echo: the form's fields back as an HTML page (a WSGI app via cgikit.run)."""

import html
import os
import sys
from urllib.parse import parse_qsl

try:
    import cgikit
except ImportError:  # from a checkout: the repository's src/, found from this file
    here = os.path.dirname(os.path.realpath(__file__))
    sys.path.insert(0, os.path.join(here, "..", "..", "..", "src"))
    import cgikit


def app(environ, start_response):
    if environ["REQUEST_METHOD"] != "POST":
        start_response(
            "405 Method Not Allowed", [("Allow", "POST"), ("Content-Type", "text/plain")]
        )
        return [b"POST the form of /index.html\n"]
    length = int(environ.get("CONTENT_LENGTH") or 0)
    fields = parse_qsl(environ["wsgi.input"].read(length).decode("utf-8"), keep_blank_values=True)
    items = "".join(f"<li>{html.escape(k)} = {html.escape(v)}</li>" for k, v in fields)
    page = f"<!doctype html><title>Form echo</title><h1>You sent</h1><ul>{items}</ul>\n"
    start_response("200 OK", [("Content-Type", "text/html; charset=utf-8")])
    return [page.encode("utf-8")]


cgikit.run(app)
