"""The response driver: app behaviour to CGI output bytes (cgi-anchors.md §5f, O1-O12).

Each app is driven through ``Response`` with a list-collecting ``send``; apps that are
valid WSGI are also run through ``wsgiref.validate.validator`` (warnings are errors).
The error paths live in test_response_errors.py.
"""

from __future__ import annotations

import io
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from cgikit.wsgi_response import FileWrapper, Response
from helpers_child import Out, assert_same_as_validated, make_environ, respond, split_response

TEXT = [("Content-Type", "text/plain")]
NOSNIFF = b"Content-Type: application/octet-stream\r\nX-Content-Type-Options: nosniff\r\n"


def list_app(chunks: list[bytes], headers: Any = TEXT, status: str = "200 OK") -> Any:
    def app(environ: dict[str, Any], start_response: Any) -> list[bytes]:
        start_response(status, list(headers))
        return list(chunks)

    return app


def gen_app(chunks: list[bytes], headers: Any = TEXT, status: str = "200 OK") -> Any:
    def app(environ: dict[str, Any], start_response: Any) -> Any:
        start_response(status, list(headers))
        yield from chunks

    return app


def write_app(chunks: list[bytes], headers: Any = TEXT) -> Any:
    def app(environ: dict[str, Any], start_response: Any) -> list[bytes]:
        write = start_response("200 OK", list(headers))
        for chunk in chunks:
            write(chunk)
        return []

    return app


def test_o1_list_body_gets_content_length() -> None:
    out = respond(list_app([b"http"]))
    assert out.sent == [
        b"Status: 200 OK\r\nContent-Type: text/plain\r\nContent-Length: 4\r\n\r\nhttp"
    ]
    assert out.logs == []
    assert_same_as_validated(list_app([b"http"]), out)


def test_o1_without_content_type_gets_the_safe_default() -> None:
    out = respond(list_app([b"http"], headers=[]))
    assert out.data == b"Status: 200 OK\r\nContent-Length: 4\r\n" + NOSNIFF + b"\r\nhttp"
    assert len(out.logs) == 1 and "Content-Type" in out.logs[0]
    assert "application/octet-stream" in out.logs[0]


def test_default_content_type_option() -> None:
    out = respond(list_app([b"x"], headers=[]), default_content_type="text/plain; charset=utf-8")
    assert out.data == (
        b"Status: 200 OK\r\nContent-Length: 1\r\nContent-Type: text/plain; charset=utf-8\r\n"
        b"X-Content-Type-Options: nosniff\r\n\r\nx"
    )


def test_o2_write_then_empty_list() -> None:
    out = respond(write_app([b"http"]))
    assert out.sent == [b"Status: 200 OK\r\nContent-Type: text/plain\r\n\r\nhttp"]
    assert_same_as_validated(write_app([b"http"]), out)


def test_o3_utf8_body_length_in_bytes() -> None:
    body = "\u0442\u0435\u0441\u0442".encode()
    out = respond(list_app([body]))
    assert out.data == (
        b"Status: 200 OK\r\nContent-Type: text/plain\r\nContent-Length: 8\r\n\r\n" + body
    )
    assert_same_as_validated(list_app([body]), out)


def test_o4_head_keeps_the_declared_length() -> None:
    app = list_app([], headers=[*TEXT, ("Content-Length", "12345")])
    out = respond(app, "HEAD")
    assert out.data == (
        b"Status: 200 OK\r\nContent-Type: text/plain\r\nContent-Length: 12345\r\n\r\n"
    )
    assert out.logs == []
    assert_same_as_validated(app, out, "HEAD")


@pytest.mark.parametrize("app", [list_app([], headers=[]), gen_app([], headers=[])])
def test_o5_empty_body_content_length_zero(app: Any) -> None:
    out = respond(app)
    assert out.sent == [b"Status: 200 OK\r\nContent-Length: 0\r\n\r\n"]
    assert out.logs == []


def test_o5_empty_chunks_only() -> None:
    out = respond(gen_app([b"", b"", b""]))
    assert out.sent == [b"Status: 200 OK\r\nContent-Type: text/plain\r\nContent-Length: 0\r\n\r\n"]


@pytest.mark.parametrize("protocol", ["HTTP/0.9", "HTTP/1.0", "HTTP/1.1", "INCLUDED"])
def test_o9_cgi_framing_whatever_the_protocol(protocol: str) -> None:
    out = respond(list_app([b"x"]), meta={"SERVER_PROTOCOL": protocol})
    assert out.data.startswith(b"Status: 200 OK\r\n")
    assert_same_as_validated(list_app([b"x"]), out, meta={"SERVER_PROTOCOL": protocol})


@pytest.mark.parametrize(
    "body", [b"<html><script>alert(1)</script></html>", b"gopher" * 86, b"\xff\xd8\xff\xe0"]
)
def test_o10_no_content_type_is_never_sniffed(body: bytes) -> None:
    out = respond(list_app([body], headers=[]))
    status, headers, sent_body = split_response(out.data)
    assert (status, sent_body) == ("Status: 200 OK", body)
    assert headers == [
        ("Content-Length", str(len(body))),
        ("Content-Type", "application/octet-stream"),
        ("X-Content-Type-Options", "nosniff"),
    ]


