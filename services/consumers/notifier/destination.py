"""Where a webhook may go: a public address, unless the deployment lets it into its own network.

Whoever may configure a channel chooses its sinks' URLs, and every outcome (the status, a refused
connection, a timeout) is recorded in the log they read. Without a rule, a sink is a blind POST and a
port scanner into the service's network: its own loopback, the cloud's metadata address, private
ranges. So before each attempt the host is resolved as the connection would resolve it (an address in
any spelling `ipaddress` or the resolver accepts: `2130706433`, `0x7f000001`, `127.1`, a name), the
post is refused when ANY address it gives is not public, and the connection goes to an address that
was checked (in the resolver's order, the next when one cannot be reached): the URL's host is replaced
by it, while `Host` and the TLS server name (SNI, and the certificate check) stay the name's. A name
that resolves elsewhere by the time of the connect (DNS rebinding) therefore does not take the post
with it. `KX_WEBHOOK_ALLOW_PRIVATE=1` lifts the rule
(internal receivers, tests): the URL is then posted as it is.

Behind an HTTP proxy (`HTTP_PROXY`, `HTTPS_PROXY`, `ALL_PROXY`; `NO_PROXY` by host name or domain,
as curl reads them: `bypassed`), whether a post takes the proxy is judged by the URL's own host, and a
proxied post names that host to the proxy (the address is still checked here first): the proxy
connects, and an HTTPS one tunnels to the name, so TLS checks the name's certificate. Before, the
check's address replaced the host first, so a `NO_PROXY` name never matched and an HTTPS post asked
the proxy for a tunnel to a bare address, whose TLS then checked the certificate against it.
"""

from __future__ import annotations

import asyncio
import ipaddress
import socket
import urllib.request
from dataclasses import dataclass, field

import httpx

Address = ipaddress.IPv4Address | ipaddress.IPv6Address
ALLOW_SETTING = "KX_WEBHOOK_ALLOW_PRIVATE=1"
_NAT64 = ipaddress.IPv6Network("64:ff9b::/96")  # the well-known NAT64 prefix: the last 32 bits are where it goes


class Refused(Exception):
    """The destination is not a public address: nothing is sent, and retrying does not change that."""


@dataclass(frozen=True)
class Destination:
    url: httpx.URL  # what to connect to: the checked address in place of the host name (the URL, proxied)
    headers: dict[str, str] = field(default_factory=dict)  # Host, as the configured URL names it
    extensions: dict[str, str] = field(default_factory=dict)  # sni_hostname: TLS checks the name, not the address
    # every checked address in the resolver's order, `url` first: a client connects to the next when one
    # cannot be reached (an IPv6 address first on a host without an IPv6 route), as any HTTP client does
    urls: tuple[httpx.URL, ...] = ()
    proxy: str | None = None  # the proxy the post goes through (`proxy_for`), None: straight to `url`

    @property
    def candidates(self) -> tuple[httpx.URL, ...]:
        return self.urls or (self.url,)


def address_problem(address: Address) -> str | None:
    """What keeps a webhook from `address` ("loopback", "link-local", …), or None for a public one."""
    if isinstance(address, ipaddress.IPv6Address):
        embedded = address.ipv4_mapped or address.sixtofour  # an IPv4 address written as IPv6 reaches that one
        if embedded is None and address in _NAT64:
            embedded = ipaddress.IPv4Address(int(address) & 0xFFFFFFFF)
        if embedded is not None:
            return address_problem(embedded)
    for name, hit in (
        ("unspecified", address.is_unspecified),
        ("loopback", address.is_loopback),
        ("link-local", address.is_link_local),
        ("multicast", address.is_multicast),
        ("reserved", address.is_reserved),
        ("private", address.is_private),  # RFC 1918, ULA (fc00::/7), and the ranges ipaddress counts with them
    ):
        if hit:
            return name
    # shared (100.64.0.0/10), documentation, benchmarking …: reachable only inside some network
    return None if address.is_global else "reserved"


def literal(host: str) -> Address | None:
    """The host as an IP address when it is written as one in `ipaddress`'s spelling, else None."""
    try:
        return ipaddress.ip_address(host)
    except ValueError:
        return None


async def resolved(host: str, port: int) -> list[Address]:
    """Every address the resolver gives for `host` (a name, or an address in a spelling only it reads),
    in its order of preference. OSError when it gives none (retried like a refused connection)."""
    infos = await asyncio.get_running_loop().getaddrinfo(host, port, type=socket.SOCK_STREAM)
    addresses = [ipaddress.ip_address(str(info[4][0])) for info in infos]
    if not addresses:
        raise OSError(f"{host} resolves to no address")
    return addresses


def proxy_for(url: httpx.URL) -> str | None:
    """The proxy the environment names for `url`, judged by its own host (None: a direct post)."""
    proxies = urllib.request.getproxies_environment()  # (lower-case names first, as curl reads them)
    proxy = proxies.get(url.scheme) or proxies.get("all")
    if not proxy or bypassed(url.host, proxies.get("no", "")):
        return None
    return proxy


def bypassed(host: str, no_proxy: str) -> bool:
    """Whether `NO_PROXY` keeps `host` off the proxy, as curl reads it: `*`, or comma-separated names,
    each matching itself and every name under it (a leading dot and a `:port` ignored)."""
    host = host.lower().rstrip(".")
    for entry in no_proxy.lower().split(","):
        entry = entry.strip()
        if entry == "*":
            return True
        if entry.count(":") == 1:  # name:port (an IPv6 address has more colons)
            entry = entry.partition(":")[0]
        name = entry.strip("[]").strip(".")
        if name and (host == name or host.endswith("." + name)):
            return True
    return False


async def destination(url: httpx.URL, allow_private: bool) -> Destination:
    """Where to post `url`: its checked public address (Refused: not one), or the URL itself when the
    deployment allows private addresses, or when it goes through a proxy (after the check)."""
    proxy = proxy_for(url)
    if allow_private:
        return Destination(url, proxy=proxy)
    host = url.raw_host.decode("ascii")
    written = literal(host)
    addresses = (
        [written] if written is not None else await resolved(host, url.port or (443 if url.scheme == "https" else 80))
    )
    for address in addresses:
        problem = address_problem(address)
        if problem is not None:
            how = "is" if written is not None else "resolves to"
            raise Refused(
                f"refused: {host} {how} a {problem} address; webhooks go to public addresses only "
                f"({ALLOW_SETTING} allows internal receivers)"
            )
    if proxy is not None:  # the proxy connects; it is told the name (see above)
        return Destination(url, proxy=proxy)
    # the connection goes to the checked address, and to nothing else: no connection is kept for another
    # post (the pool knows it by address alone, and another name on the same address needs its own TLS)
    headers = {"Host": url.netloc.decode("ascii"), "Connection": "close"}
    sni = {"sni_hostname": host} if url.scheme == "https" and written is None else {}
    urls = tuple(url.copy_with(host=str(a)) for a in dict.fromkeys(addresses))  # each once, in order
    return Destination(urls[0], headers, sni, urls)
