"""Request-target paths to safe segments (cgi_paths): research §5c P3, P4, P8-P13, P15."""

from __future__ import annotations

import ast
from urllib.parse import quote_from_bytes

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from cgikit import cgi_meta, cgi_paths
from cgikit.cgi_paths import UnsafePath, normalize_target, split_script, split_target
from compiled import source_of

NO_IO = {"socket", "selectors", "threading", "asyncio", "subprocess", "signal", "os", "time"}


@pytest.mark.parametrize("module", [cgi_paths, cgi_meta])
def test_pure_modules_import_no_io(module: object) -> None:
    path = source_of(module)  # type: ignore[arg-type]
    names: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names.update(alias.name.split(".")[0] for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module:
            names.add(node.module.split(".")[0])
    assert names & NO_IO == set()


NORMALIZED = [
    # CPython _url_collapse_path table (P15), where it does not raise:
    (b"/", [""]),
    (b"/.//", [""]),
    (b"/a/b/.", ["a", "b", ""]),
    (b"/a/b/c/..", ["a", "b", ""]),
    (b"/a/b/c/../d/e/../f", ["a", "b", "d", "f"]),
    (b"/a/b/c/../d/e/../../../../f", ["f"]),
    (b"/./C:/", ["C:", ""]),  # CPython: ./C:/ -> /C:/ (kept on POSIX; see refuse_colon)
    # P8 (issue19435): the '..' is resolved first, so nocgi.py is never run
    (b"///////////nocgi.py/../cgi-bin/nothere.sh", ["cgi-bin", "nothere.sh"]),
    (b"/cgi.pl/", ["cgi.pl", ""]),  # P3: the trailing "/" survives as the "" marker
    (b"/cgi.pl%20%20%20", ["cgi.pl   "]),  # P4: a name the lookup will not find
    (b"/cgi-bin/child-dir/file3.py", ["cgi-bin", "child-dir", "file3.py"]),  # P11
    (b"//", [""]),
    (b"/a//b", ["a", "b"]),
    (b"/a//", ["a", ""]),
    (b"/a/.", ["a", ""]),
    (b"/a/..", [""]),
    (b"/a/./b/", ["a", "b", ""]),
    (b"/a/%2e%2e/b", ["b"]),  # an encoded dot-segment is a dot-segment
    (b"/a/%2E/b", ["a", "b"]),
    (b"/a/.%2e", [""]),
    (b"/%252e%252e/x", ["%2e%2e", "x"]),  # decoded once: CVE-2021-42013
    (b"/...", ["..."]),
    (b"/..a/a..", ["..a", "a.."]),
    (b"/caf%C3%A9", ["caf\xc3\xa9"]),  # latin-1 "bytes as str", PEP 3333
    (b"/caf\xc3\xa9", ["caf\xc3\xa9"]),  # raw UTF-8 is accepted too
    (b"/a%20b/%7Euser", ["a b", "~user"]),
    (b"/Help:Contents", ["Help:Contents"]),
    (b"/a=b;c,d+e@f!$&'()*", ["a=b;c,d+e@f!$&'()*"]),
]


@pytest.mark.parametrize(("raw", "segments"), NORMALIZED)
def test_normalize(raw: bytes, segments: list[str]) -> None:
    assert normalize_target(raw) == segments


REFUSED = [
    # P9 / CVE-2011-1015 and the P15 cases CPython turns into IndexError:
    (b"", 400),
    (b"cgi-bin/file1.py", 400),
    (b"..", 400),
    (b"./C:/", 400),
    (b"../a/b", 400),
    (b"/..", 400),
    (b"/.//..", 400),
    (b"/../a", 400),
    (b"/a/../..", 400),
    (b"/a/b/c/../d/e/../../../../../f", 400),
    (b"/a/../../../../..", 400),
    (b"*", 400),
    (b"http://example.com/x", 400),
    # encoded dot-segments are treated exactly like '..' (CVE-2021-41773)
    (b"/%2e%2e/x", 400),
    (b"/%2E%2E", 400),
    (b"/.%2e/x", 400),
    (b"/%2e./x", 400),
    (b"/cgi-bin/.%2e/.%2e/.%2e/.%2e/etc/passwd", 400),
    (b"/cgi-bin/%%32%65%%32%65/x", 400),  # CVE-2021-42013: not a valid escape
    # P10 / CVE-2014-4650: an encoded slash never becomes a boundary
    (b"/cgi-bin%2ffile1.py", 404),
    (b"/cgi-bin%2Ffile1.py", 404),
    (b"/a/%2F", 404),
    (b"/%2e%2e%2fetc", 404),
    # NUL and backslash, raw or encoded
    (b"/a%00b", 400),
    (b"/a\x00b", 400),
    (b"/a\\b", 404),
    (b"/a%5cb", 404),
    (b"/..%5c..%5cetc", 404),
    # malformed escapes
    (b"/a%", 400),
    (b"/a%2", 400),
    (b"/a%zz", 400),
    (b"/a%+1", 400),
    (b"/a% 1", 400),
    # bytes that never appear raw in a request-target
    (b"/a b", 400),
    (b"/a\tb", 400),
    (b"/a\rb", 400),
    (b"/a\nb", 400),
    (b"/a\x7fb", 400),
    (b"/a#frag", 400),
    (b"/a?b", 400),
]


@pytest.mark.parametrize(("raw", "status"), REFUSED)
def test_refused(raw: bytes, status: int) -> None:
    with pytest.raises(UnsafePath) as info:
        normalize_target(raw)
    assert info.value.status == status
    assert isinstance(info.value, ValueError)
    assert info.value.reason == str(info.value)


@pytest.mark.parametrize("raw", [b"/C:/x", b"/./C:/", b"/x/file::$DATA", b"/a%3Ab"])
def test_refuse_colon(raw: bytes) -> None:
    normalize_target(raw)  # accepted by default (POSIX)
    with pytest.raises(UnsafePath) as info:
        normalize_target(raw, refuse_colon=True)
    assert info.value.status == 404


SPLITS = [
    (b"/cgi-bin/file4.py?a=b?c=d", b"/cgi-bin/file4.py", b"a=b?c=d"),  # P12
    (  # P13: the query is kept byte for byte
        b"/cgi-bin/file1.py?k=aa%2F%2Fbb&//q//p//=//a//b//",
        b"/cgi-bin/file1.py",
        b"k=aa%2F%2Fbb&//q//p//=//a//b//",
    ),
    (b"/x", b"/x", b""),
    (b"/x?", b"/x", b""),
    (b"/x??", b"/x", b"?"),
    (b"/x?a+b=%20&c#d", b"/x", b"a+b=%20&c#d"),
    (b"/x?\xff\xfe", b"/x", b"\xff\xfe"),
    (b"?q", b"", b"q"),
    (b"", b"", b""),
]


@pytest.mark.parametrize(("target", "path", "query"), SPLITS)
def test_split_target(target: bytes, path: bytes, query: bytes) -> None:
    assert split_target(target) == (path, query)


@pytest.mark.parametrize("target", [b"/a\x00", b"/a?b\x00", b"/a?b\r\n", b"/a\nb"])
def test_split_target_refuses_what_an_environment_cannot_hold(target: bytes) -> None:
    with pytest.raises(UnsafePath) as info:
        split_target(target)
    assert info.value.status == 400


@pytest.mark.parametrize(
    ("target", "count", "expected"),
    [
        (b"/test.cgi", 1, ("/test.cgi", "")),  # G1
        (b"/test.cgi/extrapath", 1, ("/test.cgi", "/extrapath")),  # G3
        (b"/bar", 0, ("", "/bar")),  # G5: mounted at the root
        (b"/cgi.pl/foo", 1, ("/cgi.pl", "/foo")),  # P1
        (b"/cgi.pl/path/info", 1, ("/cgi.pl", "/path/info")),  # P2
        (b"/cgi.pl/", 1, ("/cgi.pl", "/")),  # P3
        (b"/cgi.pl", 1, ("/cgi.pl", "")),
        (b"/", 0, ("", "/")),
        (b"/cgi-bin/a.cgi/x/", 2, ("/cgi-bin/a.cgi", "/x/")),
        (b"/cgi-bin/a.cgi//x//y", 2, ("/cgi-bin/a.cgi", "/x/y")),
        (b"/d/a.cgi/%2e/x", 2, ("/d/a.cgi", "/x")),
    ],
)
def test_split_script(target: bytes, count: int, expected: tuple[str, str]) -> None:
    assert split_script(normalize_target(target), count) == expected


def test_split_script_g4_mount_with_trailing_slashes() -> None:
    # G4: Root "/myscript//" is the mount "/myscript"; GET /myscript/bar -> PATH_INFO /bar
    mount = [name for name in normalize_target(b"/myscript//") if name]
    segments = normalize_target(b"/myscript/bar")
    assert segments[: len(mount)] == mount
    assert split_script(segments, len(mount)) == ("/myscript", "/bar")


@pytest.mark.parametrize(
    ("segments", "count"), [(["a"], 2), (["a"], -1), (["a", ""], 2), ([""], 1)]
)
def test_split_script_refuses(segments: list[str], count: int) -> None:
    with pytest.raises(ValueError):
        split_script(segments, count)


PATHISH = st.lists(
    st.sampled_from(
        ["/", "/", ".", "..", "%2e", "%2E", "%2f", "%2F", "%5c", "%00", "%", "a", "C:", "\\"]
    ),
    max_size=12,
).map(lambda parts: "".join(parts).encode())


@settings(max_examples=400, deadline=None)
@given(st.one_of(st.binary(max_size=40), PATHISH, PATHISH.map(lambda p: b"/" + p)))
def test_property_segments_are_safe(raw: bytes) -> None:
    try:
        segments = normalize_target(raw)
    except UnsafePath as exc:
        assert exc.status in (400, 404)
        return
    assert segments, "never empty: the root is [''] "
    for name in segments:
        assert name not in (".", "..")
        assert not {"/", "\x00", "\\"} & set(name)
    assert "" not in segments[:-1]
    # Quoting the segments again and re-normalising gives the same list.
    requoted = "/" + "/".join(quote_from_bytes(s.encode("latin-1"), safe="") for s in segments)
    assert normalize_target(requoted.encode()) == segments
