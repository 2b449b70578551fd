"""The engine on a tiny random GPT-2: per-row settings inside one batch, streaming, cancelling."""

import pytest
import torch

from backstory.config import Settings
from backstory.engine import Engine
from backstory.schemas import BackstoryRequest as Request
from backstory.text import clean_backstory


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


def test_stream_pieces_start_with_the_name_and_follow_the_rows(engine):
    # A random model may sample end-of-text first and stream only the opener: force a few tokens.
    requests = [r.model_copy(update={"min_new_tokens": 8}) for r in MIXED[:2]]
    pieces: dict[int, list[str]] = {0: [], 1: []}
    results = engine.generate(requests, emit=lambda i, t: pieces[i].append(t))
    for i, result in enumerate(results):
        streamed = "".join(pieces[i])
        assert streamed.startswith(requests[i].name)
        assert len(pieces[i]) > 1
        # The final backstory is the streamed text, cleaned (whitespace, last full sentence).
        assert result.backstory[:10] == clean_backstory(streamed)[:10]


def test_cancelled_row_stops_without_stopping_the_others(engine):
    rows = [engine.row_settings(r) for r in MIXED[:2]]
    rows[0].cancelled.set()
    first, second = engine.generate(MIXED[:2], rows=rows)
    assert first.tokens == 0
    assert second == engine.generate([MIXED[1]])[0]


def test_story_never_glues_onto_the_name(engine):
    for seed in range(8):
        pieces: list[str] = []
        request = Request(name="Bram", description="Forges swords.", seed=seed,
                          min_new_tokens=3, max_new_tokens=3)
        engine.generate([request], emit=lambda _, text, p=pieces: p.append(text))
        assert pieces[0] == "Bram" and not pieces[1][:1].isalnum(), pieces


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
