"""The gateway with TestClient. The model service is replaced at the one named seam: the factory
that `gateway.client.ModelClient` calls for a BentoML client (here `FakeModelService`)."""

import contextvars
import json

import httpx
import pytest
from bentoml.exceptions import BentoMLException, ServiceUnavailable
from fastapi.testclient import TestClient

from backstory.config import Settings
from gateway.app import app
from gateway.client import ModelClient
from gateway.deps import standalone_client


class FakeModelService:
    """Stands in for the Backstory service's client: echoes requests, or fails on demand."""

    def __init__(self, fail: Exception | None = None):
        self.fail, self.calls = fail, []

    async def generate(self, requests):
        self.calls.append(requests)
        if self.fail:
            raise self.fail
        return [{"backstory": f"{r['name']} rose.", "tokens": 3, "seed": r["seed"] or 7,
                 "model": "fake"} for r in requests]

    async def stream(self, request):
        if self.fail:
            raise self.fail
        for piece in [request["name"], " rose", "."]:
            yield json.dumps({"text": piece}) + "\n"
        yield json.dumps({"result": {"backstory": f"{request['name']} rose.", "tokens": 2,
                                     "seed": 7, "model": "fake"}}) + "\n"

    async def info(self):
        if self.fail:
            raise self.fail
        return {"model": "fake", "device": "cpu", "parameters": 1}


@pytest.fixture
def fake():
    service = FakeModelService()
    app.state.client = ModelClient(lambda: service)
    yield service
    app.state.client = None


@pytest.fixture
def client(fake):
    return TestClient(app)


FORM = {"name": "Kaylon", "description": "An empire of androids that killed their creators."}


def test_form_json_multipart_and_get_give_the_same_result(client, fake):
    results = [client.post("/api/generate", data=FORM), client.post("/api/generate", json=FORM),
               client.post("/api/generate", files={k: (None, v) for k, v in FORM.items()}),
               client.get("/generate", params=FORM)]
    for r in results:
        assert r.status_code == 200, r.text
        body = r.json()
        assert body["backstory"] == "Kaylon rose." and body["name"] == "Kaylon"
        assert set(body) == {"name", "description", "backstory", "model", "seed", "tokens",
                             "seconds"}
    assert len(fake.calls) == 4


def test_empty_optional_form_fields_mean_default(client, fake):
    r = client.post("/api/generate", data={**FORM, "seed": "", "temperature": ""})
    assert r.status_code == 200
    assert fake.calls[0][0]["seed"] is None


@pytest.mark.parametrize("body,field", [({"description": "x"}, "name"),
                                        ({"name": " ", "description": "x"}, "name"),
                                        ({"name": "a\x00", "description": "x"}, "name"),
                                        ({"name": "a", "description": "x" * 5000}, "description"),
                                        ({**FORM, "temperature": "hot"}, "temperature")])
def test_invalid_input_is_422_naming_the_field(client, fake, body, field):
    r = client.post("/api/generate", json=body)
    assert r.status_code == 422
    assert field in r.json()["error"] and r.json()["detail"][0]["field"] == field
    assert not fake.calls


def test_bad_bodies(client):
    assert client.post("/api/generate", content="{", headers={
        "content-type": "application/json"}).status_code == 400
    assert client.post("/api/generate", json=["a"]).status_code == 422
    assert client.post("/api/generate", content="x", headers={
        "content-type": "text/plain"}).status_code == 415


def test_stream_events_in_order(client):
    with client.stream("GET", "/api/stream", params=FORM) as r:
        assert r.headers["content-type"].startswith("text/event-stream")
        events = [line.split(": ", 1)[1] for line in r.iter_lines() if line.startswith("event:")]
    assert events == ["token", "token", "token", "done"]


@pytest.mark.parametrize("error,status", [
    (httpx.ConnectError("refused"), 503), (httpx.ReadTimeout("slow"), 504),
    (ServiceUnavailable("busy"), 503), (BentoMLException("x", error_code=429), 429),
    (RuntimeError("boom"), 502)])
