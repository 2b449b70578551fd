"""Preference fine-tuning: DPO (trl) on pairs of the base's own stories (training/preferences.py).

The prompt is the served one, built by the serving code (backstory.text.build_prompt), ending
with the name the story opens with; chosen and rejected are the rest of each story, and trl ends
each with the end-of-turn token. The reference is the base itself (the LoRA adapter switched off),
its log-probabilities computed once before training. A small language-model loss on the chosen
story (`dpo_sft`, trl's "sft" term) keeps DPO from lowering the probability of both stories of a
pair, which on a few hundred pairs makes the text strange before it makes it better.
"""

import datasets

from backstory.text import build_prompt
from training.config import TrainConfig
from training.sft import load_rows


def to_prompt_completion(row: dict, tokenizer) -> dict:
    """One pair as trl's prompt / chosen / rejected text. The stories start with the name, which
    the served prompt already ends with (the opener)."""
    name = row["name"]
    for side in ("chosen", "rejected"):
        if not row[side].startswith(name):
            raise ValueError(f"a {side} story of {name!r} does not open with the name")
    prompt = build_prompt(name, row["description"], opener=True, tokenizer=tokenizer,
                          instruction="short")
    return {"prompt": prompt, "chosen": row["chosen"][len(name):],
            "rejected": row["rejected"][len(name):]}


def load_pairs(path: str, tokenizer) -> datasets.DatasetDict:
    rows = load_rows(path, ("name", "description", "chosen", "rejected"))
    return rows.map(to_prompt_completion, fn_kwargs={"tokenizer": tokenizer},
                    remove_columns=rows["train"].column_names)


def dpo_settings(cfg: TrainConfig) -> dict:
    """The DPOConfig fields beyond the Trainer's: what the preset and the command line set."""
    return dict(beta=cfg.dpo_beta, loss_type=["sigmoid", "sft"], loss_weights=[1.0, cfg.dpo_sft],
                max_length=cfg.block_size, precompute_ref_log_probs=True)
