"""Weight-only quantization for the CPU: fewer bytes read per decode step, which is what bounds a
small batch there (a step reads every weight for one token per row).

- `int4` (llama models): the decoder layers' linears in 4 bits, groups of 32 with a scale and a
  minimum each, which is the packaged base's own Q4_1 layout: those weights come back exactly
  (up to rounding the scales to bfloat16). The logits head, Q8_0 in that file and tied to the
  embedding, is int8 (4 bits there cost 6% perplexity, int8 2-3%).
- `int8`: every linear int8, per output channel.

Both keep "same seed, same story" alone or batched: each kernel computes a row the same way
whatever its batch mates (tests/test_engine.py). torchao wraps the same ATen int4 kernel in its
tensor subclasses; a small module keeps the decode loop free of a second dependency.
"""

import contextlib
import ctypes
import functools
from collections.abc import Callable

import torch
import torch.nn.functional as F
from transformers import PreTrainedModel

GROUP = 32  # weights per (scale, minimum): Q4_1's block


def quantized(model: PreTrainedModel, kind: str, merge_dense: bool = False) -> PreTrainedModel:
    """`model` with its nn.Linear layers replaced in place: int4 where the kernel's shapes allow
    (else int8), or int8 everywhere; the logits head is always int8. An adapter's low-rank
    changes (`model.low_rank`, see weights.load_weights) stay beside the int4 layers they belong
    to; elsewhere they are merged into the weights first. `merge_dense`: into the int4 layers'
    dequantized copies as well (Int4Linear)."""
    low_rank = getattr(model, "low_rank", {})
    for prefix, parent in list(model.named_modules()):
        for name, child in parent.named_children():
            if type(child) is not torch.nn.Linear:
                continue
            four = kind == "int4" and child is not model.get_output_embeddings()
            four = four and Int4Linear.fits(child)
            delta = low_rank.get(f"{prefix}.{name}" if prefix else name)
            if delta is not None and not four:
                with torch.no_grad():
                    child.weight += (delta[1] @ delta[0]).to(child.weight.dtype)
            new = Int4Linear(child, delta, merge_dense) if four else RowInt8Linear(child)
            setattr(parent, name, new)
    model.low_rank = {}
    layers = model.model.layers if model.config.model_type == "llama" else []
    for layer in layers:
        attn, mlp = layer.self_attn, layer.mlp
        attn.qkv_proj = fuse([attn.q_proj, attn.k_proj, attn.v_proj])
        mlp.gate_up_proj = fuse([mlp.gate_proj, mlp.up_proj])
    for linear in model.modules():
        if isinstance(linear, Int4Linear):
            linear.pack_dense()
    release_freed_memory()
    return model


def release_freed_memory() -> None:
    """Hand the conversion's freed temporaries back to the OS (glibc keeps them: about 600 MB of
    RSS after quantizing the base). Elsewhere a no-op."""
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL("libc.so.6").malloc_trim(0)


def fuse(parts: list[torch.nn.Module]) -> "Int4Linear | None":
    """One Int4Linear that computes `parts` side by side (bias-free int4 layers of one input):
    one kernel call and one bfloat16 copy of the input instead of several, about a tenth of a
    decode step at batch 1. The parts keep working (transformers' forward calls them): their
    weights become views of the fused ones, so each weight is held once. None if they do not
    all qualify."""
    if not all(isinstance(p, Int4Linear) and p.bias is None for p in parts):
        return None
    if any(p.out_features % pack_rows() for p in parts[:-1]):  # the packing would straddle parts
        return None
    fused = Int4Linear.__new__(Int4Linear)
    torch.nn.Module.__init__(fused)
    for name, dim in (("packed", 0), ("scales_zeros", 1), ("weight", 0)):  # packing is by row
        fused.register_buffer(name, torch.cat([getattr(p, name) for p in parts], dim=dim))
    fused.bias, fused.out_features = None, sum(p.out_features for p in parts)
    fused.whole, fused.columns = None, slice(None)
    fused.in_features = parts[0].in_features
    fused.low_rank_a = fused.low_rank_b = fused.adapter = None
    fused.merged = parts[0].merged
    if any(p.low_rank_a is not None for p in parts):  # side by side: [A1; A2], diag(B1, B2)
        a, b = zip(*(p.low_rank() for p in parts), strict=True)
        fused.low_rank_a, fused.low_rank_b = torch.cat(a, dim=1), torch.block_diag(*b)
        fused.adapter = LowRank4(fused.low_rank_a.T, fused.low_rank_b.T)
    start = 0
    for p in parts:
        rows = slice(start, start + p.out_features)
        p.packed, p.weight = fused.packed[rows], fused.weight[rows]
        p.whole, p.columns = fused, rows
        start = rows.stop
    return fused


