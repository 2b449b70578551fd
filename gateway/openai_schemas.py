"""Request bodies of the OpenAI-compatible routes (gateway/openai.py), mapped onto ours.

Only what we serve is accepted: parameters that would change the output and that we cannot honour
(logprobs, echo, best_of, suffix, tools) are refused with 422 rather than ignored; parameters
that only tune style or bookkeeping (presence/frequency penalties, logit_bias, user, metadata)
are accepted and ignored, as other OpenAI-compatible servers do, so stock clients work.
"""

from typing import Any

from pydantic import BaseModel, ConfigDict, Field, model_validator

from backstory.config import get_settings
from backstory.schemas import ChatMessage, PromptRequest

_s = get_settings()
MAX_STOPS = 4
UNSUPPORTED = ("logprobs", "top_logprobs", "echo", "best_of", "suffix", "tools", "functions",
               "response_format")


class Sampling(BaseModel):
    model_config = ConfigDict(extra="allow")  # style knobs of other servers: accepted, ignored

    model: str = Field(description="Any id: the served model answers (see GET /v1/models).")
    max_tokens: int | None = Field(None, ge=1, le=_s.max_new_tokens_limit)
    temperature: float | None = Field(None, ge=0, le=2, description="0 = greedy.")
    top_p: float | None = Field(None, gt=0, le=1)
    n: int = Field(1, ge=1, le=4)
    stream: bool = False
    seed: int | None = Field(None, ge=0, le=2**32 - 1, description="Same seed, same text.")
    stop: str | list[str] | None = Field(None, description=f"Up to {MAX_STOPS} strings.")

    @model_validator(mode="after")
    def _supported(self) -> "Sampling":
        for name in UNSUPPORTED:
            value = (self.model_extra or {}).get(name)
            if value not in (None, False, 0, 1, [], ""):
                raise ValueError(f"{name} is not supported by this server")
        if self.stream and self.n > 1:
            raise ValueError("n > 1 is not supported with stream")
        if len(self.stops()) > MAX_STOPS or any(not s for s in self.stops()):
            raise ValueError(f"stop: at most {MAX_STOPS} non-empty strings")
        return self

    def stops(self) -> list[str]:
        return [self.stop] if isinstance(self.stop, str) else list(self.stop or [])

    def options(self, i: int, tokens: int | None, drawn: int) -> dict[str, Any]:
        """Our sampling options for choice i: seeds seed, seed+1, ... as our n candidates (a
        seed is drawn when none is given, so the response can say which seeds reproduce it)."""
        greedy = self.temperature == 0
        seed = drawn if self.seed is None else self.seed
        return {"max_new_tokens": tokens, "temperature": None if greedy else self.temperature,
                "top_k": 1 if greedy else None, "top_p": self.top_p, "seed": (seed + i) % 2**32}


class ChatCompletionRequest(Sampling):
    messages: list[ChatMessage] = Field(min_length=1, max_length=64)
    max_completion_tokens: int | None = Field(None, ge=1, le=_s.max_new_tokens_limit)

    def requests(self, drawn: int) -> list[PromptRequest]:
        tokens = self.max_completion_tokens or self.max_tokens
        return [PromptRequest(messages=self.messages, **self.options(i, tokens, drawn))
                for i in range(self.n)]


class CompletionRequest(Sampling):
    prompt: str | list[str] = Field(description="Text to continue (a list: each one, in order).")

    def prompts(self) -> list[str]:
        return [self.prompt] if isinstance(self.prompt, str) else self.prompt

    @model_validator(mode="after")
    def _prompts(self) -> "CompletionRequest":
        if not 1 <= len(self.prompts()) * self.n <= 16:
            raise ValueError("prompt: 1 to 16 prompts (times n)")
        return self

    def requests(self, drawn: int) -> list[PromptRequest]:
        return [PromptRequest(prompt=p, **self.options(i, self.max_tokens, drawn))
                for p in self.prompts() for i in range(self.n)]


def body_doc(shape: type[BaseModel]) -> dict:
    """The request body in the OpenAPI document, its $defs inlined (a $ref to "#/$defs/..."
    does not resolve inside an OpenAPI document)."""
    schema = shape.model_json_schema()
    defs = schema.pop("$defs", {})

    def inline(node):
        if isinstance(node, dict):
            ref = node.get("$ref", "")
            if ref.startswith("#/$defs/"):
                return inline(defs[ref.removeprefix("#/$defs/")])
            return {k: inline(v) for k, v in node.items()}
        return [inline(v) for v in node] if isinstance(node, list) else node

    return {"requestBody": {"required": True,
                            "content": {"application/json": {"schema": inline(schema)}}}}


ERRORS = {code: {"description": text} for code, text in {
    400: "Malformed body", 401: "API key missing or wrong", 422: "Invalid or unsupported field",
    429: "Busy: retry after Retry-After seconds", 502: "Model service failed",
    503: "Model service unavailable", 504: "Model service timed out"}.items()}
