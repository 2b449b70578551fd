"""Bad input, overload, disconnects, shutdown and the API key, against real servers on 127.0.0.1.
Every load here is bounded in count and time."""

import asyncio
import os
import signal
import time
import unicodedata

import httpx
import pytest

from bench.servers import bentoml_serve, free_port

pytestmark = pytest.mark.slow
FIELDS = {"name": "Ember", "description": "A dragon under the mountain."}


@pytest.mark.parametrize("name", ["李小龍", "שָׁלוֹם עליכם", "Zoë 🐉✨", "e\u0301le\u0300ve", "نور"])
def test_unicode_names_are_echoed_intact(server, name):
    r = httpx.post(f"{server}/api/generate", timeout=60,
                   json={**FIELDS, "name": name, "max_new_tokens": 4})
    assert r.status_code == 200 and r.json()["name"] == name  # echoed exactly as sent
    assert r.json()["backstory"].startswith(unicodedata.normalize("NFC", name))  # model sees NFC


@pytest.mark.parametrize("fields,status,field", [
    ({"name": "a\x00b"}, 422, "name"), ({"name": "\u200b"}, 200, None),
    ({"name": "\t \n"}, 422, "name"), ({"description": "x" * 5000}, 422, "description"),
    ({"max_new_tokens": 10_000}, 422, "max_new_tokens"),
    ({"temperature": "nan"}, 422, "temperature"),
    ({"seed": 2**40}, 422, "seed")])
def test_field_limits(server, fields, status, field):
    r = httpx.post(f"{server}/api/generate", json={**FIELDS, "max_new_tokens": 4, **fields},
                   timeout=60)
    assert r.status_code == status, r.text
    if field:
        body = r.json()
        assert body["detail"][0]["field"] == field and field in body["error"]


def test_body_size_limit_is_413_json(server):
    r = httpx.post(f"{server}/api/generate", json={**FIELDS, "pad": "x" * 100_000}, timeout=30)
    assert r.status_code == 413 and "bytes" in r.json()["error"]


def test_no_traces_or_paths_in_errors(server):
    for r in (httpx.post(f"{server}/api/generate", content=b"\xff{", timeout=30,
                         headers={"content-type": "application/json"}),
              httpx.get(f"{server}/nope", timeout=30),
              httpx.delete(f"{server}/status", timeout=30)):
        assert 400 <= r.status_code < 500
        assert "Traceback" not in r.text and "/work/" not in r.text and ".py" not in r.text


def test_disconnected_stream_frees_its_slot(server):
    before = httpx.get(f"{server}/status", timeout=10).json()["generated_tokens"]
    params = {**FIELDS, "max_new_tokens": 400, "min_new_tokens": 400}
    with httpx.stream("GET", f"{server}/api/stream", params=params, timeout=60) as r:
        lines = r.iter_lines()
        assert [next(lines) for _ in range(4)][0] == "event: token"
    # The client is gone: its row ends at the next step instead of running to 400 tokens.
    deadline = time.monotonic() + 30
    while httpx.get(f"{server}/status", timeout=10).json()["in_flight"] and (
            time.monotonic() < deadline):
        time.sleep(0.2)
    status = httpx.get(f"{server}/status", timeout=10).json()
    assert status["in_flight"] == 0 and status["generated_tokens"] - before < 400


def test_api_key_protects_the_api_not_the_page(tiny_model):
    with bentoml_serve(str(tiny_model), env={"BACKSTORY_API_KEY": "s3cret"}) as url:
        r = httpx.post(f"{url}/api/generate", json=FIELDS, timeout=30)
        assert r.status_code == 401 and "API key" in r.json()["error"]
        assert httpx.get(f"{url}/generate", params=FIELDS, timeout=30,
                         headers={"x-api-key": "wrong"}).status_code == 401
        ok = httpx.post(f"{url}/api/generate", json={**FIELDS, "max_new_tokens": 4}, timeout=60,
                        headers={"authorization": "Bearer s3cret"})
        assert ok.status_code == 200
        assert httpx.get(url, timeout=30).status_code == 200  # the UI page itself is public
        assert httpx.get(f"{url}/status", timeout=30).status_code == 200


def test_cors_only_when_configured(tiny_model):
    origin = "http://app.example"
    with bentoml_serve(str(tiny_model), env={"BACKSTORY_CORS_ORIGINS": f'["{origin}"]'}) as url:
        r = httpx.options(f"{url}/api/generate", timeout=30, headers={
            "origin": origin, "access-control-request-method": "POST"})
        assert r.headers.get("access-control-allow-origin") == origin


def serve_pid(port: int) -> int:
    """The `bentoml serve` process itself (the one a container runtime signals)."""
    import psutil

    for p in psutil.process_iter(["cmdline"]):
        cmd = p.info["cmdline"] or []
        if "serve" in cmd and str(port) in cmd and "bentoml" in " ".join(cmd):
            return p.pid
    raise LookupError(port)


def test_sigterm_finishes_in_flight_requests_then_stops(tiny_model):
    port = free_port()
    with bentoml_serve(str(tiny_model), port=port) as url:
        async def scenario():
            async with httpx.AsyncClient(timeout=60) as c:
                task = asyncio.create_task(c.post(f"{url}/api/generate", json={
                    **FIELDS, "max_new_tokens": 300, "min_new_tokens": 300}))
                await asyncio.sleep(0.5)
                os.kill(serve_pid(port), signal.SIGTERM)  # as a container runtime would
                return await task

        r = asyncio.run(scenario())
        assert r.status_code == 200 and r.json()["tokens"] == 300
        time.sleep(2)
        with pytest.raises(httpx.TransportError):
            httpx.get(f"{url}/status", timeout=5)