@functools.cache
def pack_rows() -> int:
    """The CPU packing's block of output rows: packed parts concatenate only at its multiples.
    It depends on the instructions torch dispatches to (32 rows with AVX2, 64 with AVX512, where
    parts of 32 rows fused into garbage), so it is found by trying: the smallest block at which two
    packed parts side by side compute what each computes alone."""
    g = torch.Generator().manual_seed(0)
    x = torch.randn(2, 2 * GROUP, generator=g).to(torch.bfloat16)
    for rows in (16, 32, 64, 128, 256):
        parts = []
        for _ in range(2):
            linear = torch.nn.Linear(2 * GROUP, rows, bias=False)
            linear.weight.data = torch.randn(rows, 2 * GROUP, generator=g)
            parts.append(Int4Linear(linear))
        mm = torch.ops.aten._weight_int4pack_mm_for_cpu
        alone = [mm(x, p.packed, GROUP, p.scales_zeros) for p in parts]
        both = mm(x, torch.cat([p.packed for p in parts]), GROUP,
                  torch.cat([p.scales_zeros for p in parts], dim=1))
        if torch.equal(both, torch.cat(alone, dim=1)):
            return rows
    return 1 << 30  # never fuse


def four_bit_grid(model: PreTrainedModel, tolerance: float = 1e-3) -> bool:
    """Are the decoder layers' weights already 4-bit in groups of 32 (the packaged base's are)?
    Then int4 holds them exactly. A merged fine-tune's are not: its small changes would be
    rounded away, so it keeps full precision."""
    for layer in getattr(getattr(model, "model", None), "layers", []):
        for linear in layer.modules():
            if type(linear) is torch.nn.Linear and Int4Linear.fits(linear):
                w = linear.weight.detach().float()
                if (Int4Linear.dequantized(w) - w).norm() > tolerance * w.norm():
                    return False
    return True


