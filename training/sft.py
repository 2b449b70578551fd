"""Supervised fine-tuning data: (name, description, story) rows as the served chat prompt -> story.

The loss is on the story and its end-of-turn token only, not on the prompt: the model is to learn
to write stories, not to predict our instruction. The prompt is built by the serving code
(backstory.text.build_prompt), so training and serving cannot drift apart.
"""

import random

import datasets
import torch

from backstory.text import build_prompt
from training.config import TrainConfig
from training.data import load_passages, split_header
from training.metrics import cut_to_words, mentions

IGNORE = -100  # label of tokens that carry no loss (the prompt, the padding)
VAL_EVERY = 20  # every 20th row is held out for validation
STORY_WORDS = (120, 220)  # human passages are cut to a backstory's length, at a sentence end


def load_rows(path: str, columns: tuple[str, ...] = ("name", "description", "story")
              ) -> datasets.DatasetDict:
    """The JSONL file's `columns`, every VAL_EVERY-th row held out (stories here, DPO's pairs)."""
    rows = datasets.load_dataset("json", data_files=path, split="train")
    missing = set(columns) - set(rows.column_names)
    if missing:
        raise ValueError(f"{path} lacks the column(s) {', '.join(sorted(missing))}")
    if len(rows) < VAL_EVERY:
        raise ValueError(f"{path} has {len(rows)} rows; fine-tuning needs at least {VAL_EVERY}")
    rows = rows.select_columns(list(columns))
    val = list(range(VAL_EVERY - 1, len(rows), VAL_EVERY))
    train = sorted(set(range(len(rows))) - set(val))
    return datasets.DatasetDict(train=rows.select(train), val=rows.select(val))


def corpus_rows(cfg: TrainConfig, n: int) -> list[dict]:
    """n headed passages of the corpus's train split as name/description/story rows, picked at
    random (seeded) among those that name their character again in the story."""
    rng = random.Random(cfg.seed)
    rows = []
    for passage in load_passages(cfg)["train"]["text"]:
        name, description, body = split_header(passage)
        story = cut_to_words(body, rng.randint(*STORY_WORDS)) if name else ""
        if name and mentions(story, name):
            rows.append({"name": name, "description": description, "story": story})
    return rng.sample(rows, min(n, len(rows)))


def with_corpus(rows: datasets.DatasetDict, cfg: TrainConfig) -> datasets.DatasetDict:
    """Adds cfg.sft_corpus_rows human rows to the train split (validation stays the stories)."""
    if not cfg.sft_corpus_rows:
        return rows
    human = datasets.Dataset.from_list(corpus_rows(cfg, cfg.sft_corpus_rows))
    mixed = datasets.concatenate_datasets([rows["train"], human]).shuffle(seed=cfg.seed)
    return datasets.DatasetDict(train=mixed, val=rows["val"])


def encode(row: dict, tokenizer, block_size: int) -> dict:
    """input_ids of prompt + story + end of turn; labels mask the prompt. Cut to block_size."""
    prompt = build_prompt(row["name"], row["description"], opener=False, tokenizer=tokenizer,
                          instruction="short")
    prompt_ids = tokenizer(prompt, add_special_tokens=False)["input_ids"]
    story_ids = tokenizer(row["story"], add_special_tokens=False)["input_ids"]
    ids = (prompt_ids + story_ids + [tokenizer.eos_token_id])[:block_size]
    labels = ([IGNORE] * len(prompt_ids) + story_ids + [tokenizer.eos_token_id])[:block_size]
    return {"input_ids": ids, "labels": labels}


def sft_dataset(cfg: TrainConfig, tokenizer) -> datasets.DatasetDict:
    rows = with_corpus(load_rows(cfg.sft_data), cfg)
    return rows.map(encode, fn_kwargs={"tokenizer": tokenizer, "block_size": cfg.block_size},
                    remove_columns=rows["train"].column_names, desc="encoding")


class PadCollator:
    """Right-pads a batch; padding is masked out of attention and loss."""

    def __init__(self, pad_id: int):
        self.pad_id = pad_id

    def __call__(self, rows: list[dict]) -> dict:
        width = max(len(r["input_ids"]) for r in rows)

        def pad(key: str, value: int) -> torch.Tensor:
            return torch.tensor([list(r[key]) + [value] * (width - len(r[key])) for r in rows])

        ids = pad("input_ids", self.pad_id)
        mask = torch.tensor([[1] * len(r["input_ids"]) + [0] * (width - len(r["input_ids"]))
                             for r in rows])
        return {"input_ids": ids, "attention_mask": mask, "labels": pad("labels", IGNORE)}
