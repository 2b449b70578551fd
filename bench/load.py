"""An async HTTP load generator with a bounded number of requests.

At concurrency C, C workers take request numbers from one shared counter until `requests` have
been sent (a closed loop: each worker sends its next request when its last one is answered).
Every request is bounded by `timeout_s` and no worker starts a request after `deadline_s`.
Every request asks for exactly `new_tokens` tokens (min = max), so all do the same work.
"""

import asyncio
import itertools
import json
import time
from collections.abc import Callable

import httpx

from bench.stats import LoadResult, RequestResult, summarize

CHARACTERS = [
    ("Aldric", "A knight of the northern marches who lost his king."),
    ("Ember", "A dragon who guards old songs under the mountain."),
    ("Mira Vell", "A smuggler captain with a debt to the harbour guild."),
    ("Kaylon", "An empire of androids that killed their biological creators."),
    ("Tobias Finch", "A village apothecary who hears the dead in his dreams."),
]


def payload(i: int, new_tokens: int, temperature: float = 0.8) -> dict:
    name, description = CHARACTERS[i % len(CHARACTERS)]
    return {"name": name, "description": description, "max_new_tokens": new_tokens,
            "min_new_tokens": new_tokens, "temperature": temperature, "seed": i}


async def call_generate(client: httpx.AsyncClient, base: str, body: dict) -> RequestResult:
    started = time.perf_counter()
    response = await client.post(f"{base}/api/generate", json=body)
    latency = time.perf_counter() - started
    if response.status_code != 200:
        return RequestResult(latency, error=f"HTTP {response.status_code}: {response.text[:120]}")
    return RequestResult(latency, tokens=int(response.json().get("tokens", 0)))


async def call_stream(client: httpx.AsyncClient, base: str, body: dict) -> RequestResult:
    """GET /api/stream, parsing Server-Sent Events. `ttft_s` is the first `token` event; when
    that event is only the opener (the character's name, sent before the model runs),
    `ttft_gen_s` is the next one, the first text the model generated."""
    params = {k: body[k] for k in ("name", "description", "max_new_tokens", "min_new_tokens",
                                   "temperature", "seed")}
    started = time.perf_counter()
    result = RequestResult(0.0, error="stream ended without a done event")
    event, data = "message", []
    async with client.stream("GET", f"{base}/api/stream", params=params) as response:
        if response.status_code != 200:
            await response.aread()
            return RequestResult(time.perf_counter() - started,
                                 error=f"HTTP {response.status_code}: {response.text[:120]}")
        async for line in response.aiter_lines():
            if line.startswith("event:"):
                event = line[6:].strip()
            elif line.startswith("data:"):
                data.append(line[5:].strip())
            elif not line and data:
                if _on_event(result, event, json.loads("\n".join(data)), body["name"], started):
                    break
                event, data = "message", []
    result.latency_s = time.perf_counter() - started
    return result


def _on_event(result: RequestResult, event: str, data: dict, name: str, started: float) -> bool:
    """Record one SSE event; True when the stream is over."""
    now = time.perf_counter() - started
    if event == "token":
        if result.ttft_s is None:
            result.ttft_s = now
            if data.get("text") != name:
                result.ttft_gen_s = now
        elif result.ttft_gen_s is None:
            result.ttft_gen_s = now
        return False
    if event == "done":
        result.tokens, result.error = int(data.get("tokens", 0)), None
        return True
    if event == "error":
        result.error = f"error event: {data}"[:160]
        return True
    return False


async def run_load(base: str, concurrency: int, requests: int, new_tokens: int,
                   route: str = "generate", server: str = "ours", timeout_s: float = 600,
                   deadline_s: float = 1800, on_done: Callable[[int], None] | None = None
                   ) -> LoadResult:
    """Send `requests` requests from `concurrency` workers; `on_done(n)` after each answer."""
    call = call_stream if route == "stream" else call_generate
    counter, results = itertools.count(), []
    started = time.perf_counter()
    stop_at = started + deadline_s

    async def one(client: httpx.AsyncClient, i: int) -> RequestResult:
        t0 = time.perf_counter()
        try:
            return await asyncio.wait_for(call(client, base, payload(i, new_tokens)), timeout_s)
        except (httpx.HTTPError, TimeoutError, ValueError) as e:
            return RequestResult(time.perf_counter() - t0, error=f"{type(e).__name__}: {e}"[:160])

    async def worker(client: httpx.AsyncClient) -> None:
        while time.perf_counter() < stop_at and (i := next(counter)) < requests:
            results.append(await one(client, i))
            if on_done:
                on_done(len(results))

    limits = httpx.Limits(max_connections=concurrency + 4, max_keepalive_connections=concurrency)
    async with httpx.AsyncClient(timeout=httpx.Timeout(timeout_s, connect=10),
                                 limits=limits) as client:
        await asyncio.gather(*(worker(client) for _ in range(concurrency)))
    return summarize(results, time.perf_counter() - started, server, route, concurrency,
                     requests)


def run(base: str, concurrency: int, requests: int, new_tokens: int, **kwargs) -> LoadResult:
    """Synchronous wrapper: one event loop per run, closed afterwards."""
    return asyncio.run(run_load(base, concurrency, requests, new_tokens, **kwargs))
