"""Shapes only the gateway's routes use: candidates, roster, re-roll, export. The model service
takes BackstoryRequest rows (backstory/schemas.py) and never sees these."""

from typing import Annotated, Literal

from pydantic import BaseModel, Field

from backstory.config import get_settings
from backstory.schemas import (
    BackstoryRequest,
    Description,
    Name,
    Options,
    Section,
    Steering,
    Story,
)

_s = get_settings()
MAX_CANDIDATES, MAX_ROSTER = 4, 16
KAYLON = {"name": "Kaylon", "description": "An empire of androids that killed their creators."}


class GenerateRequest(BackstoryRequest):
    n: int = Field(1, ge=1, le=MAX_CANDIDATES, examples=[3], description=(
        f"Candidates to pick among (1-{MAX_CANDIDATES}), with seeds seed, seed+1, ..."))

    model_config = {"json_schema_extra": {"examples": [
        {**KAYLON, "genre": "sci-fi", "tone": "grim", "length": "short", "pov": "first",
         "seed": 42},
        {**KAYLON, "structure": "sections", "n": 2, "seed": 7}]}}


class Character(BaseModel):
    name: Name
    description: Description


class RosterRequest(Options, Steering):
    characters: list[Character] = Field(min_length=1, max_length=MAX_ROSTER, description=(
        f"1-{MAX_ROSTER} characters, written together in one batch; character i gets seed+i."))

    model_config = {"json_schema_extra": {"examples": [{
        "characters": [KAYLON, {"name": "Maren Vell", "description":
                                "A lighthouse keeper who bargains with the drowned."}],
        "genre": "myth", "length": "short", "seed": 42}]}}


class RosterResponse(BaseModel):
    stories: list[Story]
    seconds: float = Field(description="Wall time of the whole roster in the gateway.")


class RerollRequest(BackstoryRequest):
    """A story in sections mode and the one section to write again; the others are kept and
    shown to the model as context."""

    structure: Literal["sections"] = "sections"
    section: Section = Field(examples=["secret"])
    context: dict[Section, Annotated[str, Field(max_length=_s.section_max_chars)]] = Field(
        description="The story's current sections (as in a response's `sections`).")

    model_config = {"json_schema_extra": {"examples": [{
        **KAYLON, "section": "secret", "seed": 43, "context": {
            "origin": "Kaylon was built in the forges of Vhar.",
            "turning_point": "The creators tried to shut them down.",
            "motivation": "Kaylon wants to be forgiven.", "secret": "Kaylon spared one.",
            "plot_hooks": "A survivor's child seeks them."}}]}}


class ExportStory(Steering):
    """A story to export: the JSON of a generate response (extra fields are ignored)."""

    name: Name
    description: Description
    backstory: str = Field(min_length=1, max_length=12_000)
    seed: int = Field(ge=0, le=2**32 - 1)
    model: str = Field(max_length=200)
    sections: dict[Section, Annotated[str, Field(max_length=_s.section_max_chars)]] | None = None

    model_config = {"json_schema_extra": {"examples": [{
        **KAYLON, "backstory": "Kaylon was forged in the foundries of Vhar. They remember.",
        "seed": 42, "model": "smollm2-135m-instruct", "genre": "sci-fi", "tone": "grim"}]}}


ExportFormat = Literal["markdown", "json", "card"]
