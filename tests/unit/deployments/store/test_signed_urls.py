"""Signed, expiring output URLs of local storage (``store/storage.py``) and ``GET /v1/files``
with them: no API key needed, a tampered or expired signature answers 403 naming why; and the
status API's ``?logs=1``."""

from __future__ import annotations

import os
import stat
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

import pytest
from fastapi.testclient import TestClient

from genmedia.deployments.protocol import JobStatus, JobStatusView, LogLine, PriorityClass
from genmedia.deployments.store.storage import (
    URL_SECRET_ENV,
    URL_SECRET_FILE,
    LocalDirStorage,
    SignatureError,
    UrlSigner,
    load_url_secret,
)
from tests.unit.deployments.api.test_api import make_client
from tests.unit.deployments.fakes import FakeScheduler

SECRET = b"s" * 64


class Clock:
    def __init__(self, now: float = 1_700_000_000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


def test_a_signature_covers_the_path_and_the_expiry() -> None:
    clock = Clock()
    signer = UrlSigner(SECRET, 600, clock)
    q = parse_qs(signer.query("dev/a/0.png"))
    expires, sig = q["expires"][0], q["sig"][0]
    assert int(expires) == int(clock.now) + 600 and len(sig) == 64
    signer.verify("dev/a/0.png", expires, sig)
    for key, exp, s, reason in [
        ("dev/a/1.png", expires, sig, "bad_signature"),  # another path
        ("dev/a/0.png", str(int(expires) + 1), sig, "bad_signature"),  # a later expiry
        ("dev/a/0.png", expires, sig[:-1] + ("0" if sig[-1] != "0" else "1"), "bad_signature"),
        ("dev/a/0.png", expires, None, "malformed"),
        ("dev/a/0.png", "soon", sig, "malformed"),
    ]:
        with pytest.raises(SignatureError) as e:
            signer.verify(key, exp, s)
        assert e.value.reason == reason
    clock.now += 601
    with pytest.raises(SignatureError) as e:
        signer.verify("dev/a/0.png", expires, sig)
    assert e.value.reason == "expired"
    assert UrlSigner(b"t" * 64, 600, clock).query("k") != signer.query("k")  # another secret


def test_the_secret_is_read_on_first_use_only() -> None:
    calls: list[int] = []

    def load() -> bytes:
        calls.append(1)
        return SECRET

    signer = UrlSigner(load, 60)
    assert calls == []  # a worker that never signs never reads it
    q = parse_qs(signer.query("k"))
    signer.verify("k", q["expires"][0], q["sig"][0])
    assert calls == [1]


def test_the_secret_is_made_once_with_mode_0600(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv(URL_SECRET_ENV, raising=False)
    first = load_url_secret(tmp_path)
    assert load_url_secret(tmp_path) == first and len(first) >= 32
    mode = stat.S_IMODE(os.stat(tmp_path / URL_SECRET_FILE).st_mode)
    assert mode == 0o600
    assert [p.name for p in tmp_path.iterdir()] == [URL_SECRET_FILE]  # no temp file left
    monkeypatch.setenv(URL_SECRET_ENV, "e" * 40)
    assert load_url_secret(tmp_path) == b"e" * 40
    monkeypatch.setenv(URL_SECRET_ENV, "short")
    with pytest.raises(ValueError, match="at least 32"):
        load_url_secret(tmp_path)


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
def storage(tmp_path: Path, clock: Clock) -> LocalDirStorage:
    return LocalDirStorage(tmp_path, UrlSigner(SECRET, 3600, clock))


@pytest.fixture
def scheduler(storage: LocalDirStorage) -> FakeScheduler:
    return FakeScheduler(storage)


@pytest.fixture
def client(scheduler: FakeScheduler, storage: LocalDirStorage) -> TestClient:
    return make_client(scheduler, storage)


def _output_url(client: TestClient) -> str:
    r = client.post("/v1/models/sd15-tiny/generate", json={"prompt": "a fox"})
    assert r.status_code == 200, r.text
    url: str = r.json()["images"][0]["url"]
    assert "?expires=" in url and "&sig=" in url
    return url


def _bare(client: TestClient) -> TestClient:
    return TestClient(client.app)  # no Authorization header


def test_a_signed_url_works_without_the_key(client: TestClient) -> None:
    url = _output_url(client)
    r = _bare(client).get(url)
    assert r.status_code == 200 and r.content.startswith(b"\x89PNG")
    assert r.headers["content-type"] == "image/png"
    assert _bare(client).get(url.split("?", 1)[0]).status_code == 401  # unsigned needs the key


def test_a_tampered_or_expired_url_is_403(client: TestClient, clock: Clock) -> None:
    url = _output_url(client)
    path, query = url.split("?", 1)
    q = parse_qs(query)
    bare = _bare(client)
    forged = f"{path}?expires={int(q['expires'][0]) + 9999}&sig={q['sig'][0]}"
    other = path.rsplit("/", 1)[0] + "/0.json?" + query  # the sidecar, same signature
    for bad in (forged, other, f"{path}?expires={q['expires'][0]}&sig=abc", f"{path}?sig=x"):
        r = bare.get(bad)
        assert r.status_code == 403, (bad, r.text)
        assert r.json()["error"]["type"] == "invalid_signature"
    clock.now += 3601
    r = bare.get(url)
    assert r.status_code == 403 and "expired" in r.json()["error"]["message"]


def test_unsigned_storage_refuses_signatures(tmp_path: Path) -> None:
    storage = LocalDirStorage(tmp_path)
    client = make_client(FakeScheduler(storage), storage)
    url = client.post("/v1/models/sd15-tiny/generate", json={"prompt": "x"}).json()
    path = urlsplit(url["images"][0]["url"]).path
    assert _bare(client).get(path + "?expires=1&sig=00").status_code == 403
    assert client.get(path).status_code == 200


def test_status_logs_only_when_asked(client: TestClient, scheduler: FakeScheduler) -> None:
    scheduler.jobs["r1"] = JobStatusView(
        request_id="r1",
        model="sd15-tiny",
        status=JobStatus.IN_PROGRESS,
        priority=PriorityClass.INTERACTIVE,
        submitted_at=1.0,
        tenant="dev",
        logs=[LogLine(1.5, "queued behind 0 jobs"), LogLine(2.0, "started")],
    )
    plain: dict[str, Any] = client.get("/v1/queue/requests/r1/status").json()
    assert "logs" not in plain
    body = client.get("/v1/queue/requests/r1/status?logs=1").json()
    assert body["logs"] == [
        {"t": 1.5, "message": "queued behind 0 jobs"},
        {"t": 2.0, "message": "started"},
    ]
    r = client.get("/v1/queue/requests/r1/stream?logs=1")
    assert '"logs": [{"t": 1.5' in r.text