def test_o11_hop_by_hop_headers_dropped_and_logged() -> None:
    headers = [("Location", "/x"), ("Connection", "close"), ("Transfer-Encoding", "chunked")]
    out = respond(list_app([], headers=headers, status="302 Found"))
    assert out.data == b"Status: 302 Found\r\nLocation: /x\r\nContent-Length: 0\r\n\r\n"
    assert len(out.logs) == 1
    assert "Connection" in out.logs[0] and "Transfer-Encoding" in out.logs[0]


APPS = {
    "list": lambda: list_app([b"hello ", b"world"]),
    "generator": lambda: gen_app([b"hello ", b"", b"world"]),
    "write": lambda: write_app([b"hello ", b"world"]),
    "no type": lambda: list_app([b"hello world"], headers=[]),
}


@pytest.mark.parametrize("make", APPS.values(), ids=APPS.keys())
def test_o12_head_sends_no_body_and_the_length_get_would(make: Any) -> None:
    get, head = respond(make()), respond(make(), "HEAD")
    get_status, get_headers, get_body = split_response(get.data)
    head_status, head_headers, head_body = split_response(head.data)
    assert get_body == b"hello world" and head_body == b""
    assert head_status == get_status
    assert len(head.sent) == 1
    assert ("Content-Length", "11") in head_headers
    no_length = [h for h in head_headers if h[0] != "Content-Length"]
    assert no_length == [h for h in get_headers if h[0] != "Content-Length"]
    if ("Content-Type", "text/plain") in get_headers:  # valid WSGI: same through validator
        assert_same_as_validated(make(), get)
        assert_same_as_validated(make(), head, "HEAD")


@pytest.mark.parametrize("status", ["204 No Content", "304 Not Modified"])
def test_no_body_statuses_drop_the_body(status: str) -> None:
    headers = [("ETag", '"x"')]
    out = respond(list_app([b"body", b"more"], headers=headers, status=status))
    assert out.sent == [f'Status: {status}\r\nETag: "x"\r\n\r\n'.encode()]
    assert len(out.logs) == 1 and status[:3] in out.logs[0]


def test_no_body_status_without_body_is_silent() -> None:
    app = list_app([], headers=[], status="204 No Content")
    out = respond(app)
    assert out.sent == [b"Status: 204 No Content\r\n\r\n"]
    assert out.logs == []
    assert_same_as_validated(app, out)


def test_streaming_each_chunk_is_sent_at_once() -> None:
    seen: list[int] = []
    out_holder: list[Any] = []

    def app(environ: dict[str, Any], start_response: Any) -> Any:
        start_response("200 OK", TEXT)
        for chunk in (b"", b"a", b"", b"bc", b"d"):
            seen.append(len(out_holder[0].sent) if out_holder else -1)
            yield chunk

    out = Out()
    out_holder.append(out)
    Response(make_environ(), out.sent.append, out.logs.append).run(app)
    head = b"Status: 200 OK\r\nContent-Type: text/plain\r\n\r\n"
    assert out.sent == [head + b"a", b"bc", b"d"]
    assert seen == [0, 0, 1, 1, 2]  # nothing before the first non-empty chunk


def test_write_reaches_send_before_it_returns() -> None:
    counts: list[int] = []
    sent: list[bytes] = []

    def app(environ: dict[str, Any], start_response: Any) -> list[bytes]:
        write = start_response("200 OK", TEXT)
        for chunk in (b"one", b"", b"two"):
            write(chunk)
            counts.append(len(sent))
        return [b"three"]

    Response(make_environ(), sent.append, print).run(app)
    assert counts == [1, 1, 2]
    assert sent == [b"Status: 200 OK\r\nContent-Type: text/plain\r\n\r\none", b"two", b"three"]


@settings(max_examples=150, deadline=None)
@given(st.lists(st.binary(max_size=6), max_size=8), st.sampled_from(["GET", "HEAD"]))
def test_headers_go_with_the_first_non_empty_chunk(chunks: list[bytes], method: str) -> None:
    out = respond(gen_app(chunks), method)
    non_empty = [chunk for chunk in chunks if chunk]
    head = b"Status: 200 OK\r\nContent-Type: text/plain\r\n"
    if method == "HEAD":
        length = f"Content-Length: {len(b''.join(chunks))}\r\n".encode() if non_empty else b""
        assert out.sent == [head + length + b"\r\n"]
    elif non_empty:
        assert out.sent == [head + b"\r\n" + non_empty[0], *non_empty[1:]]
    else:
        assert out.sent == [head + b"Content-Length: 0\r\n\r\n"]


