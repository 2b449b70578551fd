"""The text format the model is trained on and prompted with, and the clean-up of its output.

Training and serving share this file so that the prompt at serving time is exactly the format the
model saw in training. A chat model (one whose tokenizer has a chat template, like the default
SmolLM2-135M-Instruct) gets its own template with our instruction, and the assistant's turn begins
with the story's opening:

    <|im_start|>system ...<|im_end|> <|im_start|>user Write ... Name: Kaylon ...<|im_end|>
    <|im_start|>assistant
    Kaylon ... (the story)<|im_end|>

A model trained from scratch (GPT-2, `--preset`) learns the plain header format:

    <|endoftext|>Name: Kaylon
    Description: An empire of androids that killed their biological creators.

    Kaylon ... (the story)<|endoftext|>
"""

import re
import unicodedata
from typing import TYPE_CHECKING

from backstory import controls as steer

if TYPE_CHECKING:
    from backstory.schemas import Controls

EOS = "<|endoftext|>"
HEADER = "Name: {name}\nDescription: {description}\n\n"
# A model that finishes one story may start the next example's header: cut there.
SPECIAL_STOPS = (EOS, "<|im_end|>", "<|im_start|>")  # end of a turn, whatever the prompt
STOP_MARKERS = ("\nName:", "\nDescription:", *SPECIAL_STOPS)

_SPACES = re.compile(r"[ \t\r\f\v]+")
_PARAGRAPH_BREAKS = re.compile(r"\s*\n\s*\n\s*")
_LINE_BREAK = re.compile(r"\s*\n\s*")
# A sentence ends with . ! ? (or an ellipsis), optionally closed by quotes or brackets.
_SENTENCE_END = re.compile(r"[.!?\u2026][\"'\u201d\u2019)\]]*(?=\s|$)")
# A character class body, as escapes that Python, Rust (pydantic) and JSON Schema regexes share.
CONTROL_CHARS = r"\x00-\x08\x0b\x0c\x0e-\x1f\x7f-\x9f\u2028\u2029"
_CONTROL = re.compile(f"[{CONTROL_CHARS}]")


def normalize(text: str) -> str:
    """Unicode NFC, straight whitespace, paragraphs separated by one blank line."""
    text = unicodedata.normalize("NFC", text).replace("\u00a0", " ")
    paragraphs = [_SPACES.sub(" ", _LINE_BREAK.sub(" ", p)).strip()
                  for p in _PARAGRAPH_BREAKS.split(text)]
    return "\n\n".join(p for p in paragraphs if p)


def has_control_chars(text: str) -> bool:
    """True for NUL and other C0/C1 control characters (tab and newline are allowed)."""
    return bool(_CONTROL.search(text))


def header(name: str, description: str) -> str:
    return HEADER.format(name=normalize(name), description=normalize(description))


def opening(name: str, description: str, opener: bool = True, restate: bool = False,
            controls: "Controls | None" = None) -> str:
    """The start of the story, written for the model: the character's name (anchors the model
    on the character from its first token), and with `restate` a description that is a noun
    phrase ("An empire of androids...") turned into the first sentence ("Kaylon was an empire
    of androids..."), which keeps the story on the description. First person and sections mode
    have their own opening (controls.opening)."""
    if not opener:
        return ""
    name, description = normalize(name), normalize(description)
    if controls is not None and (controls.pov == "first" or controls.structure == "sections"):
        return steer.opening(controls, name)
    first = description.split(" ", 1)[0].lower()
    if restate and first in ("a", "an", "the") and " " in description:
        sentence = f"{name} was {description[0].lower()}{description[1:]}"
        return sentence if sentence[-1] in ".!?" else sentence + "."
    return name


SYSTEM = ("You are a storyteller. You write immersive, lore-rich backstories for characters of "
          "fantasy, myth and science fiction.")
# "short" is what the fine-tuned model is trained and served with; "guided" spells out what a
# reader wants, for the zero-shot base (its best prompt in the evaluation) and for the teacher
# that wrote the fine-tuning data (training/distill.py).
INSTRUCTIONS = {
    "short": "Write the backstory of this character.",
    "guided": ("Write the backstory of this character in two or three paragraphs of third-person "
               "prose. Begin with the story itself: no title, no preamble. Call the character "
               "{name} throughout, stay true to the description, and end on a complete sentence."),
}


def chat_messages(name: str, description: str, instruction: str = "short",
                  controls: "Controls | None" = None) -> list[dict]:
    """The system and user turns; the controls' sentences follow the instruction, and a
    re-rolled section's story so far follows the character."""
    name, description = normalize(name), normalize(description)
    ask = " ".join([INSTRUCTIONS[instruction].format(name=name),
                    *(steer.asks(controls, name) if controls else [])])
    context = steer.context_block(controls) if controls else ""
    return [{"role": "system", "content": steer.system(SYSTEM, controls)},
            {"role": "user",
             "content": f"{ask}\n\nName: {name}\nDescription: {description}{context}"}]


def build_prompt(name: str, description: str, opener: bool = True, restate: bool = False,
                 tokenizer=None, instruction: str = "short",
                 controls: "Controls | None" = None) -> str:
    """The prompt for one backstory, ending with the story's opening: the tokenizer's chat
    template where it has one, else the training format's header (which has no place for the
    controls: a model trained from scratch never saw them)."""
    start = opening(name, description, opener, restate, controls)
    if tokenizer is not None and getattr(tokenizer, "chat_template", None):
        messages = chat_messages(name, description, instruction, controls)
        chat = tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
        return chat + start
    return EOS + header(name, description) + start


def find_stop(text: str, markers: tuple[str, ...] = STOP_MARKERS) -> int | None:
    """Index where generated text stops being the story (the model began a new example)."""
    hits = [i for i in (text.find(m) for m in markers) if i >= 0]
    return min(hits) if hits else None


def trim_to_sentence(text: str) -> str:
    """Cut after the last complete sentence; keep the text whole if it has none."""
    ends = list(_SENTENCE_END.finditer(text))
    return text[: ends[-1].end()] if ends else text


def clean_backstory(generated: str, opener: str = "") -> str:
    """Post-process model output into the backstory shown to the user.

    `generated` is the new text only (the prompt already stripped); `opener` is the part of the
    prompt that belongs to the story (the name it starts with)."""
    text = _CONTROL.sub("", opener + generated).replace("\ufffd", "")
    stop = find_stop(text)
    if stop is not None:
        text = text[:stop]
    paragraphs = [_SPACES.sub(" ", p).strip() for p in _PARAGRAPH_BREAKS.split(text)]
    text = "\n\n".join(p for p in paragraphs if p)
    return trim_to_sentence(text).strip()


def split_sentences(paragraph: str) -> list[str]:
    """Sentences of one paragraph, each with its closing punctuation."""
    out, start = [], 0
    for m in _SENTENCE_END.finditer(paragraph):
        out.append(paragraph[start : m.end()].strip())
        start = m.end()
    tail = paragraph[start:].strip()
    return [s for s in out + [tail] if s]
