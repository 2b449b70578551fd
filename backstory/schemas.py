"""Request and response shapes shared by the gateway (validation) and the model service
(batch items).

Limits come from Settings, so an operator changes them in one place (see the README's table).
"""

from typing import Annotated

from pydantic import AfterValidator, BaseModel, Field

from backstory.config import get_settings
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


class BackstoryRequest(Options):
    name: Name
    description: Description


class Generation(BaseModel):
    """What the model service returns for one request."""

    backstory: str
    tokens: int = Field(description="Tokens generated.")
    seed: int
    model: str


class BackstoryResponse(Generation):
    name: str
    description: str
    seconds: float = Field(description="Wall time of the request in the gateway.")


class FieldError(BaseModel):
    field: str
    message: str


class ErrorResponse(BaseModel):
    """Every error the API returns."""

    error: str = Field(description="What is wrong, for people.")
    detail: list[FieldError] | None = Field(None, description="Per-field validation errors.")
