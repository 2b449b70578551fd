"""What writers and game masters reach for (issue 11): a roster in one request, a re-rolled
section, a story exported as Markdown, JSON or a Character Card V2. Included by gateway/app.py.
Candidates (`n`) are on POST /api/generate itself (see `generate_candidates`)."""

import time

from fastapi import APIRouter, Query, Request
from fastapi.responses import Response

from backstory.controls import SECTIONS, join_sections, split_sections
from backstory.schemas import BackstoryRequest, BackstoryResponse, ErrorResponse
from gateway import export
from gateway.deps import Client
from gateway.shapes import (
    ExportFormat,
    ExportStory,
    GenerateRequest,
    RerollRequest,
    RosterRequest,
    RosterResponse,
)
from gateway.stories import candidates, complete_sections, respond, roster

router = APIRouter()
ERRORS = {code: {"model": ErrorResponse, "description": text} for code, text in {
    401: "API key missing or wrong", 413: "Body too large",
    422: "Invalid field (named in detail)", 429: "Model service busy (Retry-After)",
    502: "Model service failed", 503: "Model service unavailable (Retry-After)",
    504: "Model service timed out"}.items()}


async def generate_candidates(http: Request, body: GenerateRequest, client: Client
                              ) -> BackstoryResponse:
    """One story, or with n > 1 the first of n candidates plus all of them in `candidates`."""
    started = time.perf_counter()
    request = BackstoryRequest.model_validate(body.model_dump(exclude={"n"}))
    rows = candidates(request, body.n) if body.n > 1 else [request]
    results = await complete_sections(client, rows, await client.generate_many(rows))
    stories = [respond(http, row, result, started) for row, result in zip(rows, results)]
    return BackstoryResponse(**stories[0].model_dump(),
                             candidates=stories if body.n > 1 else None)


@router.post("/api/roster", response_model=RosterResponse, response_model_exclude_none=True,
             responses=ERRORS)
async def make_roster(http: Request, body: RosterRequest, client: Client) -> RosterResponse:
    """Up to 16 characters (a party, a faction's leaders) with shared controls, written together
    in one batch; character i gets seed+i, so the same roster and seed give the same stories."""
    started = time.perf_counter()
    shared = BackstoryRequest(**body.model_dump(exclude={"characters"}),
                             **body.characters[0].model_dump())
    rows = roster(shared, [(c.name, c.description) for c in body.characters])
    results = await complete_sections(client, rows, await client.generate_many(rows))
    stories = [respond(http, row, result, started) for row, result in zip(rows, results)]
    return RosterResponse(stories=stories, seconds=round(time.perf_counter() - started, 3))


@router.post("/api/reroll", response_model=BackstoryResponse, response_model_exclude_none=True,
             responses=ERRORS)
async def reroll(http: Request, body: RerollRequest, client: Client) -> BackstoryResponse:
    """Write one section of a sections-mode story again (new seed unless given), the other
    sections kept and given to the model as context. Returns the whole story, re-joined."""
    started = time.perf_counter()
    result = await client.generate(body)
    sections = {k: body.context.get(k, "") for k in SECTIONS}
    sections[body.section] = split_sections(result.backstory)[body.section]
    result = result.model_copy(update={"backstory": join_sections(sections),
                                       "sections": sections})
    return BackstoryResponse(**respond(http, body, result, started).model_dump())


@router.post("/api/export", responses={422: ERRORS[422], 401: ERRORS[401]},
             response_class=Response)
async def export_story(story: ExportStory, format: ExportFormat = Query(
        "markdown", description="markdown, json, or card (Character Card V2 JSON)")) -> Response:
    """A story (the JSON of a generate response) as a file to download: Markdown, JSON, or a
    Character Card V2 (`spec: "chara_card_v2"`) for chat front-ends such as SillyTavern."""
    name = export.filename(story, format)
    return Response(export.render(story, format), media_type=export.MEDIA[format],
                    headers={"Content-Disposition": f'attachment; filename="{name}"'})
