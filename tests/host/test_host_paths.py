"""CGIHost's script lookup and path safety (research cgi-anchors.md §5c, §3 row 5).

The raw request-target comes from REQUEST_URI when the environ has one (what cgikit's
server passes); without it, SCRIPT_NAME + PATH_INFO, already decoded by the server.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from cgikit.cgi_host import CGIHost
from host.hostkit import FAST, call, write_script


@pytest.mark.parametrize(
    ("uri", "status"),
    [
        ("/sub/../../env.py", 400),  # P15: above the root
        ("/%2e%2e/env.py", 400),  # CVE-2021-41773
        ("/sub/.%2e/.%2E/x", 400),
        ("/env.py%00.txt", 400),  # NUL
        ("/sub%2Finner.py", 404),  # P10, CVE-2014-4650
        ("/env.py/a%2Fb", 404),  # an encoded slash is never a boundary, not even in PATH_INFO
        ("/env.sh%20%20%20", 404),  # P4: no such file, never the source
        ("/missing.sh", 404),
        ("/sub", 404),  # a directory
        ("/sub/", 404),
        ("/", 404),
        ("/env.py%zz", 400),  # a malformed escape
        ("/sub\\inner.py", 404),
    ],
)
def test_unsafe_or_missing_targets(cgi_dir: Path, uri: str, status: int) -> None:
    res = call(CGIHost(cgi_dir, **FAST), "/", REQUEST_URI=uri)
    assert res.code == status
    assert res.body.startswith(f"{status} ".encode())


def test_dot_segments_inside_the_directory_are_resolved(cgi_dir: Path) -> None:
    env = call(CGIHost(cgi_dir, **FAST), "/", REQUEST_URI="/sub/%2e%2e/env.sh/x").lines()
    assert (env["SCRIPT_NAME"], env["PATH_INFO"]) == ("/env.sh", "/x")


def test_decoded_path_info_is_requoted(cgi_dir: Path) -> None:
    """No REQUEST_URI: PATH_INFO is re-quoted, so '..' and '%' in it stay safe."""
    app = CGIHost(cgi_dir, **FAST)
    assert call(app, "/../../etc/passwd").code == 400
    env = call(app, "/env.sh/100%/caf\xc3\xa9").lines()
    assert env["PATH_INFO"] == "/100%/caf\xc3\xa9"
    assert env["REQUEST_URI"] == "/env.sh/100%25/caf%C3%A9"


def test_query_kept_byte_for_byte_p12_p13(cgi_dir: Path) -> None:
    app = CGIHost(cgi_dir, **FAST)
    env = call(app, "/", REQUEST_URI="/env.sh?a=b?c=d").lines()
    assert env["QUERY_STRING"] == "a=b?c=d"
    env = call(app, "/", REQUEST_URI="/env.sh?k=aa%2F%2Fbb&//q//p//=//a//b//").lines()
    assert env["QUERY_STRING"] == "k=aa%2F%2Fbb&//q//p//=//a//b//"


def test_symlinks_leaving_the_directory_are_403(cgi_dir: Path, tmp_path: Path) -> None:
    outside = tmp_path / "outside"
    target = write_script(outside, "x.sh", "/bin/sh", "printf 'Content-Type: text/plain\\n\\nout'")
    (cgi_dir / "out.sh").symlink_to(target)
    (cgi_dir / "outdir").symlink_to(outside)
    (cgi_dir / "in.sh").symlink_to(cgi_dir / "env.sh")
    app = CGIHost(cgi_dir, **FAST)
    assert call(app, "/out.sh").code == 403
    assert call(app, "/outdir/x.sh").code == 403
    env = call(app, "/in.sh").lines()  # a link that stays inside is fine
    assert env["SCRIPT_FILENAME"] == str(cgi_dir / "in.sh")


def test_not_executable_or_not_regular_is_403(cgi_dir: Path) -> None:
    write_script(cgi_dir, "plain.sh", "/bin/sh", "echo hi", mode=0o644)
    os.mkfifo(cgi_dir / "fifo.sh")
    app = CGIHost(cgi_dir, **FAST)
    assert call(app, "/plain.sh").code == 403
    assert call(app, "/fifo.sh").code == 403
    assert call(CGIHost(cgi_dir, run_python=True, **FAST), "/plain.sh").code == 403  # not .py


def test_script_that_cannot_start_is_500(cgi_dir: Path) -> None:
    path = cgi_dir / "noshebang.bin"
    path.write_bytes(b"\x7fELF garbage")
    path.chmod(0o755)
    res = call(CGIHost(cgi_dir, **FAST), "/noshebang.bin")
    assert res.code == 500
    assert "noshebang.bin: cannot start" in res.log


def test_outside_the_mount_point_is_404(cgi_dir: Path) -> None:
    app = CGIHost(cgi_dir, **FAST)
    res = call(app, "/env.sh", SCRIPT_NAME="/cgi-bin", REQUEST_URI="/other/env.sh")
    assert res.code == 404
    env = call(app, "/env.sh", SCRIPT_NAME="/cgi-bin", REQUEST_URI="/cgi-bin/env.sh").lines()
    assert env["SCRIPT_NAME"] == "/cgi-bin/env.sh"