@settings(max_examples=150, deadline=None)
@given(st.lists(st.binary(max_size=8), max_size=6), st.integers(0, 30), st.booleans())
def test_declared_content_length_is_never_exceeded(
    chunks: list[bytes], declared: int, as_list: bool
) -> None:
    headers = [*TEXT, ("Content-Length", str(declared))]
    app = list_app(chunks, headers) if as_list else gen_app(chunks, headers)
    out = respond(app)
    _, sent_headers, body = split_response(out.data)
    assert body == b"".join(chunks)[:declared]
    assert [v for n, v in sent_headers if n == "Content-Length"] == [str(declared)]
    overflow = len(b"".join(chunks)) > declared
    assert sum("more than its Content-Length" in line for line in out.logs) == overflow


def test_declared_length_cut_vector() -> None:
    out = respond(list_app([b"ab", b"cd", b"ef"], headers=[*TEXT, ("Content-Length", "3")]))
    assert out.sent == [
        b"Status: 200 OK\r\nContent-Type: text/plain\r\nContent-Length: 3\r\n\r\nab",
        b"c",
    ]


CONTENT = bytes(range(256)) * 40 + b"tail"  # 10244 bytes


@pytest.fixture
def data_file(tmp_path: Any) -> Any:
    path = tmp_path / "data.bin"
    path.write_bytes(CONTENT)
    return path


def file_app(path: Any, seek: int = 0, headers: Any = TEXT, blksize: int = 4096) -> Any:
    opened: list[Any] = []

    def app(environ: dict[str, Any], start_response: Any) -> Any:
        start_response("200 OK", list(headers))
        handle = open(path, "rb")  # noqa: SIM115 - the wrapper closes it
        handle.seek(seek)
        opened.append((handle, handle.fileno()))
        return environ["wsgi.file_wrapper"](handle, blksize)

    app.opened = opened  # type: ignore[attr-defined]
    return app


@pytest.mark.parametrize("seek", [0, 3, len(CONTENT)])
def test_file_wrapper_through_send_file(data_file: Any, seek: int) -> None:
    out = Out()
    app = file_app(data_file, seek)
    Response(make_environ(), out.sent.append, out.logs.append, send_file=out.send_file).run(app)
    handle, fd = app.opened[0]
    rest = CONTENT[seek:]
    head = f"Status: 200 OK\r\nContent-Type: text/plain\r\nContent-Length: {len(rest)}\r\n\r\n"
    if rest:
        assert out.files == [(fd, seek, len(rest))]
        assert out.sent == [head.encode(), rest]
    else:
        assert out.files == [] and out.sent == [head.encode()]
    assert handle.closed
    assert out.logs == []


def test_file_wrapper_respects_declared_length(data_file: Any) -> None:
    out = Out()
    app = file_app(data_file, headers=[*TEXT, ("Content-Length", "10")])
    Response(make_environ(), out.sent.append, out.logs.append, send_file=out.send_file).run(app)
    assert out.data == (
        b"Status: 200 OK\r\nContent-Type: text/plain\r\nContent-Length: 10\r\n\r\n" + CONTENT[:10]
    )
    assert [count for _, _, count in out.files] == [10]


def test_file_wrapper_without_send_file_iterates_blocks(data_file: Any) -> None:
    app = file_app(data_file, blksize=4096)
    out = respond(app)
    assert out.sent[1:] == [CONTENT[4096:8192], CONTENT[8192:]]
    assert out.sent[0].endswith(b"\r\n\r\n" + CONTENT[:4096])
    assert app.opened[0][0].closed
    assert_same_as_validated(file_app(data_file), out)


def test_file_wrapper_head(data_file: Any) -> None:
    out = Out()
    app = file_app(data_file)
    environ = make_environ("HEAD")
    Response(environ, out.sent.append, out.logs.append, send_file=out.send_file).run(app)
    head = f"Status: 200 OK\r\nContent-Type: text/plain\r\nContent-Length: {len(CONTENT)}\r\n\r\n"
    assert out.sent == [head.encode()]
    assert app.opened[0][0].closed


def test_file_wrapper_over_a_non_file() -> None:
    wrapper = FileWrapper(io.BytesIO(b"abcdef"), 4)
    assert wrapper.span() is None
    assert list(wrapper) == [b"abcd", b"ef"]


class _Closing:
    """A body whose close is recorded in ``events``, after its chunks."""

    def __init__(self, events: list[str], fail: bool = False) -> None:
        self.events, self.fail = events, fail

    def __iter__(self) -> Any:
        if self.fail:
            raise RuntimeError("broken")
        yield b"one"
        yield b"two"

    def close(self) -> None:
        self.events.append("close")


@pytest.mark.parametrize("fail", [False, True])
def test_finished_comes_once_the_response_is_sent_and_before_close(fail: bool) -> None:
    events: list[str] = []

    def app(environ: dict[str, Any], start_response: Any) -> Any:
        start_response("200 OK", list(TEXT))
        return _Closing(events, fail)

    def send(data: bytes) -> None:
        events.append("send")

    response = Response(
        make_environ(), send, lambda line: None, finished=lambda: events.append("finished")
    )
    response.run(app)
    if fail:  # a failed response is never "finished": closed, then its 500 went out
        assert events == ["close", "send"]
    else:
        assert events[-2:] == ["finished", "close"] and set(events[:-2]) == {"send"}