def test_model_service_failures_become_clear_json(client, fake, error, status):
    fake.fail = error
    r = client.post("/api/generate", json=FORM)
    assert r.status_code == status
    assert "error" in r.json() and "Traceback" not in r.text
    if status in (429, 503):
        assert int(r.headers["retry-after"]) > 0


def test_stream_failure_is_an_error_event(client, fake):
    fake.fail = httpx.ConnectError("refused")
    with client.stream("GET", "/api/stream", params=FORM) as r:
        text = "".join(r.iter_text())
    assert "event: error" in text and '"status": 503' in text


def test_status_reports_model_and_time(client):
    body = client.get("/status").json()
    assert body["status"] == "ok" and body["device"] == "cpu" and body["model"] == "fake"
    assert body["time"].endswith("+00:00")


def test_unreachable_model_service_is_503():
    """The real standalone client against a port where nothing listens."""
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        dead = f"http://127.0.0.1:{s.getsockname()[1]}"
    app.state.client = standalone_client(Settings(model_url=dead))
    try:
        with TestClient(app) as c:
            r = c.post("/api/generate", json=FORM)
            assert r.status_code == 503 and r.json()["error"]
            assert c.get("/status").status_code == 503
    finally:
        app.state.client = None


def test_security_headers_and_request_id(client):
    r = client.get("/", headers={"x-request-id": "abc"})
    assert r.status_code == 200 and "<form" in r.text
    assert "script-src 'self'" in r.headers["content-security-policy"]
    assert r.headers["x-content-type-options"] == "nosniff"
    assert r.headers["x-request-id"] == "abc"
    assert "access-control-allow-origin" not in client.get(
        "/status", headers={"origin": "http://evil.example"}).headers


def test_openapi_docs_stay_and_need_no_cdn(client):
    spec = client.get("/openapi.json").json()
    assert {"/api/generate", "/generate", "/api/stream", "/status"} <= set(spec["paths"])
    for page, asset in (("/docs", "swagger-ui-bundle.js"), ("/redoc", "redoc.standalone.js")):
        r = client.get(page)
        assert r.status_code == 200 and f"/docs-assets/{asset}" in r.text
        assert "https://" not in r.headers["content-security-policy"]
        assert "unsafe-inline" not in client.get("/").headers["content-security-policy"]
        js = client.get(f"/docs-assets/{asset}")
        assert js.status_code == 200 and len(js.content) > 100_000


def test_a_full_gateway_refuses_model_routes_on_arrival_before_reading_the_body(fake):
    model = app.state.client = ModelClient(lambda: fake, max_rows=2)
    client = TestClient(app)
    # Two rows held by other requests: each request is a task with a context of its own.
    others, rows = contextvars.Context(), model.admission.rows(2)
    others.run(rows.__enter__)
    try:
        for method, path, body in [("POST", "/api/generate", {"name": ""}),  # invalid: not parsed
                                   ("GET", "/api/stream", None), ("POST", "/api/roster", {}),
                                   ("POST", "/v1/completions", {})]:
            r = client.request(method, path, json=body)
            assert r.status_code == 429 and r.headers["retry-after"] == "1", (path, r.text)
        # /v1 answers in OpenAI's error shape
        assert r.json()["error"]["type"] and "busy" in r.json()["error"]["message"]
        assert client.get("/status").status_code == 200 and fake.calls == []
    finally:
        others.run(rows.__exit__, None, None, None)
    # A request's arrival row is one of the rows it asks for: a roster of 2 fits in 2.
    r = client.post("/api/roster", json={"characters": [FORM, FORM]})
    assert r.status_code == 200 and model.admission.used == 0 and len(fake.calls[0]) == 2
    assert client.post("/api/roster", json={"characters": [FORM] * 3}).status_code == 429
