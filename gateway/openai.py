"""OpenAI-compatible API: GET /v1/models, POST /v1/chat/completions and /v1/completions (with
`stream: true` as OpenAI's chunks), so the `openai` client, SillyTavern and agent frameworks can
use the model. The same scheduler, limits, API key and statuses as /api; error bodies are
OpenAI's shape ({"error": {"message", "type", "param", "code"}}), which those clients parse.
"""

import json
import random
import time
import uuid
from collections.abc import AsyncIterator
from typing import TypeVar

from fastapi import APIRouter, FastAPI, Request
from fastapi.responses import JSONResponse, StreamingResponse
from pydantic import BaseModel, ValidationError

from backstory.schemas import Generation, PromptRequest
from gateway.client import ModelClient, ModelError
from gateway.deps import Client
from gateway.openai_schemas import (
    ERRORS,
    ChatCompletionRequest,
    CompletionRequest,
    Sampling,
    body_doc,
)

router = APIRouter(prefix="/v1", tags=["OpenAI-compatible"])
T = TypeVar("T", bound=BaseModel)
TYPES = {400: "invalid_request_error", 401: "authentication_error", 404: "not_found_error",
         422: "invalid_request_error", 429: "rate_limit_error"}


class OpenAIError(Exception):
    def __init__(self, status: int, message: str, param: str | None = None,
                 retry_after: int | None = None):
        super().__init__(message)
        self.status, self.message, self.param = status, message, param
        self.retry_after = retry_after


def install_openai_errors(app: FastAPI) -> None:
    async def handle(_: Request, e: OpenAIError) -> JSONResponse:
        headers = {"Retry-After": str(e.retry_after)} if e.retry_after else None
        return JSONResponse(error_body(e.status, e.message, e.param), e.status, headers=headers)

    app.add_exception_handler(OpenAIError, handle)


def error_body(status: int, message: str, param: str | None = None) -> dict:
    kind = TYPES.get(status, "server_error" if status >= 500 else "invalid_request_error")
    return {"error": {"message": message, "type": kind, "param": param, "code": None}}


async def parse(request: Request, shape: type[T]) -> T:
    try:
        data = await request.json()
    except ValueError:
        raise OpenAIError(400, "the body is not valid JSON") from None
    if not isinstance(data, dict):
        raise OpenAIError(422, "the JSON body must be an object")
    try:
        return shape.model_validate(data)
    except ValidationError as e:
        first = e.errors(include_url=False)[0]
        param = ".".join(str(p) for p in first["loc"]) or None
        raise OpenAIError(422, f"{param or 'body'}: {first['msg']}", param) from None


def upstream(e: ModelError) -> OpenAIError:
    return OpenAIError(e.status, e.message, retry_after=e.retry_after)


async def model_name(client: ModelClient) -> str:
    """The served model's name, asked of the model service once."""
    if not getattr(client, "model_name", None):
        try:
            client.model_name = (await client.info())["model"]
        except ModelError as e:
            raise upstream(e) from e
    return client.model_name


@router.get("/models", responses=ERRORS)
async def models(client: Client) -> dict:
    """The one model this server runs."""
    name = await model_name(client)
    return {"object": "list", "data": [{"id": name, "object": "model", "created": 0,
                                        "owned_by": "backstory-generator"}]}


@router.post("/chat/completions", openapi_extra=body_doc(ChatCompletionRequest), responses=ERRORS)
async def chat_completions(http: Request, client: Client):
    """Chat: the messages through the model's chat template."""
    body = await parse(http, ChatCompletionRequest)
    return await answer(client, body, body.requests(random.getrandbits(32)), chat=True)


@router.post("/completions", openapi_extra=body_doc(CompletionRequest), responses=ERRORS)
async def completions(http: Request, client: Client):
    """Raw text continued as is."""
    body = await parse(http, CompletionRequest)
    return await answer(client, body, body.requests(random.getrandbits(32)), chat=False)


