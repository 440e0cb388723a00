"""Where a webhook may go (services/consumers/notifier/destination.py): public addresses only, in every
spelling of an address, the connection pinned to the address that was checked; KX_WEBHOOK_ALLOW_PRIVATE=1
lifts the rule. No network: literals, the local resolver's own answers, and a stand-in resolver."""

from __future__ import annotations

import ipaddress

import httpx
import pytest

from services.consumers.notifier import destination
from services.consumers.notifier.destination import Refused, address_problem
from services.settings import ConfigError, Settings


@pytest.mark.parametrize(
    "address, problem",
    [
        ("127.0.0.1", "loopback"),
        ("::1", "loopback"),
        ("0.0.0.0", "unspecified"),
        ("::", "unspecified"),
        ("169.254.169.254", "link-local"),  # the cloud's metadata service
        ("fe80::1", "link-local"),
        ("::ffff:a9fe:a9fe", "link-local"),  # 169.254.169.254, written as IPv6
        ("64:ff9b::7f00:1", "loopback"),  # 127.0.0.1 through NAT64
        ("2002:7f00:1::", "loopback"),  # 127.0.0.1 as 6to4
        ("10.0.0.5", "private"),
        ("172.16.3.4", "private"),
        ("192.168.1.1", "private"),
        ("fd00:ec2::254", "private"),  # ULA (AWS's IPv6 metadata address)
        ("224.0.0.1", "multicast"),
        ("ff02::1", "multicast"),
        ("240.0.0.1", "reserved"),
        ("100.64.0.1", "reserved"),  # shared address space (carrier NAT): not public
        ("192.0.2.1", "private"),  # documentation: ipaddress counts it private
        ("8.8.8.8", None),
        ("2606:4700:4700::1111", None),
    ],
)
def test_only_a_public_address_is_a_webhook_destination(address, problem) -> None:
    assert address_problem(ipaddress.ip_address(address)) == problem


@pytest.mark.parametrize(
    "url, problem",
    [
        ("http://169.254.169.254/latest/meta-data/iam/security-credentials/", "is a link-local"),
        ("http://[fd00:ec2::254]/latest/meta-data/", "is a private"),
        ("http://10.0.0.5:8222/varz", "is a private"),
        ("http://[::ffff:a9fe:a9fe]/", "is a link-local"),
        ("http://2130706433/", "resolves to a loopback"),  # spellings only the resolver reads
        ("http://0x7f000001/", "resolves to a loopback"),
        ("http://127.1/", "resolves to a loopback"),
        ("http://localhost/", "resolves to a loopback"),
    ],
)
async def test_an_internal_address_in_any_spelling_is_refused(url, problem) -> None:
    with pytest.raises(Refused) as refused:
        await destination.destination(httpx.URL(url), allow_private=False)
    assert problem in str(refused.value) and "KX_WEBHOOK_ALLOW_PRIVATE=1" in str(refused.value)
    assert await destination.destination(httpx.URL(url), allow_private=True) == destination.Destination(httpx.URL(url))


async def test_a_name_is_pinned_to_its_checked_address_keeping_host_and_tls_name(monkeypatch) -> None:
    answers = {
        "hooks.example": ["93.184.215.14", "2606:2800:21f:cb07:6820:80da:af6b:8b2c"],
        "mixed.example": ["8.8.8.8", "10.1.2.3"],
    }

    async def resolve(host, port):
        return [ipaddress.ip_address(a) for a in answers[host]]

    monkeypatch.setattr(destination, "resolved", resolve)
    place = await destination.destination(httpx.URL("https://hooks.example:8443/kx?a=1"), allow_private=False)
    assert str(place.url) == "https://93.184.215.14:8443/kx?a=1"  # the first address
    assert place.headers == {"Host": "hooks.example:8443", "Connection": "close"}
    assert place.extensions == {"sni_hostname": "hooks.example"}  # the certificate is checked for the name
    with pytest.raises(Refused, match="mixed.example resolves to a private address"):  # any address refused: all
        await destination.destination(httpx.URL("https://mixed.example/kx"), allow_private=False)


async def test_a_public_literal_is_posted_to_as_written() -> None:
    place = await destination.destination(httpx.URL("https://8.8.8.8/kx"), allow_private=False)
    assert (str(place.url), place.extensions) == ("https://8.8.8.8/kx", {})


