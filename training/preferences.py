"""`python -m training.preferences`: preference pairs written by the served base itself.

Self-distillation (training/distill.py) did not beat the base: the student learned the teacher's
most likely openings, not the variety of the stories the gates kept (README, Quality). So here the
base learns from a comparison instead of imitation: for each training character the served model
(short instruction, name opener, served sampling) writes `--candidates` stories, the evaluation's
figures score each one, and the best and the worst become a pair (chosen, rejected) for DPO
(training/dpo.py). The pairs are the model's own samples, so the reference it is held to (the base)
already puts its probability there.

Resumable: every candidate is appended to `--candidates-out` as its batch finishes; a rerun skips
characters already there, then rebuilds `--out` from all of them.

    python -m training.preferences     # 384 characters x 4 candidates, about 70 min on 2 cores
"""

import argparse
import json
import sys
import time
from collections import defaultdict
from pathlib import Path

from backstory.base import PACKAGED_BASE
from backstory.config import Settings
from backstory.engine import Engine
from backstory.schemas import BackstoryRequest
from training import metrics
from training.characters import Character, characters
from training.cli import run_cli
from training.distill import READER, STOCK, score, typicality
from training.evaluate import embed, load_prompts, sentence_embeddings

DATA = Path(__file__).with_name("data")
MIN_GAP = 0.1  # pairs whose two stories score this close teach noise


def merit(c: dict) -> float:
    """The evaluation's figures for one story: on the description after the first sentence,
    coherent within the story and unlike the other stories (distill's merit), plus naming the
    character after the first sentence and in the second half; talk to the reader, preamble, a
    stock opening scene, an article's register and an unfinished last sentence count against it."""
    flawed = c["preamble"] or c["reader"] or c["stock"] or metrics.encyclopedic(c["story"])
    return (c["relevance_after_first"] + c["coherence"] - c["typicality"]
            + 0.1 * c["name_after"] + 0.1 * c["name_half"] - 0.3 * flawed
            - 0.1 * (not c["complete"]))


def candidates(engine: Engine, batch: list[Character], first: int, n: int, seed: int) -> list[dict]:
    """n scored stories per character of `batch` (character `first` onwards), in one call."""
    jobs = [(c, seed * 7919 + 1000 * (first + i) + k) for i, c in enumerate(batch)
            for k in range(n)]
    gens = engine.generate([BackstoryRequest(name=c.name, description=c.description, seed=s)
                            for c, s in jobs])
    vecs = embed([c.description for c in batch])
    per_sentence = sentence_embeddings([g.backstory for g in gens])
    rows = []
    for (c, s), g, sv, t in zip(jobs, gens, per_sentence, typicality(per_sentence), strict=True):
        passes, rel, n_mentions, coh = score(g.backstory, c.name, vecs[batch.index(c)], sv)
        sents = metrics.sentences(g.backstory)
        rows.append(dict(
            name=c.name, description=c.description, category=c.category, seed=s,
            story=g.backstory, tokens=g.tokens, passes=passes, relevance_after_first=round(rel, 4),
            mentions=n_mentions, coherence=round(coh, 4), typicality=round(t, 4),
            name_after=metrics.mentions(" ".join(sents[1:]), c.name),
            name_half=metrics.mentions(" ".join(sents[len(sents) // 2:]), c.name),
            preamble=metrics.has_preamble(g.backstory), reader=bool(READER.search(g.backstory)),
            stock=bool(STOCK.search(" ".join(sents[:2]))),
            complete=metrics.ends_complete(g.backstory)))
    return rows


def pairs(rows: list[dict]) -> list[dict]:
    """Per character: chosen, the best-scoring story that names the character after the first
    sentence, ends complete and has no preamble, talk to the reader or article's register (a
    round on pairs that let it through wrote half its stories as articles: metrics.encyclopedic);
    rejected, the worst."""
    by_character = defaultdict(list)
    for r in rows:
        by_character[r["name"], r["description"]].append(r)
    out = []
    for (name, description), group in by_character.items():
        good = [r for r in group if r["name_after"] and r["complete"]
                and not (r["preamble"] or r["reader"] or metrics.encyclopedic(r["story"]))]
        if not good:
            continue
        chosen, rejected = max(good, key=merit), min(group, key=merit)
        if merit(chosen) - merit(rejected) >= MIN_GAP:
            out.append(dict(name=name, description=description, chosen=chosen["story"],
                            rejected=rejected["story"], merit_chosen=round(merit(chosen), 4),
                            merit_rejected=round(merit(rejected), 4)))
    return out


def read_jsonl(path: Path) -> list[dict]:
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def run(args: argparse.Namespace) -> None:
    held_out = {p.name for p in load_prompts()}
    done = {(r["name"], r["description"]) for r in read_jsonl(args.candidates_out)}
    engine = None
    for seed in args.seeds:
        todo = [(i, c) for i, c in enumerate(characters(args.n, seed, held_out))
                if (c.name, c.description) not in done]
        print(f"seed {seed}: {len(todo)} characters to write", file=sys.stderr)
        if todo and engine is None:
            engine = Engine(Settings(model=args.model))
        per_batch, started = max(1, args.batch_size // args.candidates), time.monotonic()
        for start in range(0, len(todo), per_batch):
            part = todo[start : start + per_batch]
            rows = candidates(engine, [c for _, c in part], part[0][0], args.candidates, seed)
            with args.candidates_out.open("a", encoding="utf-8") as f:
                f.writelines(json.dumps(r, ensure_ascii=False) + "\n" for r in rows)
            print(f"seed {seed}: {start + len(part)}/{len(todo)} characters, "
                  f"{(time.monotonic() - started) / 60:.1f} min", file=sys.stderr, flush=True)
    kept = pairs(read_jsonl(args.candidates_out))
    args.out.write_text("".join(json.dumps(p, ensure_ascii=False) + "\n" for p in kept))
    print(f"{len(kept)} pairs -> {args.out}", file=sys.stderr)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m training.preferences", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--n", type=int, default=96, help="Training characters per seed.")
    ap.add_argument("--seeds", type=int, nargs="+", default=[2, 3, 4, 5],
                    help="Character sets (training/characters.py) and sampling seeds.")
    ap.add_argument("--candidates", type=int, default=4, help="Stories per character.")
    ap.add_argument("--model", default=PACKAGED_BASE, help="The model that writes (served).")
    ap.add_argument("--batch-size", type=int, default=32, help="Stories per generate() call.")
    ap.add_argument("--candidates-out", type=Path, default=DATA / "candidates.jsonl")
    ap.add_argument("--out", type=Path, default=DATA / "preferences.jsonl")
    args = ap.parse_args(argv)
    return run_cli(lambda: run(args))


if __name__ == "__main__":
    sys.exit(main())
