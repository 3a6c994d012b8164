"""Request to CGI meta-variables (cgi_meta): research §5a G1-G13, §5c P5-P17, §5d.

Requests go through split_target, normalize_target and split_script first, the way the
host's server will call them. Peer 1.2.3.4:1234 unless stated (Go's host_test.go).
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from cgikit.cgi_meta import (
    DEFAULT_PATH,
    UnsafeHeader,
    build_meta,
    environ_fields,
    environb_of,
    envp_of,
    header_fields,
    to_environb,
    to_envp,
)
from cgikit.cgi_paths import normalize_target, split_script, split_target

Headers = Sequence[tuple[bytes, bytes]]


def meta_for(target: bytes, headers: Headers = (), *, count: int = 1, **kw: Any) -> dict[str, str]:
    """build_meta for ``GET target`` with the script made of the first ``count`` segments."""
    path, query = split_target(target)
    script_name, path_info = split_script(normalize_target(path), count)
    args: dict[str, Any] = {
        "method": "GET",
        "script_name": script_name,
        "path_info": path_info,
        "query_string": query.decode("latin-1"),
        "request_uri": target.decode("latin-1"),
        "headers": list(headers),
        "content_length": None,
        "server_name": "localhost",
        "server_port": 80,
        "remote_addr": "1.2.3.4",
        "remote_port": 1234,
        "server_addr": "127.0.0.1",
        "document_root": "/srv/www",
        "script_filename": "/srv/www" + script_name,
        "server_environ": {},
    }
    args.update(kw)
    return build_meta(**args)


G1 = {
    "PATH": DEFAULT_PATH,
    "GATEWAY_INTERFACE": "CGI/1.1",
    "SERVER_SOFTWARE": "go",
    "SERVER_NAME": "example.com",
    "SERVER_PORT": "80",
    "SERVER_PROTOCOL": "HTTP/1.0",
    "REQUEST_METHOD": "GET",
    "REQUEST_SCHEME": "http",
    "REQUEST_URI": "/test.cgi?foo=bar&a=b",
    "SCRIPT_NAME": "/test.cgi",
    "SCRIPT_FILENAME": "/srv/www/test.cgi",
    "PATH_INFO": "",
    "QUERY_STRING": "foo=bar&a=b",
    "DOCUMENT_ROOT": "/srv/www",
    "REMOTE_ADDR": "1.2.3.4",
    "REMOTE_HOST": "1.2.3.4",
    "REMOTE_PORT": "1234",
    "SERVER_ADDR": "127.0.0.1",
    "HTTP_HOST": "example.com:80",
}


def test_g1_exact() -> None:
    got = meta_for(
        b"/test.cgi?foo=bar&a=b",
        [(b"Host", b"example.com:80")],
        protocol="HTTP/1.0",
        server_software="go",
    )
    assert got == G1


def test_g2_ipv6_peer_without_brackets() -> None:
    got = meta_for(
        b"/test.cgi?foo=bar&a=b",
        [(b"Host", b"example.com")],
        remote_addr="[2000::3000]",
        remote_port=12345,
        server_addr="[::1]",
        protocol="HTTP/1.0",
        server_software="go",
    )
    changed = {"REMOTE_ADDR": "2000::3000", "REMOTE_HOST": "2000::3000", "REMOTE_PORT": "12345"}
    assert got == {**G1, **changed, "SERVER_ADDR": "::1", "HTTP_HOST": "example.com"}


def test_g3_path_info() -> None:
    got = meta_for(b"/test.cgi/extrapath?a=b", [(b"Host", b"example.com")])
    assert (got["SCRIPT_NAME"], got["PATH_INFO"]) == ("/test.cgi", "/extrapath")
    assert got["REQUEST_URI"] == "/test.cgi/extrapath?a=b"
    assert got["PATH_TRANSLATED"] == "/srv/www/extrapath"


def test_g4_script_name_trailing_slashes_trimmed() -> None:
    got = meta_for(b"/myscript/bar?a=b", script_name="/myscript//", path_info="/bar")
    assert (got["SCRIPT_NAME"], got["PATH_INFO"]) == ("/myscript", "/bar")
    assert meta_for(b"/x", script_name="/", path_info="/x")["SCRIPT_NAME"] == ""


def test_g5_root_mount() -> None:
    got = meta_for(b"/bar?a=b", count=0)
    assert (got["SCRIPT_NAME"], got["PATH_INFO"], got["QUERY_STRING"]) == ("", "/bar", "a=b")


def test_g6_p14_repeated_headers() -> None:
    headers = [
        (b"Cookie", b"nom=NOM"),
        (b"X-Foo", b"val1"),
        (b"cookie", b"yum=YUM"),
        (b"x-foo", b"val2"),
        (b"Accept", b"text/html"),
        (b"ACCEPT", b"text/plain"),
    ]
    got = meta_for(b"/test.cgi", headers)
    assert got["HTTP_COOKIE"] == "nom=NOM; yum=YUM"
    assert got["HTTP_X_FOO"] == "val1, val2"
    assert got["HTTP_ACCEPT"] == "text/html, text/plain"


def test_g7_no_httpoxy() -> None:
    got = meta_for(b"/test.cgi", [(b"X-Foo", b"a"), (b"Proxy", b"should_be_stripped")])
    assert got["HTTP_X_FOO"] == "a"
    assert "HTTP_PROXY" not in got


def test_g8_post() -> None:
    headers = [
        (b"Content-Type", b"application/x-www-form-urlencoded"),
        (b"Content-Length", b"15"),
    ]
    got = meta_for(b"/test.cgi", headers, method="POST", content_length=15)
    expected = {**G1, "SERVER_SOFTWARE": "cgikit", "SERVER_NAME": "localhost"}
    expected.update(
        SERVER_PROTOCOL="HTTP/1.1",
        REQUEST_METHOD="POST",
        REQUEST_URI="/test.cgi",
        QUERY_STRING="",
        CONTENT_LENGTH="15",
        CONTENT_TYPE="application/x-www-form-urlencoded",
    )
    del expected["HTTP_HOST"]
    assert got == expected  # no HTTP_CONTENT_LENGTH, no HTTP_CONTENT_TYPE


def test_g11_configured_env_replaces_computed() -> None:
    env = [("SCRIPT_FILENAME", "/etc/x"), ("REQUEST_URI", "/foo/bar"), ("PATH", "/wibble")]
    got = meta_for(b"/test.cgi", server_environ={"PATH": "/usr/bin"}, env=env)
    assert (got["SCRIPT_FILENAME"], got["REQUEST_URI"], got["PATH"]) == (
        "/etc/x",
        "/foo/bar",
        "/wibble",
    )


def test_g13_last_entry_wins_and_moves_last() -> None:
    got = meta_for(b"/test.cgi", env=[("a", "b"), ("b", "c"), ("a", "b2")])
    assert list(got.items())[-2:] == [("b", "c"), ("a", "b2")]


def test_p5_digits_kept() -> None:
    assert meta_for(b"/cgi.pl", [(b"xx-yy123", b"foo")])["HTTP_XX_YY123"] == "foo"


def test_p6_minimal_request_exact() -> None:
    # No Host (HTTP/1.0): the configured name; nothing that the request does not have.
    got = meta_for(b"/cgi.pl?env=ABSENT", remote_port=None, server_addr=None)
    assert got == {
        "PATH": DEFAULT_PATH,
        "GATEWAY_INTERFACE": "CGI/1.1",
        "SERVER_SOFTWARE": "cgikit",
        "SERVER_NAME": "localhost",
        "SERVER_PORT": "80",
        "SERVER_PROTOCOL": "HTTP/1.1",
        "REQUEST_METHOD": "GET",
        "REQUEST_SCHEME": "http",
        "REQUEST_URI": "/cgi.pl?env=ABSENT",
        "SCRIPT_NAME": "/cgi.pl",
        "SCRIPT_FILENAME": "/srv/www/cgi.pl",
        "PATH_INFO": "",
        "QUERY_STRING": "env=ABSENT",
        "DOCUMENT_ROOT": "/srv/www",
        "REMOTE_ADDR": "1.2.3.4",
        "REMOTE_HOST": "1.2.3.4",
    }


def test_p3_trailing_slash_and_path_translated() -> None:
    got = meta_for(b"/cgi.pl/?external-redir", document_root="/srv/www/")
    assert (got["SCRIPT_NAME"], got["PATH_INFO"]) == ("/cgi.pl", "/")
    assert (got["PATH_TRANSLATED"], got["DOCUMENT_ROOT"]) == ("/srv/www/", "/srv/www")
    assert meta_for(b"/x/y", document_root="/")["PATH_TRANSLATED"] == "/y"


def test_p16_underscore_headers_dropped_or_rejected() -> None:
    headers = [(b"X-Forwarded-For", b"10.0.0.1"), (b"X_Forwarded_For", b"6.6.6.6")]
    got = meta_for(b"/cgi.pl", headers)
    assert got["HTTP_X_FORWARDED_FOR"] == "10.0.0.1"
    with pytest.raises(UnsafeHeader) as info:
        meta_for(b"/cgi.pl", headers, reject_underscore_headers=True)
    assert info.value.status == 400


@pytest.mark.parametrize("name", [b"X.Foo", b"X Foo", b"X=Foo", b"", b"caf\xe9", b"X:Y", b"1+1"])
def test_odd_header_names_dropped_even_when_rejecting_underscores(name: bytes) -> None:
    got = meta_for(b"/cgi.pl", [(name, b"v")], reject_underscore_headers=True)
    assert not [key for key in got if key.startswith("HTTP_")]


def test_p17_authorization_hidden_and_never_remote_user() -> None:
    headers = [(b"Authorization", b"Basic dXNlcjpwYXNz"), (b"Proxy-Authorization", b"Basic x")]
    got = meta_for(b"/cgi.pl", headers)
    assert not {"HTTP_AUTHORIZATION", "HTTP_PROXY_AUTHORIZATION", "REMOTE_USER"} & set(got)
    assert "AUTH_TYPE" not in got
    passed = meta_for(b"/cgi.pl", headers, pass_auth=True)
    assert passed["HTTP_AUTHORIZATION"] == "Basic dXNlcjpwYXNz"
    assert passed["HTTP_PROXY_AUTHORIZATION"] == "Basic x"
    assert "REMOTE_USER" not in passed
    checked = meta_for(b"/cgi.pl", headers, remote_user="alice", auth_type="Basic")
    assert (checked["REMOTE_USER"], checked["AUTH_TYPE"]) == ("alice", "Basic")


def test_5d_http_server_bugs_do_not_happen() -> None:
    target = b"/cgi-bin/env.py/a/b/c?x+y"
    headers = [
        (b"Host", b"example.org:8000"),
        (b"Cookie", b"a=1"),
        (b"Cookie", b"b=2"),
        (b"Authorization", b"Basic dXNlcjpwYXNz"),
        (b"X-Foo", b"bar"),
        (b"Proxy", b"http://evil:1"),
    ]
    server_environ = {"MY_SECRET": "s3cret", "HOME": "/root", "PATH": "/bin", "LANG": "C.UTF-8"}
    got = meta_for(target, headers, count=2, server_port=8000, server_environ=server_environ)
    assert got == {
        "PATH": "/bin",
        "LANG": "C.UTF-8",
        "GATEWAY_INTERFACE": "CGI/1.1",
        "SERVER_SOFTWARE": "cgikit",
        "SERVER_NAME": "example.org",
        "SERVER_PORT": "8000",
        "SERVER_PROTOCOL": "HTTP/1.1",
        "REQUEST_METHOD": "GET",
        "REQUEST_SCHEME": "http",
        "REQUEST_URI": "/cgi-bin/env.py/a/b/c?x+y",
        "SCRIPT_NAME": "/cgi-bin/env.py",
        "SCRIPT_FILENAME": "/srv/www/cgi-bin/env.py",
        "PATH_INFO": "/a/b/c",
        "PATH_TRANSLATED": "/srv/www/a/b/c",
        "QUERY_STRING": "x+y",
        "DOCUMENT_ROOT": "/srv/www",
        "REMOTE_ADDR": "1.2.3.4",
        "REMOTE_HOST": "1.2.3.4",
        "REMOTE_PORT": "1234",
        "SERVER_ADDR": "127.0.0.1",
        "HTTP_HOST": "example.org:8000",
        "HTTP_COOKIE": "a=1; b=2",
        "HTTP_X_FOO": "bar",
    }


def test_server_environ_allow_list() -> None:
    server_environ = {
        "PATH": "",
        "LANG": "de_DE.UTF-8",
        "LC_ALL": "C",
        "LC_CTYPE": "C.UTF-8",
        "TZ": "UTC",
        "LD_LIBRARY_PATH": "/opt/lib",
        "HOME": "/root",
        "MY_SECRET": "x",
        "SERVER_NAME": "stale",
        "PLACE": "here",
    }
    got = meta_for(
        b"/x", server_environ=server_environ, pass_env=["PLACE", "SERVER_NAME", "MISSING"]
    )
    inherited = {k: v for k, v in got.items() if k in server_environ or k == "PATH"}
    assert inherited == {
        "PATH": DEFAULT_PATH,
        "LANG": "de_DE.UTF-8",
        "LC_ALL": "C",
        "LC_CTYPE": "C.UTF-8",
        "TZ": "UTC",
        "LD_LIBRARY_PATH": "/opt/lib",
        "PLACE": "here",
        "SERVER_NAME": "localhost",  # computed beats inherited
    }
    assert "MISSING" not in got


def test_duplicate_host_header_is_400() -> None:
    with pytest.raises(UnsafeHeader):
        meta_for(b"/x", [(b"Host", b"a"), (b"host", b"b")])


@pytest.mark.parametrize("value", [b"a\x00b", b"a\rb", b"a\nb", b"a\r\n b"])
def test_control_characters_in_values_are_400(value: bytes) -> None:
    for name in (b"X-Foo", b"Authorization", b"X_Dropped"):
        with pytest.raises(UnsafeHeader) as info:
            meta_for(b"/x", [(name, value)])
        assert info.value.status == 400


def test_values_are_latin1_and_trimmed() -> None:
    got = meta_for(b"/x", [(b"X-Name", b" \tcaf\xc3\xa9 \xff\t "), (b"X-Empty", b"")])
    assert (got["HTTP_X_NAME"], got["HTTP_X_EMPTY"]) == ("caf\xc3\xa9 \xff", "")


def test_transfer_encoding_dropped_once_dechunked() -> None:
    headers = [(b"Transfer-Encoding", b"chunked"), (b"TE", b"trailers")]
    dechunked = meta_for(b"/x", headers, method="POST", content_length=10)
    assert dechunked["CONTENT_LENGTH"] == "10"
    assert "HTTP_TRANSFER_ENCODING" not in dechunked
    assert dechunked["HTTP_TE"] == "trailers"
    streamed = meta_for(b"/x", headers, method="POST")
    assert streamed["HTTP_TRANSFER_ENCODING"] == "chunked"
    assert "CONTENT_LENGTH" not in streamed


def test_content_type_rules() -> None:
    assert "CONTENT_TYPE" not in meta_for(b"/x", [(b"Content-Type", b"")])
    same = [(b"Content-Type", b"text/plain"), (b"content-type", b"text/plain")]
    assert meta_for(b"/x", same)["CONTENT_TYPE"] == "text/plain"
    with pytest.raises(UnsafeHeader):
        meta_for(b"/x", [(b"Content-Type", b"text/plain"), (b"Content-Type", b"text/html")])
    zero = meta_for(b"/x", [(b"Content-Length", b"0")], method="POST", content_length=0)
    assert zero["CONTENT_LENGTH"] == "0"


def test_https() -> None:
    got = meta_for(b"/x", scheme="https", server_port=443)
    assert (got["HTTPS"], got["REQUEST_SCHEME"], got["SERVER_PORT"]) == ("on", "https", "443")
    assert "HTTPS" not in meta_for(b"/x")


CALLER_BUGS: list[dict[str, Any]] = [{"method": m} for m in ("", "GE T", "G\x00")]
CALLER_BUGS += [{"script_name": "x.cgi"}, {"path_info": "x"}, {"scheme": "ftp"}]
CALLER_BUGS += [{"env": [(n, "c")]} for n in ("", "A=B", "A\x00")]
CALLER_BUGS += [{"content_length": -1}, {"env": [("A", "c\x00d")]}, {"script_filename": "/\x00"}]


@pytest.mark.parametrize("kw", CALLER_BUGS)
def test_caller_bugs_are_value_errors(kw: dict[str, Any]) -> None:
    with pytest.raises(ValueError) as info:
        meta_for(b"/x", **kw)
    assert not isinstance(info.value, UnsafeHeader)


def test_to_environb() -> None:
    env = to_environb({"PATH_INFO": "/caf\xc3\xa9", "HTTP_X": "\xff"})
    assert env == {b"PATH_INFO": b"/caf\xc3\xa9", b"HTTP_X": b"\xff"}
    for bad in ({"A=B": "c"}, {"": "c"}, {"A": "\x00"}, {"A": "\u20ac"}):
        with pytest.raises(ValueError):
            to_environb(bad)


def test_to_envp_is_to_environb_as_execve_strings() -> None:
    meta = {"PATH_INFO": "/caf\xc3\xa9", "HTTP_X": "a=b", "EMPTY": ""}
    assert to_envp(meta) == [b"PATH_INFO=/caf\xc3\xa9", b"HTTP_X=a=b", b"EMPTY="]
    assert to_envp({}) == []
    assert to_envp(meta) == envp_of(to_environb(meta))
    assert environb_of(to_envp(meta)) == to_environb(meta)
    assert environb_of(to_environb(meta)) == to_environb(meta)
    for bad in ({"A=B": "c"}, {"": "c"}, {"A": "\x00"}, {"A": "\u20ac"}, {"A\x00": "c"}):
        with pytest.raises(ValueError):
            to_envp(bad)


@settings(max_examples=300, deadline=None)
@given(st.dictionaries(st.text(max_size=6), st.text(max_size=6), max_size=5))
def test_to_envp_fails_or_agrees_with_to_environb(meta: dict[str, str]) -> None:
    try:
        expected = envp_of(to_environb(meta))
    except ValueError:
        with pytest.raises(ValueError):
            to_envp(meta)
        return
    assert to_envp(meta) == expected


ALLOWED = re.compile(
    r"(GATEWAY_INTERFACE|SERVER_(SOFTWARE|NAME|PORT|PROTOCOL|ADDR)|REQUEST_(METHOD|SCHEME|URI)"
    r"|SCRIPT_(NAME|FILENAME)|PATH_(INFO|TRANSLATED)|QUERY_STRING|DOCUMENT_ROOT"
    r"|REMOTE_(ADDR|HOST|PORT)|CONTENT_(LENGTH|TYPE)|PATH|HTTP_[A-Z0-9_]+)"
)
FORBIDDEN = {"HTTP_PROXY", "HTTP_CONTENT_LENGTH", "HTTP_CONTENT_TYPE", "HTTP_AUTHORIZATION"}
FORBIDDEN |= {"HTTP_PROXY_AUTHORIZATION", "REMOTE_USER", "AUTH_TYPE"}
NAMES = st.one_of(
    st.binary(max_size=12),
    st.sampled_from([b"Proxy", b"Authorization", b"Content-Type", b"Content-Length", b"Cookie"]),
    st.text("aZ9-_.", max_size=8).map(str.encode),
)


@settings(max_examples=300, deadline=None)
@given(st.lists(st.tuples(NAMES, st.binary(max_size=12)), max_size=8))
def test_property_only_allowed_names_and_no_nul(headers: Headers) -> None:
    try:
        got = meta_for(b"/x/y", headers, server_environ={"SECRET": "x", "PATH": "/bin"})
    except UnsafeHeader as exc:
        assert exc.status == 400
        return
    for name, value in got.items():
        assert ALLOWED.fullmatch(name), name
        assert name not in FORBIDDEN
        assert "\x00" not in value
    assert to_environb(got)


# -- environ_fields: the header fields of a WSGI environ, read from its keys ---------------


def rebuilt_fields(environ: dict[str, object]) -> dict[str, list[str]]:
    """The oracle: the fields rebuilt from the HTTP_* keys (``HTTP_X_FOO`` sent as
    ``X-FOO``) and CONTENT_TYPE, then put through ``header_fields``."""
    headers = [
        (key[5:].replace("_", "-").encode("latin-1"), value.encode("latin-1"))
        for key, value in environ.items()
        if key.startswith("HTTP_")
        and key not in ("HTTP_CONTENT_TYPE", "HTTP_CONTENT_LENGTH")
        and isinstance(value, str)
    ]
    content_type = environ.get("CONTENT_TYPE", "")
    if isinstance(content_type, str) and content_type:
        headers.append((b"Content-Type", content_type.encode("latin-1")))
    return header_fields(headers)


ENVIRON_KEYS = st.one_of(
    st.sampled_from(["HTTP_HOST", "HTTP_X_FOO", "HTTP_x_foo", "HTTP_CONTENT_TYPE", "HTTP_"]),
    st.sampled_from(["HTTP_CONTENT_LENGTH", "HTTP_COOKIE", "CONTENT_TYPE", "REQUEST_METHOD"]),
    st.text("aZ9_-. ", max_size=6).map(lambda s: "HTTP_" + s),
    st.text(st.characters(max_codepoint=255), max_size=10),
)
ENVIRON_VALUES = st.one_of(
    st.text(st.characters(max_codepoint=255), max_size=10),
    st.text(" \tab\r\n\x00", max_size=6),
    st.integers(),  # not a str: not a header field
)


@settings(max_examples=500, deadline=None)
@given(st.dictionaries(ENVIRON_KEYS, ENVIRON_VALUES, max_size=8))
def test_environ_fields_is_header_fields_of_the_rebuilt_fields(environ: dict[str, object]) -> None:
    try:
        expected: dict[str, list[str]] | UnsafeHeader = rebuilt_fields(environ)
    except UnsafeHeader as exc:
        expected = exc
    try:
        got: dict[str, list[str]] | UnsafeHeader = environ_fields(environ)
    except UnsafeHeader as exc:
        got = exc
    if isinstance(expected, UnsafeHeader):
        assert isinstance(got, UnsafeHeader)
        assert (got.status, got.reason) == (expected.status, expected.reason)
    else:
        assert got == expected


def test_environ_fields_of_a_typical_environ() -> None:
    environ = {
        "REQUEST_METHOD": "POST",
        "CONTENT_TYPE": "text/plain",
        "CONTENT_LENGTH": "3",
        "HTTP_HOST": "example.com",
        "HTTP_X_FORWARDED_FOR": " 1.2.3.4\t",
        "HTTP_X.ODD": "dropped",
        "HTTP_CONTENT_LENGTH": "3",
        "wsgi.input": object(),
    }
    assert environ_fields(environ) == {
        "HTTP_HOST": ["example.com"],
        "HTTP_X_FORWARDED_FOR": ["1.2.3.4"],
        "HTTP_CONTENT_TYPE": ["text/plain"],
    }
    with pytest.raises(UnsafeHeader, match="X-BAD"):
        environ_fields({"HTTP_X_BAD": "a\nb"})


def test_build_meta_takes_fields_or_headers_alike() -> None:
    headers = [(b"Host", b"example.com"), (b"Cookie", b"a=1"), (b"Cookie", b"b=2")]
    fields = header_fields(headers)
    assert meta_for(b"/x/y?q", headers) == meta_for(b"/x/y?q", (), fields=fields)
