"""Vectors for the parser of a CGI script's output (cgi_output; RFC 3875 §6).

Every vector is fed whole, byte by byte and at every two-chunk split point, and must give
the same events each time (Body events coalesced). ``R1``-``R14`` are the rows of
shared/research/cgi-anchors.md §5b that concern the parser.
"""

from __future__ import annotations

from collections.abc import Iterable

import pytest

from cgikit.cgi_output import (
    CLIENT_REDIRECT,
    CLIENT_REDIRECT_WITH_DOCUMENT,
    DOCUMENT,
    LOCAL_REDIRECT,
    NEED_DATA,
    Body,
    EndOfOutput,
    Head,
    ScriptOutput,
    ScriptOutputError,
)
from splitting import splits

END = EndOfOutput()
CT = ("Content-Type", "text/plain")


def error(reason: str) -> tuple[str, str]:
    return ("error", reason)


def run(chunks: Iterable[bytes], max_header_bytes: int = 65536) -> list[object]:
    """Feed ``chunks`` then EOF; the events (Body coalesced), or ending in error(reason)."""
    parser = ScriptOutput(max_header_bytes)
    events: list[object] = []
    try:
        for chunk in chunks:
            parser.receive_data(chunk)
            while (event := parser.next_event()) is not NEED_DATA:
                events.append(event)
        parser.receive_data(b"")
        while not isinstance(event := parser.next_event(), EndOfOutput):
            assert event is not NEED_DATA, "NEED_DATA after EOF"
            events.append(event)
        events.append(event)
    except ScriptOutputError as exc:
        events.append(error(exc.reason))
    return coalesce(events)


def coalesce(events: list[object]) -> list[object]:
    merged: list[object] = []
    for event in events:
        if isinstance(event, Body):
            assert event.data, "an empty Body event"
            if merged and isinstance(merged[-1], Body):
                event = Body(merged[-1].data + event.data)
                merged.pop()
        merged.append(event)
    return merged


def check(data: bytes, expected: list[object], max_header_bytes: int = 65536) -> None:
    for chunks in splits(data):
        assert run(chunks, max_header_bytes) == expected, chunks


AB = ("Content-Type", "a/b")
COOKIE = ("Set-Cookie", "a=1")
WITH_DOC = CLIENT_REDIRECT_WITH_DOCUMENT


def to(
    location: str,
    kind: str = CLIENT_REDIRECT,
    status: int = 302,
    reason: str = "Found",
    extra: list[tuple[str, str]] | None = None,
) -> Head:
    """The Head of a response with a Location (first) and ``extra`` fields."""
    return Head(status, reason, [("Location", location), *(extra or [])], kind)  # type: ignore[arg-type]


def doc(status: int, reason: str, headers: list[tuple[str, str]], **kw: object) -> Head:
    return Head(status, reason, headers, DOCUMENT, **kw)  # type: ignore[arg-type]


RESEARCH_5B = {
    "R1 no output": (b"", [error("no output")]),
    "R2 Content-Length only": (
        b"Content-Length: 6\n\nHello",
        [error("no Content-Type, Location or Status field")],
    ),
    "R3 empty header block": (
        b"\nHello",
        [error("the output starts with an empty line: no header fields")],
    ),
    "R4 no headers": (b"found here\n", [error("line 1 is not a header field: 'found here'")]),
    "R5 client redirect": (
        b"Location: http://foo.com/\n\n",
        [Head(302, "Found", [("Location", "http://foo.com/")], CLIENT_REDIRECT), END],
    ),
    "R6 local redirect": (
        b"Location: /foo\n\n",
        [Head(302, "Found", [("Location", "/foo")], LOCAL_REDIRECT), END],
    ),
    "R7 Status without reason": (
        b"Status: 404\n\nsend404\n",
        [doc(404, "Not Found", []), Body(b"send404\n"), END],
    ),
    "R8 invalid Status": (b"Status: 30 FooBar\n\n", [error("invalid Status '30 FooBar'")]),
    "R9 304 custom reason": (b"Status: 304 FooBar\n\n", [doc(304, "FooBar", []), END]),
    "R10 lower-case status": (
        b"status: 404 Gone\nContent-Type: text/plain\n\n",
        [doc(404, "Gone", [CT]), END],
    ),
    "R11 CRLF then LF LF": (
        b"Location: http://www.example.org/\r\n\n\n",
        [
            Head(302, "Found", [("Location", "http://www.example.org/")], CLIENT_REDIRECT),
            Body(b"\n"),
            END,
        ],
    ),
    "R12 2 KiB header line": (
        b"Content-Type: text/plain\nX-Big: " + b"a" * 2048 + b"\n\nok",
        [doc(200, "OK", [CT, ("X-Big", "a" * 2048)]), Body(b"ok"), END],
    ),
    "R13 headers only": (
        b"Content-Type: text/plain\nX-A: 1\n\n",
        [doc(200, "OK", [CT, ("X-A", "1")]), END],
    ),
    "R14 chunked from the script": (
        b"Status: 200\nTransfer-Encoding: chunked\nContent-Type: text/plain\n\n"
        b"5\r\nhello\r\n0\r\nTest-Trailer: testing\r\n\r\n",
        [
            doc(200, "OK", [CT], dropped=("Transfer-Encoding",)),
            Body(b"5\r\nhello\r\n0\r\nTest-Trailer: testing\r\n\r\n"),  # raw, never de-chunked
            END,
        ],
    ),
}


