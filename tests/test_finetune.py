"""Fine-tuning a chat base with LoRA on stories (training/sft.py, the `smollm2` preset's path), the
packaged base's checks (backstory/base.py) and the distillation gates (training/distill.py)."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from test_training import train_cli
from transformers import AutoModelForCausalLM, AutoTokenizer

from backstory import base
from backstory.config import Settings
from backstory.engine import Engine
from backstory.schemas import BackstoryRequest
from backstory.weights import adapter_base
from training.__main__ import parse_args
from training.config import validate
from training.sft import IGNORE, encode

STORY = "{name} rode out at dawn. The king had fallen, and {name} swore to find the witch."


def write_rows(path: Path, n: int) -> Path:
    rows = [{"name": f"Aldric {i}", "description": "A knight of the northern marches.",
             "story": STORY.format(name=f"Aldric {i}")} for i in range(n)]
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


@pytest.fixture(scope="module")
def adapter(tiny_model, tmp_path_factory) -> Path:
    tmp = tmp_path_factory.mktemp("lora")
    out = tmp / "adapter"
    data = write_rows(tmp / "d.jsonl", 40)
    r = train_cli("--base_model", str(tiny_model), "--sft_data", str(data),
                  "--lora_r", "4", "--lr", "1e-2", "--max_steps", "6", "--batch_size", "4",
                  "--eval_every", "3", "--block_size", "256", "--output_dir", str(out))
    assert r.returncode == 0, r.stderr[-3000:]
    return out


@pytest.mark.slow
def test_lora_run_writes_a_small_adapter_the_engine_merges(adapter, tiny_model):
    assert (adapter / "adapter_config.json").is_file()
    assert (adapter / "adapter_model.safetensors").is_file()
    assert not (adapter / "model.safetensors").exists()  # the base does not ship with it
    metrics = json.loads((adapter / "metrics.json").read_text())
    assert 0 < metrics["trained_parameters"] < metrics["parameters"] / 2
    assert metrics["train_examples"] == 38 and metrics["tokens_seen"] > 0
    assert "LoRA" in (adapter / "README.md").read_text()
    config = json.loads((adapter / "adapter_config.json").read_text())
    assert config["base_model_name_or_path"] == str(tiny_model)  # the name given, not a cache

    engine = Engine(Settings(model=str(adapter), device="cpu", quantize="none"))
    plain = AutoModelForCausalLM.from_pretrained(tiny_model)
    merged, original = engine.model.state_dict(), plain.state_dict()
    assert not any(k.startswith("base_model") or "lora" in k for k in merged)  # plain llama
    assert any(not torch.equal(merged[k], original[k]) for k in original)  # the update is in
    (g,) = engine.generate([BackstoryRequest(name="Mira", description="A smith.", seed=3,
                                             max_new_tokens=8, min_new_tokens=8)])
    assert g.tokens == 8 and g.backstory.startswith("Mira")


@pytest.mark.slow
def test_int4_keeps_an_adapters_change_beside_the_4bit_base(adapter, tiny_model):
    """The default on the CPU (quantize=auto): an adapter on a 4-bit base is not merged (4-bit
    rounding would take most of its change away) but kept in float32 beside the int4 layers.
    Its logits follow the merged float model's far more closely than the
    int4 base alone does, and a seeded story stays the same alone or batched."""
    from backstory.quant import Int4Linear

    kept = Engine(Settings(model=str(adapter), device="cpu", threads=1))
    merged = Engine(Settings(model=str(adapter), device="cpu", threads=1, quantize="none"))
    base_int4 = Engine(Settings(model=str(tiny_model), device="cpu", threads=1))
    q_proj = kept.model.model.layers[0].self_attn.q_proj  # (the tiny model's are too small to
    assert kept.quantize == "int4" and isinstance(q_proj, Int4Linear)  # fuse: test_engine.py)
    assert q_proj.low_rank_a is not None
    ids = merged.tokenizer("Mira the smith rode out", return_tensors="pt").input_ids
    with torch.no_grad():
        want, got, without = (e.model(ids[:, :1]).logits for e in (merged, kept, base_int4))
    assert (got - want).norm() < 0.2 * (without - want).norm()
    request = BackstoryRequest(name="Mira", description="A smith.", seed=3, max_new_tokens=10,
                               min_new_tokens=10)
    other = BackstoryRequest(name="Bo", description="A long tale of the sea " * 4, seed=1)
    assert kept.generate([request])[0] == kept.generate([other, request])[1]
    # In bfloat16 too: the grid is judged on the float32 weights (judged after the cast, it was
    # not found, and the adapter's kept changes made the engine refuse to start).
    fast = Engine(Settings(model=str(adapter), device="cpu", threads=1, dtype="bfloat16"))
    assert fast.quantize == "int4" and fast.generate([request])[0].tokens == 10
    # BACKSTORY_DENSE_DECODE_ROWS: the change merged into the dequantized copy (prefills, wide
    # steps) follows the float model as closely; one position is the int4 kernel's, as before.
    wide = Engine(Settings(model=str(adapter), device="cpu", threads=1, dense_decode_rows=2))
    assert wide.model.model.layers[0].self_attn.q_proj.merged
    with torch.no_grad():
        want, got, without = (e.model(ids).logits for e in (merged, wide, base_int4))
        assert torch.equal(wide.model(ids[:, :1]).logits, kept.model(ids[:, :1]).logits)
    assert (got - want).norm() < 0.2 * (without - want).norm()


@pytest.mark.slow
def test_an_adapter_is_stored_with_its_base_and_served_from_there_as_from_its_folder(
        adapter, tmp_path):
    """A Bento packs the store's copy: the adapter unmerged, its base beside it (no registry or
    cache needed to start), served as the adapter's own folder is. (The store is read from disk
    here: bentoml in this process keeps the first store it opened; tests/test_training.py loads
    one by tag.)"""
    env = {**os.environ, "BENTOML_HOME": str(tmp_path)}
    out = subprocess.run([sys.executable, "-m", "backstory.store", "--model", str(adapter)],
                         env=env, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    name, version = out.stdout.strip().splitlines()[-1].split(":")
    stored = tmp_path / "models" / name / version
    assert (stored / "adapter_config.json").is_file()
    assert (stored / "base" / "config.json").is_file()
    assert adapter_base(str(stored)) == str(stored / "base")  # not the training machine's base
    from_store = Engine(Settings(model=str(stored), threads=1))
    from_folder = Engine(Settings(model=str(adapter), threads=1))
    request = BackstoryRequest(name="Mira", description="A smith.", seed=5, max_new_tokens=10,
                               min_new_tokens=10)
    (a,), (b,) = from_store.generate([request]), from_folder.generate([request])
    assert from_store.quantize == "int4" and (a.backstory, a.tokens) == (b.backstory, b.tokens)


def test_labels_cover_the_story_and_end_of_turn_only(tiny_model):
    tok = AutoTokenizer.from_pretrained(tiny_model)
    row = {"name": "Aldric", "description": "A knight.", "story": "Aldric rode out at dawn."}
    out = encode(row, tok, block_size=1024)
    labelled = [t for t in out["labels"] if t != IGNORE]
    assert out["labels"][0] == IGNORE and labelled[-1] == tok.eos_token_id
    assert tok.decode(labelled[:-1]) == row["story"]
    assert out["input_ids"][-len(labelled):] == labelled
    assert "Description: A knight." in tok.decode(out["input_ids"][: -len(labelled)])


@pytest.mark.slow
@pytest.mark.parametrize("rows,message", [(5, "at least 20"), (0, "lacks the column")])
def test_bad_fine_tuning_data_is_a_clear_error(rows, message, tiny_model, tmp_path):
    path = write_rows(tmp_path / "d.jsonl", rows) if rows else tmp_path / "d.jsonl"
    if not rows:
        path.write_text(json.dumps({"name": "A", "text": "b"}) + "\n")
    r = train_cli("--base_model", str(tiny_model), "--sft_data", str(path), "--lora_r", "4",
                  "--output_dir", str(tmp_path / "m"), timeout=120)
    assert r.returncode == 2 and message in r.stderr


def test_smollm2_preset_is_lora_on_the_packaged_base():
    cfg = parse_args(["--preset", "smollm2"])
    validate(cfg)
    assert cfg.base_model == base.PACKAGED_BASE and cfg.lora_r > 0 and cfg.sft_data
    assert Path(cfg.sft_data).is_file()  # the distilled data is committed
    with pytest.raises(ValueError, match="lora_r needs a base_model"):
        validate(parse_args(["--lora_r", "8"]))


def test_packaged_base_with_the_wrong_checksum_is_refused(tmp_path):
    fake = tmp_path / "SmolLM2-135M-Instruct.Q4_1.gguf"
    fake.write_bytes(b"GGUF not really")
    with pytest.raises(base.BaseModelError, match="sha256"):
        base.convert(fake, tmp_path / "out")
    assert not (tmp_path / "out").exists() and not (tmp_path / "out.partial").exists()


def test_packaged_base_is_converted_once():
    folder = base.ensure_base()  # `make test` converted it; this must not convert again
    assert (folder / "config.json").is_file() and "sha256" in (folder / "SOURCE.md").read_text()
    assert "quantization_config" not in json.loads((folder / "config.json").read_text())
    assert base.sha256(base.gguf_path()) == base.GGUF_SHA256


RIVER = ("{a} was born where the mountains weep into the valley. The first people heard her "
         "crying in the dark before there was any sea, and they were afraid of the sound. "
         "Her tears ran down the stone for a thousand years and filled the low places of the "
         "world, and so the first sea was made of sorrow. Fishermen still leave salt and bread "
         "on the shore for her, asking for calm water. {b} remembers every one of them, and "
         "on stormy nights {c} still weeps for the children the river took from their mothers.")


def test_distillation_keeps_only_stories_that_pass_every_gate():
    from training.distill import score
    from training.evaluate import embed, sentence_embeddings

    vec = embed(["A river spirit whose tears became the first sea."])[0]

    def check(story: str) -> tuple[bool, float, int, float]:
        return score(story, "Rivashpell", vec, sentence_embeddings([story])[0])

    good = RIVER.format(a="Rivashpell", b="Rivashpell", c="Rivashpell")
    ok, relevance, mentions, coherence = check(good)
    assert ok and relevance > 0.25 and mentions == 2 and coherence >= 0.33
    assert not check("Sure! Here is the backstory you asked for. " + good)[0]
    assert not check(RIVER.format(a="Rivashpell", b="She", c="she"))[0]
    assert not check(good[: good.index("Her tears")])[0]  # too short
    off_topic = ("Rivashpell flew cargo between the moons of Jupiter for a mining company. "
                 * 8).strip()
    assert not check(off_topic)[0]  # loops, and about something else
    assert not check(good + " I'm sure your own hero will meet her one day.")[0]  # to the reader
    stock = good.replace("was born where", "was born into a family where", 1)
    assert not check(stock)[0]  # the base's stock opening
    wandering = good.replace(
        "Fishermen still leave", "Spreadsheets list quarterly tax rates for imported copper. "
        "The train to the airport departs at seven. Fishermen still leave", 1)
    assert check(wandering)[3] < coherence


def test_corpus_rows_are_headed_passages_that_name_their_character(tmp_path):
    """--sft_corpus_rows: human passages (the corpus's train split, with the header training
    gives them) as name/description/story rows, cut to a backstory's length at a sentence."""
    from training.config import TrainConfig
    from training.sft import STORY_WORDS, corpus_rows

    body = " ".join(f"Sentence {i} tells how old Maren walked to the sea and back." for i in
                    range(60))
    (tmp_path / "book.txt").write_text("\n\n".join([body] * 8))
    cfg = TrainConfig(data=[str(tmp_path)], chunk_chars=1500, cache_dir=str(tmp_path / "c"))
    rows = corpus_rows(cfg, 3)
    assert len(rows) == 3
    for row in rows:
        assert row["name"] == "Maren" and "Maren" in row["description"]
        assert "Maren" in row["story"] and row["story"].endswith(".")
        assert STORY_WORDS[0] * 0.8 <= len(row["story"].split()) <= STORY_WORDS[1] * 1.2
    assert corpus_rows(cfg, 3) == rows  # seeded
