"""A Flask app: a query argument, a POST form, flask.redirect and a 404.

The form is posted both urlencoded and multipart. (werkzeug reads a body with
``read()``, no size, which the validator forbids, whenever ``wsgi.input_terminated`` is
in the environ; cgikit sets that key only for chunked uploads.)
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
