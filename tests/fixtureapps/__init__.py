"""WSGI apps that run as CGI scripts under real servers (tests/integration).

One tiny module per behaviour; each exposes ``app``, wrapped in
``wsgiref.validate.validator`` so that any PEP 3333 slip by cgikit (or the app) fails.
The generated scripts also turn validator warnings into errors.

These modules are copied into a world-readable runtime and imported by the CGI scripts
as www-data: they may only use the standard library, cgikit and Flask.
"""

# Script name (in cgi-bin/) -> fixture module that serves it.
SCRIPTS = {
    "echo_environ.cgi": "echo_environ",
    "echo_body.cgi": "echo_body",
    "echo_lines.cgi": "echo_lines",
    "binary_body.cgi": "binary_body",
    "stream.cgi": "stream",
    "write_stream.cgi": "write_stream",
    "redirect.cgi": "redirect",
    "cookies.cgi": "cookies",
    "raise_before.cgi": "raise_before",
    "raise_after.cgi": "raise_after",
    "head.cgi": "head",
    "hello.cgi": "hello",
    "nph-hello.cgi": "hello",
    "flask_app.cgi": "flask_app",
}

# Every exception a fixture app raises on purpose says this; the error-log audit counts
# it, so that any other traceback in a server's log is a failure.
EXPECTED_FAILURE = "cgikit-expected-failure"
