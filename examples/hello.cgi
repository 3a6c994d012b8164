#!/usr/bin/env python3
"""A raw WSGI app served as a CGI script by cgikit.

Under a web server this answers one request. From a terminal it emulates one:
    ./hello.cgi GET '/greet?name=World'
"""

from urllib.parse import parse_qs

import cgikit


def app(environ, start_response):
    query = parse_qs(environ["QUERY_STRING"])
    name = query.get("name", ["stranger"])[0]
    body = f"Hello, {name}! You asked for {environ['PATH_INFO'] or '/'}.\n".encode()
    start_response("200 OK", [("Content-Type", "text/plain; charset=utf-8")])
    return [body]


if __name__ == "__main__":
    cgikit.run(app)
