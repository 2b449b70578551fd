"""The model in memory (found and loaded by backstory/weights.py): build its prompts and per-row
settings, turn tokens into a result. Decoding is the scheduler's (backstory/scheduler.py), for
the service and for Engine.generate alike (the training run's sample backstories, the
evaluation, the distillation).
"""

import random
import threading
from pathlib import Path

import torch
from transformers import PreTrainedTokenizerBase

from backstory.config import Settings
from backstory.quant import quantized
from backstory.sampling import RowSettings
from backstory.schemas import BackstoryRequest, Controls, Generation, PromptRequest
from backstory.text import SPECIAL_STOPS, build_prompt, clean_backstory, find_stop, opening
from backstory.weights import context_length, load_model, pick_device, pick_quantize, resolve_model


def prompt_text(tokenizer: PreTrainedTokenizerBase, settings: Settings, name: str,
                description: str, controls: Controls | None = None) -> str:
    """The served prompt (text.build_prompt with the served settings and the request's
    controls: genre, tone, length, point of view, setting, structure)."""
    return build_prompt(name, description, settings.opener, settings.restate, tokenizer,
                        settings.instruction, controls)


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
        keep = settings.quantize in ("auto", "int4") and self.device.type == "cpu"
        self.tokenizer, self.model = load_model(path, self.device, settings.dtype, settings.base,
                                                keep_low_rank=keep)
        self.name = Path(path).name if Path(path).is_dir() else path
        self.parameters = sum(p.numel() for p in self.model.parameters())
        self.quantize = pick_quantize(settings.quantize, self.device, self.model)
        if self.quantize != "none":
            self.model = quantized(self.model, self.quantize, settings.dense_decode_rows > 0)
        if getattr(self.model, "low_rank", None):  # load_weights kept them for int4 alone
            raise RuntimeError("an adapter's low-rank changes were left unapplied")
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

    def shared_prefix(self) -> list[int]:
        """The token ids every served backstory prompt begins with (a chat model's system turn
        and the instruction): two unlike requests' prompts, up to where they part."""
        a, b = (self.tokenizer(self.prompt(BackstoryRequest(name=name, description=text)),
                               add_special_tokens=False)["input_ids"]
                for name, text in (("Aldric", "A knight of the marches."),
                                   ("Zo", "An empire of androids that killed its makers.")))
        n = next((i for i, (x, y) in enumerate(zip(a, b)) if x != y), min(len(a), len(b)))
        return a[:n]

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
