"""The options of cgikit's CGI host (``CGIHost``), one table as ``cgikit.RUN_OPTIONS``.

``HOST_OPTIONS`` feeds ``CGIHost``'s keywords, and later the ``cgikit serve`` flags and
the docs. ``host_settings`` checks the keywords given and fills in the defaults; the
environment variables are for ``cgikit serve`` (``CGIHost`` itself reads none: a WSGI
app's configuration is its constructor's arguments).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass

from cgikit import Option

MIB = 1 << 20

HOST_OPTIONS = (
    Option(
        "timeout",
        "CGIKIT_TIMEOUT",
        float,
        60.0,
        "Seconds a script may run in all; then its process group is killed (504 before "
        "its headers, a cut body after them).",
    ),
    Option(
        "idle_timeout",
        "CGIKIT_IDLE_TIMEOUT",
        float,
        30.0,
        "Seconds a script may stay silent on stdout; then it is killed as for timeout.",
    ),
    Option(
        "max_body",
        "CGIKIT_MAX_BODY",
        int,
        100 * MIB,
        "Largest request body in bytes (declared or de-chunked); a larger one is a 413.",
    ),
    Option(
        "pass_env",
        "CGIKIT_PASS_ENV",
        list,
        (),
        "Names of server environment variables passed to scripts (only PATH, LANG, LC_*, "
        "TZ and LD_LIBRARY_PATH are passed otherwise).",
    ),
    Option(
        "env",
        "CGIKIT_ENV",
        list,
        (),
        "NAME=VALUE entries set in every script's environment; they override computed "
        "variables, the last one wins.",
    ),
    Option(
        "pass_auth",
        "CGIKIT_PASS_AUTH",
        bool,
        False,
        "Pass the Authorization and Proxy-Authorization headers to scripts "
        "(HTTP_AUTHORIZATION), as Apache's CGIPassAuth On.",
    ),
    Option(
        "local_redirects",
        "CGIKIT_LOCAL_REDIRECTS",
        bool,
        True,
        "Follow a script's local redirect (Location: /path, no Status) inside the host as "
        "a GET, at most 5 in a row; off: answer 302.",
    ),
    Option(
        "run_python",
        "CGIKIT_RUN_PYTHON",
        bool,
        False,
        "Run *.py files that are not executable with the host's own Python interpreter, "
        "as http.server did.",
    ),
    Option(
        "warm",
        "CGIKIT_WARM",
        bool,
        False,
        "Run Python scripts warm: forked per request from a parent that has already "
        "started their interpreter and imported the preload modules, not exec'd; same "
        "isolation and contract, a fraction of the start-up cost (Linux; docs/warm.md).",
    ),
    Option(
        "preload",
        "CGIKIT_PRELOAD",
        list,
        (),
        "Modules warm mode's parents import before forking scripts (repeat the flag or "
        "separate with commas: flask,jinja2); a script may add its own (docs/warm.md).",
    ),
)


@dataclass(frozen=True, slots=True)
class HostSettings:
    """The checked options of one ``CGIHost``."""

    timeout: float
    idle_timeout: float
    max_body: int
    pass_env: tuple[str, ...]
    env: tuple[tuple[str, str], ...]
    pass_auth: bool
    local_redirects: bool
    run_python: bool
    warm: bool
    preload: tuple[str, ...]


def _number(name: str, value: object, kind: type) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise TypeError(f"{name} must be a number, not {value!r}")
    if kind is int and not isinstance(value, int):
        raise TypeError(f"{name} must be an int, not {value!r}")
    if value < 0 or (kind is float and value == 0):
        raise ValueError(f"{name} out of range: {value!r}")
    return value


def _env_entries(value: object) -> tuple[tuple[str, str], ...]:
    """``env`` as (name, value) pairs, from NAME=VALUE strings, pairs or a mapping."""
    items: Iterable[object] = value.items() if isinstance(value, Mapping) else value  # type: ignore[assignment]
    entries: list[tuple[str, str]] = []
    for item in items:
        if isinstance(item, str):
            name, equals, text = item.partition("=")
            if not equals:
                raise ValueError(f"env entries are NAME=VALUE: {item!r}")
            item = (name, text)
        if not (
            isinstance(item, tuple) and len(item) == 2 and all(isinstance(x, str) for x in item)
        ):
            raise TypeError(f"env entries are NAME=VALUE strings or (name, value): {item!r}")
        if not item[0] or "=" in item[0]:
            raise ValueError(f"invalid environment variable name: {item[0]!r}")
        entries.append(item)
    return tuple(entries)


def host_settings(given: Mapping[str, object]) -> HostSettings:
    """The keywords given to ``CGIHost``, checked, with the defaults for the others.

    Raises:
        TypeError: an unknown keyword or a value of the wrong type.
        ValueError: a value out of range.
    """
    known = {option.name: option for option in HOST_OPTIONS}
    unknown = set(given) - set(known)
    if unknown:
        raise TypeError(f"unknown CGIHost option(s): {', '.join(sorted(unknown))}")
    values = {name: given.get(name, option.default) for name, option in known.items()}
    for name in ("pass_auth", "local_redirects", "run_python", "warm"):
        if not isinstance(values[name], bool):
            raise TypeError(f"{name} must be a bool, not {values[name]!r}")
    pass_env = values["pass_env"]
    if isinstance(pass_env, str) or not isinstance(pass_env, Iterable):
        raise TypeError(f"pass_env must be a list of names, not {pass_env!r}")
    names = tuple(pass_env)
    if not all(isinstance(name, str) for name in names):
        raise TypeError(f"pass_env must be a list of names, not {pass_env!r}")
    env = values["env"]
    if isinstance(env, str) or not isinstance(env, Iterable | Mapping):
        raise TypeError(f"env must be a list of NAME=VALUE strings, not {env!r}")
    return HostSettings(
        timeout=_number("timeout", values["timeout"], float),
        idle_timeout=_number("idle_timeout", values["idle_timeout"], float),
        max_body=int(_number("max_body", values["max_body"], int)),
        pass_env=names,
        env=_env_entries(env),
        pass_auth=bool(values["pass_auth"]),
        local_redirects=bool(values["local_redirects"]),
        run_python=bool(values["run_python"]),
        warm=bool(values["warm"]),
        preload=_module_names(values["preload"]),
    )


def _module_names(value: object) -> tuple[str, ...]:
    """``preload``: module names, from a list whose entries may hold several (a,b)."""
    if isinstance(value, str) or not isinstance(value, Iterable):
        raise TypeError(f"preload must be a list of module names, not {value!r}")
    names: list[str] = []
    for entry in value:
        if not isinstance(entry, str):
            raise TypeError(f"preload must be a list of module names, not {value!r}")
        for name in (part.strip() for part in entry.split(",")):
            if name and not all(p.isidentifier() for p in name.split(".")):
                raise ValueError(f"preload: not a module name: {name!r}")
            if name and name not in names:
                names.append(name)
    return tuple(names)
