"""Fixtures of the ``cgikit serve`` tests: one site copy and one default server per module."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from serve.servekit import Server, copy_site


@pytest.fixture(scope="module")
def site(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return copy_site(tmp_path_factory.mktemp("serve"))


@pytest.fixture(scope="module")
def server(site: Path) -> Iterator[Server]:
    # PYTHONPATH reaches the scripts only through --pass-env (the allow-list).
    running = Server(site, "--pass-env", "PYTHONPATH", "--env", "GREETING=hi")
    try:
        yield running
    finally:
        assert running.stop() == 0
