"""The model in memory: load it, build its prompts and per-row settings, turn tokens into a
result. Decoding is the scheduler's (backstory/scheduler.py), for the service and for
Engine.generate alike (the training run's sample backstories, the evaluation, the distillation).
"""

import random
import threading
from pathlib import Path

import torch
from transformers import (
    AutoModelForCausalLM,
    AutoTokenizer,
    GenerationConfig,
    PreTrainedModel,
    PreTrainedTokenizerBase,
)

from backstory.base import PACKAGED_BASE, ensure_base
from backstory.config import Settings
from backstory.quant import four_bit_grid, quantized
from backstory.sampling import RowSettings
from backstory.schemas import BackstoryRequest, Controls, Generation, PromptRequest
from backstory.text import SPECIAL_STOPS, build_prompt, clean_backstory, find_stop, opening


def resolve_model(ref: str) -> str:
    """A model folder as is; the packaged base's name as its converted folder (converted on first
    use); otherwise a BentoML model-store tag; otherwise a Hub id."""
    if Path(ref).is_dir():
        return ref
    if ref == PACKAGED_BASE:
        return str(ensure_base())
    import bentoml

    try:
        return bentoml.models.get(ref).path
    except Exception:  # not a tag, or not in the store: let transformers try the Hub
        return ref


def pick_device(setting: str = "auto") -> torch.device:
    if setting == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(setting)


def has_fast_bf16(device: torch.device) -> bool:
    """bf16 matmuls run natively: CUDA with bf16 support, or a CPU with AVX512-BF16 / AMX."""
    if device.type == "cuda":
        return torch.cuda.is_bf16_supported()
    cpuinfo = Path("/proc/cpuinfo")
    flags = cpuinfo.read_text(errors="replace") if cpuinfo.exists() else ""
    return "avx512_bf16" in flags or "amx_bf16" in flags


def pick_dtype(setting: str, device: torch.device) -> torch.dtype:
    """`auto`: bf16 on CUDA, fp32 on CPU. A CPU with native bf16 runs the default model 20-35 %
    faster per step in bf16 (bench/levers.md), but bf16 rounding depends on the batch's shape,
    so a seeded story would change with its batch mates; fp32 keeps it exact, bf16 is opt-in.
    fp16 weights are upcast: half precision matmuls without hardware support are slow."""
    if setting == "auto":
        return torch.bfloat16 if device.type == "cuda" and has_fast_bf16(device) else torch.float32
    return getattr(torch, setting)


def pick_quantize(setting: str, device: torch.device, model: PreTrainedModel) -> str:
    """`auto`: int4 on the CPU for a llama model whose layers are 4-bit already (the packaged
    base: int4 reads them as they are, about 2x faster steps for 1-8 rows, backstory/quant.py);
    otherwise none (a merged fine-tune keeps what 4 bits would round away)."""
    if setting != "auto":
        return setting
    llama = device.type == "cpu" and model.config.model_type == "llama"
    return "int4" if llama and four_bit_grid(model) else "none"


def is_adapter(path: str) -> bool:
    return (Path(path) / "adapter_config.json").is_file()


def load_weights(path: str, dtype: torch.dtype, base: str = "") -> PreTrainedModel:
    """A full model folder as is; a LoRA adapter folder merged into `base` (default: the base its
    adapter_config.json names), one plain model again: no adapter arithmetic at serving time."""
    if not is_adapter(path):
        return AutoModelForCausalLM.from_pretrained(path, dtype=dtype)
    from peft import PeftConfig, PeftModel

    base = base or PeftConfig.from_pretrained(path).base_model_name_or_path
    model = AutoModelForCausalLM.from_pretrained(resolve_model(base), dtype=torch.float32)
    merged = PeftModel.from_pretrained(model, path).merge_and_unload()  # merged in fp32
    return merged.to(dtype)


def load_model(path: str, device: torch.device, dtype: str = "auto", base: str = ""
               ) -> tuple[PreTrainedTokenizerBase, PreTrainedModel]:
    """Tokenizer (left padding, a pad token) and model in eval mode on `device`, in `dtype`
    (see pick_dtype). An adapter folder brings its tokenizer; its weights merge into `base`."""
    dtype = pick_dtype(dtype, device)
    tokenizer = AutoTokenizer.from_pretrained(path, padding_side="left")
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    model = load_weights(path, dtype, base).to(device).eval()
    # The folder's generation_config.json (sampling defaults for users of model.generate, as the
    # bench's naive server and levers are) would be merged into every generate() call: its
    # repetition penalty on top of the settings'. The settings are the one source of defaults.
    model.generation_config = GenerationConfig(
        bos_token_id=model.config.bos_token_id, eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id)
    return tokenizer, model


def prompt_text(tokenizer: PreTrainedTokenizerBase, settings: Settings, name: str,
                description: str, controls: Controls | None = None) -> str:
    """The served prompt (text.build_prompt with the served settings and the request's
    controls: genre, tone, length, point of view, setting, structure)."""
    return build_prompt(name, description, settings.opener, settings.restate, tokenizer,
                        settings.instruction, controls)


def context_length(model: PreTrainedModel) -> int:
    config = model.config
    return getattr(config, "n_positions", None) or getattr(config, "max_position_embeddings", 2048)


