"""The naive way to serve the model: one `model.generate()` per request, batch of 1.

Shared by the baseline server (bench/baseline.py) and the bench's bare in-process measurement, so
both do exactly the work the original seed did, with the product's prompt and sampling defaults.
"""

import time
from dataclasses import dataclass
from pathlib import Path

import torch
from transformers import PreTrainedTokenizerBase

from backstory.config import Settings
from backstory.engine import prompt_text
from backstory.text import clean_backstory, opening
from backstory.weights import context_length, load_model, pick_device, resolve_model


@dataclass
class Output:
    backstory: str
    tokens: int
    seed: int
    seconds: float  # the whole call: tokenize, generate, decode
    generate_seconds: float  # model.generate() alone


def encode_prompt(tokenizer: PreTrainedTokenizerBase, settings: Settings, name: str,
                  description: str) -> list[int]:
    """The served prompt's token ids, as the service builds them: shared with the llama.cpp
    anchor (bench/anchor.py), so that all three servers start from the same tokens."""
    prompt = prompt_text(tokenizer, settings, name, description)
    return tokenizer(prompt, add_special_tokens=False)["input_ids"]


class NaiveGenerator:
    """The model in memory, loaded the way Engine loads it (same dtype and device), without any
    batching, per-row sampler or streaming."""

    def __init__(self, model_dir: str, settings: Settings | None = None):
        self.settings = settings or Settings(model=model_dir)
        self.device = pick_device("auto")
        self.tokenizer, self.model = load_model(resolve_model(model_dir), self.device,
                                                self.settings.dtype, self.settings.base)
        self.name = Path(model_dir).name
        self.context = context_length(self.model)

    def prompt_ids(self, name: str, description: str) -> torch.Tensor:
        ids = encode_prompt(self.tokenizer, self.settings, name, description)
        return torch.tensor([ids[-self.context + 1:]], device=self.device)

    @torch.inference_mode()
    def generate(self, name: str, description: str, new_tokens: int, seed: int,
                 temperature: float | None = None) -> Output:
        """One backstory of exactly `new_tokens` tokens (EOS suppressed by min_new_tokens), or
        as many as the context leaves, sampled like the service (temperature, top-p, top-k,
        repetition penalty). use_cache is explicit: trained configs may say use_cache=false."""
        s = self.settings
        started = time.perf_counter()
        ids = self.prompt_ids(name, description)
        n = max(1, min(new_tokens, self.context - ids.shape[1]))
        torch.manual_seed(seed)  # global RNG, as a naive server would: not thread-safe
        t0 = time.perf_counter()
        out = self.model.generate(
            ids, attention_mask=torch.ones_like(ids), do_sample=True,
            temperature=temperature or s.temperature, top_p=s.top_p, top_k=s.top_k,
            repetition_penalty=s.repetition_penalty, min_new_tokens=n, max_new_tokens=n,
            use_cache=True, pad_token_id=self.tokenizer.eos_token_id)
        generate_seconds = time.perf_counter() - t0
        new = out[0, ids.shape[1]:].tolist()
        opener = opening(name, description, s.opener, s.restate)
        text = clean_backstory(self.tokenizer.decode(new, skip_special_tokens=True), opener)
        return Output(backstory=text, tokens=len(new), seed=seed,
                      seconds=time.perf_counter() - started, generate_seconds=generate_seconds)
