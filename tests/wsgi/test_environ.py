"""CGI meta-variables to a WSGI environ: cgi-anchors.md §5e (C1-C12) and §5g vectors."""

from __future__ import annotations

import io
import warnings
from typing import Any
from wsgiref import util as wsgiref_util
from wsgiref.validate import check_environ

import pytest

from cgikit.wsgi_request import (
    BoundedInput,
    EnvironError,
    build_environ,
    content_length,
    url_scheme,
)

C1 = {
    "SERVER_PROTOCOL": "HTTP/1.1",
    "REQUEST_METHOD": "GET",
    "HTTP_HOST": "example.com",
    "HTTP_REFERER": "elsewhere",
    "HTTP_USER_AGENT": "goclient",
    "HTTP_FOO_BAR": "baz",
    "REQUEST_URI": "/path?a=b",
    "CONTENT_LENGTH": "123",
    "CONTENT_TYPE": "text/xml",
    "REMOTE_ADDR": "5.6.7.8",
    "REMOTE_PORT": "54321",
}


def environ_for(meta: dict[str, str], *, validate: bool = True) -> dict[str, Any]:
    """Build the environ the way the CGI gateway does, and run wsgiref's checks on it."""
    length = content_length(meta)
    errors = io.StringIO()
    wsgi_input = BoundedInput(io.BytesIO(b"x" * (length or 0)).read, length)
    before = dict(meta)
    environ = build_environ(meta, wsgi_input, errors, length)
    assert meta == before, "build_environ must not modify the meta-variables"
    assert environ["wsgi.input"] is wsgi_input and environ["wsgi.errors"] is errors
    if validate:
        with warnings.catch_warnings():
            warnings.simplefilter("error")
            check_environ(environ)
    return environ


def test_c1_plain_request() -> None:
    env = environ_for(C1)
    for key, value in C1.items():
        assert env[key] == value
    assert env["wsgi.url_scheme"] == "http"
    assert env["SERVER_NAME"] == "example.com"
    assert env["SERVER_PORT"] == "80"
    assert (env["SCRIPT_NAME"], env["PATH_INFO"], env["QUERY_STRING"]) == ("", "", "")
    assert env["wsgi.version"] == (1, 0)
    assert env["wsgi.multithread"] is False
    assert env["wsgi.multiprocess"] is True
    assert env["wsgi.run_once"] is True
    assert "wsgi.input_terminated" not in env


@pytest.mark.parametrize("value", ["on", "ON", "On", "1", "yes", "YES", "Yes"])
def test_c2_https_on(value: str) -> None:
    env = environ_for({**C1, "HTTPS": value})
    assert env["wsgi.url_scheme"] == "https"
    assert env["SERVER_PORT"] == "443"
    assert wsgiref_util.request_uri(env, include_query=False) == "https://example.com/"


@pytest.mark.parametrize("value", ["off", "OFF", "0", "no", "foo", "", "true"])
def test_c2_https_off(value: str) -> None:
    env = environ_for({**C1, "HTTPS": value})
    assert env["wsgi.url_scheme"] == "http"
    assert env["SERVER_PORT"] == "80"


@pytest.mark.parametrize(
    ("meta", "scheme"),
    [
        ({}, "http"),
        ({"REQUEST_SCHEME": "https"}, "https"),
        ({"REQUEST_SCHEME": "HTTPS"}, "https"),
        ({"REQUEST_SCHEME": "http"}, "http"),
        ({"REQUEST_SCHEME": "ftp"}, "http"),
        ({"REQUEST_SCHEME": ""}, "http"),
        ({"HTTPS": "on", "REQUEST_SCHEME": "http"}, "https"),
        # The code's choice: when HTTPS is present it decides, REQUEST_SCHEME is not read.
        ({"HTTPS": "off", "REQUEST_SCHEME": "https"}, "http"),
    ],
)
def test_url_scheme(meta: dict[str, str], scheme: str) -> None:
    assert url_scheme(meta) == scheme
    assert environ_for({"REQUEST_METHOD": "GET", **meta})["wsgi.url_scheme"] == scheme


