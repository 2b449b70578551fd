"""The gateway alone under uvicorn, forwarding over HTTP to a separately served model service:
it works, answers 503 quickly while the model service is down, and recovers by itself."""

import sys
import time

import httpx
import pytest

from bench.servers import bentoml_serve, free_port, running

pytestmark = pytest.mark.slow
FIELDS = {"name": "Ember", "description": "A dragon under the mountain.", "max_new_tokens": 8}


@pytest.fixture
def gateway_to(tiny_model):
    model_port, gateway_port = free_port(), free_port()
    cmd = [sys.executable, "-m", "uvicorn", "gateway.app:app", "--host", "127.0.0.1",
           "--port", str(gateway_port)]
    env = {"BACKSTORY_MODEL_URL": f"http://127.0.0.1:{model_port}"}
    with running(cmd, f"http://127.0.0.1:{gateway_port}/docs", env):
        yield f"http://127.0.0.1:{gateway_port}", model_port


def test_standalone_gateway_survives_model_service_restarts(tiny_model, gateway_to):
    gateway, model_port = gateway_to
    # Model service down: a clear, quick 503.
    started = time.monotonic()
    r = httpx.post(f"{gateway}/api/generate", json=FIELDS, timeout=30)
    assert r.status_code == 503 and r.json()["error"] and r.headers["retry-after"]
    assert time.monotonic() - started < 5
    assert httpx.get(f"{gateway}/status", timeout=30).json()["status"] == "unavailable"

    with bentoml_serve(str(tiny_model), port=model_port, target="service:Backstory"):
        r = httpx.post(f"{gateway}/api/generate", json=FIELDS, timeout=60)
        assert r.status_code == 200 and r.json()["backstory"].startswith("Ember")
        assert httpx.get(f"{gateway}/status", timeout=30).json()["status"] == "ok"

    assert httpx.post(f"{gateway}/api/generate", json=FIELDS, timeout=30).status_code == 503
    with bentoml_serve(str(tiny_model), port=model_port, target="service:Backstory"):
        assert httpx.post(f"{gateway}/api/generate", json=FIELDS, timeout=60).status_code == 200
