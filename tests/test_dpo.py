"""Preference fine-tuning: pairs chosen by the evaluation's figures (training/preferences.py) and
DPO with LoRA on them (training/dpo.py, the `smollm2-dpo` preset's path), on the tiny model."""

import json
from pathlib import Path

import pytest
import torch
from test_training import train_cli
from transformers import AutoModelForCausalLM, AutoTokenizer

from backstory.config import Settings
from backstory.engine import Engine
from training.dpo import load_pairs, to_prompt_completion
from training.preferences import merit, pairs

GOOD = "{name} rode out at dawn. The king had fallen, and {name} swore to find the witch."
BAD = "{name} sold bread. A dragon ate the sheep, and the villagers wept by the sea."


def write_pairs(path: Path, n: int) -> Path:
    rows = [{"name": f"Aldric {i}", "description": "A knight of the northern marches.",
             "chosen": GOOD.format(name=f"Aldric {i}"), "rejected": BAD.format(name=f"Aldric {i}")}
            for i in range(n)]
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def preference(model, tok, row: dict) -> float:
    """log p(chosen) - log p(rejected) of one pair's completions after its prompt."""
    pc = to_prompt_completion(row, tok)
    total = []
    for side in ("chosen", "rejected"):
        prompt = tok(pc["prompt"], add_special_tokens=False)["input_ids"]
        ids = torch.tensor([prompt + tok(pc[side], add_special_tokens=False)["input_ids"]])
        with torch.no_grad():
            logp = model(ids).logits[0, :-1].log_softmax(-1).gather(1, ids[0, 1:, None])
        total.append(float(logp[len(prompt) - 1:].sum()))
    return total[0] - total[1]


@pytest.mark.slow
def test_dpo_run_moves_the_model_towards_the_chosen_stories(tiny_model, tmp_path):
    data, out = write_pairs(tmp_path / "pairs.jsonl", 40), tmp_path / "dpo"
    r = train_cli("--base_model", str(tiny_model), "--dpo_data", str(data), "--lora_r", "4",
                  "--lr", "5e-2", "--max_steps", "10", "--batch_size", "4", "--eval_every", "5",
                  "--block_size", "256", "--dpo_beta", "0.5", "--output_dir", str(out))
    assert r.returncode == 0, r.stderr[-3000:]
    assert (out / "adapter_model.safetensors").is_file()
    assert not (out / "model.safetensors").exists()  # the adapter only
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["train_examples"] == 38 and metrics["val_perplexity"] is None
    assert metrics["val_preference_accuracy"] == 1.0 and metrics["val_reward_margin"] > 0
    card = (out / "README.md").read_text()
    assert "python -m training.preferences" in card and "of held-out pairs" in card

    tok = AutoTokenizer.from_pretrained(tiny_model)
    row = json.loads(data.read_text().splitlines()[19])  # a held-out pair (every 20th)
    before = preference(AutoModelForCausalLM.from_pretrained(tiny_model), tok, row)
    after = preference(Engine(Settings(model=str(out), device="cpu", quantize="none")).model,
                       tok, row)
    print(f"log-probability margin of chosen over rejected: {before:.2f} -> {after:.2f}")
    assert after > before + 3.0

    # A second round starts from the first round's adapter, not from zero: with a learning rate
    # too small to move it, it serves what the first round learned.
    again = tmp_path / "dpo-round2"
    r = train_cli("--base_model", str(tiny_model), "--dpo_data", str(data), "--lora_r", "4",
                  "--init_adapter", str(out), "--lr", "1e-9", "--max_steps", "2",
                  "--batch_size", "4", "--eval_every", "2", "--block_size", "256",
                  "--output_dir", str(again))
    assert r.returncode == 0, r.stderr[-3000:]
    kept = preference(Engine(Settings(model=str(again), device="cpu", quantize="none")).model,
                      tok, row)
    assert abs(kept - after) < 0.05 * abs(after - before)


def test_pairs_are_the_served_prompt_and_the_rest_of_each_story(tiny_model, tmp_path):
    tok = AutoTokenizer.from_pretrained(tiny_model)
    split = load_pairs(str(write_pairs(tmp_path / "p.jsonl", 40)), tok)
    assert len(split["train"]) == 38 and len(split["val"]) == 2
    row = split["train"][0]
    assert row["prompt"].endswith("assistant\nAldric 0") and "A knight" in row["prompt"]
    assert row["chosen"] == " rode out at dawn. The king had fallen, and Aldric 0 swore to find " \
        "the witch."
    with pytest.raises(ValueError, match="does not open with the name"):
        to_prompt_completion({"name": "Mira", "description": "x", "chosen": "She ran.",
                              "rejected": "Mira ran."}, tok)


def candidate(name: str, relevance: float, **flags) -> dict:
    return dict(name=name, description="d", story=f"{name} {relevance}",
                relevance_after_first=relevance, coherence=0.3, typicality=0.2, name_after=True,
                name_half=True, preamble=False, reader=False, stock=False, complete=True) | flags


def test_a_pair_is_the_best_story_that_keeps_the_name_and_the_worst():
    rows = [candidate("A", 0.5, name_after=False), candidate("A", 0.3), candidate("A", 0.1),
            candidate("A", 0.2, reader=True),  # the worst: it talks to the reader
            candidate("B", 0.4, name_after=False), candidate("B", 0.1, name_after=False),
            candidate("C", 0.30), candidate("C", 0.25)]  # too close to teach anything
    (pair,) = pairs(rows)  # B has no story that names its character after the first sentence
    assert pair["name"] == "A" and pair["chosen"] == "A 0.3" and pair["rejected"] == "A 0.2"
    assert pair["merit_chosen"] == round(merit(rows[1]), 4)


def test_an_article_is_never_chosen_and_scores_as_a_flaw():
    article = candidate("A", 0.9) | {"story": "A is a legendary figure in Norse mythology."}
    rows = [article, candidate("A", 0.3), candidate("A", 0.1)]
    (pair,) = pairs(rows)
    assert pair["chosen"] == "A 0.3" and pair["rejected"] == "A 0.1"
    assert merit(article) < merit(candidate("A", 0.9))
