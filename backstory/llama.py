"""The lean decode path for llama models (the default base): our own loop over a transformers
LlamaForCausalLM's modules, with a KV cache of fixed slots.

transformers' DynamicCache grows by torch.cat: every step copies every layer's whole cache, and
the running batch's merges and drops copy it again (left padding both sides). At 32 rows of a
few hundred tokens that is hundreds of MB a step, more than the model's own matmuls. Here each
row owns a slot of a preallocated cache: a step writes one position per row in place, a joining
row is prefilled straight into the next free slot, and a leaving row's slot is filled by moving
the last row into it (one row's cache, not the batch's). Each row counts its positions from 0,
so there is no padding to mask but the end of shorter rows.

The modules are the model's own (weights shared, quantized layers work as they are, int4 ones
fused three and two to a call); only the order of operations is ours, the one LlamaDecoderLayer
runs, so the numbers are the same as transformers' up to float rounding.
"""

import torch
import torch.nn.functional as F
from transformers import PreTrainedModel
from transformers.models.llama.modeling_llama import apply_rotary_pos_emb

BUCKET = 64  # attention spans a multiple of this: fewer distinct shapes, little waste


def supports(model: PreTrainedModel) -> bool:
    return model.config.model_type == "llama"


class SlotCache:
    """A llama model's decode state: K and V for `max_rows` slots, rows 0..rows-1 in use."""

    def __init__(self, model: PreTrainedModel, max_rows: int, max_len: int):
        cfg, inner = model.config, model.model
        self.model, self.layers = model, inner.layers
        self.heads, self.kv_heads = cfg.num_attention_heads, cfg.num_key_value_heads
        self.head_dim = getattr(cfg, "head_dim", None) or cfg.hidden_size // self.heads
        self.max_rows, self.max_len = max_rows, max_len
        dtype = inner.embed_tokens.weight.dtype
        cos, sin = inner.rotary_emb(torch.zeros(1, dtype=dtype), torch.arange(max_len)[None])
        self.cos, self.sin = cos[0], sin[0]  # (max_len, head_dim): position p's rotation
        self.k: list[torch.Tensor] = []
        self.v: list[torch.Tensor] = []
        self.span = 0  # positions allocated per slot: grows in buckets up to max_len
        self.lengths = torch.zeros(max_rows, dtype=torch.long)  # tokens cached per slot
        self.rows = 0

    def clear(self) -> None:
        self.rows = 0

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
        for old, new in zip(self.k + self.v, grown):
            new[: old.shape[0], :, : self.span] = old
        self.k, self.v, self.span = grown[: len(self.layers)], grown[len(self.layers):], span

    @torch.inference_mode()
    def prefill(self, ids: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """Joining rows (left-padded prompts) into the next free slots; their next-token logits.
        They run together, each from position 0 (padding moved to the end), under a causal
        mask."""
        n = mask.sum(dim=1)
        # At least 2 positions (a padded one, hidden by the causal mask): a prefill is then a
        # prefill to int4 layers whether its prompt has one token or not (backstory/quant.py).
        width = max(int(n.max()), 2)
        if self.rows + len(ids) > self.max_rows or width > self.max_len:
            raise ValueError("the slot cache is full")
        # Left padding to right padding: every row's first token at position 0.
        first = (ids.shape[1] - n)[:, None]
        ids = ids.gather(1, (torch.arange(width)[None] + first).clamp(max=ids.shape[1] - 1))
        self._reserve(self.rows + len(ids), width)
        slots = slice(self.rows, self.rows + len(ids))
        cos, sin = self.cos[None, :width], self.sin[None, :width]  # (1, width, head_dim)

        def write(i: int, k: torch.Tensor, v: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
            self.k[i][slots, :, :width], self.v[i][slots, :, :width] = k, v
            return k, v  # attend over this prompt only (padding at the end: causal hides it)

        x = self._layers(self.model.model.embed_tokens(ids), cos, sin, write, None)
        last = x[torch.arange(len(ids)), n - 1]
        self.lengths[slots] = n
        self.rows += len(ids)
        return self._logits(last)

    @torch.inference_mode()
    def decode_one_token(self, tokens: torch.Tensor) -> torch.Tensor:
        """One new token per running row (slots 0..rows-1); their next-token logits."""
        rows = torch.arange(self.rows)
        pos = self.lengths[: self.rows]
        if int(pos.max()) >= self.max_len:
            raise ValueError(f"a row reached the context length ({self.max_len})")
        span = min(up(int(pos.max()) + 1), self.max_len)
        self._reserve(self.rows, span)
        cos, sin = self.cos[pos][:, None], self.sin[pos][:, None]  # (rows, 1, head_dim)
        mask = (torch.arange(span)[None] <= pos[:, None])[:, None, None]  # (rows, 1, 1, span)

        def write(i: int, k: torch.Tensor, v: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
            self.k[i][rows, :, pos], self.v[i][rows, :, pos] = k[:, :, 0], v[:, :, 0]
            return self.k[i][: self.rows, :, :span], self.v[i][: self.rows, :, :span]

        x = self._layers(self.model.model.embed_tokens(tokens[:, None]), cos, sin, write, mask)
        self.lengths[: self.rows] += 1
        return self._logits(x[:, -1])

    @torch.inference_mode()
    def keep(self, index: list[int]) -> None:
        """Only rows `index` stay, in that order, in slots 0..len(index)-1 (each moved once)."""
        for slot, row in enumerate(index):
            if slot != row:
                for cache in self.k + self.v:
                    cache[slot] = cache[row]
                self.lengths[slot] = self.lengths[row]
        self.rows = len(index)

    def _layers(self, x, cos, sin, write, mask) -> torch.Tensor:
        for i, layer in enumerate(self.layers):
            x = x + self._attention(layer.self_attn, layer.input_layernorm(x), i, cos, sin, write,
                                    mask)
            x = x + self._mlp(layer.mlp, layer.post_attention_layernorm(x))
        return self.model.model.norm(x)

    def _attention(self, attn, x, i, cos, sin, write, mask) -> torch.Tensor:
        b, s, _ = x.shape
        if getattr(attn, "qkv_proj", None) is not None:  # int4 layers, fused (backstory/quant.py)
            kv = self.kv_heads * self.head_dim
            q, k, v = attn.qkv_proj(x).split([self.heads * self.head_dim, kv, kv], dim=-1)
        else:
            q, k, v = attn.q_proj(x), attn.k_proj(x), attn.v_proj(x)
        q = q.reshape(b, s, self.heads, self.head_dim).transpose(1, 2)
        k = k.reshape(b, s, self.kv_heads, self.head_dim).transpose(1, 2)
        v = v.reshape(b, s, self.kv_heads, self.head_dim).transpose(1, 2)
        q, k = apply_rotary_pos_emb(q, k, cos, sin)  # transformers' own, as its layer does
        keys, values = write(i, k, v)
        out = F.scaled_dot_product_attention(q, keys, values, attn_mask=mask,
                                             is_causal=mask is None, scale=attn.scaling,
                                             enable_gqa=True)
        return attn.o_proj(out.transpose(1, 2).reshape(b, s, -1))

    @staticmethod
    def _mlp(mlp, x: torch.Tensor) -> torch.Tensor:
        if getattr(mlp, "gate_up_proj", None) is None:
            return mlp(x)
        gate, up = mlp.gate_up_proj(x).chunk(2, dim=-1)  # LlamaMLP's order of operations
        return mlp.down_proj(mlp.act_fn(gate) * up)

    def _logits(self, hidden: torch.Tensor) -> torch.Tensor:
        return self.model.lm_head(hidden).float()


def up(n: int) -> int:
    return -(-n // BUCKET) * BUCKET

