"""The engine on the tiny random llama (int4 decoder layers: the CPU default): per-row settings
inside one batch, cancelling, the first token after the name, precision and quantization
settings, the sampler's n-gram ban."""

import asyncio

import pytest
import torch
import torch.nn.functional as F

from backstory.config import Settings
from backstory.engine import Engine
from backstory.sampling import RowSampler, RowSettings
from backstory.scheduler import Scheduler
from backstory.schemas import BackstoryRequest as Request
from backstory.schemas import PromptRequest


@pytest.fixture(scope="module")
def engine(tiny_model):
    return Engine(Settings(model=str(tiny_model), threads=1))


MIXED = [Request(name="Kaylon", description="An empire of androids.", seed=1, max_new_tokens=30),
         Request(name="Bob", description="A long description of a man by the sea, who waits.",
                 seed=2, max_new_tokens=12, temperature=1.5, top_p=0.5),
         Request(name="Zed", description="x", seed=3, max_new_tokens=20, min_new_tokens=20,
                 top_k=0, repetition_penalty=1.0)]


def test_batched_equals_unbatched_for_fixed_seeds(engine):
    batched = engine.generate(MIXED)
    alone = [engine.generate([r])[0] for r in MIXED]
    assert [g.model_dump() for g in batched] == [g.model_dump() for g in alone]


def test_each_row_gets_its_own_length(engine):
    tokens = [g.tokens for g in engine.generate(MIXED)]
    assert tokens[0] <= 30 and tokens[1] <= 12 and tokens[2] == 20


def test_min_new_tokens_forces_the_length(engine):
    (g,) = engine.generate([Request(name="A", description="b", seed=5, min_new_tokens=40,
                                    max_new_tokens=40)])
    assert g.tokens == 40


def test_a_story_never_ends_on_its_first_token(engine):
    """Where the model puts all its weight on end-of-text at the first step, a story still gets
    a token (an unseeded call once returned the name alone); a free prompt may end at once."""
    eos = engine.tokenizer.eos_token_id
    rows = [engine.row_settings(Request(name="A", description="b", seed=1)),
            engine.row_settings(PromptRequest(prompt="x", seed=1))]
    scores = torch.zeros(2, len(engine.tokenizer))
    scores[:, eos] = 50.0
    prompt = torch.zeros(2, 1, dtype=torch.long)
    chosen = RowSampler(rows, eos, "cpu").sample(prompt, scores, [0, 0])
    assert chosen[0] != eos and chosen[1] == eos


def test_same_seed_same_story_and_seed_is_reported(engine):
    r = Request(name="A", description="b", seed=11, max_new_tokens=16)
    assert engine.generate([r])[0] == engine.generate([r])[0]
    unseeded = engine.generate([Request(name="A", description="b", max_new_tokens=4)])[0]
    assert 0 <= unseeded.seed < 2**32


def test_cancelled_row_stops_without_stopping_the_others(engine):
    rows = [engine.row_settings(r) for r in MIXED[:2]]
    rows[0].cancelled.set()
    first, second = engine.generate(MIXED[:2], rows=rows)
    assert first.tokens == 0
    assert second == engine.generate([MIXED[1]])[0]


def test_story_never_glues_onto_the_name(engine):
    scheduler = Scheduler(engine, max_batch=8, wait_ms=0)

    async def pieces(seed: int) -> list[str]:
        request = Request(name="Bram", description="Forges swords.", seed=seed,
                          min_new_tokens=3, max_new_tokens=3)
        return [text async for kind, text in scheduler.submit(request) if kind == "text"]

    for seed in range(8):
        streamed = asyncio.run(pieces(seed))
        assert streamed[0] == "Bram" and not streamed[1][:1].isalnum(), streamed


def test_dtype_setting_picks_the_weights_precision(tiny_model, engine):
    assert engine.model.dtype == torch.float32  # auto on CPU: exact seeded stories
    fast = Engine(Settings(model=str(tiny_model), threads=1, dtype="bfloat16"))
    assert fast.model.dtype == torch.bfloat16
    (story,) = fast.generate([Request(name="Ysolde", description="A witch.", seed=3,
                                      min_new_tokens=5, max_new_tokens=5)])
    assert story.tokens == 5 and story.backstory.startswith("Ysolde")


