"""The real stack: `bentoml serve service:Gateway` on a tiny model, called over HTTP."""

import asyncio
import re
import subprocess

import httpx
import pytest

pytestmark = pytest.mark.slow
KAYLON = "name=Kaylon&description=An empire of androids that killed their biological creators."


def test_seed_curl_form_call(server):
    """Exactly the README's curl call."""
    out = subprocess.run(
        ["curl", "-s", "-X", "POST", f"{server}/api/generate", "-H",
         "Content-Type: application/x-www-form-urlencoded", "-d", KAYLON],
        capture_output=True, text=True, timeout=60, check=True).stdout
    body = httpx.Response(200, content=out).json()
    assert body["name"] == "Kaylon" and body["backstory"].startswith("Kaylon")
    assert body["tokens"] > 0 and body["seconds"] > 0 and body["model"]


def test_json_get_and_multipart_routes(server):
    fields = {"name": "Ember", "description": "A dragon under the mountain.", "seed": 3,
              "max_new_tokens": 12}
    json_body = httpx.post(f"{server}/api/generate", json=fields, timeout=60).json()
    get_body = httpx.get(f"{server}/generate", params=fields, timeout=60).json()
    multipart = httpx.post(f"{server}/api/generate", timeout=60,
                           files={k: (None, str(v)) for k, v in fields.items()}).json()
    assert json_body["backstory"] == get_body["backstory"] == multipart["backstory"]
    assert json_body["seed"] == 3


def test_stream_sends_tokens_then_done(server):
    with httpx.stream("GET", f"{server}/api/stream", timeout=60, params={
            "name": "Ember", "description": "A dragon.", "max_new_tokens": 16, "seed": 5}) as r:
        assert r.status_code == 200
        text = "".join(r.iter_text())
    events = re.findall(r"^event: (\w+)$", text, flags=re.M)
    assert events[0] == "token" and events[-1] == "done" and set(events[:-1]) == {"token"}
    assert '"name": "Ember"' in text.split("event: done")[1]


def test_status_pages_and_docs(server):
    status = httpx.get(f"{server}/status", timeout=30).json()
    assert status["status"] == "ok" and status["device"] == "cpu" and status["parameters"] > 0
    assert status["dtype"] == "float32"  # exact seeded stories on CPU; bfloat16 is opt-in
    assert "max_batch_size" in status and status["time"]
    assert "<form" in httpx.get(server, timeout=30).text
    assert httpx.get(f"{server}/docs", timeout=30).status_code == 200
    assert httpx.get(f"{server}/readyz", timeout=30).status_code == 200


@pytest.mark.parametrize("params,field", [({"name": " ", "description": "x"}, "name"),
                                          ({"name": "a"}, "description"),
                                          ({"name": "a", "description": "b", "seed": -1}, "seed")])
def test_bad_input_is_422_json(server, params, field):
    r = httpx.get(f"{server}/generate", params=params, timeout=30)
    assert r.status_code == 422 and r.json()["detail"][0]["field"] == field


def batch_metrics(server: str) -> tuple[float, float]:
    """(batches, rows) of the generate API, from BentoML's Prometheus metrics."""
    text = httpx.get(f"{server}/metrics", timeout=30).text
    values = {}
    for kind in ("count", "sum"):  # summed over workers (one line each)
        found = re.findall(rf'^bentoml_service_adaptive_batch_size_{kind}{{[^}}]*'
                           rf'method_name="generate"[^}}]*}} ([0-9.e+]+)$', text, flags=re.M)
        values[kind] = sum(float(v) for v in found)
    return values["count"], values["sum"]


async def fire(server: str, n: int, **fields) -> list[dict]:
    async with httpx.AsyncClient(timeout=120) as client:
        responses = await asyncio.gather(*[client.post(f"{server}/api/generate", json={
            "name": f"Hero {i}", "description": "A wanderer.", "seed": i, **fields})
            for i in range(n)])
    assert all(r.status_code == 200 for r in responses), [r.text for r in responses]
    return [r.json() for r in responses]


def test_adaptive_batching_batches_and_keeps_seeded_output(server):
    before = batch_metrics(server)
    results = await_(fire(server, 16, max_new_tokens=48, min_new_tokens=48))
    after = batch_metrics(server)
    batches, rows = after[0] - before[0], after[1] - before[1]
    # rows can exceed 16 by a retried request (see gateway/client.py: the proxy drops some).
    assert rows >= 16 and batches < 16, (batches, rows, before, after)
    # A row of a batch gets exactly what it gets alone.
    alone = httpx.post(f"{server}/api/generate", timeout=60, json={
        "name": "Hero 5", "description": "A wanderer.", "seed": 5, "max_new_tokens": 48,
        "min_new_tokens": 48}).json()
    assert alone["backstory"] == results[5]["backstory"]


def await_(coro):
    return asyncio.run(coro)
