"""Load against real servers on 127.0.0.1: overload is refused at once with 429, a burst within
max_concurrency is served, nothing hangs. Every load is bounded in count and time."""

import asyncio
import json
import time

import httpx
import pytest

from bench.servers import bentoml_serve

pytestmark = pytest.mark.slow
FIELDS = {"name": "Ember", "description": "A dragon under the mountain."}


@pytest.fixture(scope="module")
def small_server(tiny_model):
    """A model service that admits 4 requests at once: the rest must get 429 at once."""
    # A 30 s timeout: a request the stack loses must come back as a 504 well before the
    # clients give up (120 s), so "nothing stuck" is checked, not raced.
    env = {"BACKSTORY_MAX_CONCURRENCY": "4", "BACKSTORY_TIMEOUT_S": "30"}
    with bentoml_serve(str(tiny_model), env=env) as url:
        yield url


async def load(url: str, n: int, concurrency: int, **fields) -> list[tuple[int, float, dict]]:
    """n requests from `concurrency` clients; (status, seconds, headers) each."""
    queue: asyncio.Queue = asyncio.Queue()
    for i in range(n):
        queue.put_nowait(i)
    out = []

    async def client(c: httpx.AsyncClient):
        while not queue.empty():
            i = queue.get_nowait()
            started = time.perf_counter()
            r = await c.post(f"{url}/api/generate", json={**FIELDS, "seed": i, **fields})
            assert r.headers["content-type"].startswith("application/json")
            out.append((r.status_code, time.perf_counter() - started, dict(r.headers)))

    limits = httpx.Limits(max_connections=concurrency)
    async with httpx.AsyncClient(timeout=120, limits=limits) as c:
        await asyncio.wait_for(asyncio.gather(*[client(c) for _ in range(concurrency)]), 300)
    return out


def test_overload_is_429_with_retry_after_at_once_and_status_answers(small_server):
    async def scenario():
        task = asyncio.create_task(load(small_server, 48, 24, max_new_tokens=64,
                                        min_new_tokens=64))
        await asyncio.sleep(1.0)
        async with httpx.AsyncClient(timeout=10) as c:  # health keeps answering under load
            for path in ("/status", "/livez", "/readyz"):
                assert (await c.get(f"{small_server}{path}")).status_code == 200
        return await task

    results = asyncio.run(scenario())
    statuses = [s for s, _, _ in results]
    assert set(statuses) <= {200, 429} and 200 in statuses and 429 in statuses
    refused = [(t, h) for s, t, h in results if s == 429]
    assert all(int(h["retry-after"]) > 0 for _, h in refused)
    assert sorted(t for t, _ in refused)[len(refused) // 2] < 2.0  # refused at once, not queued


def test_load_500_requests_64_clients_all_answered_nothing_stuck(small_server):
    results = asyncio.run(load(small_server, 500, 64, max_new_tokens=8))
    assert len(results) == 500
    statuses = [s for s, _, _ in results]
    assert set(statuses) <= {200, 429} and statuses.count(200) > 0  # every one answered, no 5xx
    deadline = time.monotonic() + 30
    while httpx.get(f"{small_server}/status", timeout=10).json()["in_flight"] and (
            time.monotonic() < deadline):
        time.sleep(0.5)
    assert httpx.get(f"{small_server}/status", timeout=10).json()["in_flight"] == 0


def test_a_burst_is_served_up_to_max_concurrency_and_the_rest_refused_at_once(tiny_model,
                                                                               tmp_path):
    """200 requests at once against max_concurrency 64: each one admitted answers 200 (no
    latency model may turn them into 503s), each other one gets 429 with Retry-After: 1, at once,
    and /status answers throughout."""
    async def burst(url: str) -> tuple[list, list]:
        async with httpx.AsyncClient(timeout=120, limits=httpx.Limits(max_connections=256)) as c:
            async def one(i: int):
                started = time.perf_counter()
                r = await c.post(f"{url}/api/generate", json={
                    **FIELDS, "seed": i, "max_new_tokens": 48, "min_new_tokens": 48})
                return r.status_code, time.perf_counter() - started, r.headers

            async def watch():
                seen = []
                for _ in range(10):
                    await asyncio.sleep(0.3)
                    seen.append((await c.get(f"{url}/status", timeout=10)).status_code)
                return seen

            *results, health = await asyncio.wait_for(
                asyncio.gather(*(one(i) for i in range(200)), watch()), 300)
            return results, health

    log = tmp_path / "serve.log"
    # The model service on one of the two cores, as a deployment splits them (service.py gives
    # the gateway a CPU of its own): the gateway's timing below is its own, not how much of a
    # core the 64 admitted rows' prefill left it and this client (in a full CI run it got
    # p50 141 ms with the prefill on both cores, where earlier runs had 0.6-0.8 ms).
    env = {"BACKSTORY_MAX_CONCURRENCY": "64", "BACKSTORY_THREADS": "1"}
    with bentoml_serve(str(tiny_model), env=env, log_path=log) as url:
        results, health = asyncio.run(burst(url))
    statuses = [s for s, _, _ in results]
    assert set(statuses) <= {200, 429}, sorted(set(statuses))
    assert statuses.count(200) >= 64 and set(health) == {200}
    assert all(h["retry-after"] == "1" for status, _, h in results if status == 429)
    # Refused at once, not queued behind the stories: p50 0.58-1.0 s seen by this client on 2
    # cores that the client, the gateway and the model service's prefill of 64 rows all share
    # (200 httpx requests at once cost the client itself 0.8-1.1 s p50 even against a server
    # that only answers 429) ...
    seen = sorted(seconds for status, seconds, _ in results if status == 429)
    assert seen and seen[len(seen) // 2] < 2.0
    # ... and in the gateway (its access log), against the admitted stories, so that a slower
    # machine moves both sides: a refusal waits for no story. Not an absolute figure: a refusal's
    # time there is mostly the wait for this client's body, which the gateway reads before it
    # replies, and on 2 shared cores that was 0.3 ms p50 here and 72 ms p50 in a CI run. That it
    # is refused before the body is parsed is test_gateway's
    # test_a_full_gateway_refuses_model_routes_on_arrival_before_reading_the_body.
    lines = access_log(log)
    refused = sorted(line["ms"] for line in lines if line["status"] == 429)
    admitted = sorted(line["ms"] for line in lines if line["status"] == 200
                      and line["route"] == "/api/generate")
    assert len(refused) == statuses.count(429) and len(admitted) == statuses.count(200)
    assert refused[len(refused) // 2] * 4 < admitted[len(admitted) // 2], (refused, admitted)


def access_log(path) -> list[dict]:
    """The gateway's access log lines (one JSON object each) among the server's output."""
    lines = (line[line.find('{"request_id"'):] for line in path.read_text().splitlines())
    return [json.loads(line) for line in lines if line.startswith('{"request_id"')]
