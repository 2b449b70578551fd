"""From model results to the API's stories, and from one request to several (candidates, roster).

The model service knows nothing of candidates, rosters or sections: the gateway fans a request out
into rows with their own seeds, sends them in one call (one batch), and splits sections itself,
because it knows what structure the request asked for.
"""

import random
import time

from fastapi import Request

from backstory.config import get_settings
from backstory.controls import fill_requests, join_sections, split_sections
from backstory.schemas import BackstoryRequest, Generation, Steering, Story

SEEDS = 2**32


def respond(http: Request, request: BackstoryRequest, result: Generation, started: float
            ) -> Story:
    """The story, and what the access log line needs (tokens; text only if configured)."""
    http.state.tokens = getattr(http.state, "tokens", 0) or 0
    http.state.tokens += result.tokens
    if get_settings().log_text:
        http.state.text = {"name": request.name, "description": request.description}
    fields = result.model_dump()
    if request.structure == "sections" and fields.get("sections") is None:
        fields["sections"] = split_sections(result.backstory)
    return Story(**fields, **request.model_dump(include=set(Steering.model_fields)),
                 name=request.name, description=request.description,
                 seconds=round(time.perf_counter() - started, 3))


async def complete_sections(client, rows: list[BackstoryRequest], results: list[Generation]
                            ) -> list[Generation]:
    """Sections mode: split each story, then write every missing section of every row in one
    more call of the model service (one batch), each with the sections found as context."""
    results, jobs = list(results), []
    for i, (row, result) in enumerate(zip(rows, results)):
        if row.structure == "sections" and not row.section:
            sections = split_sections(result.backstory)
            results[i] = result.model_copy(update={"sections": sections})
            jobs += [(i, key, request) for key, request in
                     fill_requests(row, sections, result.seed)]
    if jobs:
        for (i, key, _), written in zip(jobs, await client.generate_many([r for *_, r in jobs])):
            sections = {**results[i].sections, key: split_sections(written.backstory)[key]}
            results[i] = results[i].model_copy(update={
                "sections": sections, "backstory": join_sections(sections),
                "tokens": results[i].tokens + written.tokens})
    return results


def with_seed(request: BackstoryRequest) -> BackstoryRequest:
    """The request with its seed drawn here if it has none, so that fanned-out rows follow it."""
    if request.seed is not None:
        return request
    return request.model_copy(update={"seed": random.getrandbits(32)})


def candidates(request: BackstoryRequest, n: int) -> list[BackstoryRequest]:
    """n rows of one request with seeds seed, seed+1, ...: the first is the story the same
    request gives alone, and each candidate can be asked for again by its own seed."""
    request = with_seed(request)
    return [request.model_copy(update={"seed": (request.seed + i) % SEEDS}) for i in range(n)]


def roster(shared: BackstoryRequest, characters: list[tuple[str, str]]
           ) -> list[BackstoryRequest]:
    """One row per character, with the shared controls and options; character i gets seed+i."""
    shared = with_seed(shared)
    return [shared.model_copy(update={"name": name, "description": description,
                                      "seed": (shared.seed + i) % SEEDS})
            for i, (name, description) in enumerate(characters)]
