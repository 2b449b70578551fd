"""Per-row sampling for batched generation.

A running batch mixes requests with their own settings and seeds (transformers' generate() would
apply one temperature, top-p and seed to all). So each row's next token is drawn here with that
row's settings and its own torch.Generator: a row gets the same tokens for a given seed whether
it runs alone or in a batch, whatever the other rows do.
"""

import threading
from dataclasses import dataclass, field

import torch
from transformers import NoRepeatNGramLogitsProcessor

NEG_INF = float("-inf")


@dataclass
class RowSettings:
    temperature: float
    top_p: float
    top_k: int
    repetition_penalty: float
    seed: int
    min_new_tokens: int
    max_new_tokens: int
    # A free prompt (PromptRequest): its first token may glue onto the prompt's last word, and
    # its text is returned as generated (no opener, no backstory clean-up).
    free: bool = False
    # Set when the client has gone: the row ends at the next step and frees its slot.
    cancelled: threading.Event = field(default_factory=threading.Event)
    generator: torch.Generator | None = None  # the row's own random stream, from `seed`

    def rng(self, device) -> torch.Generator:
        if self.generator is None:
            self.generator = torch.Generator(device=device).manual_seed(self.seed)
        return self.generator


class RowSampler:
    """The next token of every row of a running batch; its rows may be at different steps."""

    def __init__(self, rows: list[RowSettings], eos_id: int, device,
                 first_banned: torch.Tensor | None = None, no_repeat_ngram_size: int = 0):
        """`first_banned`: token ids the first new token may not be (see Engine.word_pieces),
        except in rows with a free prompt. `no_repeat_ngram_size`: n > 0 bans every token that
        would repeat an n-gram of the row's prompt and story (transformers' processor, the rule
        generate() applies)."""
        self.first_banned = first_banned
        self.ban_first = [not r.free for r in rows]
        def col(name, dtype=torch.float32):
            values = [getattr(r, name) for r in rows]
            return torch.tensor(values, dtype=dtype, device=device)[:, None]

        self.temperature, self.top_p = col("temperature"), col("top_p")
        self.penalty = col("repetition_penalty")
        self.top_k = [r.top_k for r in rows]
        self.min_new = [r.min_new_tokens for r in rows]
        self.max_new = [r.max_new_tokens for r in rows]
        self.cancelled = [r.cancelled for r in rows]
        self.generators = [r.rng(device) for r in rows]
        self.eos_id = eos_id
        self.no_repeat = (NoRepeatNGramLogitsProcessor(no_repeat_ngram_size)
                          if no_repeat_ngram_size else None)

    def sample(self, input_ids: torch.LongTensor, scores: torch.FloatTensor,
               steps: list[int]) -> torch.LongTensor:
        """Each row's next token; `steps[i]`: how many tokens row i has generated so far."""
        scores = self._penalise(input_ids, scores.float()) / self.temperature
        if self.no_repeat is not None:
            scores = self.no_repeat(input_ids, scores)
        for i, step in enumerate(steps):
            if step == 0 and self.first_banned is not None and self.ban_first[i]:
                scores[i, self.first_banned] = NEG_INF
            if step < self.min_new[i]:
                scores[i, self.eos_id] = NEG_INF
        probs, order = self._truncate(scores)
        # Inverse-CDF sampling, one uniform draw per row from the row's own generator: unlike
        # torch.multinomial, the pick does not depend on how many tokens the batch kept (k).
        u = torch.cat([torch.rand(1, generator=g, device=scores.device) for g in self.generators])
        cdf = probs.cumsum(dim=1)
        pick = torch.searchsorted(cdf, (u * cdf[:, -1])[:, None]).clamp(max=probs.shape[1] - 1)
        chosen = order.gather(1, pick).squeeze(1)
        for i, step in enumerate(steps):
            # A row ends at its own max_new_tokens even when the batch runs longer.
            if step >= self.max_new[i] or self.cancelled[i].is_set():
                chosen[i] = self.eos_id
        return chosen

    def _penalise(self, input_ids, scores):
        seen = torch.gather(scores, 1, input_ids)
        seen = torch.where(seen < 0, seen * self.penalty, seen / self.penalty)
        return scores.scatter(1, input_ids, seen)

    def _truncate(self, scores):
        """Top-k then top-p per row, over the k best tokens only (a full sort of the vocabulary
        every step costs more than the model on small CPU batches)."""
        k = scores.shape[1] if min(self.top_k) == 0 else min(max(self.top_k), scores.shape[1])
        top, order = torch.topk(scores, k, dim=1)
        ranks = torch.arange(k, device=scores.device)[None, :]
        row_k = torch.tensor([t or k for t in self.top_k], device=scores.device)[:, None]
        top = top.masked_fill(ranks >= row_k, NEG_INF)
        probs = torch.softmax(top, dim=1)
        # Keep the smallest prefix whose mass reaches top_p (always at least the best token).
        outside = probs.cumsum(dim=1) - probs >= self.top_p
        probs = probs.masked_fill(outside, 0.0)
        return probs, order
