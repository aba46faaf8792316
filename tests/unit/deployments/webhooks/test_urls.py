"""Webhook URL policy (fake resolver, no DNS): every rule, the exceptions an operator allows."""

from __future__ import annotations

import pytest
from pydantic import ValidationError

from genmedia.deployments.webhooks.urls import WebhookUrlError, validate_webhook_url
from genmedia.models.server_config import WebhookPolicy
from tests.unit.deployments.webhooks.fakes import DNS, fake_resolver

STRICT = WebhookPolicy()


def rule_of(url: str, policy: WebhookPolicy = STRICT, resolve=DNS) -> str | None:
    try:
        validate_webhook_url(url, policy, resolve=resolve)
    except WebhookUrlError as e:
        assert e.rule in str(e) and e.message
        return e.rule
    return None


# -- URL policy --------------------------------------------------------------------------------
@pytest.mark.parametrize(
    "url",
    [
        "https://hooks.example.com/genmedia?token=abc",
        "http://hooks.example.com:8080/x",
        "https://93.184.216.34/hook",
        "https://[2606:4700::1111]/hook",
        "http://172.32.0.1/",  # just outside 172.16/12
    ],
)
def test_public_urls_pass(url):
    assert rule_of(url) is None


@pytest.mark.parametrize(
    ("url", "rule"),
    [
        ("ftp://hooks.example.com/x", "scheme"),
        ("file:///etc/passwd", "scheme"),
        ("javascript:alert(1)", "scheme"),
        ("hooks.example.com/x", "scheme"),
        ("https://user:pw@hooks.example.com/", "userinfo"),
        ("https://token@hooks.example.com/", "userinfo"),
        ("http:///path", "host"),
        ("http://hooks.example.com:99999/", "port"),
        ("http://hooks.example .com/", "url"),
        ("http://hooks.example.com/" + "a" * 3000, "url"),
        ("", "url"),
        ("http://nxdomain.example.com/", "resolve"),
        # loopback
        ("http://127.0.0.1:8000/", "public_address"),
        ("http://127.1.2.3/", "public_address"),
        ("http://localhost:8000/", "public_address"),
        ("http://[::1]:8000/", "public_address"),
        ("http://[::ffff:127.0.0.1]/", "public_address"),
        # private ranges
        ("http://10.1.2.3/", "public_address"),
        ("http://172.16.5.4/", "public_address"),
        ("http://172.31.255.255/", "public_address"),
        ("http://192.168.1.1/", "public_address"),
        ("https://internal.example.com/", "public_address"),  # DNS name -> private address
        ("https://mixed.example.com/", "public_address"),  # one bad address is enough
        ("https://v6local.example.com/", "public_address"),  # fc00::/7
        ("http://[fd00:ec2::254]/", "public_address"),
        # link-local, cloud metadata
        ("http://169.254.169.254/latest/meta-data/", "public_address"),
        ("http://169.254.10.1/", "public_address"),
        ("http://meta.example.com/", "public_address"),
        ("http://[fe80::1]/", "public_address"),
        # the rest of the non-public space
        ("http://0.0.0.0:8000/", "public_address"),
        ("http://[::]/", "public_address"),
        ("http://224.0.0.1/", "public_address"),
        ("http://[ff02::1]/", "public_address"),
        ("http://240.0.0.1/", "public_address"),
        ("http://255.255.255.255/", "public_address"),
        ("http://100.64.0.1/", "public_address"),  # carrier-grade NAT
        ("http://[2002:7f00:1::]/", "public_address"),  # 6to4 wrapping 127.0.0.1
    ],
)
def test_rules(url, rule):
    assert rule_of(url) == rule


def test_messages_name_the_address_and_kind():
    with pytest.raises(WebhookUrlError) as e:
        validate_webhook_url("http://meta.example.com/", STRICT, resolve=DNS)
    assert "169.254.169.254" in e.value.message and "metadata" in e.value.message
    with pytest.raises(WebhookUrlError) as e:
        validate_webhook_url("http://[::1]/", STRICT, resolve=DNS)
    assert "loopback" in e.value.message
    with pytest.raises(WebhookUrlError) as e:
        validate_webhook_url("https://internal.example.com/", STRICT, resolve=DNS)
    assert "10.0.0.5" in e.value.message and "private" in e.value.message
    assert isinstance(e.value, ValueError)  # a pydantic validator may raise it as is


def test_ip_literals_never_resolve():
    calls: list = []
    resolve = fake_resolver({}, calls)
    assert rule_of("http://93.184.216.34/", resolve=resolve) is None
    assert rule_of("http://[::1]/", resolve=resolve) == "public_address"
    assert calls == []


def test_allowed_hosts_exceptions():
    by_name = WebhookPolicy(allowed_hosts=["Internal.Example.com."])
    assert rule_of("https://internal.example.com/", by_name) is None
    assert rule_of("https://meta.example.com/", by_name) == "public_address"
    by_cidr = WebhookPolicy(allowed_hosts=["10.0.0.0/8", "127.0.0.1", "fd12:3456::/32"])
    assert rule_of("https://internal.example.com/", by_cidr) is None
    assert rule_of("http://127.0.0.1:9000/", by_cidr) is None
    assert rule_of("https://v6local.example.com/", by_cidr) is None
    assert rule_of("http://127.0.0.2/", by_cidr) == "public_address"
    assert rule_of("http://localhost/", by_cidr) == "public_address"  # ::1 is not listed
    assert rule_of("http://192.168.1.1/", by_cidr) == "public_address"
    assert rule_of("ftp://127.0.0.1/", by_cidr) == "scheme"  # the other rules still hold


def test_allow_private():
    dev = WebhookPolicy(allow_private=True)
    for url in ("http://localhost:8000/", "http://10.1.2.3/", "http://[::1]/", "http://[fe80::1]/"):
        assert rule_of(url, dev) is None, url
    assert rule_of("gopher://localhost/", dev) == "scheme"
    assert rule_of("http://a:b@localhost/", dev) == "userinfo"


def test_policy_validation():
    with pytest.raises(ValidationError, match="neither a host name"):
        WebhookPolicy(allowed_hosts=["not a host!"])
    with pytest.raises(ValidationError, match="backoff_max_s"):
        WebhookPolicy(backoff_base_s=10, backoff_max_s=1)
    with pytest.raises(ValidationError):
        WebhookPolicy(unknown=True)
    for name, f in WebhookPolicy.model_fields.items():
        assert f.description, name
