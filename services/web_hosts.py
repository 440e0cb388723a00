"""Which Host names a local HTTP endpoint answers to (the dashboard's pages, `/metrics`). Pure.

Bound to a loopback address, an endpoint is meant for this machine: a page of another site can
still make a browser send it requests under a name the attacker's DNS points at 127.0.0.1 (DNS
rebinding), and read the answers as same-origin. The browser then names the attacker's host in
`Host`, so answering only the loopback names, the bound address itself and a declared public
origin's host closes that; a deliberate non-loopback bind answers any Host (a proxy or a scraper
names the machine as it knows it).
"""

from __future__ import annotations

import ipaddress
from urllib.parse import urlsplit

LOOPBACK_HOSTS = frozenset({"localhost", "127.0.0.1", "::1", "[::1]"})


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def host_name(host: str) -> str:
    """A host as a Host header names it, without port: IPv6 in brackets, lower case."""
    host = host.strip("[]").lower()
    return f"[{host}]" if ":" in host else host


def host_only(host: str) -> str:
    """A Host header's value without its port."""
    if host.startswith("["):
        return host[: host.find("]") + 1]
    return host.rsplit(":", 1)[0] if host.count(":") == 1 else host


def allowed_hosts(host: str, origin: str | None = None) -> frozenset[str] | None:
    """The Host names an endpoint bound to `host` answers to: with a loopback bind, the loopback names,
    the bound address itself (127.0.0.2 too) and the public origin's host (a proxy that passes its Host
    on); None (any) for a deliberate non-loopback bind."""
    if not is_loopback(host):
        return None
    extra = {host_name(host)}
    if origin is not None:
        extra.add(host_name(urlsplit(origin).hostname or ""))
    return LOOPBACK_HOSTS | extra


def answers(allowed: frozenset[str] | None, host_header: str | None) -> bool:
    """Whether a request naming `host_header` is answered (no Host at all: HTTP/1.0, only with no check)."""
    return allowed is None or (host_header is not None and host_only(host_header).lower() in allowed)