async def answer(client: ModelClient, body: Sampling, requests: list[PromptRequest], chat: bool):
    meta = {"id": f"{'chatcmpl' if chat else 'cmpl'}-{uuid.uuid4().hex}",
            "object": "chat.completion" if chat else "text_completion",
            "created": int(time.time()), "model": await model_name(client)}
    if body.stream:
        return await stream(client, requests[0], body.stops(), meta, chat)
    try:
        results = await client.generate_many(requests)
    except ModelError as e:
        raise upstream(e) from e
    choices = [choice(i, *cut(g.backstory, body.stops()), g.finish_reason, chat)
               for i, g in enumerate(results)]
    prompt_tokens = sum(g.prompt_tokens or 0 for g in results[:: body.n])  # n share a prompt
    completion_tokens = sum(g.tokens for g in results)
    return {**meta, "choices": choices,
            "seeds": [g.seed for g in results], "usage": {
                "prompt_tokens": prompt_tokens, "completion_tokens": completion_tokens,
                "total_tokens": prompt_tokens + completion_tokens}}


def choice(i: int, text: str, stopped: bool, reason: str | None, chat: bool) -> dict:
    reason = "stop" if stopped else (reason or "stop")
    content = {"message": {"role": "assistant", "content": text}} if chat else {"text": text}
    return {"index": i, **content, "logprobs": None, "finish_reason": reason}


def cut(text: str, stops: list[str]) -> tuple[str, bool]:
    """`text` up to its first stop string, and whether one was found."""
    hits = [i for i in (text.find(s) for s in stops) if i >= 0]
    return (text[: min(hits)], True) if hits else (text, False)


async def stream(client: ModelClient, request: PromptRequest, stops: list[str], meta: dict,
                 chat: bool) -> StreamingResponse:
    """SSE chunks as OpenAI sends them. The first item is read before answering, so a refusal
    (429) or an outage (503) is an HTTP status, not an event after a 200."""
    items = client.stream(request)
    try:
        first = await anext(items)
    except ModelError as e:
        raise upstream(e) from e
    meta = {**meta, "object": "chat.completion.chunk" if chat else "text_completion"}
    return StreamingResponse(chunks(items, first, StopWatcher(stops), meta, chat),
                             media_type="text/event-stream")


async def chunks(items: AsyncIterator[dict], first: dict, watcher: "StopWatcher", meta: dict,
                 chat: bool) -> AsyncIterator[str]:
    def event(text: str | None, reason: str | None = None) -> str:
        if chat:
            delta = {"role": "assistant", "content": ""} if text is None else (
                {"content": text} if text else {})
            body = {"index": 0, "delta": delta, "logprobs": None, "finish_reason": reason}
        else:
            body = {"index": 0, "text": text or "", "logprobs": None, "finish_reason": reason}
        return f"data: {json.dumps({**meta, 'choices': [body]})}\n\n"

    if chat:
        yield event(None)
    item, reason = first, None
    try:
        while True:
            if "text" in item and (text := watcher.feed(item["text"])):
                yield event(text)
            if "result" in item:
                reason = Generation.model_validate(item["result"]).finish_reason
                if text := watcher.flush():
                    yield event(text)
                break
            if watcher.stopped:  # leaving closes the upstream stream: the row ends
                reason = "stop"
                break
            item = await anext(items)
    except ModelError as e:  # headers are sent: the error travels as an event, as OpenAI's does
        yield f"data: {json.dumps(error_body(e.status, e.message))}\n\n"
    else:
        yield event("", reason or "stop")
    finally:
        await items.aclose()
    yield "data: [DONE]\n\n"


class StopWatcher:
    """Cuts streamed text at the first stop string, holding back only a tail that could be the
    start of one."""

    def __init__(self, stops: list[str]):
        self.stops, self.pending, self.stopped = stops, "", False

    def feed(self, text: str) -> str:
        self.pending += text
        out, self.stopped = cut(self.pending, self.stops)
        if self.stopped:
            self.pending = ""
            return out
        hold = max((k for s in self.stops for k in range(len(s) - 1, 0, -1)
                    if self.pending.endswith(s[:k])), default=0)
        out, self.pending = self.pending[: len(self.pending) - hold], self.pending[
            len(self.pending) - hold:]
        return out

    def flush(self) -> str:
        out, self.pending = self.pending, ""
        return out
