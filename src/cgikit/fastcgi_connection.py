"""The application side of one FastCGI transport connection, sans-IO (Responder role).

Owns what the records on a connection mean (FastCGI 1.0 §3.3, §4, §5, §6.2): which
request is active, which of its input streams are open, the answers to management
records, and the framing of a request's output. Sans-IO in the style of h11: the caller
feeds what the socket gave with ``Connection.receive_data`` (``b""`` when the web
server closed) and pulls events with ``next_event``: ``NEED_DATA``, ``RequestStarted``,
``Params`` (once the PARAMS stream has ended), ``StdinData`` as records arrive (never
accumulated), ``StdinEnded``, ``RequestAborted``, ``RequestRejected`` and, at the end,
``ConnectionClosed``. Output is built by ``send_stdout``, ``send_stderr`` and
``end_request``, which return the bytes to write; replies the connection makes on its
own wait in ``data_to_send``, which the caller empties after every ``next_event``.
``receive_whole`` is a shortcut for an idle connection's usual read, a whole request
in one segment (``fastcgi_whole``): one pass, no events, the same state after it.
No I/O, no clock, no threads; one caller at a time (the object is not thread-safe).
Byte layouts are ``fastcgi_records``'s.

Decisions (research: shared/research/fastcgi-anchors.md §5, §6, §8.3, §9):

- One request at a time (research §1 item 3, §9.2): GET_VALUES answers MPXS_CONNS=0; a
  BEGIN_REQUEST with another id while a request is active gets END_REQUEST
  (CANT_MPX_CONN), the active one untouched; a role other than Responder gets
  END_REQUEST(UNKNOWN_ROLE) (§5.5). Both are ``RequestRejected``, whose
  ``close_connection`` says to close once the reply is written (§5.1: no KEEP_CONN).
- Management records (id 0, §4) are answered here: GET_VALUES with the constructor's
  limits, only for the names asked (flup answered nothing, Go the wrong thing: research
  §6 B1, B9); any other type with UNKNOWN_TYPE (§4.2). A type only applications send
  (END_REQUEST, STDOUT, STDERR, GET_VALUES_RESULT, UNKNOWN_TYPE) is a protocol error.
- Records for ids other than the active request's are ignored (§3.3), as are DATA (the
  Filter's stream) and unknown types: no state is kept for half-open ids (B12).
- A request is active from BEGIN_REQUEST until ``end_request`` (§3.3). ABORT_REQUEST, or
  EOF while it is active (nginx only closes: research §5 P4), is ``RequestAborted``:
  its input is then ignored, its output dropped, and ``end_request`` still writes the
  one END_REQUEST of §5.4 (flup wrote none, Go two: B2, B10). EOF mid-record drops the
  partial record: nobody is left to answer.
- PARAMS are gathered to their empty record, then decoded, so a pair split across
  records reassembles (flup's B6); their total is capped by ``max_params_bytes``. STDIN
  before the end of PARAMS, or data after the end of a stream, is an error; a repeated
  empty record is ignored (yaws sends two, B21). The empty STDIN is not waited for: the
  app may start at ``Params`` (research §5 P5).
- Output before the end of PARAMS is refused (§6.2). An empty write sends nothing: only
  ``end_request`` ends streams, with the empty STDOUT (always, §6.1), the empty STDERR
  (if used), then END_REQUEST, once (research §5 P3: END_REQUEST is nginx's last read).

Memory: after ``next_event`` returns NEED_DATA the connection holds less than one
record of input (``MAX_RECORD``), at most ``max_params_bytes`` of PARAMS, and the
replies not yet taken by ``data_to_send`` (at most 2 bytes per byte received).

Malformed input raises ``FastCGIError`` with the reason; it is the only exception that
input can cause, and it is raised again on every later call: the caller closes.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Final, TypeAlias

from cgikit import fastcgi_records as wire
from cgikit.cgi_output import NEED_DATA, NeedData
from cgikit.fastcgi_records import FastCGIError, Record, RecordReader
from cgikit.fastcgi_whole import WholeRequest, whole_request

__all__ = [
    "NEED_DATA",
    "Connection",
    "ConnectionClosed",
    "Event",
    "FastCGIError",
    "NeedData",
    "Params",
    "RequestAborted",
    "RequestEnd",
    "RequestRejected",
    "RequestStarted",
    "StdinData",
    "StdinEnded",
    "WholeRequest",
]

# Types that only flow from the application to the web server (§8, App. A).
_APP_TYPES: Final = frozenset(
    {wire.END_REQUEST, wire.STDOUT, wire.STDERR, wire.GET_VALUES_RESULT, wire.UNKNOWN_TYPE}
)
_PARAMS, _STDIN, _STDIN_DONE = "params", "stdin", "stdin done"


# Read-only by convention, not frozen (here and below): made per request, and a frozen
# dataclass's __init__ costs three times as much (an object.__setattr__ call a field,
# in the compiled build too).
@dataclass(slots=True)
class RequestStarted:
    """A BEGIN_REQUEST was accepted: ``request_id`` is now the active request (§5.1)."""

    request_id: int
    role: int
    keep_conn: bool


@dataclass(slots=True)
class RequestRejected:
    """A BEGIN_REQUEST was answered with END_REQUEST(``protocol_status``) (§5.5).

    The reply is in ``data_to_send``. ``close_connection``: close once it is written.
    """

    request_id: int
    protocol_status: int
    close_connection: bool


@dataclass(slots=True)
class Params:
    """The whole PARAMS stream of the request, decoded (§5.2); a repeated name's last value.

    ``meta`` has the names and values decoded as latin-1, which is what CGI variables
    and a WSGI environ hold; ``params`` gives them back as the bytes that were sent.
    """

    request_id: int
    meta: dict[str, str]

    @property
    def params(self) -> dict[bytes, bytes]:
        return {k.encode("latin-1"): v.encode("latin-1") for k, v in self.meta.items()}


@dataclass(slots=True)
class StdinData:
    """The content of one STDIN record (never empty)."""

    request_id: int
    data: bytes


@dataclass(slots=True)
class StdinEnded:
    """The empty STDIN record: the request body is complete (§5.3)."""

    request_id: int


@dataclass(slots=True)
class RequestAborted:
    """ABORT_REQUEST (§5.4), or EOF while the request was active; call ``end_request``."""

    request_id: int


@dataclass(slots=True)
class ConnectionClosed:
    """The web server closed the connection, and every earlier record has been handled."""


Event: TypeAlias = (
    RequestStarted
    | RequestRejected
    | Params
    | StdinData
    | StdinEnded
    | RequestAborted
    | ConnectionClosed
    | NeedData
)


@dataclass(slots=True)
class RequestEnd:
    """What ``end_request`` gives: the bytes to write, and whether to close after them."""

    data: bytes
    close_connection: bool


class Connection:
    """One transport connection, application side; see the module docstring."""

    __slots__ = (
        "_aborted",
        "_eof",
        "_error",
        "_keep_conn",
        "_outgoing",
        "_params",
        "_phase",
        "_reader",
        "_request_id",
        "_stderr_sent",
        "_stdout_sent",
        "max_conns",
        "max_params_bytes",
        "max_reqs",
    )

    def __init__(
        self, max_conns: int = 1, max_reqs: int = 1, max_params_bytes: int = 1 << 20
    ) -> None:
        """``max_conns``, ``max_reqs``: what GET_VALUES reports (§4.1)."""
        limits = dict(max_conns=max_conns, max_reqs=max_reqs, max_params_bytes=max_params_bytes)
        for name, value in limits.items():
            if type(value) is not int or value < 1:
                raise ValueError(f"{name} must be a positive int: {value!r}")
        self.max_conns = max_conns
        self.max_reqs = max_reqs
        self.max_params_bytes = max_params_bytes
        self._reader = RecordReader()
        self._eof = False
        self._error: str | None = None
        self._outgoing = bytearray()  # management replies and rejections, not yet taken
        self._end_request()

    def _end_request(self) -> None:
        """No request is active (§3.3)."""
        self._request_id: int | None = None
        self._keep_conn = False
        self._phase = _PARAMS
        self._aborted = False
        self._params = bytearray()  # the PARAMS content so far
        self._stdout_sent = self._stderr_sent = False

    @property
    def active_request(self) -> int | None:
        """The id of the active request, or None."""
        return self._request_id

    @property
    def buffered_bytes(self) -> int:
        """Bytes held: unparsed input, PARAMS so far and replies not yet taken."""
        return self._reader.buffered + len(self._params) + len(self._outgoing)

    # -- input -----------------------------------------------------------------------

    def receive_data(self, data: bytes | bytearray | memoryview) -> None:
        """Feed bytes the web server sent; ``b""`` means it closed the connection (EOF).

        The bytes are copied. After an error they are dropped: the caller closes.

        Raises:
            RuntimeError: bytes after EOF (a bug in the caller, not in the peer).
        """
        if self._eof:
            raise RuntimeError("receive_data() called after EOF (b'')")
        if not data:
            self._eof = True
        elif self._error is None:
            self._reader.feed(data)

    def receive_whole(self, data: bytes) -> WholeRequest | None:
        """Take ``data`` as one whole request (``fastcgi_whole``) if the connection is
        idle and it has exactly that shape: the request is then active, its PARAMS and
        STDIN ended, as if its six events had been pulled. Else None, and nothing is
        taken: feed ``data`` to ``receive_data``."""
        idle = self._request_id is None and not (self._eof or self._error or self._outgoing)
        if not idle or self._reader.buffered:
            return None
        request = whole_request(data, self.max_params_bytes)
        if request is not None:
            self._request_id, self._keep_conn = request.request_id, request.keep_conn
            self._phase = _STDIN_DONE
        return request

    def next_event(self) -> Event:
        """The next event; ConnectionClosed is repeated for ever, NEED_DATA never after EOF.

        Raises:
            FastCGIError: the peer broke the protocol; every later call raises it again.
        """
        if self._error is not None:
            raise FastCGIError(self._error)
        try:
            return self._step()
        except FastCGIError as exc:
            self._error = exc.reason
            self._reader = RecordReader()  # drop what was buffered
            self._params = bytearray()
            raise

    def data_to_send(self) -> bytes:
        """The replies the connection made on its own (GET_VALUES_RESULT, UNKNOWN_TYPE,
        rejecting END_REQUESTs), in order; each is whole. Empties the queue."""
        data = bytes(self._outgoing)
        self._outgoing.clear()
        return data

    def _step(self) -> Event:
        while (record := self._reader.next_record()) is not None:
            event = self._handle(record)
            if event is not None:
                return event
        if not self._eof:
            return NEED_DATA
        if self._request_id is not None and not self._aborted:
            self._abort()  # research §5 P4: a closed connection is how nginx aborts
            return RequestAborted(self._request_id)
        return ConnectionClosed()

    def _handle(self, record: Record) -> Event | None:
        kind, request_id = record.type, record.request_id
        if kind in _APP_TYPES:
            raise FastCGIError(f"{wire.type_name(kind)} record from the web server")
        if request_id == wire.NULL_REQUEST_ID:
            self._management(record)
            return None
        if kind == wire.BEGIN_REQUEST:
            return self._begin(request_id, record.content)
        if request_id != self._request_id or self._aborted:
            return None  # §3.3: records for inactive ids are ignored
        if kind == wire.PARAMS:
            return self._params_record(request_id, record.content)
        if kind == wire.STDIN:
            return self._stdin_record(request_id, record.content)
        if kind == wire.ABORT_REQUEST:
            self._abort()
            return RequestAborted(request_id)
        return None  # DATA (Filter role only) and types we do not know, with an id

    def _abort(self) -> None:
        self._aborted = True
        self._params = bytearray()

    def _management(self, record: Record) -> None:
        """Answer a management record (§4): GET_VALUES, or UNKNOWN_TYPE for the rest."""
        if record.type != wire.GET_VALUES:
            self._outgoing += wire.unknown_type_record(record.type)
            return
        known = {
            wire.MAX_CONNS: str(self.max_conns).encode("ascii"),
            wire.MAX_REQS: str(self.max_reqs).encode("ascii"),
            wire.MPXS_CONNS: b"0",  # research §9.2: one request per connection
        }
        asked = wire.decode_params(record.content)  # §4.1: the values sent are empty, unread
        self._outgoing += wire.get_values_result_record(
            {name: known[name] for name in asked if name in known}
        )

    def _begin(self, request_id: int, content: bytes) -> Event:
        role, flags = wire.decode_begin_request(content)
        keep_conn = bool(flags & wire.KEEP_CONN)
        if self._request_id == request_id:
            raise FastCGIError(f"BEGIN_REQUEST for request {request_id}, which is active")
        if self._request_id is not None:  # §5.5: we do not multiplex
            self._outgoing += wire.end_request_record(request_id, 0, wire.CANT_MPX_CONN)
            return RequestRejected(request_id, wire.CANT_MPX_CONN, close_connection=False)
        if role != wire.RESPONDER:
            self._outgoing += wire.end_request_record(request_id, 0, wire.UNKNOWN_ROLE)
            return RequestRejected(request_id, wire.UNKNOWN_ROLE, close_connection=not keep_conn)
        self._request_id, self._keep_conn = request_id, keep_conn
        return RequestStarted(request_id, role, keep_conn)

    def _params_record(self, request_id: int, content: bytes) -> Params | None:
        if self._phase != _PARAMS:
            if content:
                raise FastCGIError("PARAMS data after the end of the PARAMS stream")
            return None  # a repeated end record (research §6 B21)
        if content:
            limit = self.max_params_bytes
            if len(self._params) + len(content) > limit:
                raise FastCGIError(f"PARAMS larger than {limit} bytes")
            self._params += content
            return None
        meta = wire.decode_meta(self._params)  # §3.3: the stream is its records joined
        self._phase, self._params = _STDIN, bytearray()
        return Params(request_id, meta)

    def _stdin_record(self, request_id: int, content: bytes) -> StdinData | StdinEnded | None:
        if self._phase == _PARAMS:
            raise FastCGIError("STDIN before the end of the PARAMS stream")
        if self._phase == _STDIN_DONE:
            if content:
                raise FastCGIError("STDIN data after the end of the STDIN stream")
            return None  # a repeated end record (yaws#283, research §6 B21)
        if not content:
            self._phase = _STDIN_DONE
            return StdinEnded(request_id)
        return StdinData(request_id, content)

    # -- output ----------------------------------------------------------------------

    def send_stdout(self, request_id: int, data: bytes | bytearray | memoryview) -> bytes:
        """STDOUT records carrying ``data`` (records of at most 65535 bytes, joined).

        ``b""`` gives ``b""``: the stream ends with ``end_request`` only. After
        RequestAborted the output is dropped and ``b""`` comes back (§5.4).

        Raises:
            RuntimeError: ``request_id`` is not active, or its PARAMS have not ended
                (§6.2: no output before then).
        """
        return self._send(wire.STDOUT, request_id, data)

    def send_stderr(self, request_id: int, data: bytes | bytearray | memoryview) -> bytes:
        """STDERR records carrying ``data``; as ``send_stdout``."""
        return self._send(wire.STDERR, request_id, data)

    def _send(self, kind: int, request_id: int, data: bytes | bytearray | memoryview) -> bytes:
        self._check_active(request_id)
        if self._aborted or not data:
            return b""
        if self._phase == _PARAMS:
            raise RuntimeError(f"output for request {request_id} before its PARAMS ended")
        if kind == wire.STDOUT:
            self._stdout_sent = True
        else:
            self._stderr_sent = True
        return wire.encode_stream(kind, request_id, data)

    def _check_active(self, request_id: int) -> None:
        if request_id != self._request_id:
            raise RuntimeError(f"request {request_id} is not active on this connection")

    def end_request(
        self, request_id: int, app_status: int = 0, protocol_status: int = wire.REQUEST_COMPLETE
    ) -> RequestEnd:
        """End the active request: the empty STDOUT (for REQUEST_COMPLETE, or if STDOUT
        was sent), the empty STDERR (if STDERR was sent), then END_REQUEST (§5.5, §6.2).

        The request becomes inactive; its records still to come are ignored.
        ``close_connection`` is true without KEEP_CONN (§5.1) or after EOF.

        Raises:
            RuntimeError: ``request_id`` is not active (ended already, or never began).
            ValueError: a status does not fit its field.
        """
        self._check_active(request_id)
        parts = []
        if protocol_status == wire.REQUEST_COMPLETE or self._stdout_sent:
            parts.append(wire.end_of_stream(wire.STDOUT, request_id))  # §6.1: always sent
        if self._stderr_sent:
            parts.append(wire.end_of_stream(wire.STDERR, request_id))
        parts.append(wire.end_request_record(request_id, app_status, protocol_status))
        close = not self._keep_conn or self._eof
        self._end_request()
        return RequestEnd(b"".join(parts), close)