class Int4Linear(torch.nn.Module):
    """ATen's int4 weight-only matmul (`_weight_int4pack_mm_for_cpu`): weight = (q - 8) * scale +
    zero per group of 32 inputs. Its vectorized path takes bfloat16 activations (with float32 ones
    it falls back to a scalar loop, 10-25x slower on AVX2), so a row goes in as bfloat16 and its
    result comes back in the model's dtype; rounding the activations costs 0.03% perplexity.
    It takes the layer's weight tensor over (rewritten with the dequantized weights).

    It wins where a step reads the weights for a few rows (decode); with many rows the kernel is
    compute-bound and 2-3x slower than a float32 matmul, so a prefill (more than one position per
    row) multiplies by the same weights dequantized, kept beside the packed ones: in bfloat16
    where the CPU has bfloat16 instructions (oneDNN: 2-2.4x float32's speed on 30-90 positions
    here, half the memory), else float32. The choice depends on the call's kind, never on its
    batch mates, so a seeded story stays the same."""

    def __init__(self, linear: torch.nn.Linear,
                 low_rank: tuple[torch.Tensor, torch.Tensor] | None = None,
                 merge_dense: bool = False):
        super().__init__()
        w = linear.weight.detach().float()
        n, k = w.shape
        q, scales_zeros, dense = quantize4(w)
        # merge_dense (Settings.dense_decode_rows): the adapter's change added to the dequantized
        # copy, which then serves prefills and wide decode steps alone: bfloat16 rounds it (as it
        # rounds the base's weights there), and the low-rank matmuls' 4 ops a layer are gone.
        self.merged = merge_dense and low_rank is not None
        if self.merged:
            dense = dense + (low_rank[1].float() @ low_rank[0].float())
        self.register_buffer("packed", pack4(q))
        self.register_buffer("scales_zeros", scales_zeros)
        self.register_buffer("weight", dense.to(dense_dtype()))
        self.bias = linear.bias
        self.whole: Int4Linear | None = None  # the fused layer this one is part of (fuse)
        self.columns = slice(None)  # its outputs there
        self.out_features = n
        self.in_features = k
        # An adapter's change, B @ A (B scaled), kept beside the 4-bit weights: it is smaller
        # than their rounding step, so merged it would mostly be rounded away. A prefill
        # multiplies by it in the model's dtype (held transposed and contiguous: a matmul with
        # a transposed view is 3x slower); a decode step by its int4 planes (LowRank4).
        self.low_rank_a = self.low_rank_b = self.adapter = None
        if low_rank is not None:
            a, b = (t.detach().to(linear.weight.dtype).T.contiguous() for t in low_rank)
            self.low_rank_a, self.low_rank_b = a, b  # (in, r), (r, out)
            self.adapter = LowRank4(a.T, b.T)

    def low_rank(self) -> tuple[torch.Tensor, torch.Tensor]:
        """(A^T, B^T); of rank 0 for a layer without an adapter (so fused parts stack)."""
        if self.low_rank_a is None:
            return torch.zeros(self.in_features, 0), torch.zeros(0, self.out_features)
        return self.low_rank_a, self.low_rank_b

    @staticmethod
    def codes(w: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """4-bit codes (n, k / GROUP, GROUP), scale and minimum per group: Q4_1's rounding."""
        groups = w.reshape(w.shape[0], -1, GROUP)
        low, high = groups.amin(-1), groups.amax(-1)
        scale = ((high - low) / 15).clamp(min=1e-12)
        return ((groups - low[..., None]) / scale[..., None]).round().clamp(0, 15), scale, low

    @staticmethod
    def dequantized(w: torch.Tensor) -> torch.Tensor:
        q, scale, low = Int4Linear.codes(w)
        return (q * scale[..., None] + low[..., None]).reshape(w.shape)

    @staticmethod
    def fits(linear: torch.nn.Linear) -> bool:
        return linear.in_features % GROUP == 0 and linear.out_features % 16 == 0

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.dim() == 3 and x.shape[1] > 1:  # a prefill (one prompt alone: llama.py)
            return self.dense(x)
        y = int4_decode(x.reshape(-1, self.in_features), self.packed, self.scales_zeros,
                        self.adapter, self.bias)
        return y.reshape(*x.shape[:-1], self.out_features)

    def dense(self, x: torch.Tensor) -> torch.Tensor:
        """x times the dequantized weights and the adapter's change (its exact product, or merged
        into them): a prefill's call, and a wide decode step's (Settings.dense_decode_rows)."""
        if self.weight is None:  # a fused layer's part, packed (pack_dense): its columns there
            return self.whole.dense(x)[..., self.columns]
        if self.weight.is_mkldnn:
            y = torch.ops.mkldnn._linear_pointwise(x.to(torch.bfloat16), self.weight, None,
                                                   "none", [], "").to(x.dtype)
        else:
            y = F.linear(x.to(self.weight.dtype), self.weight).to(x.dtype)
        if self.low_rank_a is not None and not self.merged:
            y += x @ self.low_rank_a @ self.low_rank_b
        return y if self.bias is None else y + self.bias

    def pack_dense(self) -> None:
        """Hold the bfloat16 dequantized weights in oneDNN's blocked layout, in place of the plain
        ones: given a plain weight, its matmul repacks it on every call, 25-40% of a prefill's or
        a 32-row step's matmul time here (the same op inductor calls for frozen CPU linears; the
        same sums, bit for bit). A fused layer's parts then compute through it and take their
        columns (only transformers' forward calls them: the perplexity evaluation), so no weight
        is held twice. Only with oneDNN's bfloat16 matmul (quant.dense_dtype)."""
        if self.weight is None or self.weight.dtype is not torch.bfloat16:
            return
        plain, whole = self._buffers.pop("weight"), self.whole
        # An opaque tensor: a plain attribute, never saved or moved (as LowRank4's packing).
        self.weight = (None if whole is not None and whole.weight is not None
                       else torch.ops.mkldnn._reorder_linear_weight(plain, None))

    def decode(self) -> Callable[[torch.Tensor], torch.Tensor]:
        """This layer's decode step, rows (m, in) -> (m, out), with its tensors bound once: what
        llama.py's decode loop calls (nn.Module's attribute lookups, five or more per call,
        cost about 1 ms of a step at one row)."""
        return functools.partial(int4_decode, packed=self.packed,
                                 scales_zeros=self.scales_zeros, adapter=self.adapter,
                                 bias=self.bias)


def int4_decode(x: torch.Tensor, packed: torch.Tensor, scales_zeros: torch.Tensor,
                adapter: "LowRank4 | None", bias: torch.Tensor | None) -> torch.Tensor:
    """A decode step's rows (m, in) through an Int4Linear's weights (and adapter)."""
    flat = x.to(torch.bfloat16)
    y = int4_mm(flat, packed, scales_zeros).to(x.dtype)
    if adapter is not None:
        y.add_(adapter(flat))
    return y if bias is None else y + bias


@functools.cache
def dense_dtype() -> torch.dtype:
    """The dtype of the dequantized weights a prefill multiplies by (Int4Linear)."""
    return torch.bfloat16 if torch.ops.mkldnn._is_mkldnn_bf16_supported() else torch.float32


def int4_mm(x: torch.Tensor, packed: torch.Tensor, scales_zeros: torch.Tensor) -> torch.Tensor:
    """bfloat16 rows times int4 weights, bfloat16 out. Each row is summed the same way whatever
    the call's other rows (tests/test_llama.py): the kernel's order depends on K and N only."""
    return torch.ops.aten._weight_int4pack_mm_for_cpu(x, packed, GROUP, scales_zeros)


def quantize4(w: torch.Tensor, symmetric: bool = False
              ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """w (n, k) in 4-bit codes (n, k) in 0..15 with a bfloat16 (scale, zero) per group, as the
    kernel takes them (k / GROUP, n, 2), and the weights they stand for, (n, k). Q4_1's layout
    (a minimum per group), or `symmetric`: code 8 is exactly 0 (see planes4)."""
    n, k = w.shape
    if symmetric:
        groups = w.reshape(n, -1, GROUP)
        scale = (groups.abs().amax(-1) / 7).clamp(min=1e-12)
        q = (groups / scale[..., None]).round().clamp(-7, 7) + 8
        low = -8 * scale
    else:
        q, scale, low = Int4Linear.codes(w)
    scales_zeros = torch.stack([scale, low + 8 * scale], -1).transpose(0, 1).contiguous()
    scales_zeros = scales_zeros.to(torch.bfloat16)
    scale, zero = scales_zeros.float().transpose(0, 1).unbind(-1)  # (n, k / GROUP)
    dense = (q - 8) * scale[..., None] + zero[..., None]
    return q.reshape(n, k), scales_zeros, dense.reshape(n, k)


def pack4(codes: torch.Tensor) -> torch.Tensor:
    return torch.ops.aten._convert_weight_to_int4pack_for_cpu(codes.int(), 1)


def planes4(w: torch.Tensor, count: int = 2) -> tuple[torch.Tensor, torch.Tensor]:
    """w (n, k) as `count` int4 matrices side by side, (n, count * k), each the rounding error of
    those before it: with the input repeated as many times, one kernel call sums them, which is
    w to about 2^-8 of its range with two (one alone: 2^-5). Symmetric, so a zero stays exactly
    0 (a fused layer's adapter is mostly zeros: other parts' columns must add nothing). Codes
    and scales, unpacked."""
    codes, scales, rest = [], [], w
    for _ in range(count):
        q, scales_zeros, dense = quantize4(rest, symmetric=True)
        codes.append(q)
        scales.append(scales_zeros)
        rest = rest - dense
    return torch.cat(codes, dim=1), torch.cat(scales)


class LowRank4:
    """An adapter's change to a decode step's rows, x A^T B^T, as two calls of the int4 kernel
    over A and B in two int4 planes each (planes4: accurate to about 2^-8, as bfloat16 is).

    Why not float32 matmuls: MKL picks its kernel by the row count (a vector product for one
    row, others for 2-3, 4...), so a row's sums, and a seeded story, changed with its batch
    mates; padding the rows to blocks of 4 kept them apart but cost 5-9 ms of a 20 ms step at
    one row. The int4 kernel sums every row alike (as the 4-bit layers rely on), needs no
    padding, and reads a quarter of the bytes. A prefill keeps the exact float32 product.
    A plain object, not an nn.Module: its tensors are the CPU kernel's packing, never moved or
    saved, and a module's attribute lookups would cost a decode step about 0.5 ms."""

    def __init__(self, a: torch.Tensor, b: torch.Tensor):
        """a (r, in), b (out, r); r is padded to a whole group with zeros (the kernel's k)."""
        rank = -(-a.shape[0] // GROUP) * GROUP
        a = F.pad(a.float(), (0, 0, 0, rank - a.shape[0]))
        b = F.pad(b.float(), (0, rank - b.shape[1]))
        # A's rows twice: the first call's output, x A^T repeated, is the second call's input.
        codes, scales = planes4(a)
        self.a_packed = pack4(torch.cat([codes, codes]))
        self.a_scales_zeros = torch.cat([scales, scales], dim=1)
        codes, self.b_scales_zeros = planes4(b)
        self.b_packed = pack4(codes)

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        """bfloat16 rows (m, in) -> the change (m, out), bfloat16 (four kernel-side ops: each
        op is a few microseconds of a step's dispatch, and a step at one row is mostly that)."""
        u = int4_mm(torch.cat([x, x], dim=1), self.a_packed, self.a_scales_zeros)  # [xA^T xA^T]
        return int4_mm(u, self.b_packed, self.b_scales_zeros)


class RowInt8Linear(torch.nn.Module):
    """fbgemm's dynamic int8 linear (weights per output channel), made batch-invariant. fbgemm
    quantizes the activations with one range per call, so a row's numbers would depend on its
    batch mates (and a seeded story with them). Here each row is scaled to max |x| = 1 first, and
    a guard row holding -1 and 1 pins the call's range to [-1, 1]: every row is quantized on the
    same grid alone or batched, the int32 accumulation is exact, and its scale is multiplied back
    after. (torch._int_mm, which would take per-row scales directly, is 50-200x slower than
    fbgemm on this AVX2 CPU.)"""

    def __init__(self, linear: torch.nn.Linear):
        from torch.ao.quantization import per_channel_dynamic_qconfig, quantize_dynamic

        super().__init__()
        # A copy: the head shares its weight with the embedding, which stays as it is.
        plain = torch.nn.Linear(linear.in_features, linear.out_features, bias=False)
        plain.weight = torch.nn.Parameter(linear.weight.detach().float().clone())
        self.bias = linear.bias  # added after the scale is undone
        spec = {torch.nn.Linear: per_channel_dynamic_qconfig}
        self.q = quantize_dynamic(torch.nn.Sequential(plain), spec)[0]
        guard = torch.zeros(1, linear.in_features)
        guard[0, :2] = torch.tensor([-1.0, 1.0])
        self.register_buffer("guard", guard, persistent=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        flat = x.reshape(-1, x.shape[-1]).float()
        scale = flat.abs().amax(dim=1, keepdim=True).clamp(min=1e-12)
        y = (self.q(torch.cat([flat / scale, self.guard]))[:-1] * scale).to(x.dtype)
        y = y.reshape(*x.shape[:-1], y.shape[-1])
        return y if self.bias is None else y + self.bias
