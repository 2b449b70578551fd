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
import re
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
from training.evaluate import embed, load_prompts, sentence_embeddings

OUT = Path(__file__).with_name("data") / "backstories.jsonl"
MIN_WORDS, MAX_WORDS, MAX_REPETITION, MIN_RELEVANCE = 80, 260, 0.08, 0.25
MIN_MENTIONS = 2  # sentences that name the character, the first one included
# A story whose consecutive sentences are far apart in meaning wanders (the base's stories range
# 0.21-0.62 in mean cosine); a fine-tune on all of them lost coherence, one on those >= 0.33 lost
# less (README, Quality).
MIN_COHERENCE = 0.33
# The base's stock scenes: a student trained on them opens every story alike (distinct-2 drops).
STOCK = re.compile(r"\bbustling\b|\bstood at the edge\b|\bin a world where\b|\bin the heart of\b"
                   r"|\bwas born (?:into|in) a (?:family|world|small)", re.IGNORECASE)
# Talk to the reader or about the text ("your character", "I'm", "this backstory").
READER = re.compile(r"\byour?\b|\bI['\u2019]m\b|\bbackstory\b", re.IGNORECASE)


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
    coherence: float | None = None  # mean cosine of consecutive sentences; None: older gates
    typicality: float | None = None  # mean cosine of its sentence i with the batch's sentence i


def score(story: str, name: str, description_vec: np.ndarray,
          sentence_vecs: np.ndarray) -> tuple[bool, float, int, float]:
    """(passes every gate, relevance of the text after the first sentence, sentences naming the
    character, coherence: mean cosine of consecutive sentences). Gates: no preamble, markdown or
    talk to the reader, no stock opening scene, length, no loops, a complete last sentence, the
    name after the first sentence and again in the second half (the base tends to hand the story
    to a hero it invents), on the description after the first sentence, and coherent.

    A story cut by the token limit counts: Engine already trimmed it to its last complete
    sentence, and the student learns to end there (the end-of-turn token follows it)."""
    sentences = metrics.sentences(story)
    rest = " ".join(sentences[1:])
    second_half = " ".join(sentences[len(sentences) // 2:])
    n_words = len(metrics.words(story))
    mentions = sum(metrics.mentions(s, name) for s in sentences)
    relevance = float(embed([rest])[0] @ description_vec)
    # The evaluation's consecutive-sentence cosine, for this story alone (0 with one sentence).
    coherent = metrics.mean_cosine(sentence_vecs[:-1], sentence_vecs[1:]) or 0.0
    ok = (not metrics.has_preamble(story) and MIN_WORDS <= n_words <= MAX_WORDS
          and (metrics.repetition(story) or 0) <= MAX_REPETITION and metrics.ends_complete(story)
          and metrics.mentions(rest, name) and metrics.mentions(second_half, name)
          and mentions >= MIN_MENTIONS and relevance >= MIN_RELEVANCE
          and coherent >= MIN_COHERENCE and not STOCK.search(" ".join(sentences[:2]))
          and not READER.search(story) and "#" not in story and "**" not in story)
    return ok, relevance, mentions, coherent


def done_names(out: Path) -> set[str]:
    if not out.exists():
        return set()
    return {json.loads(line)["name"] for line in out.read_text().splitlines() if line.strip()}


def distill_batch(engine: Engine, batch: list[Character], candidates: int, seed: int) -> list[Kept]:
    """Every candidate of every character in one generate() call; of those passing every gate,
    the one most on the description, most coherent and least like the other stories (_merit) is
    kept."""
    jobs = [(c, seed + 1000 * i + k) for i, c in enumerate(batch) for k in range(candidates)]
    gens = engine.generate([BackstoryRequest(name=c.name, description=c.description, seed=s)
                            for c, s in jobs])
    vecs = embed([c.description for c in batch])
    per_sentence = sentence_embeddings([g.backstory for g in gens])
    typical = typicality(per_sentence)
    best: dict[str, Kept] = {}
    for (c, s), g, sv, t in zip(jobs, gens, per_sentence, typical, strict=True):
        ok, rel, n, coh = score(g.backstory, c.name, vecs[batch.index(c)], sv)
        row = Kept(c.name, c.description, c.category, s, g.backstory, g.tokens, round(rel, 4), n,
                   round(coh, 4), round(t, 4))
        if ok and (c.name not in best or _merit(row) > _merit(best[c.name])):
            best[c.name] = row
    return list(best.values())


def typicality(stories: list[np.ndarray]) -> list[float]:
    """Per story, the mean cosine of its sentence i with the mean sentence i of all the stories
    (position by position, as the evaluation's coherence pairs sentences of different stories).
    Our first fine-tunes were coherent within a story but alike across stories (that similarity
    rose from the base's 0.214 to 0.233), which is what cost them the coherence figure."""
    width = max(len(s) for s in stories)
    dim = max(s.shape[1] for s in stories if len(s))
    sums, counts = np.zeros((width, dim)), np.zeros((width, 1))
    for s in stories:
        sums[: len(s)] += s
        counts[: len(s)] += 1
    centre = sums / np.maximum(counts, 1)
    return [float(np.mean(np.sum(s * centre[: len(s)], axis=1))) if len(s) else 1.0
            for s in stories]


def _merit(row: Kept) -> float:
    """On the description, coherent within the story, unlike the others: the evaluation's
    relevance after the first sentence and its coherence (consecutive minus across stories)."""
    return row.relevance_after_first + (row.coherence or 0.0) - (row.typicality or 0.0)


def rescore(path: Path) -> None:
    """Re-applies today's gates to rows kept under older ones; rewrites the file with those that
    pass (and their coherence)."""
    rows = [Kept(**json.loads(line)) for line in path.read_text().splitlines() if line.strip()]
    vecs = embed([r.description for r in rows])
    per_sentence = sentence_embeddings([r.story for r in rows])
    kept = []
    for row, vec, sv in zip(rows, vecs, per_sentence, strict=True):
        ok, rel, n, coh = score(row.story, row.name, vec, sv)
        if ok:
            kept.append(asdict(row) | {"relevance_after_first": round(rel, 4), "mentions": n,
                                       "coherence": round(coh, 4)})
    path.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in kept))
    print(f"{len(kept)} of {len(rows)} rows pass today's gates", file=sys.stderr)


def run(args: argparse.Namespace) -> None:
    if args.rescore:
        return rescore(args.out)
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
    ap.add_argument("--rescore", action="store_true",
                    help="Only re-apply the gates to the rows already in --out.")
    args = ap.parse_args(argv)
    return run_cli(lambda: run(args))


if __name__ == "__main__":
    sys.exit(main())