def test_c3_empty_host_gives_default_server_name() -> None:
    env = environ_for({**C1, "HTTP_HOST": ""})
    assert env["SERVER_NAME"] == "localhost"
    assert env["HTTP_HOST"] == ""


def test_c4_url_from_script_name_path_info_query() -> None:
    meta = {k: v for k, v in C1.items() if k != "REQUEST_URI"}
    meta |= {"SCRIPT_NAME": "/dir/scriptname", "PATH_INFO": "/p1/p2", "QUERY_STRING": "a=1&b=2"}
    env = environ_for(meta)
    assert wsgiref_util.request_uri(env) == "http://example.com/dir/scriptname/p1/p2?a=1&b=2"


def test_c5_no_remote_port_is_not_invented() -> None:
    meta = {k: v for k, v in C1.items() if k != "REMOTE_PORT"}
    assert "REMOTE_PORT" not in environ_for(meta)


def test_c6_unknown_protocol_kept() -> None:
    assert environ_for({**C1, "SERVER_PROTOCOL": "INCLUDED"})["SERVER_PROTOCOL"] == "INCLUDED"
    meta = {k: v for k, v in C1.items() if k != "SERVER_PROTOCOL"}
    assert environ_for(meta)["SERVER_PROTOCOL"] == "HTTP/1.0"


@pytest.mark.parametrize("method", [None, "", "GET /", "GET\r\n", "G(E)T", "GET,"])
def test_c7_missing_or_bad_request_method_is_500(method: str | None) -> None:
    meta = {k: v for k, v in C1.items() if k != "REQUEST_METHOD"}
    if method is not None:
        meta["REQUEST_METHOD"] = method
    with pytest.raises(EnvironError) as info:
        environ_for(meta)
    assert info.value.status == "500 Internal Server Error"
    assert "REQUEST_METHOD" in info.value.reason


@pytest.mark.parametrize("method", ["PROPFIND", "M-SEARCH", "VERSION-CONTROL", "BASELINE-CONTROL"])
def test_extension_methods_are_tokens(method: str) -> None:
    # RFC 3875 §4.1.12: extension-method = token; RFC 9110 registers hyphenated methods
    # (WebDAV VERSION-CONTROL, RFC 3253). They must reach the app, not become a 500.
    env = environ_for({"REQUEST_METHOD": method}, validate=False)
    assert env["REQUEST_METHOD"] == method


@pytest.mark.parametrize("method", ["G\u00c9T", "\u00b5", "GET\u00a0"])
def test_non_token_methods_are_500(method: str) -> None:
    # str.isalpha() is true for these, but they are not RFC 9110 tokens.
    with pytest.raises(EnvironError) as info:
        environ_for({"REQUEST_METHOD": method}, validate=False)
    assert info.value.status == "500 Internal Server Error"


@pytest.mark.parametrize("value", ["0", ""])
def test_c8_post_without_body_reads_empty(value: str) -> None:
    env = environ_for({"REQUEST_METHOD": "POST", "CONTENT_LENGTH": value})
    assert "CONTENT_LENGTH" not in env  # empty means no body; "0" is folded to absent
    assert env["wsgi.input"].read() == b""
    assert "wsgi.input_terminated" not in env


def test_c8_post_without_content_length() -> None:
    env = environ_for({"REQUEST_METHOD": "POST"})
    assert "CONTENT_LENGTH" not in env
    assert env["wsgi.input"].read() == b""


def test_c9_latin1_path_info_kept() -> None:
    env = environ_for({"REQUEST_METHOD": "GET", "PATH_INFO": "/caf\xc3\xa9"})
    assert env["PATH_INFO"] == "/caf\xc3\xa9"
    assert env["PATH_INFO"].encode("latin-1").decode("utf-8") == "/caf\u00e9"