@pytest.mark.parametrize(("data", "expected"), RESEARCH_5B.values(), ids=RESEARCH_5B.keys())
def test_research_vectors(data: bytes, expected: list[object]) -> None:
    check(data, expected)


def _one(header: bytes, head: Head, body: bytes = b"") -> tuple[bytes, list[object]]:
    """A vector whose output is ``header`` + blank line + ``body``, passed on whole."""
    return header + b"\n" + body, [head, *([Body(body)] if body else []), END]


RULES = {
    # Rule 1: LF or CRLF, mixed; the first empty line ends the block.
    "mixed line ends": (
        b"Content-Type: a/b\r\nX-A: 1\nX-B: 2\r\n\r\n\r\nx\n",
        [
            doc(200, "OK", [AB, ("X-A", "1"), ("X-B", "2")]),
            Body(b"\r\nx\n"),
            END,
        ],
    ),
    # Rule 2: Status.
    "STATUS upper case": _one(b"STATUS: 201 Made\n", doc(201, "Made", [])),
    "Status reason kept": _one(b"Status: 200 Very  Fine\xe9\n", doc(200, "Very  Fine\xe9", [])),
    "Status trailing space": _one(b"Status: 201 \t\n", doc(201, "Created", [])),
    "Status unregistered": _one(b"Status: 299\n", doc(299, "", [])),
    "Status 4 digits": (b"Status: 2000\n\n", [error("invalid Status '2000'")]),
    "Status letters": (b"Status: 20x OK\n\n", [error("invalid Status '20x OK'")]),
    "Status tab": (b"Status: 200\tOK\n\n", [error("invalid Status '200\\tOK'")]),
    "Status words": (b"Status: OK\n\n", [error("invalid Status 'OK'")]),
    "Status superscript": (b"Status: \xb200 x\n\n", [error("invalid Status '\xb200 x'")]),
    "Status 600": (b"Status: 600 x\n\n", [error("invalid Status '600 x': code not in 100-599")]),
    "Status 099": (b"Status: 099 x\n\n", [error("invalid Status '099 x': code not in 100-599")]),
    "Status empty": (b"Status:\n\n", [error("line 1: empty Status")]),
    "no colon": (b"Content-Type: a/b\nX-A 1\n\n", [error("line 2 is not a header field: 'X-A 1'")]),
    "space before colon": (
        b"Content-Type : a/b\n\n",
        [error("line 1 has whitespace before the colon: 'Content-Type : a/b'")],
    ),
    "tab before colon": (
        b"X\t: 1\n\n",
        [error("line 1 has whitespace before the colon: 'X\\t: 1'")],
    ),
    "obs-fold": (
        b"Content-Type: a/b\nX-A: 1\n  more\n\n",
        [error("line 3 is a folded continuation line: '  more'")],
    ),
    "leading tab": (b"\tX-A: 1\n\n", [error("line 1 is a folded continuation line: '\\tX-A: 1'")]),
    "NUL in value": (b"X-A: a\0b\n\n", [error("line 1 contains NUL: 'X-A: a\\x00b'")]),
    "bare CR": (b"Status: 200\nX-A: a\rb\n\n", [error("line 2 contains a bare CR: 'X-A: a\\rb'")]),
    "CR CR LF": (b"X-A: a\r\r\n\n", [error("line 1 contains a bare CR: 'X-A: a\\r'")]),
    "empty name": (b": x\n\n", [error("line 1 has an empty field name: ': x'")]),
    "name not a token": (b"X(A): 1\n\n", [error("line 1: field name is not a token: 'X(A): 1'")]),
    "non-ASCII name": (b"X\xe9: 1\n\n", [error("line 1: field name is not a token: 'X\xe9: 1'")]),
    "long line shown cut": (
        b"y" * 100 + b"\n\n",
        [error(f"line 1 is not a header field: {'y' * 60!r}...")],
    ),
    # Rule 3: the CGI fields.
    "only other fields": (b"X-A: 1\n\n", [error("no Content-Type, Location or Status field")]),
    "Status twice": (b"Status: 200\nstatus: 200\n\n", [error("Status given twice")]),
    "Location twice": (b"Location: /a\nLOCATION: /b\n\n", [error("Location given twice")]),
    "Content-Type twice": (
        b"Content-Type: a/b\ncontent-type: a/b\n\n",
        [error("Content-Type given twice")],
    ),
    "empty Location": (b"Content-Type: a/b\nLocation: \n\n", [error("line 2: empty Location")]),
    "empty Content-Type": (b"Content-Type:\n\n", [error("line 1: empty Content-Type")]),
    "EOF after a field": (
        b"Content-Type: a/b\n",
        [error("output ended after 18 bytes, before the empty line that ends the header block")],
    ),
    "EOF inside a line": (
        b"Content-Type: a/b",
        [error("output ended after 17 bytes, before the empty line that ends the header block")],
    ),
    "document without Content-Type": _one(b"Status: 200 OK\n", doc(200, "OK", []), b"raw"),
    # Rule 4: response kinds.
    "local redirect with fields and body": (
        b"Location: /n?a=1\nContent-Type: text/html\nSet-Cookie: a=1\n\ndiscarded",
        [to("/n?a=1", LOCAL_REDIRECT, extra=[("Content-Type", "text/html"), COOKIE]), END],
    ),
    "//host is a client redirect": _one(b"Location: //evil/x\n", to("//evil/x")),
    "/\\host is a client redirect": _one(b"Location: /\\evil\n", to("/\\evil")),
    "path with a space": _one(b"Location: /a b\n", to("/a b")),
    "path with a fragment": _one(b"Location: /a#b\n", to("/a#b")),
    "relative reference": _one(b"Location: next.html\n", to("next.html")),
    "client redirect body kept": _one(b"Location: http://x/\n", to("http://x/"), b"stray"),
    "redirect with document, no Status": _one(
        b"Location: http://x/\nContent-Type: a/b\n", to("http://x/", WITH_DOC, extra=[AB]), b"<a>"
    ),
    "redirect with document, 301": _one(
        b"Status: 301 Gone Away\nLocation: http://x/\nContent-Type: a/b\n",
        to("http://x/", WITH_DOC, 301, "Gone Away", [AB]),
        b"moved",
    ),
    "local path with 303": _one(
        b"Location: /a\nStatus: 303\n", to("/a", WITH_DOC, 303, "See Other")
    ),
    "local path with 200": _one(b"Location: /a\nStatus: 200\n", to("/a", DOCUMENT, 200, "OK")),
    "201 with Location": _one(b"Status: 201\nLocation: /1\n", to("/1", DOCUMENT, 201, "Created")),
    # Rule 5: framing fields from the script never frame anything.
    "Content-Length dropped": _one(
        b"Content-Type: a/b\nContent-Length: 5\n",
        doc(200, "OK", [AB], claimed_length=5, dropped=("Content-Length",)),
        b"hello world",
    ),
    "Content-Length not a number": _one(
        b"Content-Type: a/b\ncontent-length: 5x\n",
        doc(200, "OK", [AB], dropped=("content-length",)),
    ),
    "two Content-Lengths": _one(
        b"Content-Type: a/b\nContent-Length: 5\nContent-Length: 7\n",
        doc(200, "OK", [AB], claimed_length=5, dropped=("Content-Length", "Content-Length")),
    ),
    "hop-by-hop dropped": _one(
        b"Connection: close\nKeep-Alive: 5\nTE: x\nContent-Type: a/b\nTrailer: x\nUpgrade: h2c\n"
        b"Proxy-Connection: x\n",
        doc(
            200,
            "OK",
            [AB],
            dropped=("Connection", "Keep-Alive", "TE", "Trailer", "Upgrade", "Proxy-Connection"),
        ),
    ),
    # Rule 7: no body for 1xx, 204, 304.
    "204 body discarded": (b"Status: 204\n\nbody", [doc(204, "No Content", []), END]),
    "304 body discarded": (
        b"Status: 304 Not Modified\r\n\r\nbody",
        [doc(304, "Not Modified", []), END],
    ),
    "103 body discarded": (b"Status: 103\n\nbody", [doc(103, "Early Hints", []), END]),
    "3xx kind, 304 body discarded": (
        b"Location: http://x/\nStatus: 304\n\nbody",
        [
            to("http://x/", WITH_DOC, 304, "Not Modified"),
            END,
        ],
    ),
    # Rule 8: values.
    "value stripped": _one(
        b"Content-Type:\t a/b \t\nX-A:x\nX-B:\n",
        doc(200, "OK", [AB, ("X-A", "x"), ("X-B", "")]),
    ),
    "value latin-1": _one(
        b"Content-Type: a/b\nX-A: caf\xe9 \xff\x01\n",
        doc(200, "OK", [AB, ("X-A", "caf\xe9 \xff\x01")]),
    ),
    "repeats kept in order": _one(
        b"Set-Cookie: a=1\nContent-Type: a/b\nset-cookie: b=2\nVary: A\nvary: B\n",
        doc(
            200,
            "OK",
            [
                ("Set-Cookie", "a=1"),
                AB,
                ("set-cookie", "b=2"),
                ("Vary", "A"),
                ("vary", "B"),
            ],
        ),
    ),
    "binary body": _one(b"Content-Type: a/b\n", doc(200, "OK", [AB]), bytes(range(256))),
}


@pytest.mark.parametrize(("data", "expected"), RULES.values(), ids=RULES.keys())
def test_rule_vectors(data: bytes, expected: list[object]) -> None:
    check(data, expected)
