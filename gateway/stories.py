"""From model results to the API's stories, and from one request to several (candidates, roster).

The model service knows nothing of candidates, rosters or sections: the gateway fans a request out
into rows with their own seeds, sends them in one call (one batch), and splits sections itself,
because it knows what structure the request asked for.
"""

import random
import time

from fastapi import Request

from backstory.config import get_settings
from backstory.controls import split_sections
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
