"""Text in, blocks of token ids out: load sources, clean, cut into passages, split, tokenize, group.

The shape follows Hugging Face's run_clm.py (load_dataset -> tokenize -> group_texts), with two
additions: the validation split is held out from the end of *every* document (so every book and
style is represented in both splits), and passages get the serving prompt's header (text.py).
"""

import fnmatch
import re
from collections import Counter
from pathlib import Path

import datasets

from backstory.text import EOS, header, normalize, split_sentences
from training.config import TrainConfig

# Capitalised words right after a lower-case word or a comma are names, not sentence starts.
_MID_SENTENCE_NAME = re.compile(r"(?<=[a-z,;] )([A-Z][a-z]{2,}(?: [A-Z][a-z]{2,})?)")
_NOT_NAMES = {"The", "And", "But", "God", "Lord", "Sir", "Mr", "Mrs", "Miss", "Then", "This",
              "That", "There", "When", "What", "They", "Thou", "Thee", "Thy", "Heaven", "Earth"}
MAX_DESCRIPTION_CHARS = 220


def parse_source(spec: str) -> tuple[str, float]:
    path, _, weight = spec.partition("=")
    try:
        return path, float(weight) if weight else 1.0
    except ValueError:
        raise ValueError(f"bad data source {spec!r}: weight must be a number") from None


def source_files(path: str, exclude: list[str]) -> list[str]:
    p = Path(path)
    files = sorted(p.rglob("*.txt")) if p.is_dir() else [p]
    files = [f for f in files if not any(fnmatch.fnmatch(f.name, pat) for pat in exclude)]
    if not files:
        raise ValueError(f"data source {path!r} holds no .txt files")
    return [str(f) for f in files]


