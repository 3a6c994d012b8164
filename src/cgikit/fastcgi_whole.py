"""A FastCGI request that came whole in one read, recognised in one pass, sans-IO.

Why: nginx writes a request without a body (and a small one with it) in one segment:
BEGIN_REQUEST, the PARAMS records and their empty end, the STDIN records and their
empty end. The bridge reads it in one ``recv``. Parsed record by record through
``fastcgi_connection.Connection``, that is six events, an object each, for what one
loop over the headers can take (issue 4: the bridge's cost per request against
fcgiwrap's).

``whole_request`` takes exactly that shape and nothing else: a Responder BEGIN_REQUEST
(FastCGI 1.0 §5.1) with a non-zero id, then only records of that id, PARAMS to their
empty record (§5.2), then STDIN to its empty record (§5.3), and no byte after it.
Anything else gives None and goes through ``Connection`` as before, which owns every
other case and every error: management records, other ids, ABORT_REQUEST, a repeated
end record (yaws), STDIN before the end of PARAMS, a bad version, a BEGIN_REQUEST body
that is not 8 bytes, params that do not decode or pass ``max_params`` bytes, a record
cut short, a second request behind the first. So nothing is accepted here that
``Connection`` would refuse, and what is accepted means what it would mean there
(tests/protocol/test_fastcgi_whole.py compares the two on the same bytes).
"""

from __future__ import annotations

import struct
from dataclasses import dataclass
from typing import Final

from cgikit import fastcgi_records as wire

__all__ = ["WholeRequest", "whole_request"]

_HEADER: Final[struct.Struct] = wire.HEADER_STRUCT
_BEGIN: Final[struct.Struct] = wire.BEGIN_STRUCT


# Read-only by convention, not frozen: made per request (fastcgi_connection's reason).
@dataclass(slots=True)
class WholeRequest:
    """One request's records, all received: its id, its KEEP_CONN flag (§5.1), its
    PARAMS decoded as latin-1 (``wire.decode_meta``) and its STDIN joined."""

    request_id: int
    keep_conn: bool
    meta: dict[str, str]
    stdin: bytes


def whole_request(data: bytes, max_params: int) -> WholeRequest | None:
    """The request ``data`` holds when it is one whole request of the usual shape (the
    module docstring); else None, and ``data`` is for ``Connection`` to read."""
    end = len(data)
    if end < 2 * wire.HEADER_LEN:
        return None
    version, kind, request_id, length, padding = _HEADER.unpack_from(data, 0)
    if version != wire.VERSION_1 or kind != wire.BEGIN_REQUEST or length != _BEGIN.size:
        return None
    role, flags = _BEGIN.unpack_from(data, wire.HEADER_LEN)
    if role != wire.RESPONDER or request_id == wire.NULL_REQUEST_ID:
        return None
    streams: tuple[list[bytes], list[bytes]] = ([], [])  # PARAMS, then STDIN
    phase, pos = wire.PARAMS, wire.HEADER_LEN + length + padding
    while pos + wire.HEADER_LEN <= end:
        version, kind, record_id, length, padding = _HEADER.unpack_from(data, pos)
        start = pos + wire.HEADER_LEN
        pos = start + length + padding
        if version != wire.VERSION_1 or record_id != request_id or kind != phase or pos > end:
            return None
        if length:
            streams[phase == wire.STDIN].append(data[start : start + length])
        elif phase == wire.PARAMS:
            phase = wire.STDIN
        elif pos == end:
            return _decoded(request_id, bool(flags & wire.KEEP_CONN), streams, max_params)
        else:
            return None  # more after the request: Connection takes it record by record
    return None


def _decoded(
    request_id: int, keep_conn: bool, streams: tuple[list[bytes], list[bytes]], max_params: int
) -> WholeRequest | None:
    params = b"".join(streams[0])
    if len(params) > max_params:
        return None
    try:
        meta = wire.decode_meta(params)
    except wire.FastCGIError:
        return None
    return WholeRequest(request_id, keep_conn, meta, b"".join(streams[1]))
