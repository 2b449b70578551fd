"""BentoML services: `Backstory` holds the model; `Gateway` serves the web app and calls it.

    bentoml serve service:Gateway          # both services, one command (see the Makefile)

The decorators carry the operational settings; their values come from backstory.config.Settings
(environment variables BACKSTORY_*), documented in the README.
"""

from __future__ import annotations

import asyncio
import json
import threading
from collections.abc import AsyncGenerator

import bentoml
from bentoml.exceptions import ServiceUnavailable

from backstory.config import get_settings
from backstory.schemas import BackstoryRequest, Generation, PromptRequest
from backstory.store import is_store_tag
from gateway.app import app as gateway_app
from gateway.client import ModelClient

settings = get_settings()


@bentoml.service(
    name="backstory-model",
    # The gateway admits max_concurrency rows (429 beyond, gateway/client.py); the headroom here
    # is for /status's info calls and clients of this service itself.
    # concurrency: the load BentoCloud's autoscaler keeps each replica at, 3/4 of a full batch
    # (the Kubernetes HPA's target on backstory_num_requests_running, deploy/k8s).
    traffic={"timeout": settings.timeout_s, "max_concurrency": settings.max_concurrency + 8,
             "concurrency": max(1, 3 * settings.max_batch_size // 4)},
    # What a scheduler (BentoCloud, Kubernetes) reserves; the CUDA Bento is built with
    # BACKSTORY_GPUS=1 so the model service lands on a GPU node (see bentofile.cuda.yaml).
    resources={"cpu": "2", "memory": "2Gi", **({"gpu": settings.gpus} if settings.gpus else {})},
    workers=1,
)
class Backstory:
    """The model: one continuous-batching scheduler for whole backstories and streams alike."""

    if is_store_tag(settings.model):
        # A model-store tag is declared, so `bentoml build` packs the model into the Bento.
        bento_model = bentoml.models.BentoModel(settings.model)

    def __init__(self) -> None:
        self.engine = None
        self.error: str | None = None
        # Load in the background: the server answers /livez at once and /readyz when loaded.
        threading.Thread(target=self._load, name="load-model", daemon=True).start()

    def _load(self) -> None:
        from backstory.engine import Engine
        from backstory.scheduler import Scheduler

        try:
            engine = Engine(settings)
        except Exception as e:  # a bad model path must show in /status and logs, not hang
            self.error = f"model {settings.model!r} failed to load: {e}"
            raise
        self.scheduler = Scheduler(engine, settings.max_batch_size, settings.batch_wait_ms,
                                   settings.prefill_tokens, lean=settings.decode == "lean")
        self.engine = engine

    def __is_ready__(self) -> bool:
        return self.engine is not None

    def _ready_engine(self):
        if self.engine is None:
            raise ServiceUnavailable(self.error or "the model is still loading")
        return self.engine

    @bentoml.api
    async def generate(self, requests: list[BackstoryRequest]) -> list[Generation]:
        """Whole backstories: each request joins the running batch at the next step. Not
        BentoML's adaptive batching, whose latency model refused bursts with 503s and whose
        batches ran to the end before the next began (backstory/scheduler.py)."""
        return await self._completed(requests)

    @bentoml.api
    async def stream(self, request: BackstoryRequest) -> AsyncGenerator[str, None]:
        """A backstory as it is generated: JSON lines {"text": ...}, then {"result": {...}}."""
        async for line in self._lines(request):
            yield line

    @bentoml.api
    async def complete(self, requests: list[PromptRequest]) -> list[Generation]:
        """Free prompts (the OpenAI-compatible routes), in the same running batch."""
        return await self._completed(requests)

    @bentoml.api
    async def stream_prompt(self, request: PromptRequest) -> AsyncGenerator[str, None]:
        """A free prompt's text as it is generated, as `stream` sends it."""
        async for line in self._lines(request):
            yield line

    async def _completed(self, requests: list[BackstoryRequest] | list[PromptRequest]
                         ) -> list[Generation]:
        self._ready_engine()
        return list(await asyncio.gather(*(self.scheduler.complete(r) for r in requests)))

    async def _lines(self, request: BackstoryRequest | PromptRequest) -> AsyncGenerator[str, None]:
        self._ready_engine()
        async for kind, value in self.scheduler.submit(request):
            payload = {"text": value} if kind == "text" else {"result": value.model_dump()}
            yield json.dumps(payload) + "\n"

    @bentoml.api
    def info(self) -> dict:
        engine = self._ready_engine()
        return {
            "model": engine.name, "device": str(engine.device), "parameters": engine.parameters,
            "dtype": str(engine.model.dtype).removeprefix("torch."),
            "quantize": engine.quantize,
            "context": engine.context, "max_batch_size": settings.max_batch_size,
            "batch_wait_ms": settings.batch_wait_ms, "prefill_tokens": settings.prefill_tokens,
            "max_concurrency": settings.max_concurrency, "in_flight": engine.in_flight,
            "threads": engine.threads,
            "generated_tokens": engine.generated_tokens,
        }


@bentoml.service(
    name="backstory-gateway",
    # Backpressure is the model service's max_concurrency (429 + Retry-After from the gateway);
    # the gateway admits more, so that /status, /livez and the UI keep answering under load.
    traffic={"timeout": settings.timeout_s + 10, "max_concurrency": 16 * settings.max_concurrency},
    resources={"cpu": "1", "memory": "512Mi"},
    workers=1,
)
@bentoml.asgi_app(gateway_app, path="/")
class Gateway:
    """The web app (UI and REST API) in front of the model service."""

    model = bentoml.depends(Backstory)

    def __init__(self) -> None:
        # The proxy's async client is looked up per call, never cached across event loops.
        gateway_app.state.client = ModelClient(lambda: self.model.to_async)

