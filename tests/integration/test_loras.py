"""LoRA adapters end to end on a real local Ray Serve over real HTTP: catalog adapters, run-time
registration through the admin endpoint (checked against the base model), per-request adapter
sets with scales, concurrent requests with different adapters on one worker, and bad input."""

from __future__ import annotations

import asyncio
import io
import time

import httpx
import numpy as np
import pytest
from PIL import Image
from safetensors.torch import save_file

from tests.integration.conftest import API_KEY, OTHER_KEY

pytestmark = pytest.mark.integration
AUTH = {"Authorization": f"Bearer {API_KEY}"}
GEN = "/v1/models/sd15-tiny/generate"


def sha(http, body, **extra):
    r = http.post(GEN, json={"prompt": "a fox", "seed": 11, **body, **extra})
    assert r.status_code == 200, r.text
    return r.json()["images"][0]["sha256"], r.json()


def _wait_ready(http, adapter_id):
    for _ in range(200):
        items = {a["id"]: a for a in http.get("/v1/loras").json()["loras"]}
        if items.get(adapter_id, {}).get("status") != "pending":
            return items[adapter_id]
        time.sleep(0.05)
    raise AssertionError(f"{adapter_id} never checked")


def test_catalog_adapters_are_listed_and_change_the_output(http):
    a = _wait_ready(http, "sd15-tiny-style-a")
    assert a["status"] == "ready" and a["base_model"] == "sd15-tiny" and a["rank"] == 4
    base, _ = sha(http, {})
    with_a, body = sha(http, {"loras": [{"id": "sd15-tiny-style-a", "scale": 1.0}]})
    with_b, _ = sha(http, {"loras": [{"id": "sd15-tiny-style-b"}]})
    assert len({base, with_a, with_b}) == 3
    assert body["loras"] == [{"id": "sd15-tiny-style-a", "scale": 1.0}]
    assert body["parameters"]["loras"] == [{"id": "sd15-tiny-style-a", "scale": 1.0}]
    # same seed + adapters + scales = same output, after switching back and forth
    again, _ = sha(http, {"loras": [{"id": "sd15-tiny-style-a", "scale": 1.0}]})
    assert again == with_a and sha(http, {})[0] == base
    both, _ = sha(
        http,
        {"loras": [{"id": "sd15-tiny-style-a", "scale": 0.5}, {"id": "sd15-tiny-style-b"}]},
    )
    assert both not in (base, with_a, with_b)


def _pixels(http, result) -> np.ndarray:
    r = http.get(result["images"][0]["url"])
    return np.asarray(Image.open(io.BytesIO(r.content)), dtype=np.int16)


def test_concurrent_requests_with_different_adapters_get_what_they_asked(http, base_url):
    """One worker replica, batches of different adapter sets interleaved (batch-class calls
    preempted by interactive ones at step boundaries): each request's image is the image the same
    request gives alone. With LoRA, CPU matmul kernels differ by batch size in the last bit, so a
    batched image may differ from the lone one by one 8-bit level; a mixed-up adapter differs by
    far more (checked against the other adapters' images)."""
    sets = [[], [{"id": "sd15-tiny-style-a"}], [{"id": "sd15-tiny-style-b", "scale": 0.7}]]
    bodies = [
        {
            "prompt": "a fox",
            "seed": 100 + i,
            "loras": sets[i % 3],
            "num_inference_steps": 6,
            "priority": "interactive" if i % 2 else "batch",
        }
        for i in range(12)
    ]

    async def run_all():
        async with httpx.AsyncClient(base_url=base_url, headers=AUTH, timeout=120) as c:
            subs = await asyncio.gather(
                *(c.post("/v1/queue/models/sd15-tiny", json=b) for b in bodies)
            )
            out = []
            for s in subs:
                assert s.status_code == 202, s.text
                for _ in range(1200):
                    st = (await c.get(s.json()["status_url"])).json()
                    if st["status"] not in ("IN_QUEUE", "IN_PROGRESS"):
                        break
                    await asyncio.sleep(0.05)
                assert st["status"] == "COMPLETED", st
                out.append((await c.get(s.json()["result_url"])).json())
            return out

    together = asyncio.run(run_all())
    assert max(r["batch"]["requests"] for r in together) > 1  # some really shared a call
    for body, result in zip(bodies, together, strict=True):
        assert result["loras"] == [
            {"id": x["id"], "scale": x.get("scale", 1.0)} for x in body["loras"]
        ]
        got = _pixels(http, result)
        alone = {}
        for k, loras in enumerate(sets):
            one = http.post(GEN, json={**body, "loras": loras, "priority": "interactive"})
            alone[k] = _pixels(http, one.json())
        mine = sets.index(body["loras"])
        assert np.abs(got - alone[mine]).max() <= 1, body
        for k, other in alone.items():
            if k != mine:
                assert np.abs(got - other).mean() > 5 * np.abs(got - alone[mine]).mean() + 1


