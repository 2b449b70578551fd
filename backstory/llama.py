"""The lean decode path for llama models (the default base): our own loop over a transformers
LlamaForCausalLM's modules, with a KV cache of fixed slots.

transformers' DynamicCache grows by torch.cat: every step copies every layer's whole cache, and
the running batch's merges and drops copy it again (left padding both sides). At 32 rows of a
few hundred tokens that is hundreds of MB a step, more than the model's own matmuls. Here each
row owns a slot of a preallocated cache: a step writes one position per row in place, and a
joining row is prefilled straight into the slot after the last row's. The slots are a ring, so
rows stay in the order they joined (attention's runs rely on it: runs_of) at little cost: when
the oldest rows leave, the ring starts past them and nothing moves; when a row leaves from the
middle, the rows on its side with fewer rows move one slot each. Each row counts its positions
from 0, so there is no padding to mask but the end of shorter rows.

The modules are the model's own (weights shared, quantized layers work as they are, int4 ones
fused three and two to a call); only the order of operations is ours, the one LlamaDecoderLayer
runs, so the numbers are the same as transformers' up to float rounding. A row's numbers never
depend on its batch mates (each prompt is prefilled alone; a decode step gives positions past a
row's own a weight of exactly 0): with int4 layers, the default, a row's logits are the same bit
for bit alone or batched, which "same seed, same story" rests on.
"""

from collections.abc import Callable

import torch
import torch.nn.functional as F
from transformers import PreTrainedModel
from transformers.models.llama.modeling_llama import apply_rotary_pos_emb

BUCKET = 64  # attention spans a multiple of this: fewer distinct shapes, little waste
MIN_SPARED = 512  # row positions a second attention run must spare (runs_of)


def supports(model: PreTrainedModel) -> bool:
    return model.config.model_type == "llama"


def step(linear: torch.nn.Module) -> Callable[[torch.Tensor], torch.Tensor]:
    """A linear layer's call for one position per row: an int4 layer's own, tensors bound."""
    return linear.decode() if hasattr(linear, "decode") else linear.forward


def module(linear: torch.nn.Module) -> Callable[[torch.Tensor], torch.Tensor]:
    """A layer's own forward (a prefill's: several positions per row)."""
    return linear.forward


def dense(linear: torch.nn.Module) -> Callable[[torch.Tensor], torch.Tensor]:
    """A wide decode step's call: an int4 layer's dequantized weights (faster than its kernel
    at many rows, but the matmul library sums a row in an order that depends on the row count)."""
    return getattr(linear, "dense", linear.forward)


