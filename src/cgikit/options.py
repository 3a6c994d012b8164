"""The one options table: it feeds ``cgikit.run``'s keywords, the CLI flags and the docs.

Each option has a keyword name, an environment variable (how a CGI host that cannot pass
arguments, such as an Apache ``SetEnv``, sets it), a default and a help line. Clients
cannot set these variables: a request header only ever becomes ``HTTP_*``.
"""

TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Mapping


class Option:
    """One setting: keyword ``name``, ``env`` variable, ``kind`` (bool or str), ``default``."""

    __slots__ = ("default", "env", "help", "kind", "name")

    def __init__(
        self, name: str, env: str, kind: type, default: bool | str | None, help: str
    ) -> None:
        self.name = name
        self.env = env
        self.kind = kind
        self.default = default
        self.help = help

    @property
    def flag(self) -> str:
        """The command-line flag, ``--log-file`` for ``log_file``."""
        return "--" + self.name.replace("_", "-")

    def parse(self, text: str) -> bool | str:
        """The value of the environment variable's text."""
        if self.kind is bool:
            return text.strip().lower() in ("1", "true", "yes", "on")
        return text


RUN_OPTIONS = (
    Option(
        "debug",
        "CGIKIT_DEBUG",
        bool,
        False,
        "On an error, show an HTML page with the traceback, local variables and environ "
        "(the job cgitb did). Never in production.",
    ),
    Option(
        "log_file",
        "CGIKIT_LOG_FILE",
        str,
        None,
        "Append cgikit's log lines and wsgi.errors to this file instead of stderr, "
        "for hosts where stderr is lost.",
    ),
    Option(
        "default_content_type",
        "CGIKIT_DEFAULT_CONTENT_TYPE",
        str,
        "application/octet-stream",
        "Content-Type sent (with X-Content-Type-Options: nosniff) when the app gives a "
        "body without one; a warning is logged. Never sniffed, never text/html.",
    ),
)


def resolve(
    options: tuple[Option, ...], given: "Mapping[str, object]", environ: "Mapping[str, str]"
) -> dict[str, object]:
    """Each option's value: the keyword if not None, else its variable, else the default."""
    values: dict[str, object] = {}
    for option in options:
        value = given.get(option.name)
        if value is None:
            text = environ.get(option.env)
            value = option.default if text is None or text == "" else option.parse(text)
        values[option.name] = value
    return values


def markdown_table(options: tuple[Option, ...]) -> str:
    """The options as a Markdown table, for the docs."""
    rows = ["| keyword | flag | environment | default | meaning |", "|---|---|---|---|---|"]
    for o in options:
        default = "off" if o.default is False else ("none" if o.default is None else o.default)
        rows.append(f"| `{o.name}` | `{o.flag}` | `{o.env}` | {default} | {o.help} |")
    return "\n".join(rows) + "\n"