def test_dense_decode_rows_runs_wide_steps_dense_and_leaves_a_lone_row_as_it_was(tiny_model,
                                                                                   engine):
    """BACKSTORY_DENSE_DECODE_ROWS=2: a batch of 3 decodes through the dequantized weights (its
    row's story may differ from the default's), a row alone through the int4 kernel as before."""
    wide = Engine(Settings(model=str(tiny_model), threads=1, dense_decode_rows=2))
    request = Request(name="Kaylon", description="An empire.", seed=9, max_new_tokens=12,
                      min_new_tokens=12)
    others = [Request(name="Bo", description="The sea.", seed=1, max_new_tokens=12),
              Request(name="Zed", description="x", seed=3, max_new_tokens=12)]
    from backstory.scheduler import Scheduler

    assert Scheduler(wide, max_batch=3, wait_ms=0).slots.dense_rows == 2  # the setting reaches
    assert wide.generate([request]) == engine.generate([request])  # the decode loop (llama.py)
    batched = wide.generate([*others, request])
    assert batched[2].tokens == 12 and batched[2].backstory.startswith("Kaylon")


def test_int8_quantized_engine_keeps_same_seed_same_story_alone_or_batched(tiny_model):
    """BACKSTORY_QUANTIZE=int8: every linear layer int8 (fbgemm), and a row gets the same story
    for the same seed alone or batched with others (rows scaled apart: RowInt8Linear)."""
    from torch.ao.nn.quantized.dynamic import Linear as DynamicInt8Linear

    engine = Engine(Settings(model=str(tiny_model), threads=1, quantize="int8"))
    assert any(isinstance(m, DynamicInt8Linear) for m in engine.model.modules())
    assert not any(type(m) is torch.nn.Linear for m in engine.model.modules())
    request = Request(name="Kaylon", description="An empire.", seed=9, max_new_tokens=12,
                      min_new_tokens=12)
    others = [Request(name="Bo", description="A long tale of the sea " * 5, seed=1,
                      temperature=1.5), Request(name="Zed", description="x", seed=3)]
    alone, batched = engine.generate([request]), engine.generate([*others, request])
    assert alone[0] == batched[2] and alone[0].tokens == 12 and engine.parameters > 10_000


def test_int4_is_the_cpu_default_for_llama_and_keeps_same_seed_same_story(tiny_model, engine):
    """quantize=auto on the CPU, for a model with 4-bit layers: the decoder layers int4, the
    logits head int8; a row gets the same story for the same seed alone or batched (the int4
    kernel computes each row alone). Layers off the 4-bit grid stay float32."""
    from backstory.quant import Int4Linear, RowInt8Linear, four_bit_grid

    layers = engine.model.model.layers
    assert engine.quantize == "int4" and isinstance(layers[0].mlp.down_proj, Int4Linear)
    assert isinstance(engine.model.lm_head, RowInt8Linear)
    plain = Engine(Settings(model=str(tiny_model), threads=1, quantize="none"))
    assert plain.quantize == "none" and type(plain.model.lm_head) is torch.nn.Linear
    assert four_bit_grid(plain.model)  # the tiny model's layers are 4-bit, as the base's are
    with torch.no_grad():  # a merged fine-tune's change would be rounded away: auto = none
        weight = plain.model.model.layers[1].mlp.up_proj.weight
        weight.add_(torch.randn(weight.shape, generator=torch.Generator().manual_seed(0)) * 2e-4)
    assert not four_bit_grid(plain.model)
    request = Request(name="Kaylon", description="An empire.", seed=9, max_new_tokens=12,
                      min_new_tokens=12)
    others = [Request(name="Bo", description="A long tale of the sea " * 5, seed=1,
                      temperature=1.5), Request(name="Zed", description="x", seed=3)]
    assert engine.generate([request])[0] == engine.generate([*others, request])[2]


def test_int4_linear_holds_4bit_weights_exactly():
    """Weights already on a 4-bit grid (a scale and minimum per 32, as the packaged Q4_1 base's
    are) come back but for bfloat16 rounding of the scales, far below what 4-bit rounding costs
    ordinary weights; a prefill (several positions per row) multiplies by the same weights
    dequantized, so decode and prefill see one model."""
    from backstory.quant import Int4Linear

    torch.manual_seed(0)
    low, scale = torch.randn(64, 3, 1), torch.rand(64, 3, 1) * 0.1
    grid = (torch.randint(0, 16, (64, 3, 32)) * scale + low).reshape(64, 96)
    x = torch.randn(5, 96)

    def layer(weight: torch.Tensor) -> Int4Linear:
        linear = torch.nn.Linear(96, 64, bias=False)
        linear.weight.data = weight.clone()  # Int4Linear takes the layer's tensor over
        return Int4Linear(linear)

    def error(a: torch.Tensor, b: torch.Tensor) -> float:
        return ((a - b).norm() / b.norm()).item()

    four = layer(grid)
    assert error(four.weight, grid) < 0.01
    ordinary = torch.randn(64, 96)
    assert error(layer(ordinary).weight, ordinary) > 0.05
    prefill = four(torch.stack([x, x], dim=1))[:, 0]  # (5 rows, 2 positions): dense
    # The prefill's weights are bfloat16 where the CPU has its instructions (quant.dense_dtype).
    dense = F.linear(x.to(four.weight.dtype), four.weight).float()
    assert error(four(x), prefill) < 0.01 and error(prefill, dense) < 1e-6


