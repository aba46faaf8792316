"""Input images given as URLs: fetched by the gateway under the webhook SSRF rules.

On a request's way: before ``GatewayService._inputs`` checks an ``image`` / ``mask_image``
that is an ``https://`` URL (or ``http://`` to a host in ``server.inputs.allowed_http_hosts``),
``UrlFetcher.fetch`` gets its bytes on the event loop (no intake thread waits on the network).
Each hop is checked as a webhook URL is (``webhooks/urls.py``: scheme, no user info, a public
address unless the operator allows the host, the host lookup on its own bounded pool); the
connection goes to the address that was checked (no second lookup), redirects are followed by
hand with the same check on every hop (at most ``max_redirects``), the body is capped at the
server's body limit, and the whole fetch has one deadline. The bytes then go through the same
checks as any input (``inputs.py``) and are stored under the tenant by their content hash
(``inputs.fetched_input``), so a repeat fetch of the same image is stored once. Errors are
``InputError`` naming the field, the rule and the limit. LoRA adapter sources given as URLs
(``adapter_sources.py``) go through the same checks with ``fetch_to``: the body streamed into a
file, its own cap (``FetchCap``: 413 past ``server.inputs.adapter_max_bytes``) and deadline
(``FetchLimit``), and validators for a conditional GET. No Ray imports.
"""

from __future__ import annotations

import asyncio
import socket
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any
from urllib.parse import urljoin

import httpx

from genmedia.deployments.intake.inputs import InputError
from genmedia.deployments.webhooks.urls import (
    CheckedUrl,
    Resolver,
    WebhookUrlError,
    check_url_async,
)
from genmedia.models.server_config import InputSettings

USER_AGENT = "genmedia-inputs/1"
REDIRECTS = frozenset({301, 302, 303, 307, 308})


def is_fetch_url(value: str) -> bool:
    """An input the gateway fetches: an http(s) URL that is not one of this service's own
    ``/v1/files/`` paths (those are read from storage, ``inputs.load_input``)."""
    head = value.strip()[:8].lower()
    return head.startswith(("https://", "http://")) and "/v1/files/" not in value


@dataclass(frozen=True)
class FetchCap:
    """The most bytes one fetch may read, the setting that says so, and the status past it."""

    max_bytes: int
    setting: str  # e.g. ``server.max_body_bytes``, named in the error
    status: int = 422

    def error(self, field: str) -> InputError:
        return InputError(
            field,
            f"the URL's body is larger than the limit of {self.max_bytes} bytes ({self.setting})",
            self.max_bytes,
            self.status,
        )


@dataclass(frozen=True)
class Fetched:
    """What a streamed fetch got: 200 (``size`` bytes went to the sink) or 304 (not modified
    since the validators sent), with the validators to send next time."""

    status: int
    size: int
    etag: str | None = None
    last_modified: str | None = None


@dataclass(frozen=True)
class FetchLimit:
    """The deadline of one whole fetch (lookups, connects, redirects, body) and its setting."""

    seconds: float
    setting: str


def _input_words(message: str) -> str:
    """The webhook check's sentence, worded for an input URL."""
    return (
        message.replace("webhook URL", "URL")
        .replace("webhook host", "host")
        .replace("allowed_hosts", "server.inputs.allowed_http_hosts")
    )


