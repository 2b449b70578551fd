"""`python -m training.distill`: fine-tuning data written by the base, kept where it scores well.

The zero-shot base writes fluent, on-genre prose, but drifts: it forgets the character's name,
invents other heroes, opens with stock phrases or preamble, and runs into the token limit. So the
teacher (the base with the guided instruction, story opened with the name) writes `--candidates`
stories per training character (training/characters.py, disjoint from the evaluation prompts), each
story is scored with the evaluation's own metrics, and the best one that passes every gate is kept.
The student learns the short instruction -> the kept story: what the guided prompt asked for, minus
the stories where the base did not do it.

Resumable: finished characters are appended to the JSONL file as they come, and a rerun skips them.

    python -m training.distill            # 360 characters x 2 candidates, about 45 min on 2 cores
"""

import argparse
import json
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from backstory.base import PACKAGED_BASE
from backstory.config import Settings
from backstory.engine import Engine
from backstory.schemas import BackstoryRequest
from training import metrics
from training.characters import Character, characters
from training.cli import run_cli
from training.evaluate import embed, load_prompts

OUT = Path(__file__).with_name("data") / "backstories.jsonl"
MIN_WORDS, MAX_WORDS, MAX_REPETITION, MIN_RELEVANCE = 80, 260, 0.08, 0.25
MIN_MENTIONS = 2  # sentences that name the character, the first one included


@dataclass
class Kept:
    name: str
    description: str
    category: str
    seed: int
    story: str
    tokens: int
    relevance_after_first: float
    mentions: int


def score(story: str, name: str, description_vec: np.ndarray) -> tuple[bool, float, int]:
    """(passes every gate, relevance of the text after the first sentence, sentences naming the
    character). Gates: no preamble or markdown, length, no loops, a complete last sentence, the
    name after the first sentence and again in the second half (the base tends to hand the story
    to a hero it invents), and on the description after the first sentence.

    A story cut by the token limit counts: Engine already trimmed it to its last complete
    sentence, and the student learns to end there (the end-of-turn token follows it)."""
    sentences = metrics.sentences(story)
    rest = " ".join(sentences[1:])
    second_half = " ".join(sentences[len(sentences) // 2:])
    n_words = len(metrics.words(story))
    mentions = sum(metrics.mentions(s, name) for s in sentences)
    relevance = float(embed([rest])[0] @ description_vec)
    ok = (not metrics.has_preamble(story) and MIN_WORDS <= n_words <= MAX_WORDS
          and (metrics.repetition(story) or 0) <= MAX_REPETITION and metrics.ends_complete(story)
          and metrics.mentions(rest, name) and metrics.mentions(second_half, name)
          and mentions >= MIN_MENTIONS and relevance >= MIN_RELEVANCE
          and "#" not in story and "**" not in story)
    return ok, relevance, mentions


def done_names(out: Path) -> set[str]:
    if not out.exists():
        return set()
    return {json.loads(line)["name"] for line in out.read_text().splitlines() if line.strip()}


def distill_batch(engine: Engine, batch: list[Character], candidates: int, seed: int) -> list[Kept]:
    """Every candidate of every character in one generate() call; the best passing one each."""
    jobs = [(c, seed + 1000 * i + k) for i, c in enumerate(batch) for k in range(candidates)]
    gens = engine.generate([BackstoryRequest(name=c.name, description=c.description, seed=s)
                            for c, s in jobs])
    vecs = embed([c.description for c in batch])
    best: dict[str, Kept] = {}
    for (c, s), g in zip(jobs, gens, strict=True):
        ok, rel, n = score(g.backstory, c.name, vecs[batch.index(c)])
        if ok and (c.name not in best or rel > best[c.name].relevance_after_first):
            best[c.name] = Kept(c.name, c.description, c.category, s, g.backstory, g.tokens,
                                round(rel, 4), n)
    return list(best.values())


def run(args: argparse.Namespace) -> None:
    settings = Settings(model=args.model, instruction="guided", opener=True, restate=False,
                        max_new_tokens=args.max_new_tokens, temperature=args.temperature,
                        repetition_penalty=args.repetition_penalty)
    held_out = {p.name for p in load_prompts()}
    todo = [c for c in characters(args.n, args.seed, held_out) if c.name not in
            done_names(args.out)]
    print(f"{len(todo)} characters to write ({args.candidates} candidates each)", file=sys.stderr)
    engine = Engine(settings)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    per_batch = max(1, args.batch_size // args.candidates)
    kept, started = 0, time.monotonic()
    for start in range(0, len(todo), per_batch):
        batch = todo[start : start + per_batch]
        rows = distill_batch(engine, batch, args.candidates, args.seed)
        with args.out.open("a", encoding="utf-8") as f:
            for row in rows:
                f.write(json.dumps(asdict(row), ensure_ascii=False) + "\n")
        kept += len(rows)
        done = start + len(batch)
        print(f"{done}/{len(todo)} characters, {kept} kept, "
              f"{(time.monotonic() - started) / 60:.1f} min", file=sys.stderr, flush=True)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m training.distill", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--n", type=int, default=360, help="Training characters.")
    ap.add_argument("--candidates", type=int, default=2, help="Stories per character.")
    ap.add_argument("--model", default=PACKAGED_BASE, help="The teacher.")
    ap.add_argument("--max-new-tokens", type=int, default=200)
    ap.add_argument("--temperature", type=float, default=0.7)
    ap.add_argument("--repetition-penalty", type=float, default=1.1)
    ap.add_argument("--batch-size", type=int, default=32, help="Stories per generate() call.")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", type=Path, default=OUT)
    args = ap.parse_args(argv)
    return run_cli(lambda: run(args))


if __name__ == "__main__":
    sys.exit(main())
