"""Address allow lists: settings name addresses and networks as text; requests are checked against them."""

from __future__ import annotations

import ipaddress
from functools import lru_cache

Network = ipaddress.IPv4Network | ipaddress.IPv6Network


@lru_cache(maxsize=16)
def networks(spec: str) -> tuple[Network, ...]:
    """Comma-separated addresses or networks (`127.0.0.0/8, ::1`); ValueError names a bad entry."""
    out: list[Network] = []
    for part in spec.split(","):
        entry = part.strip()
        if not entry:
            continue
        try:
            out.append(ipaddress.ip_network(entry, strict=False))
        except ValueError:
            raise ValueError(f"{entry!r} is not an IP address or network") from None
    return tuple(out)


def address_in(address: str, allowed: tuple[Network, ...]) -> bool:
    """Whether `address` (as `server.kernel.net.client_ip` gives it) is in one of `allowed`;
    False when it does not parse."""
    try:
        ip = ipaddress.ip_address(address)
    except ValueError:
        return False
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        ip = ip.ipv4_mapped  # a dual-stack socket shows IPv4 clients as ::ffff:a.b.c.d
    return any(ip in net for net in allowed)
