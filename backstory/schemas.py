"""Request and response shapes shared by the gateway (validation) and the model service
(batch items).

Limits come from Settings, so an operator changes them in one place (see the README's table).
"""

from typing import Annotated, Literal

from pydantic import AfterValidator, BaseModel, Field, model_validator

from backstory.config import get_settings
from backstory.controls import GENRES, LENGTHS, POVS, SECTIONS, STRUCTURES, TONES
from backstory.text import CONTROL_CHARS, has_control_chars

_s = get_settings()


def _clean_text(value: str) -> str:
    value = value.strip()
    if not value:
        raise ValueError("must not be empty or only whitespace")
    if has_control_chars(value):
        raise ValueError("must not contain control characters")
    return value


# The same rule as _clean_text, in the OpenAPI schema too: something visible, no control characters.
TEXT_PATTERN = f"^[^{CONTROL_CHARS}]*[^\\s{CONTROL_CHARS}][^{CONTROL_CHARS}]*$"
Name = Annotated[str, Field(max_length=_s.name_max_chars, pattern=TEXT_PATTERN,
                            description="The character's name."), AfterValidator(_clean_text)]
Description = Annotated[str, Field(max_length=_s.description_max_chars, pattern=TEXT_PATTERN,
                                   description="A short description of the character."),
                        AfterValidator(_clean_text)]


class Options(BaseModel):
    """Per-request sampling options; None means the served default (Settings)."""

    max_new_tokens: int | None = Field(None, ge=1, le=_s.max_new_tokens_limit)
    min_new_tokens: int = Field(0, ge=0, le=_s.max_new_tokens_limit,
                                description="Force at least this many tokens (benchmarks).")
    temperature: float | None = Field(None, gt=0, le=2)
    top_p: float | None = Field(None, gt=0, le=1)
    top_k: int | None = Field(None, ge=0, le=1000)
    repetition_penalty: float | None = Field(None, ge=1, le=2)
    seed: int | None = Field(None, ge=0, le=2**32 - 1, description="Same seed, same story.")


# The enums come from backstory/controls.py, where their prompt text lives.
Genre = Literal[tuple(GENRES)]
Tone = Literal[tuple(TONES)]
LengthName = Literal[tuple(LENGTHS)]
Section = Literal[tuple(SECTIONS)]
Setting = Annotated[str, Field(max_length=_s.setting_max_chars, pattern=TEXT_PATTERN),
                    AfterValidator(_clean_text)]
Context = Annotated[str, Field(max_length=_s.section_max_chars), AfterValidator(str.strip)]


class Steering(BaseModel):
    """How the story is steered, through the prompt. Each left out (null) adds nothing: the
    story is the one the same request always got."""

    genre: Genre | None = Field(None, examples=["sci-fi"], description="One of: "
                                + ", ".join(GENRES) + ".")
    tone: Tone | None = Field(None, examples=["grim"], description="One of: "
                              + ", ".join(TONES) + ".")
    length: LengthName | None = Field(None, examples=["short"], description=(
        "short / standard / long: a token budget (" + " / ".join(
            str(v.tokens) for v in LENGTHS.values()) + ") unless max_new_tokens is given, "
        "and for short and long a line in the prompt. standard is the default."))
    pov: Literal[POVS] | None = Field(None, examples=["first"], description=(
        "Point of view: third or first person (the story then opens \"My name is ...\")."))
    setting: Setting | None = Field(None, examples=[
        "The Vess Empire, a desert theocracy ruled by blind priests."],
        description="The world the story must stay within, like a lorebook entry.")
    structure: Literal[STRUCTURES] | None = Field(None, examples=["sections"], description=(
        "prose (default) or sections: headed sections (" + ", ".join(SECTIONS.values())
        + "), also returned split in `sections`."))


class Controls(Steering):
    """Steering, and what a re-roll adds (set by POST /api/reroll; other routes ignore them)."""

    section: Section | None = Field(None, description=(
        "Re-roll (POST /api/reroll): the one section to write again."))
    context: dict[Section, Context] | None = Field(None, description=(
        "Re-roll: the story's sections, kept as context for the new one."))


class BackstoryRequest(Options, Controls):
    name: Name
    description: Description

    @model_validator(mode="after")
    def _length_budget(self) -> "BackstoryRequest":
        """A named length sets the token budget, unless the request gives its own; five
        sections need the long budget when no length is named."""
        if self.max_new_tokens is None and (self.length or self.structure == "sections"):
            tokens = LENGTHS[self.length or "long"].tokens
            self.max_new_tokens = min(tokens, _s.max_new_tokens_limit)
        return self


class Generation(BaseModel):
    """What the model service returns for one request."""

    backstory: str
    tokens: int = Field(description="Tokens generated.")
    seed: int
    model: str
    sections: dict[Section, str] | None = Field(None, description=(
        "structure=sections: each section's text; \"\" where the model left it out."))
    finish_reason: Literal["length", "stop"] | None = Field(None, description=(
        "length: max_new_tokens ran out (the text is cut to its last sentence); stop: the model "
        "ended it."))
    prompt_tokens: int | None = Field(None, description="Tokens in the prompt.")


class Story(Generation, Steering):
    """One story as the API returns it: the result, the character, the controls it was
    steered with (those set), and the time the request took."""

    name: str
    description: str
    seconds: float = Field(description="Wall time of the request in the gateway.")


class BackstoryResponse(Story):
    candidates: list[Story] | None = Field(None, description=(
        "n > 1: every candidate (seeds seed, seed+1, ...); the fields above are the first's."))


class FieldError(BaseModel):
    field: str
    message: str


class ErrorResponse(BaseModel):
    """Every error the API returns."""

    error: str = Field(description="What is wrong, for people.")
    detail: list[FieldError] | None = Field(None, description="Per-field validation errors.")


class ChatMessage(BaseModel):
    role: Literal["system", "user", "assistant"]
    content: str = Field(max_length=_s.prompt_max_chars)


class PromptRequest(Options):
    """A free prompt (the OpenAI-compatible routes, gateway/openai.py): chat messages, rendered
    with the model's chat template, or raw text to continue. The model writes what it likes:
    no opener, no backstory clean-up."""

    messages: list[ChatMessage] | None = Field(None, min_length=1, max_length=64)
    prompt: str | None = Field(None, min_length=1, max_length=_s.prompt_max_chars)

    @model_validator(mode="after")
    def _one_of(self) -> "PromptRequest":
        if (self.messages is None) == (self.prompt is None):
            raise ValueError("give either messages or prompt")
        return self
