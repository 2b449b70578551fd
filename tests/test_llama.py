"""The lean decode path (backstory/llama.py) against transformers' own forward, on the tiny llama:
the same next-token logits after a padded prefill, decode steps, rows leaving and rows joining
a running batch (each at its own position), and growing its cache past a bucket; float32 and
int4 weights."""

import pytest
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer, DynamicCache

from backstory import llama
from backstory.llama import BUCKET, SlotCache, runs_of, supports
from backstory.quant import quantized

PROMPTS = ["Name: Aldric\nDescription: A knight of the marches.", "Hi",
           "Once upon a time there was a dragon named Ember who lived under the mountain."]


@pytest.fixture(scope="module", params=["none", "int4", "int4+adapter"])
def model_and_tokenizer(tiny_model, request):
    """The plain float32 model, and the same with int4 layers (the CPU default), which the lean
    path calls fused (gate and up in one call) and transformers unfused; and with an adapter's
    low-rank changes beside them, as the default model is served (weights.load_weights hands
    quant.quantized the same {layer: (A, scaled B)}; random here, seeded)."""
    tokenizer = AutoTokenizer.from_pretrained(tiny_model, padding_side="left")
    model = AutoModelForCausalLM.from_pretrained(tiny_model, dtype=torch.float32).eval()
    if request.param == "int4+adapter":
        g = torch.Generator().manual_seed(0)
        model.low_rank = {f"model.{name}": (torch.randn(4, m.in_features, generator=g) * 0.1,
                                            torch.randn(m.out_features, 4, generator=g) * 0.1)
                          for name, m in model.model.named_modules()
                          if isinstance(m, torch.nn.Linear)}
    if request.param.startswith("int4"):
        model = quantized(model, "int4")
        assert model.model.layers[0].mlp.gate_up_proj is not None  # (k and v: 16 rows, unfused)
    model.adapted = request.param.endswith("adapter")
    return model, tokenizer


class Reference:
    """transformers' forward with its DynamicCache, one row at a time (no padding at all)."""

    def __init__(self, model, ids: list[int]):
        self.model, self.cache, self.length = model, DynamicCache(), 0
        self.logits = self.step(ids)

    @torch.inference_mode()
    def step(self, ids: list[int]) -> torch.Tensor:
        position = torch.arange(self.length, self.length + len(ids))[None]
        out = self.model(input_ids=torch.tensor([ids]), position_ids=position, cache=self.cache,
                         use_cache=True)
        self.length += len(ids)
        self.logits = out.logits[0, -1].float()
        return self.logits


def encode(tokenizer, prompts: list[str]) -> tuple[torch.Tensor, torch.Tensor]:
    enc = tokenizer(prompts, return_tensors="pt", padding=True)
    return enc["input_ids"], enc["attention_mask"]


def test_slots_match_transformers_through_prefill_decode_leave_and_join(model_and_tokenizer):
    model, tokenizer = model_and_tokenizer
    assert supports(model)
    torch.manual_seed(0)
    slots = SlotCache(model, max_rows=4, max_len=1024)
    ids, mask = encode(tokenizer, PROMPTS[:2])  # two prompts of different lengths: padding
    refs = [Reference(model, tokenizer(p)["input_ids"]) for p in PROMPTS]
    logits = slots.prefill(ids, mask)
    running = [0, 1]

    # With an adapter, the fused q/k/v's low-rank product ([A_q A_k A_v]) sums in another order
    # than three apart, and int4's bfloat16 rounding of the next input grows that last bit.
    tolerance = 1e-2 if getattr(model, "adapted", False) else 1e-5

    def check(logits: torch.Tensor) -> None:
        expected = torch.stack([refs[i].logits for i in running])
        torch.testing.assert_close(logits, expected, rtol=10 * tolerance, atol=tolerance)

    check(logits)
    for step in range(BUCKET + 8):  # across a bucket boundary: the cache grows while in use
        if step == 5:  # the third row joins the running two
            ids, mask = encode(tokenizer, PROMPTS[2:])
            logits = torch.cat([logits, slots.prefill(ids, mask)])
            running.append(2)
            check(logits)
        if step == 9:  # the first row leaves: the ring starts past it, nothing moves
            slots.keep([1, 2])
            logits, running = logits[1:], [1, 2]
        tokens = torch.randint(0, len(tokenizer), (len(running),))
        for i, token in zip(running, tokens.tolist()):
            refs[i].step([token])
        logits = slots.decode_one_token(tokens)
        check(logits)
    assert slots.rows == 2 and slots.span >= BUCKET


