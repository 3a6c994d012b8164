"""The CGIHost tests' fixtures (defined in host/hostkit.py), and warm mode's equivalence:
every test here runs twice, the second time with every CGIHost in warm mode (issue 5:
every host test of the cold path that uses a Python script passes warm too). Requests
then wait for their zygote to start, so the Python scripts do run warm."""

from collections.abc import Iterator

import pytest

from cgikit import cgi_host, host_options, warm_spawn
from host.hostkit import cgi_dir, no_leaks, subreaper

__all__ = ["cgi_dir", "host_mode", "no_leaks", "subreaper"]


@pytest.fixture(autouse=True, params=["cold", "warm"])
def host_mode(
    request: pytest.FixtureRequest, no_leaks: None, monkeypatch: pytest.MonkeyPatch
) -> Iterator[str]:
    if request.param == "warm":
        if not warm_spawn.available():
            pytest.skip("warm mode is Linux-only")

        def warm_settings(given: dict[str, object]) -> host_options.HostSettings:
            return host_options.host_settings({"warm": True, **given})

        monkeypatch.setattr(cgi_host, "host_settings", warm_settings)
        monkeypatch.setattr(warm_spawn, "START_WAIT", 10.0)
    yield request.param
    warm_spawn.close_all()  # before no_leaks counts descriptors and children
