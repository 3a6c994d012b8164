"""Warm mode's warm-up of Flask itself, for scripts that build their app on every request.

A script written the classic way, ``app = Flask(__name__)``, its routes, then
``cgikit.run(app)``, builds its app in every child. Flask and werkzeug do that with
code no zygote has run: CPython (3.11) specializes a function's bytecode only after it
has run a few times (PEP 659), and every child ran it generic, writing warm-up counters
into the code objects' pages (copies of the zygote's), and filled Flask's and
werkzeug's first-use caches again. Measured in a forked child, building a Flask hello
app and answering its request: 3.9 ms and 1,080 page faults from a parent that had only
imported Flask; 2.9 ms and 840 from one that had imported this module; 6.7 against 4.6
ms for an app that renders a small template (bench/RESULTS.md).

So when a zygote preloads ``flask`` (``--preload`` or a script's ``# cgikit-preload:``
line), ``warm_preload`` imports this module after the preloads, and it builds
``warm_request.REQUESTS`` throwaway apps of its own, each with one route that renders a
template string (Jinja's compiler is Flask's too), and makes one GET through each, as
``cgikit.warm_up`` does (through the code ``cgikit.run`` runs in a child). No code of
the script's runs: the apps are this module's, and are collected before the zygote
forks (its first fork freezes whatever is left, for good). The warm-up runs only at
import in a zygote (``CGIKIT_ZYGOTE=1``); imported elsewhere, the module only imports
Flask. A warm-up that fails is logged on stderr (the server's log), ``cgikit: warm-up
GET /cgikit-warm-flask/: ...``, once, and the zygote goes on without it.
"""

from __future__ import annotations

import gc
import os

from flask import Flask, render_template_string

from cgikit import warm_request

__all__ = ["warm_flask"]


def throwaway_app() -> Flask:
    """A small app built as a script builds one: a name, a route, a template."""
    app = Flask("cgikit.warm_flask")

    @app.route("/")
    def hello() -> str:
        return render_template_string(
            "<p>{{ greeting }}, {{ name|e }}</p>", greeting="Hello", name="world"
        )

    return app


def warm_flask() -> bool:
    """``REQUESTS`` throwaway apps built, one GET each; whether all were answered."""
    apps = (throwaway_app() for _ in range(warm_request.REQUESTS))
    try:
        return warm_request.warm_apps(apps, "/", script_name="/cgikit-warm-flask")
    finally:
        gc.collect()  # the apps: garbage now, and frozen for good at the first fork


if os.environ.get("CGIKIT_ZYGOTE") == "1":  # warm_preload sets it while it imports us
    warm_flask()
