"""Whether the client of a running script is still there, without reading from it.

``peek_client`` looks at the client's socket (a descriptor the caller keeps owning)
with one ``MSG_PEEK``: EOF or a reset means the client went away (issue 3 item 4),
bytes mean a pipelined request that is not ours to read. A client that shut down its
write side after its request looks gone here: at the socket its FIN cannot be told
from a close (lighttpd takes it as gone too). The watching is ``cgi_runner``'s.
"""

from __future__ import annotations

import socket
from typing import Literal

__all__ = ["peek_client"]


def peek_client(fd: int | None) -> Literal["gone", "data", "quiet"]:
    """``gone`` (EOF or an error), ``data`` (bytes wait) or ``quiet`` (nothing yet).

    A socket object is put around the caller's descriptor for one peek and detached
    again, so the descriptor is neither read from nor closed. One that is not a socket
    gives ``data``: it is not watched any more.
    """
    if fd is None:
        return "data"
    try:
        sock = socket.socket(fileno=fd)
    except OSError:
        return "data"
    try:
        peeked = sock.recv(1, socket.MSG_PEEK | socket.MSG_DONTWAIT)
    except (BlockingIOError, InterruptedError):
        return "quiet"
    except OSError:  # ECONNRESET, ETIMEDOUT: the connection is gone
        return "gone"
    finally:
        sock.detach()
    return "data" if peeked else "gone"
