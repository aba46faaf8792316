"""``genmedia run``: submit, progress from the stream, outputs saved, clear errors."""

from __future__ import annotations

import json

import httpx
from typer.testing import CliRunner

from genmedia.client import Client
from genmedia.client import cli as client_cli
from genmedia.deployments.cli.main import app
from tests.unit.client.fakes import PNG, FakeGateway, error, result_body, sse, status_body

SUBMIT = "/v1/queue/models/sd15-tiny"


def gateway() -> FakeGateway:
    body = sse(
        ("status", status_body("r1", "IN_QUEUE", queue_position=0, eta_s=0.5)),
        ("status", status_body("r1", "IN_PROGRESS", progress={"step": 2, "total": 2})),
        ("status", status_body("r1", "COMPLETED")),
    )
    gw = FakeGateway().on("POST", SUBMIT, httpx.Response(202, json=status_body("r1")))
    gw.on("POST", "/v1/files", httpx.Response(201, json={"id": "upl_1"}))
    gw.on("GET", "/v1/queue/requests/r1/stream", httpx.Response(200, content=body))
    gw.on("GET", "/v1/queue/requests/r1", httpx.Response(200, json=result_body("r1")))
    gw.on("GET", "/v1/files/dev/2026/01/01/r1/0.png", httpx.Response(200, content=PNG))
    return gw


def use(monkeypatch, gw: FakeGateway) -> None:
    def make(url: str, key: str) -> Client:
        return Client(url, key, transport=gw.transport())

    monkeypatch.setattr(client_cli, "make_client", make)


def test_run_saves_outputs_and_prints_their_paths(monkeypatch, tmp_path):
    gw = gateway()
    use(monkeypatch, gw)
    image = tmp_path / "in.png"
    image.write_bytes(PNG)
    args = [
        "run",
        "sd15-tiny",
        "--prompt",
        "a fox",
        "--param",
        "seed=7",
        "-P",
        "width=64",
        "-P",
        "negative_prompt=blurry",
        "--image",
        str(image),
        "--out",
        str(tmp_path / "o"),
        "--priority",
        "batch",
        "--url",
        "http://gw.test",
        "--key",
        "gm_k",
    ]
    r = CliRunner().invoke(app, args)
    assert r.exit_code == 0, r.output
    saved = tmp_path / "o" / "r1-0.png"
    assert saved.read_bytes() == PNG and str(saved) in r.stdout
    body = json.loads(gw.calls("POST", SUBMIT)[0].content)
    assert body == {
        "prompt": "a fox",
        "seed": 7,
        "width": 64,
        "negative_prompt": "blurry",
        "image": "upl_1",
        "priority": "batch",
    }


def test_http_errors_print_type_fields_and_limits_without_a_traceback(monkeypatch, tmp_path):
    fields = [{"field": "width", "message": "must be <= 1024", "limit": 1024}]
    gw = FakeGateway().on("POST", SUBMIT, error(422, "invalid_request", "width: too big", fields))
    use(monkeypatch, gw)
    args = [
        "run",
        "sd15-tiny",
        "-p",
        "x",
        "-P",
        "width=4096",
        "--key",
        "k",
        "--url",
        "http://gw.test",
    ]
    r = CliRunner().invoke(app, args)
    assert r.exit_code == 1
    assert "422 invalid_request: width: too big" in r.output
    assert "width: must be <= 1024 (limit: 1024)" in r.output
    assert "Traceback" not in r.output


def test_missing_key_and_bad_params_are_usage_errors(monkeypatch):
    monkeypatch.delenv("GENMEDIA_API_KEY", raising=False)
    r = CliRunner().invoke(app, ["run", "sd15-tiny", "-p", "x"])
    assert r.exit_code == 2 and "GENMEDIA_API_KEY" in r.output
    r = CliRunner().invoke(app, ["run", "sd15-tiny", "-p", "x", "-P", "novalue", "--key", "k"])
    assert r.exit_code == 2 and "NAME=VALUE" in r.output


def test_parse_params_takes_json_values():
    pairs = ["a=1", "b=0.5", "c=true", "d=null", "e=hi", "f=[1, 2]", "g="]
    want = {"a": 1, "b": 0.5, "c": True, "d": None, "e": "hi", "f": [1, 2], "g": ""}
    assert client_cli.parse_params(pairs) == want
