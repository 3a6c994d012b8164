"""HOST_OPTIONS: one table for CGIHost's keywords (and later `cgikit serve` and docs)."""

from __future__ import annotations

import pytest

from cgikit.host_options import HOST_OPTIONS, host_settings


def test_defaults() -> None:
    settings = host_settings({})
    assert {o.name: getattr(settings, o.name) for o in HOST_OPTIONS} == {
        "timeout": 60.0,
        "idle_timeout": 30.0,
        "max_body": 100 << 20,
        "pass_env": (),
        "env": (),
        "pass_auth": False,
        "local_redirects": True,
        "run_python": False,
        "warm": False,
        "preload": (),
    }


def test_preload_takes_repeated_and_comma_separated_names() -> None:
    settings = host_settings({"preload": ["flask, jinja2", "json", "flask", "xml.dom"]})
    assert settings.preload == ("flask", "jinja2", "json", "xml.dom")
    with pytest.raises(ValueError, match="not a module name"):
        host_settings({"preload": ["os; rm"]})
    with pytest.raises(TypeError):
        host_settings({"preload": "flask"})


def test_every_option_has_a_distinct_cgikit_variable_and_help() -> None:
    names = [o.env for o in HOST_OPTIONS]
    assert len(set(names)) == len(names)
    assert all(o.env.startswith("CGIKIT_") and o.help for o in HOST_OPTIONS)


def test_parse_from_variable_text() -> None:
    by_name = {o.name: o for o in HOST_OPTIONS}
    assert by_name["timeout"].parse(" 2.5 ") == 2.5
    assert by_name["max_body"].parse("1024") == 1024
    assert by_name["pass_env"].parse("HOME, USER,,") == ["HOME", "USER"]
    assert by_name["pass_auth"].parse("on") is True
    with pytest.raises(ValueError):
        by_name["max_body"].parse("lots")


def test_env_forms() -> None:
    pairs = (("A", "1=2"), ("B", ""))
    assert host_settings({"env": ["A=1=2", "B="]}).env == pairs
    assert host_settings({"env": {"A": "1=2", "B": ""}}).env == pairs
    assert host_settings({"env": [("A", "1=2"), ("B", "")]}).env == pairs


@pytest.mark.parametrize(
    ("given", "error"),
    [
        ({"timeout": "5"}, TypeError),
        ({"timeout": True}, TypeError),
        ({"idle_timeout": -1}, ValueError),
        ({"max_body": 1.5}, TypeError),
        ({"pass_env": "HOME"}, TypeError),
        ({"env": "A=1"}, TypeError),
        ({"env": ["=1"]}, ValueError),
        ({"pass_auth": 1}, TypeError),
        ({"bogus": 1}, TypeError),
    ],
)
def test_bad_values(given: dict[str, object], error: type[Exception]) -> None:
    with pytest.raises(error):
        host_settings(given)
