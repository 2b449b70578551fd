"""Steering a story: genre, tone, length, point of view, setting and structure (issue 11).

Every control reaches the model through the prompt only: a sentence added to the chat
instruction, and for first person and sections a different story opening. A control left out
adds nothing, so an old request gets exactly the old prompt (same seed, same story).
training/controls.py measures whether the default model follows each one (README, Controls).

The values are the API's enums (backstory/schemas.py reads them from here); the descriptions are
also what the measurement classifies a story against (zero-shot, MiniLM).
"""

import re
from typing import TYPE_CHECKING, NamedTuple

if TYPE_CHECKING:
    from backstory.schemas import Controls

# What the instruction asks for (the system turn names the genre too). The measurement
# classifies stories against descriptions of its own (training/controls.py), not these words.
GENRES = {
    "fantasy": ("fantasy", "a fantasy story of kingdoms, magic and ancient powers"),
    "myth": ("myth and legend", "a myth, told like an ancient legend of gods, spirits and heroes"),
    "sci-fi": ("science fiction", "a science fiction story set in the far future, among "
               "starships, machines and other worlds"),
    "horror": ("horror", "a horror story of dread, darkness and something terrible"),
    "post-apocalyptic": ("post-apocalyptic fiction", "a post-apocalyptic story, after the "
                         "collapse of civilisation, among ruins and survivors"),
}
TONES = {
    "grim": "dark, harsh and without mercy",
    "heroic": "brave, noble and triumphant",
    "whimsical": "playful, funny and light-hearted",
    "tragic": "sorrowful, full of loss, ending in sorrow",
}


class Length(NamedTuple):
    tokens: int  # the token budget (max_new_tokens) unless the request sets its own
    words: int  # the target the measurement checks (within 25 %)
    ask: str  # what the instruction adds; "" for standard, which is today's default


LENGTHS = {
    "short": Length(120, 80, "Keep it short: one paragraph of about 80 words."),
    "standard": Length(200, 150, ""),
    "long": Length(320, 240, "Make it long: four or five paragraphs, about 250 words."),
}
POVS = ("third", "first")
STRUCTURES = ("prose", "sections")
# Sections mode: the model writes these headings, text.split_sections reads them back.
SECTIONS = {"origin": "Origin", "turning_point": "Turning point", "motivation": "Motivation",
            "secret": "Secret", "plot_hooks": "Plot hooks"}


def system(default: str, c: "Controls | None") -> str:
    """The system turn: with a genre, the storyteller writes that genre (the default one names
    fantasy, myth and science fiction, which would pull a horror story back to fantasy); with a
    tone, stories of that tone (the instruction alone moved the tone too little)."""
    if c is None or not (c.genre or c.tone):
        return default
    kind = f"lore-rich, {c.tone}" if c.tone else "lore-rich"
    genre = GENRES[c.genre][0] if c.genre else "fantasy, myth and science fiction"
    return (f"You are a storyteller. You write immersive, {kind} backstories for characters "
            f"of {genre}.")


def asks(c: "Controls", name: str) -> list[str]:
    """The sentences the controls add to the instruction, in a fixed order."""
    out = []
    if c.genre:
        out.append(f"Make it {GENRES[c.genre][1]}.")
    if c.tone:
        out.append(f"Make it {c.tone}: {TONES[c.tone]}. Every paragraph should feel {c.tone}.")
    if c.pov == "first":
        out.append(f"Write it in the first person: {name} tells their own story, using "
                   "\"I\", \"me\" and \"my\".")
    elif c.pov == "third":
        out.append(f"Write it in the third person, calling the character {name}.")
    if c.setting:
        out.append(f"Setting: {c.setting} The story must take place in this world; use its "
                   "names.")
    if c.length:
        out.append(LENGTHS[c.length].ask)
    if c.structure == "sections":
        out.append(sections_ask(c))
    return [a for a in out if a]


def sections_ask(c: "Controls") -> str:
    if c.section:  # re-roll: one section, the others given as context
        return (f"Write only the \"{SECTIONS[c.section]}\" section, in two or three sentences "
                "that fit the other sections.")
    heads = ", ".join(f"{h}:" for h in SECTIONS.values())
    return (f"Write it in five sections, each on its own line starting with its heading: {heads} "
            "Two sentences each; the plot hooks are story ideas for a game master.")


def context_block(c: "Controls") -> str:
    """The other sections of a story whose one section is re-rolled, as the prompt shows them."""
    if not (c.section and c.context):
        return ""
    kept = [f"{SECTIONS[k]}: {v}" for k, v in c.context.items() if k != c.section and v]
    return "\n\nThe story so far:\n" + "\n".join(kept) if kept else ""


def opening(c: "Controls | None", name: str) -> str:
    """The story's start for a name opener: the name in third person (as always), "My name is
    <name>" in first person (a bare name would invite third person), and the first heading
    before it in sections mode (the re-rolled section's heading when re-rolling)."""
    if c is None:
        return name
    start = f"My name is {name}" if c.pov == "first" else name
    if c.structure == "sections":
        return f"{SECTIONS[c.section or 'origin']}: {start}"
    return start


# The headings as the model writes them: it shortens some ("Turnpoint:", "Motive:").
ALIASES = {"origin": "origins?", "turning_point": r"turning[ -]?points?|turnpoints?",
           "motivation": "motivations?|motives?", "secret": "secrets?",
           "plot_hooks": r"(?:plot[ -]?)?hooks?"}
_HEADING = re.compile(r"(?im)^[ \t#>*_-]*(?:" + "|".join(
    f"(?P<{k}>{a})" for k, a in ALIASES.items()) + r")[ \t*_]*:[ \t*_]*")


# Any other heading the model invents ("Tipping Point:", "Title:") ends the section before it.
_ANY_HEADING = re.compile(r"(?m)^[ \t#>*_-]*[A-Z][\w'-]*(?:[ -][\w'-]+){0,2}[ \t*_]*:")


def split_sections(text: str) -> dict[str, str]:
    """The sections of a story written in sections mode, by heading (at a line start, in any
    case, markdown bold or not). Every section is a key: a missing or empty one is "" (shown as
    missing, not hidden). A heading written twice keeps its first text."""
    found = list(_HEADING.finditer(text))
    out = dict.fromkeys(SECTIONS, "")
    for m, end in zip(found, [f.start() for f in found[1:]] + [len(text)]):
        key = m.lastgroup
        if not out[key]:
            body = text[m.end():end]
            other = _ANY_HEADING.search(body, 1)  # not the section's own first words
            out[key] = body[: other.start() if other else len(body)].strip()
    return out


FILL_TOKENS = 90  # a section of two or three sentences


def fill_requests(request, sections: dict[str, str], seed: int) -> list[tuple[str, object]]:
    """Sections mode in two passes: the model renames or skips headings in one go (measured:
    1.7 of 5 found, training/controls.py), so each missing section gets a row of its own,
    opened with its heading and given the sections found as context, as a re-roll is. Seeds
    follow the story's (seed+1+section index): same seed, same story."""
    keys = list(SECTIONS)
    return [(k, request.model_copy(update={
        "section": k, "context": dict(sections), "seed": (seed + 1 + keys.index(k)) % 2**32,
        "max_new_tokens": FILL_TOKENS, "min_new_tokens": 0})) for k in keys if not sections[k]]


def join_sections(sections: dict[str, str]) -> str:
    """A story's text from its sections (after one was re-rolled), headings on their lines."""
    return "\n\n".join(f"{SECTIONS[k]}: {v}" for k, v in sections.items() if v)
