"""SERVER_NAME from the Host header field (cgi_meta.server_name_from_host).

RFC 3875 §4.1.14: hostname, IPv4 or "[" IPv6 "]", so brackets are kept (Apache 2.4
does the same); RFC 9112 §3.2: an invalid or repeated Host is a 400.
"""

from __future__ import annotations

import pytest

from cgikit.cgi_meta import UnsafeHeader, server_name_from_host


@pytest.mark.parametrize(
    ("host", "name"),
    [
        ("example.com", "example.com"),
        ("example.com:8080", "example.com"),
        ("EXAMPLE.Com:", "example.com"),
        ("[::1]:8080", "[::1]"),
        ("[::1]", "[::1]"),
        ("[2001:DB8::1]:443", "[2001:db8::1]"),
        ("[::ffff:1.2.3.4]", "[::ffff:1.2.3.4]"),
        ("10.0.0.1:80", "10.0.0.1"),
        ("my_host.local", "my_host.local"),
        ("", "fallback"),
    ],
)
def test_server_name_from_host(host: str, name: str) -> None:
    assert server_name_from_host([host] if host else [], "fallback") == name


INVALID_HOSTS = "ex/ample a@b <script> [::1 [] [::1]x [::1]:8a [v1.x] [fe80::1%25eth0] :80"
INVALID_HOSTS += " example.com:80a example.com:80:81 a\tb"


@pytest.mark.parametrize(
    "hosts", [[host] for host in INVALID_HOSTS.split(" ")] + [["a b"], ["a.com", "b.com"]]
)
def test_invalid_host_is_400(hosts: list[str]) -> None:
    with pytest.raises(UnsafeHeader) as info:
        server_name_from_host(hosts, "fallback")
    assert info.value.status == 400