def test_c11_httpoxy_and_content_copies_dropped() -> None:
    meta = {
        "REQUEST_METHOD": "POST",
        "HTTP_PROXY": "http://evil:1",
        "HTTP_CONTENT_LENGTH": "999",
        "HTTP_CONTENT_TYPE": "text/evil",
        "CONTENT_LENGTH": "3",
        "CONTENT_TYPE": "text/plain",
        "HTTP_PROXY_AUTHORIZATION": "kept",
    }
    env = environ_for(meta)
    for key in ("HTTP_PROXY", "HTTP_CONTENT_LENGTH", "HTTP_CONTENT_TYPE"):
        assert key not in env
    assert env["CONTENT_LENGTH"] == "3"
    assert env["CONTENT_TYPE"] == "text/plain"
    assert env["HTTP_PROXY_AUTHORIZATION"] == "kept"


def test_empty_content_type_removed() -> None:
    assert "CONTENT_TYPE" not in environ_for({"REQUEST_METHOD": "GET", "CONTENT_TYPE": ""})


IIS = "Microsoft-IIS/10.0"


@pytest.mark.parametrize(
    ("software", "script", "path", "expected"),
    [
        (IIS, "/app.py", "/app.py/x", "/x"),
        (IIS, "/app.py", "/app.py", ""),
        (IIS, "/app.py", "/app.py/", "/"),
        (IIS, "/dir/app.py", "/dir/app.py/a/b", "/a/b"),
        (IIS, "/app.py", "/app.pyx/y", "/app.pyx/y"),
        (IIS, "/app.py", "/other", "/other"),
        (IIS, "", "/x", "/x"),
        ("Apache/2.4.62", "/app.py", "/app.py/x", "/app.py/x"),
        ("lighttpd/1.4", "/app.py", "/app.py/x", "/app.py/x"),
        (None, "/app.py", "/app.py/x", "/app.py/x"),
    ],
)
def test_c12_iis_path_info_repair(
    software: str | None, script: str, path: str, expected: str
) -> None:
    meta = {"REQUEST_METHOD": "GET", "SCRIPT_NAME": script, "PATH_INFO": path}
    if software is not None:
        meta["SERVER_SOFTWARE"] = software
    env = environ_for(meta)
    assert env["PATH_INFO"] == expected
    assert env["SCRIPT_NAME"] == script


@pytest.mark.parametrize(
    ("meta", "expected"),
    [
        ({}, 0),
        ({"CONTENT_LENGTH": ""}, 0),
        ({"CONTENT_LENGTH": "0"}, 0),
        ({"CONTENT_LENGTH": "5"}, 5),
        ({"CONTENT_LENGTH": "007"}, 7),
        ({"CONTENT_LENGTH": "123456789012"}, 123456789012),
        ({"HTTP_TRANSFER_ENCODING": "chunked"}, None),
        ({"HTTP_TRANSFER_ENCODING": "Chunked"}, None),
        ({"HTTP_TRANSFER_ENCODING": "gzip, chunked"}, None),
        ({"HTTP_TRANSFER_ENCODING": "chunked", "CONTENT_LENGTH": ""}, None),
        ({"HTTP_TRANSFER_ENCODING": "chunked", "CONTENT_LENGTH": "4"}, 4),
        ({"HTTP_TRANSFER_ENCODING": "gzip"}, 0),
    ],
)
def test_content_length(meta: dict[str, str], expected: int | None) -> None:
    assert content_length(meta) == expected


BAD_LENGTHS = ["abc", "+5", "-1", "5_0", "0x10", "5.0", "1e3", "\u0665", "\xb2", "5 5"]