def test_register_check_use_and_delete_at_run_time(http, tmp_path, base_url):
    import torch
    from diffusers import StableDiffusionPipeline  # noqa: F401  (family import warms up)

    from genmedia.models import registry
    from genmedia.models.lora import build_tiny_adapter
    from genmedia.models.weights import resolve_source

    pipe = registry.family_module("sd15").load_pipeline(resolve_source("tiny://sd15"))
    good = build_tiny_adapter(pipe, "sd15", tmp_path / "mine.safetensors", seed=42)
    r = http.post(
        "/v1/admin/loras",
        json={"id": "my-style", "base_model": "sd15-tiny", "source": str(good)},
    )
    assert r.status_code == 201, r.text
    assert r.json()["rank"] == 4 and "path" not in r.json()
    used, _ = sha(http, {"loras": [{"id": "my-style"}]})
    assert used != sha(http, {})[0]

    # adapter files that must be refused, each naming the rule
    flux = registry.family_module("flux").load_pipeline(resolve_source("tiny://flux"))
    foreign = build_tiny_adapter(flux, "flux", tmp_path / "flux.safetensors")
    bad_shape = tmp_path / "shape.safetensors"
    to_q = "unet.down_blocks.0.attentions.0.transformer_blocks.0.attn1.to_q"
    save_file(
        {f"{to_q}.lora_A.weight": torch.zeros(4, 7), f"{to_q}.lora_B.weight": torch.zeros(32, 4)},
        str(bad_shape),
    )
    pickle_like = tmp_path / "adapter.bin"
    pickle_like.write_bytes(b"\x80\x04K\x01.")
    cases = [
        ({"source": str(foreign)}, 422, "source", "does not fit the base model"),
        ({"source": str(bad_shape)}, 422, "source", "does not match in_features"),
        ({"source": str(pickle_like)}, 422, "source", ".safetensors"),
        ({"source": str(tmp_path / "missing.safetensors")}, 422, "source", "does not exist"),
        ({"base_model": "nope"}, 422, "base_model", "no model"),
        ({"id": "sd15-tiny-style-a"}, 409, "id", "defined in the catalog"),
        ({"id": "Bad Id!"}, 422, "id", "pattern"),
    ]
    for change, status, field, words in cases:
        spec = {"id": "x-new", "base_model": "sd15-tiny", "source": str(good), **change}
        r = http.post("/v1/admin/loras", json=spec)
        assert r.status_code == status, (change, r.text)
        err = r.json()["error"]
        assert any(f["field"] == field for f in err.get("fields") or []), err
        assert words in str(err), err

    with httpx.Client(base_url=base_url, headers={"Authorization": f"Bearer {OTHER_KEY}"}) as o:
        r = o.post(
            "/v1/admin/loras", json={"id": "y", "base_model": "sd15-tiny", "source": str(good)}
        )
        assert r.status_code == 403
    assert http.delete("/v1/admin/loras/my-style").status_code == 200
    assert http.delete("/v1/admin/loras/my-style").status_code == 404
    assert http.delete("/v1/admin/loras/sd15-tiny-style-a").status_code == 409
    r = http.post(GEN, json={"prompt": "x", "loras": [{"id": "my-style"}]})
    assert r.status_code == 422 and "unknown adapter" in r.text


def test_bad_lora_requests_name_field_and_rule(http):
    def err(body, field, words, model="sd15-tiny"):
        r = http.post(f"/v1/models/{model}/generate", json={"prompt": "x", **body})
        assert r.status_code == 422, r.text
        e = r.json()["error"]
        assert any(f["field"] == field for f in e.get("fields") or []), e
        assert words in e["message"], e

    err({"loras": [{"id": "nope"}]}, "loras[0].id", "unknown adapter")
    err(
        {"loras": [{"id": "sd15-tiny-style-a"}]},
        "loras[0].id",
        "is for model 'sd15-tiny'",
        model="sdxl-tiny",
    )
    err({"loras": [{"id": "sd15-tiny-style-a", "scale": 5}]}, "loras[0].scale", "<= 2")
    err(
        {"loras": [{"id": "sd15-tiny-style-a"}, {"id": "sd15-tiny-style-a"}]},
        "loras[1].id",
        "listed twice",
    )
    many = [{"id": f"a{i}"} for i in range(4)]
    err({"loras": many}, "loras", "at most 3")
