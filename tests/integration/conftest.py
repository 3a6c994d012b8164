"""Session fixtures for the real-server tests: the www-data runtime and the servers.

Tests take ``server`` through indirect parametrization (``on_every_server`` in the test
module), so each test can mark a server it cannot pass on as a strict xfail.
"""

from __future__ import annotations

import shutil
from collections.abc import Iterator

import pytest

from integration.runtime import Runtime, build_runtime
from servers import Server, ServerPool, cgi_user_ids


@pytest.fixture(scope="session")
def cgi_runtime() -> Iterator[Runtime]:
    cgi_user_ids()  # no www-data: a skip, or a failure in CI
    try:
        runtime = build_runtime()
    except RuntimeError as exc:
        pytest.fail(str(exc), pytrace=False)
    yield runtime
    shutil.rmtree(runtime.root, ignore_errors=True)


@pytest.fixture(scope="session")
def server_pool(cgi_runtime: Runtime) -> Iterator[ServerPool]:
    pool = ServerPool(cgi_runtime.docroot)
    yield pool
    pool.stop_all()


@pytest.fixture
def server(request: pytest.FixtureRequest, server_pool: ServerPool) -> Server:
    """The server named by the test's parameter, started on first use."""
    return server_pool.get(request.param)
