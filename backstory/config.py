"""Every runtime setting of the product, in one place, read from the environment.

Each field is `BACKSTORY_<NAME>` in the environment (e.g. `BACKSTORY_MODEL=runs/tiny`). The README's
configuration table lists them; keep the two in step.
"""

from functools import lru_cache
from pathlib import Path
from typing import Literal

from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict

ROOT = Path(__file__).resolve().parent.parent
# The served default: our LoRA fine-tune (two rounds of DPO) of the packaged SmolLM2-135M-Instruct,
# which beats the zero-shot base on name use and relevance after the first sentence and on
# coherence (README, Quality).
FINE_TUNED = str(ROOT / "models" / "backstory")
DEFAULT_MODEL = FINE_TUNED


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="BACKSTORY_", env_file=".env", extra="ignore")

    # Model service
    model: str = Field(DEFAULT_MODEL, description="Model folder (a full model or a LoRA adapter; "
                       "default: our fine-tune, models/backstory), BentoML model tag, Hub id, or "
                       "`smollm2-135m-instruct` (the packaged base, zero-shot).")
    base: str = Field("", description="The base an adapter folder is merged into (a folder, tag, "
                      "Hub id or `smollm2-135m-instruct`); empty = the one the adapter names.")
    instruction: Literal["short", "guided"] = Field(
        "short", description="Chat models: the instruction in the prompt (see backstory/text.py).")
    device: str = Field("auto", description="auto, cpu, cuda or cuda:N.")
    dtype: Literal["auto", "float32", "bfloat16", "float16"] = Field(
        "auto", description="Weights and compute; auto = bfloat16 on CUDA, float32 on CPU.")
    quantize: Literal["auto", "none", "int8", "int4"] = Field(
        "auto", description="CPU weights: int4 = 4-bit decoder layers (groups of 32, the "
        "packaged base's own format) and an int8 logits head; int8 = every linear int8; auto = "
        "int4 on the CPU for a llama model whose layers are 4-bit already, else none. A seeded "
        "story stays the same alone or batched either way.")
    decode: Literal["lean", "transformers"] = Field(
        "lean", description="Served decode loop: lean = ours over a llama model's modules with a "
        "KV cache of slots (backstory/llama.py); transformers = the model's forward with its "
        "DynamicCache (other architectures always).")
    dense_decode_rows: int = Field(
        0, ge=0, description="int4 layers: a decode step of at least this many rows multiplies by "
        "the dequantized bfloat16 weights, not through the int4 kernel (faster for wide batches, "
        "README, Performance). Gives up \"same seed, same story\": a row's numbers then depend "
        "on how many rows ran beside it. 0 = never (the default).")
    threads: int = Field(0, ge=0, description="torch CPU threads; 0 = all cores.")
    gpus: int = Field(0, ge=0, le=8, description="GPUs the model service asks its scheduler for.")
    max_batch_size: int = Field(32, ge=1, le=256, description="Rows in the running batch; more "
                                "requests wait for a free row.")
    batch_wait_ms: int = Field(10, ge=0, description="An idle scheduler waits this long for more "
                               "rows before its first step.")
    prefill_tokens: int = Field(2048, ge=1, description="Prompt tokens one step prefills for "
                                "joining rows (at least one row): bounds the stall of the "
                                "running rows.")
    max_concurrency: int = Field(64, ge=1, description="Requests one model replica admits.")
    timeout_s: int = Field(120, ge=1, description="Traffic timeout of each service.")

    # Generation defaults and limits
    max_new_tokens: int = Field(200, ge=1, description="Default length of a backstory in tokens.")
    max_new_tokens_limit: int = Field(400, ge=1, description="Largest max_new_tokens accepted.")
    temperature: float = Field(0.7, gt=0, le=2, description="Default sampling temperature.")
    top_p: float = Field(0.95, gt=0, le=1, description="Default nucleus sampling mass.")
    top_k: int = Field(50, ge=0, description="Default top-k (0 = off).")
    # 1.1: the 135M base writes run-on word salad at the 1.44 the old 7M model needed (the
    # penalty also hits punctuation and the prompt's words).
    repetition_penalty: float = Field(1.1, ge=1, le=2, description="Default repetition penalty.")
    no_repeat_ngram_size: int = Field(0, ge=0, le=10, description="Ban repeated n-grams (0 = off).")
    opener: bool = Field(True, description="Start each story with the character's name.")
    restate: bool = Field(False, description="Open with the description as a sentence.")
    name_max_chars: int = Field(80, ge=1, description="Longest accepted name.")
    description_max_chars: int = Field(600, ge=1, description="Longest accepted description.")
    prompt_max_chars: int = Field(8000, ge=1, description="OpenAI-compatible routes: longest "
                                  "prompt or chat message.")
    setting_max_chars: int = Field(300, ge=1, description="Longest accepted setting note.")
    section_max_chars: int = Field(1500, ge=1, description="Re-roll: longest section kept.")

    # Gateway
    model_url: str = Field(
        "http://127.0.0.1:3000", description="Model service URL for the standalone gateway."
    )
    api_key: str = Field("", description="If set, API routes require it (X-API-Key / Bearer).")
    cors_origins: list[str] = Field(default_factory=list, description="Allowed CORS origins.")
    max_body_bytes: int = Field(16_384, ge=1024, description="Largest accepted request body.")
    log_text: bool = Field(False, description="Log user text (debug only).")


@lru_cache
def get_settings() -> Settings:
    return Settings()