def test_rows_keep_their_logits_as_the_ring_of_slots_wraps_closes_gaps_and_grows(
        model_and_tokenizer):
    """Rows join after the last row's slot, wrapping to slot 0; the first row leaving moves
    nothing; a row leaving from the middle moves the fewer rows on one side; the ring unrolls
    when it grows. Every row's logits stay its own throughout."""
    model, tokenizer = model_and_tokenizer
    prompts = [f"Name: Row {i}\nDescription: {'a tale ' * i}" for i in range(7)]  # one bucket
    refs = {i: Reference(model, tokenizer(p)["input_ids"]) for i, p in enumerate(prompts)}
    tolerance = 1e-2 if getattr(model, "adapted", False) else 1e-5
    slots, running = SlotCache(model, max_rows=8, max_len=256), []
    g = torch.Generator().manual_seed(0)

    def join(*rows: int) -> None:
        slots.prefill(*encode(tokenizer, [prompts[i] for i in rows]))
        running.extend(rows)

    def leave(row: int) -> None:
        slots.keep([i for i, r in enumerate(running) if r != row])
        running.remove(row)

    def decode() -> None:
        tokens = torch.randint(0, len(tokenizer), (len(running),), generator=g)
        logits = slots.decode_one_token(tokens)
        for row, token in zip(running, tokens.tolist(), strict=True):
            refs[row].step([token])
        expected = torch.stack([refs[r].logits for r in running])
        torch.testing.assert_close(logits, expected, rtol=10 * tolerance, atol=tolerance)

    join(0, 1, 2, 3)
    decode()
    leave(0)  # the first row: the ring starts at slot 1
    assert (slots.start, slots.rows, slots.k[0].shape[0], slots.span) == (1, 3, 4, BUCKET)
    join(4)  # into slot 0: rows 1..3 and 4 sit in slots 1..3 and 0 (attention in two pieces)
    decode()
    decode()
    leave(2)  # from the middle: row 1 moves a slot up, the start with it
    assert (slots.start, slots.rows) == (2, 3)
    decode()
    join(5, 6)  # 5 rows: the ring grows to 8 slots and unrolls
    assert (slots.start, slots.k[0].shape[0]) == (0, 8)
    decode()
    with pytest.raises(ValueError, match="ascending"):
        slots.keep([1, 0])


def test_a_full_cache_refuses_new_rows_and_clear_frees_them(model_and_tokenizer):
    model, tokenizer = model_and_tokenizer
    slots = SlotCache(model, max_rows=2, max_len=64)
    ids, mask = encode(tokenizer, PROMPTS[:2])
    slots.prefill(ids, mask)
    with pytest.raises(ValueError, match="full"):
        slots.prefill(*encode(tokenizer, PROMPTS[:1]))
    slots.clear()
    assert slots.prefill(ids[:1], mask[:1]).shape[0] == 1 and slots.rows == 1



def test_a_row_gets_the_same_logits_bit_for_bit_alone_or_beside_a_longer_row(
        model_and_tokenizer):
    """What "same seed, same story" rests on: a row's numbers may not depend on its batch mates.
    A longer mate widens the prefill and the span attended over (another bucket); with int4
    layers the activations are rounded to bfloat16, so a difference in the last bit of one sum
    can flip a rounding and grow from there (it did, to whole logits on the base: a batched
    prefill and SDPA's blocked kernel summed a row in another order)."""
    model, tokenizer = model_and_tokenizer
    long_prompt = " ".join(["the long road north"] * 20)  # over a bucket of its own
    tokens = torch.tensor([[5, 7, 11, 13, 17, 19]]).T  # the same tokens for every row

    def run(prompts: list[str]) -> torch.Tensor:
        slots = SlotCache(model, max_rows=len(prompts), max_len=1024)
        ids, mask = encode(tokenizer, prompts)
        out = [slots.prefill(ids, mask)]
        out += [slots.decode_one_token(step[: len(prompts)]) for step in tokens]
        return torch.stack(out)[:, -1]  # the short prompt's row

    # Four mates: MKL's float32 matmul (an adapter's low-rank product) takes another path for
    # 4 rows or more than for one on the tiny model's shapes (on the base's, already for 2).
    mates = [long_prompt, PROMPTS[1], PROMPTS[2], long_prompt]
    tokens = tokens[:, :1].expand(-1, len(mates) + 1)
    alone, beside = run(PROMPTS[:1]), run([*mates, PROMPTS[0]])
    assert len(tokenizer(long_prompt)["input_ids"]) > BUCKET
    if getattr(model.model.layers[0].mlp, "gate_up_proj", None) is not None:  # int4: the default
        assert torch.equal(alone, beside)
    else:  # float32 matmuls (MKL) sum one row in another order with 4 rows than with 1
        assert torch.equal(alone[0], beside[0])  # the prefill: each row alone
        torch.testing.assert_close(alone, beside, rtol=1e-5, atol=1e-6)


def test_attention_splits_the_rows_where_their_lengths_drop_if_it_spares_enough():
    """runs_of: rows in join order (the longest first), one or two runs, each over its own span."""
    four_long, four_short = [300] * 4, [60] * 4  # spans of 320 and 64: 1024 row positions spared
    assert runs_of(torch.tensor(four_long + four_short), 4096) == [(0, 4, 320), (4, 8, 64)]
    assert runs_of(torch.tensor([300, 300, 60, 60]), 4096) == [(0, 4, 320)]  # 512: not worth it
    assert runs_of(torch.tensor([60, 300, 60]), 4096) == [(0, 3, 320)]  # no split spares any
    capped = torch.tensor([150] * 4 + four_short)  # 192 capped at 160: it spares only 384
    assert runs_of(capped, 160) == [(0, 8, 160)]