def test_private_destinations_are_allowed_only_when_the_deployment_says_so(monkeypatch) -> None:
    monkeypatch.delenv("KX_WEBHOOK_ALLOW_PRIVATE", raising=False)
    assert Settings.from_env().webhook_allow_private is False and Settings().webhook_allow_private is False
    for value, allowed in (("1", True), ("on", True), ("0", False), ("off", False)):
        monkeypatch.setenv("KX_WEBHOOK_ALLOW_PRIVATE", value)
        assert Settings.from_env().webhook_allow_private is allowed
    monkeypatch.setenv("KX_WEBHOOK_ALLOW_PRIVATE", "yes")
    with pytest.raises(ConfigError, match="KX_WEBHOOK_ALLOW_PRIVATE takes 1 or 0, not 'yes'"):
        Settings.from_env()


# ---- proxies: judged by the URL's own host ----------------------------------------------------------
def proxy_env(monkeypatch, **values: str) -> None:
    for name in ("http_proxy", "https_proxy", "all_proxy", "no_proxy"):
        monkeypatch.delenv(name, raising=False)
        monkeypatch.delenv(name.upper(), raising=False)
    for name, value in values.items():
        monkeypatch.setenv(name, value)


@pytest.mark.parametrize(
    "env, url, expected",
    [
        ({}, "https://hooks.example/kx", None),
        ({"HTTPS_PROXY": "http://proxy:3128"}, "https://hooks.example/kx", "http://proxy:3128"),
        ({"HTTPS_PROXY": "http://proxy:3128"}, "http://hooks.example/kx", None),  # no proxy for plain http
        ({"http_proxy": "http://proxy:3128"}, "http://hooks.example/kx", "http://proxy:3128"),
        ({"ALL_PROXY": "http://proxy:3128"}, "https://hooks.example/kx", "http://proxy:3128"),
        # NO_PROXY names the host, a domain it is in, or everything: a direct post
        ({"HTTPS_PROXY": "http://p:1", "NO_PROXY": "hooks.example"}, "https://hooks.example/kx", None),
        ({"HTTPS_PROXY": "http://p:1", "NO_PROXY": "other.test,.example"}, "https://hooks.example/kx", None),
        ({"HTTPS_PROXY": "http://p:1", "NO_PROXY": "example"}, "https://hooks.example/kx", None),
        ({"HTTPS_PROXY": "http://p:1", "NO_PROXY": "*"}, "https://hooks.example/kx", None),
        (
            {"HTTPS_PROXY": "http://p:1", "NO_PROXY": "xhooks.example,hooks.exam"},
            "https://hooks.example/kx",
            "http://p:1",
        ),
    ],
)
def test_the_proxy_is_judged_by_the_urls_own_host(monkeypatch, env, url, expected) -> None:
    proxy_env(monkeypatch, **env)
    assert destination.proxy_for(httpx.URL(url)) == expected


@pytest.mark.parametrize(
    "host, no_proxy, expected",
    [
        ("hooks.example", "HOOKS.Example", True),
        ("hooks.example.", "hooks.example", True),
        ("a.b.hooks.example", " other , .hooks.example ", True),
        ("hooks.example", "hooks.example:8443", True),
        ("nothooks.example", "hooks.example", False),  # a name, not a string suffix
        ("hooks.example", "", False),
        ("::1", "[::1]", True),
        ("2001:db8::1", "2001:db8::2", False),
    ],
)
def test_no_proxy_is_read_as_curl_reads_it(host, no_proxy, expected) -> None:
    assert destination.bypassed(host, no_proxy) is expected


async def test_a_proxied_post_names_its_host_to_the_proxy_after_the_address_check(monkeypatch) -> None:
    proxy_env(monkeypatch, HTTPS_PROXY="http://proxy:3128")

    async def resolve(host, port):
        return [ipaddress.ip_address("93.184.215.14")]

    monkeypatch.setattr(destination, "resolved", resolve)
    place = await destination.destination(httpx.URL("https://hooks.example/kx"), allow_private=False)
    assert (str(place.url), place.proxy, place.headers, place.extensions) == (
        "https://hooks.example/kx",
        "http://proxy:3128",
        {},
        {},
    )

    async def private(host, port):
        return [ipaddress.ip_address("10.1.2.3")]

    monkeypatch.setattr(destination, "resolved", private)
    with pytest.raises(Refused):  # still checked first: a proxy is no way into the private network
        await destination.destination(httpx.URL("https://hooks.example/kx"), allow_private=False)
    proxy_env(monkeypatch, HTTPS_PROXY="http://proxy:3128", NO_PROXY="hooks.example")
    monkeypatch.setattr(destination, "resolved", resolve)
    place = await destination.destination(httpx.URL("https://hooks.example/kx"), allow_private=False)
    assert (str(place.url), place.proxy) == ("https://93.184.215.14/kx", None)  # direct, pinned