def load_documents(spec: str, cfg: TrainConfig) -> datasets.Dataset:
    """One row per document, from a local folder/file or a Hub dataset id."""
    path, _ = parse_source(spec)
    if Path(path).exists():
        ds = datasets.load_dataset("text", data_files=source_files(path, cfg.exclude),
                                   sample_by="document", split="train", cache_dir=cfg.cache_dir)
    elif path.startswith((".", "/")) or path.endswith(".txt"):
        raise ValueError(f"data source {path!r} does not exist")
    else:
        try:
            ds = datasets.load_dataset(path, split="train", cache_dir=cfg.cache_dir)
        except Exception as e:  # offline, unknown id, no 'train' split: say which source failed
            raise ValueError(f"cannot load Hub dataset {path!r}: {e}") from e
        ds = ds.select_columns([cfg.text_column]).rename_column(cfg.text_column, "text")
    if cfg.max_chars:  # a sample spread over the documents, each cut to an equal share
        per_doc = max(2000, cfg.max_chars // len(ds))
        n_docs = max(1, min(len(ds), cfg.max_chars // per_doc))
        ds = ds.select(range(0, len(ds), len(ds) // n_docs)[:n_docs])
        ds = ds.map(lambda r: {"text": r["text"][:per_doc]}, desc="sampling")
    return ds


def is_prose(paragraph: str) -> bool:
    """Drop title pages, headings and tables of contents: prose has mostly lower-case letters."""
    letters = [c for c in paragraph if c.isalpha()]
    return len(letters) >= 20 and sum(c.islower() for c in letters) > 0.7 * len(letters)


def find_name(passage: str) -> str | None:
    counts = Counter(n for n in _MID_SENTENCE_NAME.findall(passage) if n not in _NOT_NAMES)
    name, n = counts.most_common(1)[0] if counts else (None, 0)
    return name if n >= 2 else None


def headed(passage: str) -> str:
    """Give a passage the serving header: a name from the passage and, as its description, the
    first short sentence that names it; the story goes on after that sentence."""
    name = find_name(passage)
    if name:
        sentences = split_sentences(passage.replace("\n\n", " \n\n "))
        for i, s in enumerate(sentences):
            if name in s and len(s) <= MAX_DESCRIPTION_CHARS and len(s.split()) >= 5:
                body = " ".join(sentences[i + 1 :]).replace(" \n\n ", "\n\n").strip()
                if len(body) > len(passage) // 3:
                    return header(name, s) + body
    return passage


def split_header(passage: str) -> tuple[str | None, str | None, str]:
    """(name, description, body) of a training passage; name and description None if headless."""
    head, sep, body = passage.partition("\n\n")
    lines = head.split("\n")
    if sep and len(lines) == 2 and lines[0].startswith("Name: ") \
            and lines[1].startswith("Description: "):
        return lines[0][6:], lines[1][13:], body
    return None, None, passage


def to_passages(batch: dict, cfg: TrainConfig) -> dict:
    """Cut each document into passages of about chunk_chars; the last val_fraction go to val."""
    texts, splits = [], []
    for doc in batch["text"]:
        chunks, current = [], ""
        for para in filter(is_prose, normalize(doc).split("\n\n")):
            current = f"{current}\n\n{para}" if current else para
            if len(current) >= cfg.chunk_chars:
                chunks.append(current)
                current = ""
        chunks += [current] if current else []
        n_val = max(1, round(len(chunks) * cfg.val_fraction)) if len(chunks) > 1 else 0
        for i, chunk in enumerate(chunks):
            texts.append(headed(chunk) if cfg.headers else chunk)
            splits.append("val" if i >= len(chunks) - n_val else "train")
    return {"text": texts, "split": splits}


def load_passages(cfg: TrainConfig) -> datasets.DatasetDict:
    """All sources as passages, weighted, split into train and val."""
    train, val = [], []
    for spec in cfg.data:
        _, weight = parse_source(spec)
        ds = load_documents(spec, cfg)
        if len(ds) == 0 or not any(t.strip() for t in ds["text"][:1000]):
            print(f"warning: data source {spec!r} holds no text; skipped")
            continue
        ds = ds.map(to_passages, batched=True, batch_size=8,
                                           fn_kwargs={"cfg": cfg}, remove_columns=None,
                                           desc=f"passages {Path(spec).name}")
        ds = ds.select_columns(["text", "split"])
        tr = ds.filter(lambda s: s == "train", input_columns="split")
        val.append(ds.filter(lambda s: s == "val", input_columns="split"))
        whole, frac = int(weight), weight - int(weight)
        train += [tr] * whole
        if frac:
            train.append(tr.shuffle(seed=cfg.seed).select(range(int(len(tr) * frac))))
    if not train or sum(len(t) for t in train) == 0:
        raise ValueError("the data sources hold no text to train on")
    return datasets.DatasetDict(train=datasets.concatenate_datasets(train).shuffle(seed=cfg.seed),
                                val=datasets.concatenate_datasets(val))


def tokenize_and_group(passages: datasets.DatasetDict, tokenizer, block_size: int):
    """run_clm.py's tokenize + group_texts: every passage ends with EOS, then all are concatenated
    and cut into blocks of block_size (the remainder is dropped)."""

    def tokenize(batch):
        return tokenizer([t + EOS for t in batch["text"]])

    def group_texts(batch):
        ids = [t for seq in batch["input_ids"] for t in seq]
        n = len(ids) // block_size * block_size
        return {"input_ids": [ids[i : i + block_size] for i in range(0, n, block_size)]}

    tokenized = passages.map(tokenize, batched=True, remove_columns=["text", "split"],
                             desc="tokenizing")
    tokenized = tokenized.remove_columns([c for c in tokenized["train"].column_names
                                          if c != "input_ids"])
    blocks = tokenized.map(group_texts, batched=True, batch_size=1000, desc="grouping")
    if len(blocks["train"]) == 0 or len(blocks["val"]) == 0:
        raise ValueError(f"too little text for one block of {block_size} tokens in each split")
    return blocks
