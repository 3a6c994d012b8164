"""Warm mode's zygote at its start: the preload modules imported (issue 5).

Stdlib only, like ``warm_zygote``, whose loader runs this file beside it. A preload that
fails, starts a thread or ends the process makes ``preload`` say why: that zygote then
forks nothing, and its scripts run cold. While the preloads are imported (and the
framework warm-ups below), ``CGIKIT_ZYGOTE=1`` is in the environment: ``cgikit.warm_up``
and ``cgikit.warm_flask`` make their requests there, and nowhere else.

A framework preloaded by name (``FRAMEWORKS``) is then warmed by cgikit's module for it
(``cgikit.warm_flask``): throwaway apps built and answered, so that a script that builds
its own app on every request finds that code specialized and those caches filled. A
warm-up module that cannot be imported (no cgikit for this interpreter) is logged and
skipped: the zygote serves without it. One that starts a thread fails the zygote, as a
preload that does.
"""

from __future__ import annotations

import codecs
import os
import sys

ZYGOTE_VARIABLE = "CGIKIT_ZYGOTE"  # read by cgikit.warm_up, cgikit.warm_flask
# A preload's name -> the cgikit module that warms that framework when imported here.
FRAMEWORKS = {"flask": "cgikit.warm_flask"}


def preload(host: list[str], mine: list[str], directory: str) -> str:
    """Import the host's preloads, then the scripts' with their directory leading
    ``sys.path``, then the warm-ups of the frameworks among them; what went wrong,
    or ""."""
    os.environ[ZYGOTE_VARIABLE] = "1"  # for the warm-ups, which act only here
    try:
        for name in filter(None, host):
            import_preload(name)
        sys.path.insert(0, directory)
        try:
            for name in filter(None, mine):
                import_preload(name)
        finally:
            sys.path.remove(directory)
        for name in sorted({*host, *mine} & FRAMEWORKS.keys()):
            warm_framework(FRAMEWORKS[name])
    except Exception as exc:  # an import error, or a preload that started a thread
        return str(exc)
    finally:
        del os.environ[ZYGOTE_VARIABLE]
    return ""


class ThreadStarted(ImportError):
    """A preload (or a warm-up) left a thread running: unlike a failed import, fatal."""


def warm_framework(module: str) -> None:
    """Import ``module``, a framework's warm-up; one that cannot be is skipped, logged.

    Raises:
        ThreadStarted: it started a thread (this zygote must not fork).
    """
    try:
        import_preload(module)
    except ThreadStarted:
        raise
    except ImportError as exc:
        sys.stderr.write(f"cgikit: warm-up skipped: {exc}\n")


def import_preload(name: str, seen: set[str] | None = None) -> None:
    """Import ``name``, then what it lists in ``__cgikit_preload__``: the modules it
    imports only when used, which every child would otherwise import again."""
    seen = set() if seen is None else seen
    if name in seen:
        return
    seen.add(name)
    try:
        __import__(name)
    except BaseException as exc:  # SystemExit and all: a preload must not end the zygote
        failed = f"preload {name} failed: {type(exc).__name__}: {exc}"
    else:
        failed = ""
    if len(os.listdir("/proc/self/task")) > 1:
        # A fork copies only the forking thread: a lock another thread held would stay
        # locked for ever in every child. Such a zygote must not fork at all, even if
        # the import then failed.
        raise ThreadStarted(f"preload {name} started a thread (forking would be unsafe)")
    if failed:
        raise ImportError(failed)
    if name.startswith("encodings."):
        # A codec module is found through the codec registry's search, once a process:
        # looked up here, the children find it in the registry's cache.
        try:
            codecs.lookup(name.partition(".")[2])
        except LookupError:
            pass  # a helper module of the package, not a codec
    lazy = getattr(sys.modules[name], "__cgikit_preload__", ())
    for each in lazy if isinstance(lazy, (list, tuple)) else ():
        if isinstance(each, str):
            import_preload(each, seen)
