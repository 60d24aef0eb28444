"""The metrics listener's address as fleet.yaml writes it: `host:port`, `[v6]:port`, `:port` or a bare port."""

from __future__ import annotations

import ipaddress

LOOPBACK = "127.0.0.1"


def parse_listen(text: str) -> tuple[str, int]:
    """(host, port), the host always written out (a missing host or `localhost` is 127.0.0.1, so the address
    never depends on name resolution); raises ValueError saying what is wrong."""
    host, sep, port_text = text.rpartition(":")
    if not sep:
        host, port_text = "", text
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
        try:
            ipaddress.IPv6Address(host)
        except ValueError:
            raise ValueError(f"'{host}' is not an IPv6 address") from None
    elif host in ("", "localhost"):
        host = LOOPBACK
    else:
        try:
            ipaddress.IPv4Address(host)
        except ValueError:
            raise ValueError(f"'{host}' is not an IPv4 address") from None
    if not port_text.isdigit() or int(port_text) > 65535:
        raise ValueError(f"port '{port_text}' is not a number from 0 to 65535")
    return host, int(port_text)


def format_listen(host: str, port: int) -> str:
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def is_loopback(host: str) -> bool:
    return ipaddress.ip_address(host).is_loopback
