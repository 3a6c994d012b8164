"""A Flask app: a query argument, a POST form, flask.redirect and a 404.

The form test posts multipart/form-data. A urlencoded form would fail here, but not
because of cgikit: werkzeug reads such a body with ``wsgi.input.read()`` (no size) when
``wsgi.input_terminated`` is in the environ, and the validator only allows
``read(size)`` (PEP 3333).
"""

from __future__ import annotations

from wsgiref.validate import validator

import flask

flask_app = flask.Flask(__name__)


@flask_app.get("/hello")
def hello() -> flask.Response:
    name = flask.request.args.get("name", "world")
    return flask.Response(f"Hello, {name}!\n", mimetype="text/plain")


@flask_app.post("/form")
def form() -> flask.Response:
    fields = flask.request.form
    return flask.Response(f"{fields['name']} says {fields['words']}\n", mimetype="text/plain")


@flask_app.get("/go")
def go() -> flask.Response:
    return flask.redirect(flask.url_for("hello", name="redirected"))


app = validator(flask_app)