def test_fused_int4_layers_compute_what_their_parts_do():
    """q, k and v (gate and up) in one kernel call: the same numbers, the weights held once."""
    from backstory.quant import Int4Linear, dense_dtype, fuse, pack_rows

    torch.manual_seed(0)
    block = pack_rows()  # 32 rows with AVX2, 64 with AVX512: parts must end on a block
    sizes = (2 * block, block, 48)
    parts = [Int4Linear(torch.nn.Linear(64, n, bias=False)) for n in sizes]
    fused = fuse(parts)
    x = torch.randn(3, 64)
    assert torch.equal(fused(x), torch.cat([p(x) for p in parts], dim=-1))
    # An adapter's low-rank change on some parts (none on the middle one) fuses with them.
    adapted = [Int4Linear(torch.nn.Linear(64, n, bias=False), None if n == block else
                          (torch.randn(4, 64), torch.randn(n, 4) * 0.01)) for n in sizes]
    expected = torch.cat([p(x) for p in adapted], dim=-1)
    assert not torch.allclose(adapted[0](x), x @ adapted[0].weight.float().T, atol=1e-3)  # it adds
    assert torch.allclose(fuse(adapted)(x), expected, atol=1e-6)
    assert parts[1].packed.data_ptr() == fused.packed[2 * block:].data_ptr()
    # Dense weights packed for oneDNN (quantized() does it, parts first): a prefill's numbers
    # stay the same bit for bit, and the parts compute through the fused layer (held once).
    wide = torch.randn(3, 2, 64)
    before = [layer.dense(wide) for layer in (*parts, fused)]
    for layer in (*parts, fused):
        layer.pack_dense()
    if dense_dtype() is torch.bfloat16:
        assert fused.weight.is_mkldnn and all(p.weight is None for p in parts)
    after = [layer.dense(wide) for layer in (*parts, fused)]
    assert all(torch.equal(a, b) for a, b in zip(before, after, strict=True))
    # a first part that ends inside a block is not fused (it would compute garbage)
    assert fuse([Int4Linear(torch.nn.Linear(64, block + 16, bias=False)), parts[0]]) is None


def test_an_adapters_decode_product_is_its_float32_product_to_about_bfloat16():
    """LowRank4 (a decode step's x A^T B^T through the int4 kernel, A and B in two planes each)
    against the float32 product: off by about 2^-8, where one 4-bit plane is off by 2^-5; an
    exact zero column of B (a fused layer's other parts) adds exactly nothing."""
    from backstory.quant import LowRank4

    g = torch.Generator().manual_seed(0)
    a, b = torch.randn(16, 576, generator=g), torch.randn(960, 16, generator=g) * 0.01
    b[:, 8:] = 0  # the second half of the rank feeds nothing
    x = torch.randn(7, 576, generator=g).to(torch.bfloat16)
    exact = x.float() @ a.T @ b.T
    error = ((LowRank4(a, b)(x).float() - exact).norm() / exact.norm()).item()
    assert 1e-4 < error < 0.015  # (not exact: it is the planes' rounding, not a copy)
    only_half = LowRank4(a[:8], b[:, :8])(x)
    assert torch.equal(LowRank4(a, b)(x), only_half)


def test_no_repeat_ngram_size_bans_a_repeated_pair():
    """BACKSTORY_NO_REPEAT_NGRAM_SIZE=2: after "7 9 ... 7", 9 may not follow (it is the best
    token, and the only one top_k=1 keeps, until the ban)."""
    def row() -> RowSettings:
        return RowSettings(temperature=1.0, top_p=1.0, top_k=1, repetition_penalty=1.0, seed=0,
                           min_new_tokens=0, max_new_tokens=10)

    history = torch.tensor([[7, 9, 3, 7]])
    scores = torch.zeros(1, 16)
    scores[0, 9], scores[0, 4] = 5.0, 4.0
    plain = RowSampler([row()], eos_id=0, device="cpu").sample(history, scores, [3])
    banned = RowSampler([row()], eos_id=0, device="cpu", no_repeat_ngram_size=2)
    assert plain.tolist() == [9] and banned.sample(history, scores, [3]).tolist() == [4]
