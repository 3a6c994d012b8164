"""A shared host: a cgikit app in a user's web directory, set up by an .htaccess alone.

Apache starts from docs/deploy/apache-cgid.conf plus docs/deploy/apache-shared-host.conf
(what the hosting company configures). The user's directories each hold app.cgi (the
fixtureapps.blog app), style.css and docs/deploy/htaccess as .htaccess:

    WEBROOT/blog/    the .htaccess with its "# SetEnv CGIKIT_SCRIPT_NAME /blog" uncommented
    WEBROOT/plain/   the .htaccess exactly as shipped

The app reports in X-Script-Name, X-Path-Info and X-Request-Uri what it was given.
"""

from __future__ import annotations

import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest

from integration.runtime import Runtime, make_readable, write_script
from integration.wire import Reply, assert_clean_log, request
from servers import DEPLOY, Server, retry_start, start_apache, stop

pytestmark = pytest.mark.server

SCRIPT_NAME_LINE = "# SetEnv CGIKIT_SCRIPT_NAME /blog"
STYLE = b"body { font-family: serif; }\n"


def htaccess(script_name: bool) -> str:
    """docs/deploy/htaccess, with its SetEnv CGIKIT_SCRIPT_NAME line enabled or as is."""
    text = (DEPLOY / "htaccess").read_text("utf-8")
    assert text.splitlines().count(SCRIPT_NAME_LINE) == 1, f"no {SCRIPT_NAME_LINE!r} line"
    return text.replace(SCRIPT_NAME_LINE, SCRIPT_NAME_LINE[2:]) if script_name else text


def make_site(runtime: Runtime, directory: Path, htaccess_text: str) -> None:
    """A user's web directory: app.cgi, a static file and the .htaccess."""
    directory.mkdir(parents=True)
    write_script(runtime, directory / "app.cgi", "blog")
    (directory / "style.css").write_bytes(STYLE)
    (directory / ".htaccess").write_text(htaccess_text, "utf-8")


@pytest.fixture(scope="module")
def host(cgi_runtime: Runtime) -> Iterator[Server]:
    webroot = cgi_runtime.root / "shared-host"
    try:
        make_site(cgi_runtime, webroot / "blog", htaccess(script_name=True))
        make_site(cgi_runtime, webroot / "plain", htaccess(script_name=False))
        make_readable(webroot)
        server = retry_start(lambda: start_apache(webroot, "apache-shared-host.conf"))
    except RuntimeError as exc:
        shutil.rmtree(webroot, ignore_errors=True)
        pytest.fail(str(exc), pytrace=False)
    try:
        yield server
    finally:
        stop(server.process)
        shutil.rmtree(server.rundir, ignore_errors=True)
        shutil.rmtree(webroot, ignore_errors=True)


def get(server: Server, target: str) -> Reply:
    """GET ``target``; the error log must stay clean."""
    mark = server.log_size()
    reply = request(server, "GET", target)
    assert reply.complete
    assert_clean_log(server, mark)
    return reply


def seen(reply: Reply) -> tuple[str | None, str | None, str | None]:
    """What the app was given: (SCRIPT_NAME, PATH_INFO, REQUEST_URI)."""
    return reply.header("X-Script-Name"), reply.header("X-Path-Info"), reply.header("X-Request-Uri")


def test_pretty_url_reaches_the_app_with_the_path(host: Server) -> None:
    reply = get(host, "/blog/hello?name=Ada")
    assert reply.status == 200, f"{reply.status} {reply.body[:500]!r}\n{host.diagnostics()}"
    assert reply.body == b"Hello, Ada!\n"
    assert seen(reply) == ("/blog", "/hello", "/blog/hello?name=Ada")


def test_links_leave_out_app_cgi(host: Server) -> None:
    reply = get(host, "/blog/go")
    assert reply.status == 302
    location = reply.header("Location")
    assert location == "/blog/hello?name=redirected"
    assert get(host, location).body == b"Hello, redirected!\n"


def test_htaccess_as_shipped_keeps_app_cgi_in_links(host: Server) -> None:
    """Without CGIKIT_SCRIPT_NAME the app sees what Apache passes: SCRIPT_NAME names app.cgi."""
    reply = get(host, "/plain/go")
    assert reply.status == 302
    assert seen(reply) == ("/plain/app.cgi", "/go", "/plain/go")
    location = reply.header("Location")
    assert location == "/plain/app.cgi/hello?name=redirected"
    assert get(host, location).body == b"Hello, redirected!\n"


def test_existing_file_is_served_by_apache(host: Server) -> None:
    reply = get(host, "/blog/style.css")
    assert reply.status == 200
    assert reply.body == STYLE
    assert seen(reply) == (None, None, None)  # the app never ran


def test_url_naming_app_cgi_still_works(host: Server) -> None:
    reply = get(host, "/blog/app.cgi/hello?name=Ada")
    assert reply.status == 200
    assert reply.body == b"Hello, Ada!\n"
    assert seen(reply) == ("/blog", "/hello", "/blog/app.cgi/hello?name=Ada")


@pytest.mark.parametrize(
    ("target", "path_info"),
    [
        ("/blog/", "/"),
        ("/blog/a/b/c", "/a/b/c"),
        ("/blog/caf%C3%A9", "/caf\xc3\xa9"),  # the UTF-8 bytes, one latin-1 char each
        # Decoded twice without the rule's B=%?# flag: a 400, a 403, a cut path.
        ("/blog/100%25/a%3Fb%23c?q=%3F", "/100%/a?b#c"),
    ],
)
def test_every_path_reaches_the_app_intact(host: Server, target: str, path_info: str) -> None:
    reply = get(host, target)
    assert reply.status == 404  # Flask's: it has no such route
    assert seen(reply) == ("/blog", path_info, target)


def test_htaccess_itself_is_not_served(host: Server) -> None:
    assert get(host, "/blog/.htaccess").status == 403
