"""Which web servers may connect: FastCGI's ``FCGI_WEB_SERVER_ADDRS``.

Owns parsing the variable and checking an accepted connection's peer against it.
FastCGI 1.0 §3.2: when the variable is set (a comma-separated list of IP addresses),
the application checks the peer of every new connection and closes one that is not in
the list (research shared/research/fastcgi-anchors.md §5 item 2, §9 item 7). Only TCP
peers are checked: a Unix socket has no IP address, and its file permissions are the
access control there (libfcgi's ``OS_Accept`` accepts non-inet peers the same way).
An IPv4 peer on an IPv6 socket (``::ffff:a.b.c.d``) is compared as the IPv4 address.
"""

from __future__ import annotations

import ipaddress

__all__ = ["IPAddress", "parse_peers", "peer_allowed"]

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address


def parse_peers(text: str, name: str = "FCGI_WEB_SERVER_ADDRS") -> frozenset[IPAddress]:
    """The addresses in ``text``, comma-separated (spaces around them are ignored).

    Raises:
        ValueError: an entry is not an IP address, or there is none (an empty list
            would refuse every web server: a typo, not a policy).
    """
    found: set[IPAddress] = set()
    for entry in text.split(","):
        entry = entry.strip()
        if not entry:
            continue
        try:
            found.add(_plain(ipaddress.ip_address(entry)))
        except ValueError:
            raise ValueError(f"{name}: not an IP address: {entry!r}") from None
    if not found:
        raise ValueError(f"{name} is set but lists no address")
    return frozenset(found)


def peer_allowed(addr: object, allowed: frozenset[IPAddress]) -> bool:
    """True if ``addr`` (what ``accept`` returned) is not TCP or its host is ``allowed``."""
    if not (isinstance(addr, tuple) and len(addr) >= 2 and isinstance(addr[0], str)):
        return True  # a Unix socket: not checked (module docstring)
    host = addr[0].partition("%")[0]  # an IPv6 scope (fe80::1%eth0) is not the address
    try:
        return _plain(ipaddress.ip_address(host)) in allowed
    except ValueError:
        return False


def _plain(address: IPAddress) -> IPAddress:
    """An IPv4-mapped IPv6 address as its IPv4 address; any other unchanged."""
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        return address.ipv4_mapped
    return address
