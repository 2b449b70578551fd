"""The engine on the tiny random llama: per-row settings inside one batch, cancelling, the
first token after the name, precision and quantization settings, the sampler's n-gram ban."""

import asyncio

import pytest
import torch

from backstory.config import Settings
from backstory.engine import Engine
from backstory.sampling import RowSampler, RowSettings
from backstory.scheduler import Scheduler
from backstory.schemas import BackstoryRequest as Request


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