class Engine:
    def __init__(self, settings: Settings):
        self.settings = settings
        self.device = pick_device(settings.device)
        if settings.threads:
            torch.set_num_threads(settings.threads)
        self.threads = torch.get_num_threads()
        path = resolve_model(settings.model)
        if settings.quantize not in ("auto", "none") and self.device.type != "cpu":
            raise ValueError(f"quantize={settings.quantize} is for the CPU (its kernels are)")
        self.tokenizer, self.model = load_model(path, self.device, settings.dtype, settings.base)
        self.name = Path(path).name if Path(path).is_dir() else path
        self.parameters = sum(p.numel() for p in self.model.parameters())
        self.quantize = pick_quantize(settings.quantize, self.device, self.model)
        if self.quantize != "none":
            self.model = quantized(self.model, self.quantize)
        self.context = context_length(self.model)
        self.word_pieces = self._word_pieces()
        self.lock = threading.Lock()  # one batch at a time: batches already use every core
        self.in_flight = 0  # rows waiting for or in a batch (operators and tests watch it)
        self.generated_tokens = 0
        self._counting = threading.Lock()

    def _word_pieces(self) -> torch.Tensor:
        """Tokens that would glue onto the previous word ("Bram" + "le"). The prompt ends with
        the name, so the story's first token must start a new word or be punctuation."""
        def glues(text: str) -> bool:  # a letter or digit, or part of a multi-byte character
            return text[:1].isalnum() or text[:1] == "\ufffd"

        ids = [i for i in range(len(self.tokenizer)) if glues(self.tokenizer.decode([i]))]
        return torch.tensor(ids, dtype=torch.long, device=self.device)

    def first_banned(self) -> torch.Tensor | None:
        return self.word_pieces if self.settings.opener else None

    def opener(self, request: BackstoryRequest | PromptRequest) -> str:
        """The part of the prompt that is already the story (see text.build_prompt)."""
        if isinstance(request, PromptRequest):
            return ""
        return opening(request.name, request.description, self.settings.opener,
                       self.settings.restate, request)

    def prompt(self, r: BackstoryRequest | PromptRequest) -> str:
        """The text the model continues: the served backstory prompt, or a free one (chat
        messages through the model's chat template, or raw text)."""
        if not isinstance(r, PromptRequest):
            return prompt_text(self.tokenizer, self.settings, r.name, r.description, r)
        if r.prompt is not None:
            return r.prompt
        messages = [m.model_dump() for m in r.messages]
        if not getattr(self.tokenizer, "chat_template", None):  # a plain LM: the turns as text
            return "\n\n".join(m["content"] for m in messages) + "\n\n"
        return self.tokenizer.apply_chat_template(messages, tokenize=False,
                                                  add_generation_prompt=True)

    def row_settings(self, r: BackstoryRequest | PromptRequest) -> RowSettings:
        s = self.settings
        free = isinstance(r, PromptRequest)
        # A story is never its opener alone: end-of-text may not be its first token (the
        # README's call has no seed, and a reply of just the name is no story).
        min_new = r.min_new_tokens if free else max(1, r.min_new_tokens)
        max_new = max(r.max_new_tokens or s.max_new_tokens, min_new)
        return RowSettings(
            temperature=r.temperature or s.temperature, top_p=r.top_p or s.top_p,
            top_k=s.top_k if r.top_k is None else r.top_k,
            repetition_penalty=r.repetition_penalty or s.repetition_penalty,
            seed=random.getrandbits(32) if r.seed is None else r.seed,
            min_new_tokens=min_new, max_new_tokens=max_new, free=free,
        )

    def encode(self, requests: list[BackstoryRequest], rows: list[RowSettings]
               ) -> dict[str, torch.Tensor]:
        """The requests' prompts as one left-padded batch (input_ids, attention_mask) on the
        device, cut to the model's context; each row's lengths are cut to what context is left."""
        prompts = [self.prompt(r) for r in requests]
        enc = self.tokenizer(prompts, return_tensors="pt", padding=True, add_special_tokens=False)
        enc = {k: v[:, -self.context + 1:].to(self.device) for k, v in enc.items()}
        budget = max(1, self.context - enc["input_ids"].shape[1])
        for row in rows:  # never run past the model's context
            row.max_new_tokens = min(row.max_new_tokens, budget)
            row.min_new_tokens = min(row.min_new_tokens, row.max_new_tokens)
        return enc

    def generate(self, requests: list[BackstoryRequest | PromptRequest],
                 rows: list[RowSettings] | None = None) -> list[Generation]:
        """All requests to their end, each with its own settings and seed, through the service's
        continuous-batching loop (one decode loop for everything: backstory/scheduler.py);
        `rows` lets the caller keep the rows' cancel events."""
        from backstory.scheduler import Scheduler  # it drives this engine: imported late

        loop = Scheduler(self, max_batch=max(1, len(requests)), wait_ms=0,
                         prefill_tokens=self.settings.prefill_tokens,
                         lean=self.settings.decode == "lean")
        return loop.generate(requests, rows)

    def count(self, in_flight: int = 0, tokens: int = 0) -> None:
        with self._counting:
            self.in_flight += in_flight
            self.generated_tokens += tokens

    def result(self, opener: str, row: RowSettings, ids: list[int]) -> Generation:
        eos = self.tokenizer.eos_token_id
        ids = ids[: ids.index(eos)] if eos in ids else ids
        text = self.tokenizer.decode(ids, skip_special_tokens=True)
        if row.free:  # what the model wrote, up to the end of its turn, whole characters only
            text = text[: find_stop(text, SPECIAL_STOPS)].rstrip("\ufffd")
        else:
            text = clean_backstory(text, opener=opener)
        return Generation(backstory=text, tokens=len(ids), seed=row.seed, model=self.name)