@pytest.mark.parametrize("raw", BAD_LENGTHS)
def test_non_numeric_content_length_is_400(raw: str) -> None:
    with pytest.raises(EnvironError) as info:
        content_length({"REQUEST_METHOD": "POST", "CONTENT_LENGTH": raw})
    assert info.value.status == "400 Bad Request"
    assert repr(raw) in info.value.reason


@pytest.mark.parametrize("raw", [" 5", "5 ", "\t5", "5\n"])
def test_content_length_with_whitespace_is_400(raw: str) -> None:
    # RFC 3875 §4.1.2: CONTENT_LENGTH = "" | 1*digit; int() would take these, and the
    # package's own comment says they must be refused.
    with pytest.raises(EnvironError) as info:
        content_length({"REQUEST_METHOD": "POST", "CONTENT_LENGTH": raw})
    assert info.value.status == "400 Bad Request"


def test_chunked_body_is_terminated_input() -> None:
    meta = {"REQUEST_METHOD": "POST", "HTTP_TRANSFER_ENCODING": "chunked"}
    env = environ_for(meta)
    assert env["wsgi.input_terminated"] is True
    assert "CONTENT_LENGTH" not in env


@pytest.mark.parametrize(
    ("host", "name"),
    [
        ("example.com", "example.com"),
        ("example.com:8080", "example.com"),
        ("[::1]:8080", "::1"),
        ("[::1]", "::1"),
        ("127.0.0.1:80", "127.0.0.1"),
        ("", "localhost"),
        (None, "localhost"),
    ],
)
def test_server_name_and_port_defaults(host: str | None, name: str) -> None:
    meta = {"REQUEST_METHOD": "GET"}
    if host is not None:
        meta["HTTP_HOST"] = host
    env = environ_for(meta)
    assert env["SERVER_NAME"] == name
    assert env["SERVER_PORT"] == "80"


def test_server_name_and_port_from_server_win() -> None:
    meta = {"REQUEST_METHOD": "GET", "HTTP_HOST": "a:1", "SERVER_NAME": "b", "SERVER_PORT": "2"}
    env = environ_for(meta)
    assert (env["SERVER_NAME"], env["SERVER_PORT"]) == ("b", "2")


BASE_5G = {"REQUEST_METHOD": "GET", "SERVER_NAME": "127.0.0.1", "SERVER_PORT": "80"}


@pytest.mark.parametrize(
    ("script", "path", "query", "uri"),
    [
        ("", "/", None, "http://127.0.0.1/"),
        ("/spammity", "/spam", "say=ni", "http://127.0.0.1/spammity/spam?say=ni"),
        ("/spammity", "/sp\xe4m", None, "http://127.0.0.1/spammity/sp%E4m"),
        (
            "/spammity",
            "/spam;cookie=1234,5678",
            None,
            "http://127.0.0.1/spammity/spam;cookie=1234,5678",
        ),
        ("/spammity", "/spam", "s%E4y=ni", "http://127.0.0.1/spammity/spam?s%E4y=ni"),
    ],
)
def test_5g_request_uri(script: str, path: str, query: str | None, uri: str) -> None:
    meta = {**BASE_5G, "SCRIPT_NAME": script, "PATH_INFO": path}
    if query is not None:
        meta["QUERY_STRING"] = query
    assert wsgiref_util.request_uri(environ_for(meta)) == uri


@pytest.mark.parametrize(
    ("meta", "uri"),
    [
        ({"HTTP_HOST": "spam.example.com:2071"}, "http://spam.example.com:2071/"),
        ({"SERVER_NAME": "127.0.0.1", "SERVER_PORT": "8000"}, "http://127.0.0.1:8000/"),
        ({"SERVER_NAME": "127.0.0.1", "HTTPS": "on"}, "https://127.0.0.1/"),
    ],
)
def test_5g_application_uri(meta: dict[str, str], uri: str) -> None:
    env = environ_for({"REQUEST_METHOD": "GET", **meta})
    assert wsgiref_util.application_uri(env) == uri