def test_two_attention_runs_give_each_row_the_logits_of_one(model_and_tokenizer, monkeypatch):
    """A row's attention over its run's span, not the batch's: the same numbers bit for bit
    (positions past a row's own weigh exactly 0 either way)."""
    model, tokenizer = model_and_tokenizer
    prompts = [" ".join(["the long road north"] * 20)] * 2 + PROMPTS[1:]  # long ones first
    ids, mask = encode(tokenizer, prompts)
    out = {}
    for spared in (10**9, 0):  # never split, split wherever it spares a row position
        monkeypatch.setattr(llama, "MIN_SPARED", spared)
        slots = SlotCache(model, max_rows=len(prompts), max_len=1024)
        out[spared] = [slots.prefill(ids, mask)]
        out[spared] += [slots.decode_one_token(torch.full((len(prompts),), t)) for t in (5, 7, 9)]
    assert len(runs_of(slots.lengths[: len(prompts)], 1024)) == 2  # it did split
    assert all(torch.equal(a, b) for a, b in zip(out[10**9], out[0], strict=True))


def test_a_prefill_that_fails_midway_takes_no_slot(model_and_tokenizer):
    """Rows are prefilled one at a time: when a later one fails, the earlier ones' slots are not
    taken (the scheduler fails all the joining rows, and its batch must match the slots)."""
    model, tokenizer = model_and_tokenizer
    slots = SlotCache(model, max_rows=4, max_len=64)
    ids, mask = encode(tokenizer, PROMPTS[:2])
    ids[1, -1] = model.config.vocab_size  # no such token: the second row fails, the first ran
    with pytest.raises(IndexError):
        slots.prefill(ids, mask)
    assert slots.rows == 0
    assert slots.prefill(*encode(tokenizer, PROMPTS[:1])).shape[0] == 1 and slots.rows == 1


def test_prompts_that_start_with_the_kept_prefix_prefill_only_the_rest(model_and_tokenizer):
    """set_prefix (the served prompts' shared start): a prompt that begins with it prefills its
    own tokens over the kept keys and values and gets transformers' logits, before and after
    decode steps; a prompt that does not is prefilled whole; clear() keeps the prefix."""
    model, tokenizer = model_and_tokenizer
    prefix = tokenizer(PROMPTS[0])["input_ids"]
    prompts = [PROMPTS[0] + " She rides at dawn.", PROMPTS[0] + " No.", PROMPTS[2]]
    rows = [tokenizer(p)["input_ids"] for p in prompts]
    slots = SlotCache(model, max_rows=3, max_len=1024)
    slots.set_prefix(prefix)
    assert [slots._cached(torch.tensor(r)) for r in rows] == [len(prefix), len(prefix), 0]
    slots.clear()
    assert slots.prefix == prefix
    refs = [Reference(model, r) for r in rows]
    tolerance = 1e-2 if getattr(model, "adapted", False) else 1e-5
    logits = slots.prefill(*encode(tokenizer, prompts))
    torch.manual_seed(0)
    for _ in range(4):
        expected = torch.stack([ref.logits for ref in refs])
        torch.testing.assert_close(logits, expected, rtol=10 * tolerance, atol=tolerance)
        tokens = torch.randint(0, len(tokenizer), (len(rows),))
        for ref, token in zip(refs, tokens.tolist()):
            ref.step([token])
        logits = slots.decode_one_token(tokens)


def test_wide_steps_use_the_dense_weights_and_narrow_ones_stay_the_kernels(model_and_tokenizer):
    """dense_rows (Settings.dense_decode_rows): a decode step of that many rows or more multiplies
    by the int4 layers' dequantized weights (still transformers' logits, to bfloat16's rounding);
    a narrower step is the int4 kernel's, bit for bit as with the setting off."""
    model, tokenizer = model_and_tokenizer
    if not getattr(model.model.layers[0].mlp, "gate_up_proj", None):
        pytest.skip("float32 layers: one path only")
    refs = [Reference(model, tokenizer(p)["input_ids"]) for p in PROMPTS]
    caches = [SlotCache(model, max_rows=3, max_len=1024, dense_rows=d) for d in (0, 3)]
    torch.manual_seed(0)
    for rows in (2, 2, 3, 3, 3):  # two narrow steps, then the third row joins: wide ones
        for slots in caches:
            if slots.rows < rows:
                slots.prefill(*encode(tokenizer, PROMPTS[slots.rows:rows]))
        tokens = torch.randint(0, len(tokenizer), (rows,))
        for ref, token in zip(refs, tokens.tolist()):
            ref.step([token])
        kernel, dense = (slots.decode_one_token(tokens) for slots in caches)
        expected = torch.stack([ref.logits for ref in refs[:rows]])
        torch.testing.assert_close(dense, expected, rtol=0.1, atol=1e-2)
        assert torch.equal(kernel, dense) == (rows < 3)
