"""The sockets of cgikit's FastCGI and SCGI servers: addresses, listening, closing.

``parse_address`` reads the ``host:port``, ``[::1]:port`` and ``unix:/path`` forms of
issue 4's ``--fastcgi``/``--scgi ADDR``; ``listen`` opens the listening socket (TCP with
SO_REUSEADDR, or a Unix socket whose stale file is replaced, never a live one or a
non-socket); ``set_socket_options`` puts the kernel's timeouts on it, which Linux passes
on to the TCP sockets it accepts (a Python socket timeout would poll before every recv
and send); ``recv_at_hand`` reads what has arrived without waiting (MSG_DONTWAIT, one
call); ``close_connection`` ends a web server's connection with a FIN and a short,
bounded drain of unread input, so the response is not destroyed by an RST (research:
shared/research/fastcgi-anchors.md §5 P6). The servers are gateway_server's.
"""

from __future__ import annotations

import os
import socket
import stat
import struct
import sys
import time
from dataclasses import dataclass
from typing import Final

__all__ = [
    "Address",
    "close_connection",
    "listen",
    "parse_address",
    "peer_name",
    "recv_at_hand",
    "set_socket_options",
]

_DRAIN_SECONDS: Final = 0.2  # reading a closed connection's unread input, at most
_DRAIN_BYTES: Final = 1 << 20
_DONTWAIT: Final = getattr(socket, "MSG_DONTWAIT", 0)


@dataclass(frozen=True, slots=True)
class Address:
    """Where to listen: ``path`` for a Unix socket, else ``host`` and ``port``."""

    host: str = ""
    port: int = 0
    path: str | None = None

    def __str__(self) -> str:
        if self.path is not None:
            return f"unix:{self.path}"
        return f"[{self.host}]:{self.port}" if ":" in self.host else f"{self.host}:{self.port}"


def parse_address(text: str) -> Address:
    """``host:port``, ``[ipv6]:port`` or ``unix:/path`` as an Address.

    Raises:
        ValueError: none of those forms (a bare IPv6 address is ambiguous: bracket it).
    """
    if text.startswith("unix:"):
        path = text[len("unix:") :]
        if not path or "\0" in path:
            raise ValueError(f"no socket path in {text!r}")
        return Address(path=path)
    host, colon, port = text.rpartition(":")
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
        if ":" not in host:
            raise ValueError(f"only IPv6 addresses go in brackets: {text!r}")
    elif ":" in host:
        raise ValueError(f"an IPv6 address needs brackets, as in [::1]:9000: {text!r}")
    if not colon or not host or not (port.isascii() and port.isdigit()) or int(port) > 65535:
        raise ValueError(f"not host:port, [ipv6]:port or unix:/path: {text!r}")
    return Address(host=host, port=int(port))


def listen(address: Address, backlog: int = 128) -> socket.socket:
    """A non-blocking listening socket on ``address`` (several threads poll it)."""
    if address.path is not None:
        _remove_stale_socket(address.path)
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        target: str | tuple[str, int] = address.path
    else:
        family = socket.AF_INET6 if ":" in address.host else socket.AF_INET
        sock = socket.socket(family, socket.SOCK_STREAM)
        target = (address.host, address.port)
    try:
        if address.path is None:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind(target)
        sock.listen(backlog)
        # The thread (or process) that loses the race for a connection must get
        # EAGAIN, not block in accept().
        sock.setblocking(False)
    except BaseException:
        sock.close()
        raise
    return sock


def _remove_stale_socket(path: str) -> None:
    """Unlink ``path`` if it is a socket nobody listens on; refuse anything else."""
    try:
        mode = os.lstat(path).st_mode
    except FileNotFoundError:
        return
    if not stat.S_ISSOCK(mode):
        raise FileExistsError(f"{path} exists and is not a socket")
    probe = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        probe.settimeout(1.0)
        probe.connect(path)
    except ConnectionRefusedError:
        os.unlink(path)  # a server died without cleaning up
        return
    finally:
        probe.close()
    raise OSError(f"{path}: another server is listening there")


def set_socket_options(sock: socket.socket, timeout: float) -> bool:
    """Kernel timeouts (and TCP_NODELAY on TCP) on ``sock``; True if a socket accepted
    from it inherits them: Linux copies a TCP listener's options into the sockets it
    accepts, not a Unix one's (those get them per connection, in ``_serve``)."""
    seconds = int(timeout)
    value = struct.pack("ll", seconds, int((timeout - seconds) * 1_000_000))
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVTIMEO, value)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDTIMEO, value)
    tcp = sock.family in (socket.AF_INET, socket.AF_INET6)
    if tcp:  # one write per response, but a streamed one must not wait for an ACK
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    return tcp and sys.platform == "linux"


def recv_at_hand(sock: socket.socket, size: int) -> bytes | None:
    """What has arrived on ``sock`` (b"" at EOF) without waiting; None if nothing has.

    Raises:
        OSError: the connection failed (a reset).
    """
    try:
        return sock.recv(size, _DONTWAIT)
    except BlockingIOError:
        return None


def peer_name(addr: object) -> str:
    if isinstance(addr, tuple) and len(addr) >= 2:
        host, port = addr[0], addr[1]
        return f"[{host}]:{port}" if ":" in str(host) else f"{host}:{port}"
    return "unix"


def close_connection(sock: socket.socket) -> None:
    """FIN, then read (bounded) what the peer still sends, then close (research §5 P6)."""
    try:
        sock.shutdown(socket.SHUT_WR)
        deadline = time.monotonic() + _DRAIN_SECONDS
        drained = 0
        while drained < _DRAIN_BYTES and (left := deadline - time.monotonic()) > 0:
            sock.settimeout(left)
            data = sock.recv(65536)
            if not data:
                break
            drained += len(data)
    except OSError:
        pass
    sock.close()
