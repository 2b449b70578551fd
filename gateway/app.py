"""The FastAPI app: web UI and REST API in front of the model service.

Mounted by service.py's Gateway (one `bentoml serve`), or standalone against a model-service URL:
    BACKSTORY_MODEL_URL=http://127.0.0.1:3001 uvicorn gateway.app:app
"""

import json
import time
from collections.abc import AsyncIterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Annotated

from fastapi import Query, Request
from fastapi.responses import HTMLResponse, JSONResponse
from fastapi.sse import EventSourceResponse, ServerSentEvent
from fastapi.staticfiles import StaticFiles
from fastapi.templating import Jinja2Templates
from fastapi_offline import FastAPIOffline

import backstory
from backstory.controls import GENRES, SECTIONS, TONES
from backstory.schemas import BackstoryRequest, BackstoryResponse, ErrorResponse, Generation
from gateway import extras, openai
from gateway.client import ModelError
from gateway.deps import Body, Client, SettingsDep
from gateway.errors import install_error_handlers
from gateway.middleware import DOCS_ASSETS, install_middleware
from gateway.openai import install_openai_errors
from gateway.shapes import GenerateRequest
from gateway.stories import complete_sections, respond

UI = Path(__file__).resolve().parent.parent / "ui"

# /docs and /redoc from assets shipped in fastapi-offline: FastAPI's own pages load Swagger UI
# and ReDoc from a CDN, which an offline machine (or a strict CSP) cannot reach.
app = FastAPIOffline(title="Backstory Generator", version=backstory.__version__,
                     description="Lore-rich character backstories from a name and a description.",
                     static_url=DOCS_ASSETS)
app.mount("/static", StaticFiles(directory=UI / "static"), name="static")
templates = Jinja2Templates(directory=UI / "templates")
install_error_handlers(app)
install_middleware(app)
app.include_router(extras.router)
app.include_router(openai.router)
install_openai_errors(app)


@app.get("/", response_class=HTMLResponse, include_in_schema=False)
async def index(request: Request, settings: SettingsDep):
    return templates.TemplateResponse(request, "index.html", {
        "name_max": settings.name_max_chars, "description_max": settings.description_max_chars,
        "setting_max": settings.setting_max_chars,
        "genre_options": [(g, g.capitalize()) for g in GENRES],
        "tone_options": [(t, t.capitalize()) for t in TONES],
        "sections_json": json.dumps(SECTIONS),
        "version": backstory.__version__})


ERRORS = {code: {"model": ErrorResponse, "description": text} for code, text in {
    400: "Malformed body", 401: "API key missing or wrong", 413: "Body too large",
    415: "Unsupported content type", 422: "Invalid field (named in detail)",
    429: "Model service busy: retry after Retry-After seconds",
    502: "Model service failed", 503: "Model service unavailable (Retry-After)",
    504: "Model service timed out"}.items()}
STREAM_ERRORS = {k: v for k, v in ERRORS.items() if k not in (400, 413, 415)}
BODY_TYPES = ("application/json", "application/x-www-form-urlencoded", "multipart/form-data")


def form_schema(schema: dict) -> dict:
    """Form fields are strings and cannot be null: an optional field is simply left out."""
    def not_null(prop: dict) -> dict:
        kept = next((a for a in prop.get("anyOf", []) if a.get("type") != "null"), prop)
        notes = {k: prop[k] for k in ("title", "description", "default")
                 if prop.get(k) is not None}
        return {**kept, **notes}

    # A form field is text: objects (a re-roll's `context`) are for JSON bodies only.
    fields = {k: not_null(v) for k, v in schema["properties"].items()}
    return {**schema, "properties": {k: v for k, v in fields.items()
                                     if v.get("type") not in ("object", "array")}}


JSON_SCHEMA = GenerateRequest.model_json_schema()
BODY_DOC = {"requestBody": {"required": True, "content": {
    t: {"schema": JSON_SCHEMA if t == "application/json" else form_schema(JSON_SCHEMA)}
    for t in BODY_TYPES}}}


@app.post("/api/generate", response_model=BackstoryResponse, openapi_extra=BODY_DOC,
          responses=ERRORS, response_model_exclude_none=True)
async def generate(http: Request, body: Body, client: Client) -> BackstoryResponse:
    """A backstory from form fields (`name`, `description`) or the same fields as JSON, steered
    by the optional controls; `n` (up to 4) candidates to pick among."""
    return await extras.generate_candidates(http, body, client)


@app.get("/generate", response_model=BackstoryResponse, responses=STREAM_ERRORS,
         response_model_exclude_none=True)
async def generate_get(http: Request, query: Annotated[GenerateRequest, Query()],
                       client: Client) -> BackstoryResponse:
    """The same as POST /api/generate, from query parameters."""
    return await extras.generate_candidates(http, query, client)


@app.get("/api/stream", response_class=EventSourceResponse, responses=STREAM_ERRORS)
async def stream(http: Request, query: Annotated[BackstoryRequest, Query()], client: Client
                 ) -> AsyncIterator[ServerSentEvent]:
    """Server-Sent Events: `token` events ({"text"}) as the story is written, then one `done`
    event with the fields of POST /api/generate, or an `error` event ({"error", "status"})."""
    started = time.perf_counter()
    try:
        async for item in client.stream(query):
            # Checked per event, not left to the server: stop reading the model service as soon
            # as the browser is gone (leaving the loop closes the upstream stream, ending the row).
            if await http.is_disconnected():
                break
            if "text" in item:
                yield ServerSentEvent(event="token", data={"text": item["text"]})
            else:
                (result,) = await complete_sections(  # sections mode: the missing ones
                    client, [query], [Generation.model_validate(item["result"])])
                result = respond(http, query, result, started)
                yield ServerSentEvent(event="done", data=result.model_dump(exclude_none=True))
    except ModelError as e:  # headers are already sent: the error travels as an event
        yield ServerSentEvent(event="error", data={"error": e.message, "status": e.status})


@app.get("/status", responses={503: {"description": "Model service unavailable"}})
async def status(client: Client, settings: SettingsDep) -> JSONResponse:
    """Health and configuration of the whole stack, for people and monitors."""
    body = {"status": "ok", "time": datetime.now(UTC).isoformat(timespec="seconds"),
            "version": backstory.__version__,
            "limits": {"name_max_chars": settings.name_max_chars,
                       "description_max_chars": settings.description_max_chars,
                       "max_new_tokens": settings.max_new_tokens_limit}}
    try:
        info = app.state.last_info = await client.info()
    except ModelError as e:
        if e.status == 429:  # alive but at its concurrency limit: busy, not down
            last = getattr(app.state, "last_info", None) or {"model": None, "device": None}
            return JSONResponse({**body, **last, "status": "busy"})
        body.update(status="unavailable", model=None, device=None, error=e.message)
        return JSONResponse(body, status_code=503)
    return JSONResponse({**body, **info})
