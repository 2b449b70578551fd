"""A story as a file: Markdown, JSON, or a Character Card V2 (the format SillyTavern and other
chat front-ends import; spec: github.com/malfoyslastname/character-card-spec-v2).

Pure functions of an ExportStory, so each is tested without a server (tests/test_extras.py).
"""

import json
import re
import unicodedata

import backstory
from backstory.controls import SECTIONS
from backstory.text import split_sentences
from gateway.shapes import ExportFormat, ExportStory

CREATOR = "Backstory Generator"
STEERING = ("genre", "tone", "length", "pov", "setting", "structure")
MEDIA = {"markdown": "text/markdown; charset=utf-8", "json": "application/json",
         "card": "application/json"}
SUFFIX = {"markdown": ".md", "json": ".json", "card": ".card.json"}
# The spec's `data` fields and their JSON types (spec_v2.md, "Proposed fields"); character_book
# is optional and left out: we have no lorebook entries to give.
CARD_V2_FIELDS = {"name": str, "description": str, "personality": str, "scenario": str,
                  "first_mes": str, "mes_example": str, "creator_notes": str,
                  "system_prompt": str, "post_history_instructions": str,
                  "alternate_greetings": list, "tags": list, "creator": str,
                  "character_version": str, "extensions": dict}


def steering(story: ExportStory) -> dict[str, str]:
    return {k: v for k in STEERING if (v := getattr(story, k))}


def body_paragraphs(story: ExportStory) -> list[str]:
    """The story's paragraphs; in sections mode each section is one, under its heading."""
    if story.sections:
        return [f"{SECTIONS[k]}: {v}" for k, v in story.sections.items() if v]
    return [p for p in story.backstory.split("\n\n") if p.strip()]


def markdown(story: ExportStory) -> str:
    lines = [f"# {story.name}", "", f"*{story.description}*", ""]
    if story.sections:
        for key, heading in SECTIONS.items():
            text = story.sections.get(key) or "*(missing: the model did not write this section)*"
            lines += [f"## {heading}", "", text, ""]
    else:
        lines += [story.backstory, ""]
    notes = [f"{k}: {v}" for k, v in steering(story).items()]
    lines += ["---", "", " · ".join([*notes, f"seed {story.seed}", f"model {story.model}"]), ""]
    return "\n".join(lines)


def as_json(story: ExportStory) -> str:
    return json.dumps(story.model_dump(exclude_none=True), ensure_ascii=False, indent=2)


def first_message(story: ExportStory) -> str:
    """The card's greeting: the story's opening paragraph, as narration (in asterisks, as chat
    front-ends show actions), so the chat starts inside the character's lore."""
    # Every section may be empty (the model wrote none): then the whole story, whatever it is.
    first = next(iter(body_paragraphs(story)), story.backstory.strip())
    for heading in SECTIONS.values():
        first = first.removeprefix(f"{heading}: ")
    return f"*{first}*"


def scenario(story: ExportStory) -> str:
    """Where a chat with the character starts: the setting note, then the story's last turn
    (the turning point and plot hooks in sections mode, else the last sentences)."""
    parts = [story.setting] if story.setting else []
    if story.sections:
        parts += [story.sections[k] for k in ("turning_point", "plot_hooks")
                  if story.sections.get(k)]
    else:
        last = (body_paragraphs(story) or [""])[-1]
        parts.append(" ".join(split_sentences(last)[-2:]))
    return "\n\n".join(p for p in parts if p)


def card(story: ExportStory) -> dict:
    """A Character Card V2: every field of the spec's `data`, strings empty where we have
    nothing (the spec wants them present); our provenance in `extensions`."""
    tags = [v for k in ("genre", "tone") if (v := getattr(story, k))] + ["backstory"]
    notes = (f"Backstory written by the model {story.model} with seed {story.seed} "
             f"({CREATOR} {backstory.__version__}). Character prompt: {story.description}")
    return {"spec": "chara_card_v2", "spec_version": "2.0", "data": {
        "name": story.name,
        "description": f"{story.description}\n\n" + "\n\n".join(body_paragraphs(story)),
        "personality": "",
        "scenario": scenario(story), "first_mes": first_message(story), "mes_example": "",
        "creator_notes": notes, "system_prompt": "", "post_history_instructions": "",
        "alternate_greetings": [], "tags": tags, "creator": CREATOR,
        "character_version": str(story.seed),
        "extensions": {"backstory_generator": {
            "seed": story.seed, "model": story.model, **steering(story),
            **({"sections": story.sections} if story.sections else {})}},
    }}


def render(story: ExportStory, fmt: ExportFormat) -> str:
    if fmt == "markdown":
        return markdown(story)
    if fmt == "json":
        return as_json(story)
    return json.dumps(card(story), ensure_ascii=False, indent=2)


def filename(story: ExportStory, fmt: ExportFormat) -> str:
    """An ASCII file name from the character's name and the seed ("kaylon-42.card.json")."""
    ascii_name = unicodedata.normalize("NFKD", story.name).encode("ascii", "ignore").decode()
    slug = re.sub(r"[^a-z0-9]+", "-", ascii_name.lower()).strip("-")[:40] or "backstory"
    return f"{slug}-{story.seed}{SUFFIX[fmt]}"
