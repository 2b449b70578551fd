"""The FastAPI app: web UI and REST API in front of the model service.

Mounted by service.py's Gateway (one `bentoml serve`), or standalone against a model-service URL:
    BACKSTORY_MODEL_URL=http://127.0.0.1:3001 uvicorn gateway.app:app
"""

import time
from collections.abc import AsyncIterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Annotated

from fastapi import FastAPI, Query, Request
from fastapi.responses import HTMLResponse, JSONResponse
from fastapi.sse import EventSourceResponse, ServerSentEvent
from fastapi.staticfiles import StaticFiles
from fastapi.templating import Jinja2Templates

import backstory
from backstory.schemas import BackstoryRequest, BackstoryResponse, Generation
from gateway.client import ModelError
from gateway.deps import Body, Client, SettingsDep
from gateway.errors import install_error_handlers
from gateway.middleware import install_middleware

UI = Path(__file__).resolve().parent.parent / "ui"

app = FastAPI(title="Backstory Generator", version=backstory.__version__,
              description="Immersive, lore-rich character backstories from a name and a description.")
app.mount("/static", StaticFiles(directory=UI / "static"), name="static")
templates = Jinja2Templates(directory=UI / "templates")
install_error_handlers(app)
install_middleware(app)


def respond(request: BackstoryRequest, result: Generation, started: float) -> BackstoryResponse:
    return BackstoryResponse(**result.model_dump(), name=request.name,
                             description=request.description,
                             seconds=round(time.perf_counter() - started, 3))


@app.get("/", response_class=HTMLResponse, include_in_schema=False)
async def index(request: Request, settings: SettingsDep):
    return templates.TemplateResponse(request, "index.html", {
        "name_max": settings.name_max_chars, "description_max": settings.description_max_chars,
        "version": backstory.__version__})


BODY_TYPES = ("application/json", "application/x-www-form-urlencoded", "multipart/form-data")
BODY_DOC = {"requestBody": {"required": True, "content": {
    t: {"schema": BackstoryRequest.model_json_schema()} for t in BODY_TYPES}}}


@app.post("/api/generate", response_model=BackstoryResponse, openapi_extra=BODY_DOC)
async def generate(body: Body, client: Client) -> BackstoryResponse:
    """A backstory from form fields (`name`, `description`) or the same fields as JSON."""
    started = time.perf_counter()
    return respond(body, await client.generate(body), started)


@app.get("/generate", response_model=BackstoryResponse)
async def generate_get(query: Annotated[BackstoryRequest, Query()], client: Client
                       ) -> BackstoryResponse:
    """The same as POST /api/generate, from query parameters."""
    started = time.perf_counter()
    return respond(query, await client.generate(query), started)


@app.get("/api/stream", response_class=EventSourceResponse)
async def stream(query: Annotated[BackstoryRequest, Query()], client: Client
                 ) -> AsyncIterator[ServerSentEvent]:
    """Server-Sent Events: `token` events ({"text"}) as the story is written, then one `done`
    event with the fields of POST /api/generate, or an `error` event ({"error", "status"})."""
    started = time.perf_counter()
    try:
        async for item in client.stream(query):
            if "text" in item:
                yield ServerSentEvent(event="token", data={"text": item["text"]})
            else:
                result = respond(query, Generation.model_validate(item["result"]), started)
                yield ServerSentEvent(event="done", data=result.model_dump())
    except ModelError as e:  # headers are already sent: the error travels as an event
        yield ServerSentEvent(event="error", data={"error": e.message, "status": e.status})


@app.get("/status")
async def status(client: Client, settings: SettingsDep) -> JSONResponse:
    """Health and configuration of the whole stack, for people and monitors."""
    body = {"status": "ok", "time": datetime.now(UTC).isoformat(timespec="seconds"),
            "version": backstory.__version__,
            "limits": {"name_max_chars": settings.name_max_chars,
                       "description_max_chars": settings.description_max_chars,
                       "max_new_tokens": settings.max_new_tokens_limit}}
    try:
        info = await client.info()
    except ModelError as e:
        body.update(status="unavailable", model=None, device=None, error=e.message)
        return JSONResponse(body, status_code=503)
    return JSONResponse({**body, **info})