class UrlFetcher:
    """Fetches input URLs for one gateway replica (see the module docstring)."""

    def __init__(
        self,
        settings: InputSettings,
        max_bytes: int,
        resolve: Resolver = socket.getaddrinfo,
        transport: httpx.AsyncBaseTransport | None = None,
    ) -> None:
        self.settings = settings
        self.policy = settings.url_policy()
        self.max_bytes = max_bytes
        self.resolve = resolve
        self.client = httpx.AsyncClient(
            follow_redirects=False,
            trust_env=False,
            timeout=settings.fetch_timeout_s,
            transport=transport,
            headers={"User-Agent": USER_AGENT, "Accept": "image/*"},
        )

    async def fetch(self, url: str, field: str) -> bytes:
        """The body of ``url`` (redirects followed, each hop checked); InputError otherwise."""
        body = bytearray()
        cap = FetchCap(self.max_bytes, "server.max_body_bytes", 422)
        limit = FetchLimit(self.settings.fetch_timeout_s, "server.inputs.fetch_timeout_s")
        await self.fetch_to(url, field, body.extend, cap, limit, {"Accept": "image/*"})
        return bytes(body)

    async def fetch_to(
        self,
        url: str,
        field: str,
        sink: Callable[[bytes], object],
        cap: FetchCap,
        deadline: FetchLimit,
        headers: dict[str, str] | None = None,
    ) -> Fetched:
        """Stream the body of ``url`` into ``sink`` within ``cap`` and ``deadline``
        (redirects followed, each hop checked); InputError otherwise. ``headers`` may carry
        ``If-None-Match`` / ``If-Modified-Since``: a 304 answer then sends nothing to ``sink``."""
        limit = deadline.seconds
        sent = {"Accept": "*/*", **(headers or {})}
        try:
            async with asyncio.timeout(limit):
                return await self._follow(url.strip(), field, sink, cap, sent)
        except TimeoutError:
            raise InputError(
                field,
                f"fetching the URL took longer than {limit:g}s ({deadline.setting})",
                limit,
            ) from None
        except httpx.HTTPError as e:
            raise InputError(field, f"the URL could not be fetched: {type(e).__name__}") from None

    async def _follow(
        self,
        url: str,
        field: str,
        sink: Callable[[bytes], object],
        cap: FetchCap,
        headers: dict[str, str],
    ) -> Fetched:
        hops = self.settings.max_redirects
        conditional = any(k.lower().startswith("if-") for k in headers)
        for _ in range(hops + 1):
            target = await self._check(url, field)
            location, got = await self._get(target, field, sink, cap, headers)
            if got.status in REDIRECTS:
                if not location:
                    raise InputError(
                        field, f"the URL answered HTTP {got.status} without a Location"
                    )
                url = urljoin(url, location)
                continue
            if got.status == 304 and conditional:
                return got
            if got.status != 200:
                raise InputError(field, f"the URL answered HTTP {got.status}, not 200")
            return got
        raise InputError(field, f"the URL redirected more than {hops} times", hops)

    async def _check(self, url: str, field: str) -> CheckedUrl:
        try:
            target = await check_url_async(url, self.policy, self.resolve)
        except WebhookUrlError as e:
            raise InputError(
                field, f"URL refused: {_input_words(e.message)} (rule: {e.rule})", e.rule
            ) from None
        if target.url.scheme == "http" and not self._http_allowed(target):
            raise InputError(
                field,
                f"URL refused: plain http:// is accepted only for hosts the operator lists in "
                f"server.inputs.allowed_http_hosts, not {target.host!r}; use https:// "
                "(rule: scheme)",
                "scheme",
            )
        return target

    def _http_allowed(self, target: CheckedUrl) -> bool:
        if target.host in self.policy.allowed_hosts:
            return True
        nets = self.policy.allowed_networks()
        return all(
            any(ip.version == n.version and ip in n for n in nets) for ip in target.addresses
        )

    async def _get(
        self,
        target: CheckedUrl,
        field: str,
        sink: Callable[[bytes], object],
        cap: FetchCap,
        extra: dict[str, str],
    ) -> tuple[str | None, Fetched]:
        """One GET to the checked address: (Location, what came: a 200's body sent to
        ``sink`` within the cap)."""
        pinned = target.url.copy_with(host=str(target.addresses[0]))
        extensions: dict[str, Any] = {}
        if target.url.scheme == "https" and not target.host_is_ip:
            extensions["sni_hostname"] = target.host  # TLS checks the name, TCP the address
        headers = {**extra, "Host": target.url.netloc.decode("ascii")}
        async with self.client.stream(
            "GET", pinned, headers=headers, extensions=extensions
        ) as response:
            status = response.status_code
            etag, modified = response.headers.get("etag"), response.headers.get("last-modified")
            if status != 200:
                return response.headers.get("location"), Fetched(status, 0, etag, modified)
            declared = response.headers.get("content-length", "")
            if declared.isdigit() and int(declared) > cap.max_bytes:
                raise cap.error(field)
            size = 0
            async for chunk in response.aiter_bytes():
                size += len(chunk)
                if size > cap.max_bytes:
                    raise cap.error(field)
                sink(chunk)
            return None, Fetched(status, size, etag, modified)

    async def aclose(self) -> None:
        await self.client.aclose()
