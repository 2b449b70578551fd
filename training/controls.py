"""`python -m training.controls`: does the served model follow each control? (issue 11)

Generates, with the served settings and fixed seeds, a few genre-neutral characters under every
control value, and measures what each control promises:

- genre / tone: zero-shot classification of each story (MiniLM, as in evaluate.py) against
  descriptions of every value (written here, not the prompt's words), calibrated by subtracting
  each label's mean similarity; the share classified as the value asked for, against chance;
- length: the share within 25 % of the length's target in words;
- point of view: the share whose pronouns are mostly first person (first) or not (third);
- sections: the share with all five sections present and non-empty (controls.split_sections);
- setting: the share of the setting note's content words the story uses, against the same
  characters' stories without the note.

    python -m training.controls --out training/controls.md     # about 10-15 min on 2 cores
"""

import argparse
import json
import sys
from pathlib import Path

import numpy as np
import torch

from backstory.config import Settings
from backstory.controls import (
    GENRES,
    LENGTHS,
    TONES,
    fill_requests,
    join_sections,
    split_sections,
)
from backstory.engine import Engine
from backstory.schemas import BackstoryRequest
from training import metrics
from training.evaluate import embed, make_settings

CHARACTERS = [("Old Hobb", "A ferryman who has rowed the same river crossing for sixty years."),
              ("Hilde Brandvold", "A border guard counting the days until her retirement."),
              ("Akosua Mensah", "A caravan master who has crossed forty times and lost no one.")]
SETTINGS = ["The Vess Empire, a desert theocracy ruled by blind priests.",
            "Skarn, a frozen archipelago where whaling clans worship the northern lights.",
            "Neo-Kyoto, a flooded megacity run by rival water corporations."]
GENRE_LABELS = {"fantasy": "a fantasy tale of wizards, elves, enchanted swords and castles",
                "myth": "an ancient myth about gods, goddesses, the heavens and divine fate",
                "sci-fi": "science fiction about spaceships, robots, planets and technology",
                "horror": "a horror story of terror, blood, monsters and fear of death",
                "post-apocalyptic": "the wasteland after a nuclear collapse: ruins, radiation, "
                                    "scavengers and survival"}
TONE_LABELS = {"grim": "a bleak, brutal, merciless and hopeless story",
               "heroic": "a brave hero's triumphant victory and glory",
               "whimsical": "a funny, silly, playful and cheerful story",
               "tragic": "a sad story of grief, mourning, heartbreak and loss"}
FIRST = {"i", "me", "my", "mine", "myself"}
THIRD = {"he", "she", "him", "her", "his", "hers", "himself", "herself", "they", "them",
         "their", "themselves"}
SEED = 4242
STOP = {"with", "that", "their", "where", "from", "into", "over", "ruled", "run", "whose"}


def jobs() -> list[tuple[str, str, dict]]:
    """(control, value, request fields) for every character under every control value; the
    plain request (no controls) is the baseline, and standard length."""
    out = []
    for i, (name, description) in enumerate(CHARACTERS):
        base = {"name": name, "description": description, "seed": SEED + i}
        out.append(("none", "", base))
        out += [("genre", g, {**base, "genre": g}) for g in GENRES]
        out += [("tone", t, {**base, "tone": t}) for t in TONES]
        out += [("pov", p, {**base, "pov": p}) for p in ("first", "third")]
        out += [("length", v, {**base, "length": v}) for v in ("short", "long")]
        out.append(("structure", "sections", {**base, "structure": "sections"}))
        out.append(("setting", SETTINGS[i], {**base, "setting": SETTINGS[i]}))
    return out


def generate(engine: Engine, todo: list, batch_size: int) -> list[dict]:
    """Batched by token budget, so that short rows do not wait for long ones."""
    requests = [BackstoryRequest(**fields) for _, _, fields in todo]
    order = sorted(range(len(todo)), key=lambda i: requests[i].max_new_tokens or 0)
    stories: dict[int, str] = {}
    for start in range(0, len(order), batch_size):
        chunk = order[start : start + batch_size]
        print(f"generating rows {start + 1}-{start + len(chunk)} of {len(order)}",
              file=sys.stderr)
        for i, gen in zip(chunk, engine.generate([requests[i] for i in chunk])):
            stories[i] = gen.backstory
    rows = [{"control": c, "value": v, "name": f["name"], "story": stories[i]}
            for i, (c, v, f) in enumerate(todo)]
    fill_sections(engine, rows, [requests[i] for i in range(len(todo))])
    return rows


def fill_sections(engine: Engine, rows: list[dict], requests: list[BackstoryRequest]) -> None:
    """The served two-pass sections mode (gateway/stories.py): what the first pass found, then
    every missing section written by a row of its own, all in one batch."""
    jobs = []
    for row, request in zip(rows, requests):
        if row["control"] == "structure":
            row["sections"] = split_sections(row["story"])
            row["first_pass"] = sum(map(bool, row["sections"].values()))
            jobs += [(row, k, r) for k, r in fill_requests(request, row["sections"], request.seed)]
    if not jobs:
        return
    print(f"filling {len(jobs)} missing sections", file=sys.stderr)
    for (row, key, _), gen in zip(jobs, engine.generate([r for *_, r in jobs])):
        row["sections"][key] = split_sections(gen.backstory)[key]
        row["story"] = join_sections(row["sections"])


