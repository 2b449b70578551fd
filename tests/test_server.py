"""The real stack: `bentoml serve service:Gateway` on a tiny model, called over HTTP."""

import asyncio
import re
import subprocess
import time

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


def scrape(server: str) -> dict[str, float]:
    """Our serving metrics from /metrics (the whole stack's, summed over workers), by series:
    `name` or `name{labels}`."""
    text = httpx.get(f"{server}/metrics", timeout=30).text
    values: dict[str, float] = {}
    for name, labels, value in re.findall(r"^(backstory_\w+)(\{[^}]*\})? ([0-9.e+-]+)$", text,
                                          flags=re.M):
        key = name + (labels if "finished_reason" in labels else "")
        values[key] = values.get(key, 0.0) + float(value)
    return values


async def fire(server: str, n: int, **fields) -> list[dict]:
    async with httpx.AsyncClient(timeout=120) as client:
        responses = await asyncio.gather(*[client.post(f"{server}/api/generate", json={
            "name": f"Hero {i}", "description": "A wanderer.", "seed": i, **fields})
            for i in range(n)])
    assert all(r.status_code == 200 for r in responses), [r.text for r in responses]
    return [r.json() for r in responses]


def test_concurrent_requests_share_decode_steps_and_keep_seeded_output(server):
    before = scrape(server)
    results = await_(fire(server, 16, max_new_tokens=48, min_new_tokens=48))
    after = scrape(server)
    steps = after["backstory_batch_size_count"] - before["backstory_batch_size_count"]
    rows = after["backstory_batch_size_sum"] - before["backstory_batch_size_sum"]
    assert rows >= 16 * 48 and steps < 16 * 48 / 2, (steps, rows)  # > 2 rows per step
    # A row of a batch gets exactly what it gets alone.
    alone = httpx.post(f"{server}/api/generate", timeout=60, json={
        "name": "Hero 5", "description": "A wanderer.", "seed": 5, "max_new_tokens": 48,
        "min_new_tokens": 48}).json()
    assert alone["backstory"] == results[5]["backstory"]


def test_serving_metrics_after_real_traffic(server):
    """TTFT, TPOT, latency, queue time, tokens, rows and finish reasons, in /metrics, named as
    vLLM names them (backstory/telemetry.py)."""
    from backstory.telemetry import METRIC_NAMES

    before = scrape(server)
    await_(fire(server, 4, max_new_tokens=20, min_new_tokens=20))
    with httpx.stream("GET", f"{server}/api/stream", timeout=60, params={
            "name": "Gone", "description": "Leaves.", "max_new_tokens": 400,
            "min_new_tokens": 400}) as r:
        lines = r.iter_lines()
        assert [next(lines) for _ in range(9)].count("event: token") == 3  # opener + 2 tokens
    # ... and it left: a cancelled row
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline and scrape(server).get(
            'backstory_request_success_total{finished_reason="cancelled"}', 0) == before.get(
            'backstory_request_success_total{finished_reason="cancelled"}', 0):
        time.sleep(0.2)
    after = scrape(server)
    for name in METRIC_NAMES:
        assert any(k.startswith(name) for k in after), name

    def grew(key: str) -> float:
        return after.get(key, 0) - before.get(key, 0)

    assert grew('backstory_request_success_total{finished_reason="length"}') == 4
    assert grew('backstory_request_success_total{finished_reason="cancelled"}') == 1
    assert grew("backstory_generation_tokens_total") >= 80
    assert grew("backstory_prompt_tokens_total") > 0
    for hist in ("time_to_first_token", "e2e_request_latency", "request_queue_time"):
        assert grew(f"backstory_{hist}_seconds_count") == 5, hist
    assert grew("backstory_time_per_output_token_seconds_count") >= 4  # rows of 2+ tokens
    assert after["backstory_num_requests_running"] == 0


def await_(coro):
    return asyncio.run(coro)