class SlotCache:
    """A llama model's decode state: K and V for `max_rows` slots, rows 0..rows-1 in use."""

    def __init__(self, model: PreTrainedModel, max_rows: int, max_len: int, dense_rows: int = 0):
        """`dense_rows`: a decode step of at least this many rows multiplies by the int4 layers'
        dequantized weights, not through the int4 kernel (0: never). Faster for a wide batch,
        but a row's numbers then depend on how many rows ran beside it."""
        cfg, inner = model.config, model.model
        self.model, self.layers = model, inner.layers
        self.heads, self.kv_heads = cfg.num_attention_heads, cfg.num_key_value_heads
        self.head_dim = getattr(cfg, "head_dim", None) or cfg.hidden_size // self.heads
        self.max_rows, self.max_len = max_rows, max_len
        dtype = inner.embed_tokens.weight.dtype
        cos, sin = inner.rotary_emb(torch.zeros(1, dtype=dtype), torch.arange(max_len)[None])
        self.cos, self.sin = cos[0], sin[0]  # (max_len, head_dim): position p's rotation
        half = self.head_dim // 2
        self.sin_signed = torch.cat([-self.sin[:, :half], self.sin[:, half:]], dim=1)
        kv = self.kv_heads * self.head_dim
        self.qkv_sizes = [self.heads * self.head_dim, kv, kv]
        self.k: list[torch.Tensor] = []
        self.v: list[torch.Tensor] = []
        self.span = 0  # positions allocated per slot: grows in buckets up to max_len
        self.lengths = torch.zeros(max_rows, dtype=torch.long)  # tokens cached per slot
        self.rows = 0
        self.start = 0  # the slot of row 0: rows 0..rows-1 sit in slots start.. (a ring)
        # Per layer, what a decode step calls, looked up once: nn.Module's attribute lookups
        # and __call__ cost about 2 ms of a step at one row (no hooks run on this path).
        self.plan = self._plan(step)
        self.dense_rows = dense_rows
        self.dense_plan = self._plan(dense) if dense_rows else self.plan
        self.prefix: list[int] = []  # token ids whose keys and values are kept (set_prefix)
        self.prefix_kv: list[torch.Tensor] = []  # per layer: K and V stacked, (2, kv, P, dim)

    def _plan(self, call: Callable) -> list[tuple]:
        return [(layer.input_layernorm.forward, self._qkv_of(layer.self_attn, call),
                 call(layer.self_attn.o_proj), layer.post_attention_layernorm.forward,
                 self._mlp_of(layer.mlp, call), layer.self_attn.scaling) for layer in self.layers]

    def clear(self) -> None:
        self.rows = self.start = 0

    def slot(self, row: int) -> int:
        return (self.start + row) % self.k[0].shape[0]

    def _slots(self, rows: int) -> torch.Tensor:
        return (self.start + torch.arange(rows)) % (self.k[0].shape[0] if self.k else 1)

    def _pieces(self, lo: int, hi: int) -> list[tuple[int, int]]:
        """Rows lo..hi-1 as runs of adjacent slots: two where the ring wraps."""
        cut = lo + self.k[0].shape[0] - self.slot(lo)
        return [(lo, hi)] if hi <= cut else [(lo, cut), (cut, hi)]

    def _reserve(self, rows: int, span: int) -> None:
        """Room for `rows` slots of `span` positions: grown by doubling (a copy each time, a
        few times in a server's life), so that one short row does not hold a full batch's."""
        have_rows = self.k[0].shape[0] if self.k else 0
        if rows <= have_rows and span <= self.span:
            return
        rows = have_rows if rows <= have_rows else min(max(rows, 2 * have_rows, 4), self.max_rows)
        span = self.span if span <= self.span else min(max(up(span), 2 * self.span), self.max_len)
        shape = (rows, self.kv_heads, span, self.head_dim)
        grown = [torch.zeros(shape, dtype=self.cos.dtype) for _ in range(2 * len(self.layers))]
        order = self._slots(self.rows)  # the ring, unrolled
        for old, new in zip(self.k + self.v, grown):
            new[: self.rows, :, : self.span] = old[order]
        self.lengths[: self.rows] = self.lengths[order]
        self.k, self.v, self.span = grown[: len(self.layers)], grown[len(self.layers):], span
        self.start = 0

    @torch.inference_mode()
    def prefill(self, ids: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """Joining rows (left-padded prompts) into the next free slots; their next-token logits.
        Each row runs alone, from position 0, over its own prompt only: a batched prefill's
        matmuls and attention sum a row in another order when its mates widen the call (the
        last bits differ, and int4 layers' bfloat16 rounding grows that), so a row's numbers
        would depend on who joined with it. Alone they cannot. The price: a burst of prompts
        prefills at about half the speed of one batched call (README, Performance)."""
        n = mask.sum(dim=1).tolist()
        if self.rows + len(ids) > self.max_rows or max(n) > self.max_len:
            raise ValueError("the slot cache is full")
        self._reserve(self.rows + len(ids), max(n))
        logits = torch.cat([self._prefill_row(row[len(row) - length:], self.slot(self.rows + i))
                            for i, (row, length) in enumerate(zip(ids, n))])
        self.rows += len(ids)  # only now: a prefill that fails takes no slot
        return logits

    @torch.inference_mode()
    def set_prefix(self, ids: list[int]) -> None:
        """Keep the keys and values of `ids`, the start every served prompt shares (the chat
        template's system turn and the instruction: about half of a backstory prompt's tokens),
        so a prompt that begins with them prefills only the rest. Computed once, the same way
        for every row (a prefill of the prefix alone), so a row's numbers still depend on its
        own tokens only."""
        self.prefix, self.prefix_kv = [], []
        if len(ids) < 2 or len(ids) + 2 > self.max_len:  # (a prompt needs 2 more of its own)
            return
        if self.rows >= self.max_rows:
            raise ValueError("the slot cache is full")
        self._reserve(self.rows + 1, len(ids))
        slot = self.slot(self.rows)  # a free slot, as scratch
        self._prefill_row(torch.tensor(ids), slot)
        self.prefix_kv = [torch.stack([k[slot, :, : len(ids)], v[slot, :, : len(ids)]]).clone()
                          for k, v in zip(self.k, self.v)]
        self.prefix = list(ids)

    def _cached(self, ids: torch.Tensor) -> int:
        """How many of a prompt's first tokens come from the kept prefix: all of it or none
        (and none when fewer than 2 tokens would be left: see _prefill_row)."""
        p = len(self.prefix)
        if not p or len(ids) < p + 2 or ids[:p].tolist() != self.prefix:
            return 0
        return p

    def _prefill_row(self, ids: torch.Tensor, slot: int) -> torch.Tensor:
        n, start = len(ids), self._cached(ids)
        for i, kv in enumerate(self.prefix_kv if start else []):
            self.k[i][slot, :, :start], self.v[i][slot, :, :start] = kv[0], kv[1]
        # At least 2 positions (a padded one, hidden by the causal mask): a prefill is then a
        # prefill to int4 layers whether its prompt has one token or not (backstory/quant.py).
        width = max(n - start, 2)
        ids = ids[torch.arange(start, start + width).clamp(max=n - 1)][None]
        end = start + width
        cos, sin = self.cos[None, start:end], self.sin[None, start:end]  # (1, width, head_dim)
        # New positions see the cached ones and their own past (SDPA's is_causal would align
        # the triangle to the top left corner, not to the new positions).
        mask = (torch.ones(width, end, dtype=torch.bool).tril(start) if start else None)
        x = self.model.model.embed_tokens(ids)
        for i, layer in enumerate(self.layers):
            attn, h = layer.self_attn, layer.input_layernorm(x)
            q, k, v = (t.reshape(1, width, -1, self.head_dim).transpose(1, 2)
                       for t in self._qkv(attn, h).split(self.qkv_sizes, dim=-1))
            q, k = apply_rotary_pos_emb(q, k, cos, sin)  # transformers' own, as its layer does
            self.k[i][slot, :, start:end], self.v[i][slot, :, start:end] = k[0], v[0]
            if start:
                k, v = self.k[i][slot : slot + 1, :, :end], self.v[i][slot : slot + 1, :, :end]
            out = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, is_causal=not start,
                                                 scale=attn.scaling, enable_gqa=True)
            x = x + attn.o_proj(out.transpose(1, 2).reshape(1, width, -1))
            x = x + self._mlp(layer.mlp, layer.post_attention_layernorm(x))
        self.lengths[slot] = n
        return self._logits(self.model.model.norm(x[:, n - 1 - start]))

    @torch.inference_mode()
    def decode_one_token(self, tokens: torch.Tensor) -> torch.Tensor:
        """One new token per running row (slots 0..rows-1); their next-token logits.

        Written out for one position per row rather than through the modules' forward: half
        the ops (q and k rotated in one call, the cache written with one index_copy_, attention
        as two batched matmuls over each row's span), and a row's numbers do not depend on the
        span its mates need: positions past its own get a weight of exactly 0, where SDPA's
        blocked kernel summed a longer span in another order."""
        b, kv, dim = self.rows, self.kv_heads, self.head_dim
        pos = self.lengths[self._slots(b)]
        if int(pos.max()) >= self.max_len:
            raise ValueError(f"a row reached the context length ({self.max_len})")
        span = min(up(int(pos.max()) + 1), self.max_len)
        self._reserve(b, span)
        slots = self._slots(b)  # after _reserve, which unrolls the ring when it grows
        cos, sin = self.cos[pos][:, None], self.sin_signed[pos][:, None]  # (b, 1, head_dim)
        # Per run of rows (runs_of) and of adjacent slots (_pieces): the query rows, the cache's
        # rows (both by kv head), the run's span and its mask.
        parts = []
        for lo, hi, n in runs_of(pos, self.max_len):
            mask = self._mask(pos[lo:hi], n)
            for a, z in self._pieces(lo, hi):
                s = self.slot(a)
                parts.append((slice(a * kv, z * kv), slice(s * kv, (s + z - a) * kv), n,
                              mask[(a - lo) * kv : (z - lo) * kv]))
        # Slot s, head h, position p in a cache viewed as (slots * kv * positions, head_dim).
        at = ((slots[:, None] * kv + torch.arange(kv)) * self.span + pos[:, None]).flatten()
        x = self.model.model.embed_tokens(tokens)  # (b, hidden size)
        heads, view = self.heads, (-1, self.span, dim)
        plan = self.dense_plan if self.dense_rows and b >= self.dense_rows else self.plan
        for i, (norm, qkv_proj, o_proj, mlp_norm, mlp, scaling) in enumerate(plan):
            qkv = qkv_proj(norm(x))
            qk, v = qkv[:, : (heads + kv) * dim].view(b, heads + kv, dim), qkv[:, -kv * dim:]
            # rotate_half(x) is x rolled by half a head with its first half negated (in sin).
            qk = torch.addcmul(qk * cos, qk.roll(dim // 2, dims=-1), sin)
            self.k[i].view(-1, dim).index_copy_(0, at, qk[:, heads:].reshape(-1, dim))
            self.v[i].view(-1, dim).index_copy_(0, at, v.reshape(-1, dim))
            # (rows, kv, positions, dim) as (rows * kv, positions, dim), then each run's span:
            # views (slicing the span first, a reshape copied both caches every layer).
            keys, values = self.k[i].view(view), self.v[i].view(view)
            q = qk[:, :heads].reshape(b * kv, heads // kv, dim)  # query heads by kv head
            out = [attend(q[r], keys[c, :n], values[c, :n], mask, scaling)
                   for r, c, n, mask in parts]
            x = x + o_proj((out[0] if len(out) == 1 else torch.cat(out)).view(b, heads * dim))
            x = x + mlp(mlp_norm(x))
        self.lengths[slots] += 1
        return self._logits(self.model.model.norm(x))

    def _mask(self, pos: torch.Tensor, span: int) -> torch.Tensor:
        """(rows * kv, 1, span), added to the scores: -inf past each row's own positions."""
        mask = torch.full((len(pos), span), float("-inf"), dtype=self.cos.dtype).masked_fill_(
            torch.arange(span)[None] <= pos[:, None], 0.0)
        return mask.repeat_interleave(self.kv_heads, dim=0)[:, None]

    @torch.inference_mode()
    def keep(self, index: list[int]) -> None:
        """Only rows `index` (ascending) stay, in that order. The largest group of them that
        would shift by the same count stays where it is and the ring's start moves; the others
        move one slot each, those before that group last first and those after it first, so no
        move overwrites a row still to move. When the oldest rows leave nothing moves (moving
        every row behind the first one took 116 ms at 32 rows of 500 positions)."""
        if index != sorted(set(index)) or (index and not 0 <= index[0] <= index[-1] < self.rows):
            raise ValueError(f"keep: not ascending rows of {self.rows}: {index}")
        shifts = [row - new for new, row in enumerate(index)]  # nondecreasing
        still = max(set(shifts), key=shifts.count, default=0)
        before = [(row, new) for new, row in enumerate(index) if shifts[new] < still]
        after = [(row, new) for new, row in enumerate(index) if shifts[new] > still]
        to = self.start + still
        for row, new in [*reversed(before), *after]:
            src, dst = self.slot(row), (to + new) % self.k[0].shape[0]
            for cache in self.k + self.v:
                cache[dst] = cache[src]
            self.lengths[dst] = self.lengths[src]
        self.start, self.rows = (to % self.k[0].shape[0] if self.k else 0), len(index)

    @staticmethod
    def _qkv(attn, x: torch.Tensor) -> torch.Tensor:
        """q, k and v side by side: int4 layers are fused into one call (backstory/quant.py)."""
        return SlotCache._qkv_of(attn, call=module)(x)

    @staticmethod
    def _qkv_of(attn, call=step) -> Callable[[torch.Tensor], torch.Tensor]:
        if getattr(attn, "qkv_proj", None) is None:
            return lambda x: torch.cat([attn.q_proj(x), attn.k_proj(x), attn.v_proj(x)], dim=-1)
        return call(attn.qkv_proj)

    @staticmethod
    def _mlp(mlp, x: torch.Tensor) -> torch.Tensor:
        return SlotCache._mlp_of(mlp, call=module)(x)

    @staticmethod
    def _mlp_of(mlp, call=step) -> Callable[[torch.Tensor], torch.Tensor]:
        if getattr(mlp, "gate_up_proj", None) is None:
            return mlp.forward
        gate_up, down, act = call(mlp.gate_up_proj), call(mlp.down_proj), mlp.act_fn

        def fused(x: torch.Tensor) -> torch.Tensor:
            gate, up = gate_up(x).chunk(2, dim=-1)  # LlamaMLP's order of operations
            return down(act(gate) * up)

        return fused

    def _logits(self, hidden: torch.Tensor) -> torch.Tensor:
        return self.model.lm_head(hidden).float()


def attend(q: torch.Tensor, keys: torch.Tensor, values: torch.Tensor, mask: torch.Tensor,
           scale: float) -> torch.Tensor:
    """One position's attention per (row, kv head), its query heads together: (n, g, dim)."""
    scores = torch.baddbmm(mask, q, keys.transpose(1, 2), alpha=scale)
    return torch.bmm(scores.softmax(dim=-1), values)


def runs_of(pos: torch.Tensor, longest: int) -> list[tuple[int, int, int]]:
    """The running rows as one or two runs of slots (lo, hi, span), each attending over the
    span its longest row needs. Attention is a third of a 32-row step, and reads every row to
    the batch's span: rows sit in slots in the order they joined, so the older (longer) ones
    come first, and a split where the lengths drop spares reading the newer rows' unused
    positions (a fifth of the step's attention at 32 staggered rows). Split only where that
    spares more than MIN_SPARED row positions, about what the second run's ops cost. Spans are
    capped at `longest`, the cache's."""
    need = [min(up(p + 1), longest) for p in pos.tolist()]
    b, whole = len(need), max(need)
    best, at = b * whole - MIN_SPARED, 0
    tail = [0] * (b + 1)  # tail[k]: the span rows k.. need
    for k in range(b - 1, 0, -1):
        tail[k] = max(tail[k + 1], need[k])
    head = 0
    for k in range(1, b):
        head = max(head, need[k - 1])
        if k * head + (b - k) * tail[k] < best:
            best, at = k * head + (b - k) * tail[k], k
    if not at:
        return [(0, b, whole)]
    return [(0, at, max(need[:at])), (at, b, tail[at])]


def up(n: int) -> int:
    return -(-n // BUCKET) * BUCKET