def classified(stories: list[str], labels: dict[str, str], all_stories: list[str]) -> list[str]:
    """Each story's label: the highest cosine to a label's description, less that label's mean
    cosine over every story generated (so no label wins by being close to everything)."""
    names = list(labels)
    lab = embed(list(labels.values()))
    bias = (embed(all_stories) @ lab.T).mean(axis=0)
    scores = embed(stories) @ lab.T - bias
    return [names[j] for j in np.argmax(scores, axis=1)]


def first_person_share(text: str) -> float:
    words = metrics.words(text)
    first, third = sum(w in FIRST for w in words), sum(w in THIRD for w in words)
    return first / (first + third) if first + third else 0.0


def setting_words(setting: str) -> set[str]:
    return {w for w in metrics.words(setting) if len(w) > 3 and w not in STOP}


def setting_use(story: str, setting: str) -> float:
    wanted = setting_words(setting)
    return len(wanted & set(metrics.words(story))) / len(wanted)


def share(flags: list[bool]) -> float:
    return round(sum(flags) / len(flags), 2) if flags else 0.0


def table(rows: list[dict]) -> list[tuple[str, str, str, str]]:
    """(control, measure, followed, baseline) rows of the report."""
    every = [r["story"] for r in rows]
    of = lambda c: [r for r in rows if r["control"] == c]  # noqa: E731
    out = []
    for control, labels in (("genre", GENRE_LABELS), ("tone", TONE_LABELS)):
        asked = of(control)
        got = classified([r["story"] for r in asked], labels, every)
        for value in labels:
            hits = [g == r["value"] for g, r in zip(got, asked) if r["value"] == value]
            out.append((f"{control}={value}", "classified as asked (zero-shot)",
                        str(share(hits)), f"chance {1 / len(labels):.2f}"))
        out.append((f"{control} (all)", "classified as asked",
                    str(share([g == r["value"] for g, r in zip(got, asked)])),
                    f"chance {1 / len(labels):.2f}"))
    plain = of("none")
    for value, length in LENGTHS.items():
        asked = plain if value == "standard" else [r for r in of("length") if r["value"] == value]
        n = [len(metrics.words(r["story"])) for r in asked]
        ok = [abs(w - length.words) <= 0.25 * length.words for w in n]
        out.append((f"length={value}", f"within 25% of {length.words} words (mean words)",
                    f"{share(ok)} ({np.mean(n):.0f})", "-"))
    for value in ("first", "third"):
        asked = [r for r in of("pov") if r["value"] == value]
        held = [(first_person_share(r["story"]) > 0.5) == (value == "first") for r in asked]
        base = [(first_person_share(r["story"]) > 0.5) == (value == "first") for r in plain]
        out.append((f"pov={value}", "pronouns mostly in that person", str(share(held)),
                    str(share(base))))
    done = of("structure")
    out.append(("structure=sections", "all five sections present and non-empty (two passes)",
                str(share([all(r["sections"].values()) for r in done])),
                f"one pass: {np.mean([r['first_pass'] for r in done]):.1f} of 5 found"))
    used = [setting_use(r["story"], r["value"]) for r in of("setting")]
    base = [setting_use(p["story"], s) for p, s in zip(plain, SETTINGS)]
    out.append(("setting", "share of the note's content words used", f"{np.mean(used):.2f}",
                f"{np.mean(base):.2f} without the note"))
    return out


def markdown(rows: list[dict], model: str) -> str:
    lines = [f"# Controls followed by {model}", "",
             f"{len(CHARACTERS)} characters per value, seeds {SEED}+, served settings "
             "(python -m training.controls).", "",
             "| control | measure | followed | baseline |", "|---|---|---|---|"]
    lines += [f"| {' | '.join(r)} |" for r in table(rows)]
    lines += ["", "## One story per control value (the first character)", ""]
    for r in rows[: len(rows) // len(CHARACTERS)]:
        lines += [f"**{r['control']}={r['value'] or '(none)'}**", "", r["story"], ""]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--model", default=None, help="Default: the served model (Settings).")
    ap.add_argument("--batch-size", type=int, default=24)
    ap.add_argument("--out", type=Path, default=Path("training/controls.md"))
    ap.add_argument("--only", default="", help="Regenerate only these controls (comma list); "
                    "the other rows come from the --out report's JSON of an earlier run.")
    args = ap.parse_args(argv)
    torch.manual_seed(0)
    settings = make_settings(args.model or Settings().model, {})
    engine = Engine(settings)
    only = {c for c in args.only.split(",") if c}
    todo = [j for j in jobs() if not only or j[0] in only]
    rows = generate(engine, todo, args.batch_size)
    if only:  # the same characters and seeds: the kept rows are what a full run gives
        kept = json.loads(args.out.with_suffix(".json").read_text(encoding="utf-8"))
        fresh = iter(rows)
        rows = [next(fresh) if r["control"] in only else r for r in kept]
    args.out.write_text(markdown(rows, engine.name) + "\n", encoding="utf-8")
    args.out.with_suffix(".json").write_text(json.dumps(rows, indent=1, ensure_ascii=False))
    print(markdown(rows, engine.name).split("\n## ")[0])
    return 0


if __name__ == "__main__":
    sys.exit(main())
