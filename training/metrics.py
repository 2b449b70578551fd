"""Pure text metrics of generated backstories (and of human text, as the reference).

No model in here: every function takes strings and returns numbers, so each is unit-tested with
hand-computed values (tests/test_metrics.py) and the evaluation (evaluate.py) only orchestrates.

Words are lower-cased runs of letters/digits (apostrophes inside a word kept), so punctuation and
case do not make "Dragon," and "dragon" different words for repetition and distinct-n.
"""

import random
import re
import unicodedata
from collections.abc import Callable, Sequence

import numpy as np

from backstory.text import split_sentences

_WORD = re.compile(r"\w+(?:['\u2019]\w+)*")
# A complete sentence ends with . ! ? or an ellipsis, optionally closed by quotes or brackets.
_COMPLETE_END = re.compile(r"[.!?\u2026][\"'\u201d\u2019)\]]*\s*$")
# Leading words that are not a name's own ("The Iron Legion" is found by "Iron", not "The").
_NAME_ARTICLES = {"the", "a", "an"}
NEAR_EMPTY_WORDS = 5
# Preamble: an instruction-tuned model answers the request ("Sure! Here's a backstory for...")
# or dresses the story as a document (a title, a bold title line, a heading) instead of just
# telling it. These are the openings of such replies, matched at the very start of the text,
# ignoring case. Interjections match as whole words, so "Surely" is not one; a story that truly
# opens with "Of course" or "I can" counts too, the price of catching the common replies.
# Storytelling openings ("Once upon a time", the character's name) are not in here.
_PREAMBLE_OPENING = re.compile(
    r"""\s*(?:
        (?:sure|certainly|of\s+course|absolutely)\b
      | here(?:\s+is|\s+are|['\u2019]s)\b
      | below\s+(?:is|are)\b
      | as\s+an\s+ai\b
      | i['\u2019]d\s+be\s+(?:happy|glad)\b
      | i\s+can\b
      | (?:title|backstory)\s*:
      | \*\*\s*(?:title|backstory)\b
      | \*\*[^*\n]+\*\*[ \t]*:?[ \t]*(?:\n|$)
      | \#{1,6}\s
    )""",
    re.IGNORECASE | re.VERBOSE)
# Talk about the text rather than the character, anywhere near the start ("In this backstory...",
# "As a language model...", "I hope this helps"): human stories and our model's do not do that.
_PREAMBLE_META = re.compile(
    r"(?:\b(?:this|the|a|your)|['\u2019]s)\s+backstory\b|\bas\s+an\s+ai\b"
    r"|\blanguage\s+model\b|\bi\s+hope\s+this\b",
    re.IGNORECASE)
PREAMBLE_META_CHARS = 200
# An article instead of a tale: a third DPO round learned that "X is a legendary figure in Finnish
# mythology... The story continues to inspire" names the character and restates the description
# more than a told story does (present tense rose from 17% to 48% of its be/have verbs, and
# readers saw Wikipedia, not a backstory). Talk about the character as a figure or text, or a
# story told mostly in the present tense, counts.
_ARTICLE = re.compile(
    r"\bthis story\b|\bthe story (?:continues|is|has been)\b|\bin the context of\b"
    r"|\b(?:mythological|legendary|historical|literary|fictional) figure\b|\boften depicted\b"
    r"|\b(?:is|was) (?:not )?(?:actually )?an? (?:actual|real|fictional) character\b"
    r"|\bin (?:[A-Z]\w+ )?(?:mythology|folklore)\b",
    re.IGNORECASE)
_PRESENT = re.compile(r"\b(?:is|are|has|have)\b", re.IGNORECASE)
_PAST = re.compile(r"\b(?:was|were|had)\b", re.IGNORECASE)
MIN_TENSE_VERBS = 4  # fewer say little about the tense


def words(text: str) -> list[str]:
    return _WORD.findall(unicodedata.normalize("NFC", text).lower())


def ngrams(tokens: Sequence[str], n: int) -> list[tuple[str, ...]]:
    return [tuple(tokens[i : i + n]) for i in range(len(tokens) - n + 1)]


def repetition(text: str, n: int = 3) -> float | None:
    """Share of repeated word n-grams inside one text: 1 - unique/total. Loops ("and then he went
    and then he went") push it up; None for texts too short to have an n-gram."""
    grams = ngrams(words(text), n)
    return 1 - len(set(grams)) / len(grams) if grams else None


def distinct_n(texts: Sequence[str], n: int) -> float:
    """Unique n-grams / all n-grams over all texts (n-grams do not cross texts): low when every
    story says the same things, whatever the prompt (Li et al. 2016)."""
    grams = [g for t in texts for g in ngrams(words(t), n)]
    return len(set(grams)) / len(grams) if grams else 0.0


def ends_complete(text: str) -> bool:
    """True when the text ends on a finished sentence rather than mid-sentence."""
    return bool(_COMPLETE_END.search(text))


def name_keys(name: str) -> list[str]:
    """What counts as mentioning a character: the full name, or its first word (after an
    article), so "Mira" counts for "Mira Solvane" and "Iron" for "The Iron Legion"."""
    full = " ".join(unicodedata.normalize("NFC", name).split())
    parts = full.split(" ")
    while len(parts) > 1 and parts[0].lower() in _NAME_ARTICLES:
        parts = parts[1:]
    return list(dict.fromkeys([full, parts[0]])) if full else []


def mentions(text: str, name: str) -> bool:
    """Whole-word, case-sensitive (names are proper nouns: "Hope" is not "hope") mention."""
    text = unicodedata.normalize("NFC", text)
    return any(re.search(rf"(?<!\w){re.escape(k)}(?!\w)", text) for k in name_keys(name))


def sentences(text: str) -> list[str]:
    """The sentences of a text, paragraph after paragraph (a sentence never spans a blank line)."""
    return [s for p in text.split("\n\n") for s in split_sentences(p)]


def after_first_sentence(text: str) -> str:
    """The text without its first sentence: with the opener on, every story starts with the name
    (and with `restate` with the description), so the first sentence says nothing about whether
    the model kept using the name or stayed on the description."""
    return " ".join(sentences(text)[1:])


def has_preamble(text: str) -> bool:
    """True when the text opens like an assistant's reply or a document (see _PREAMBLE_OPENING)
    or talks about itself in its first PREAMBLE_META_CHARS characters: a zero-shot prompt can get
    a chat model to write backstories, but not only backstories, and this counts how often."""
    text = unicodedata.normalize("NFC", text)
    return bool(_PREAMBLE_OPENING.match(text)
                or _PREAMBLE_META.search(text[:PREAMBLE_META_CHARS]))


def encyclopedic(text: str) -> bool:
    """True when the text reads like an article about the character rather than its story: it
    talks about the character as a figure or text (_ARTICLE), or most of its finite be/have verbs
    are in the present tense."""
    present, past = len(_PRESENT.findall(text)), len(_PAST.findall(text))
    return bool(_ARTICLE.search(text)) or (present + past >= MIN_TENSE_VERBS and present > past)


def derangement(n: int, seed: int = 0) -> list[int]:
    """A fixed permutation with no fixed point: pairs each story with another prompt's
    description, for the relevance baseline. Seeded, so every run pairs the same way."""
    if n < 2:
        raise ValueError("a derangement needs at least two items")
    rng = random.Random(seed)
    while True:
        perm = list(range(n))
        rng.shuffle(perm)
        if all(i != p for i, p in enumerate(perm)):
            return perm


def mean(values: Sequence[float | None]) -> float | None:
    kept = [v for v in values if v is not None]
    return sum(kept) / len(kept) if kept else None


def text_stats(texts: Sequence[str]) -> dict:
    """The statistics we compare between model output and human text."""
    lengths = [len(words(t)) for t in texts]
    return {
        "n": len(texts),
        "repetition_3gram": mean([repetition(t, 3) for t in texts]),
        "distinct_1": distinct_n(texts, 1),
        "distinct_2": distinct_n(texts, 2),
        "complete_sentence": mean([float(ends_complete(t)) for t in texts]),
        "preamble": mean([float(has_preamble(t)) for t in texts]),
        "encyclopedic": mean([float(encyclopedic(t)) for t in texts]),
        "mean_words": mean(lengths),
        "near_empty": mean([float(n < NEAR_EMPTY_WORDS) for n in lengths]),
    }


def name_use(texts: Sequence[str], names: Sequence[str]) -> dict:
    """Share of texts that mention their character at all, and after the first sentence."""
    return {
        "name_use": mean([float(mentions(t, n)) for t, n in zip(texts, names, strict=True)]),
        "name_use_beyond_opener": mean([float(mentions(after_first_sentence(t), n))
                                        for t, n in zip(texts, names, strict=True)]),
    }


def cut_to_words(text: str, target: int) -> str:
    """Whole sentences from the start of `text`, as close to `target` words as sentence ends
    allow: the human reference is cut to the backstories' length, since distinct-n and
    repetition depend on length, and ends on a sentence like a cleaned backstory does."""
    kept: list[str] = []
    n = 0
    for sentence in sentences(text):
        k = len(words(sentence))
        if kept and abs(n + k - target) >= abs(n - target):
            break
        kept.append(sentence)
        n += k
    return " ".join(kept)


def relevance(stories: np.ndarray, descriptions: np.ndarray, matched: Sequence[int],
              shuffled: Sequence[int], key: str = "relevance") -> dict:
    """Mean cosine of each story with its own description, minus the same with another prompt's
    description: near 0 when the story ignores the prompt. Rows must be unit-normalised. The
    results are `key`, `key`_matched and `key`_shuffled."""
    own = float(np.mean(np.sum(stories * descriptions[list(matched)], axis=1)))
    other = float(np.mean(np.sum(stories * descriptions[list(shuffled)], axis=1)))
    return {key: own - other, f"{key}_matched": own, f"{key}_shuffled": other}


def relevance_after_first(stories: Sequence[str], descriptions: np.ndarray,
                          matched: Sequence[int], shuffled: Sequence[int],
                          embed: Callable[[list[str]], np.ndarray]) -> dict:
    """`relevance` of the stories without their first sentence: restating the description as the
    opening sentence (the `restate` opener, or a model copying its prompt) raises `relevance`
    without the story being about the description, and cannot raise this.

    A story with nothing after its first sentence is scored with the embedding of "" rather than
    left out: it adds nothing on the description, about as close to its own description as to
    another's, so it pulls the mean towards 0, where skipping it would hide it. `embed` maps texts
    to unit-normalised rows (evaluate.embed); `descriptions` are already embedded."""
    rest = embed([after_first_sentence(s) for s in stories])
    return relevance(rest, descriptions, matched, shuffled, key="relevance_after_first")


def coherence(stories: Sequence[np.ndarray], seed: int = 0) -> dict:
    """Local coherence: how much closer consecutive sentences of a story are than sentences of
    two different stories. `stories` holds one (sentences x dim) array of unit-normalised sentence
    embeddings per story.

    coherence_consecutive: mean cosine of sentence i and i+1 of a story, averaged per story and
    then over stories (a long story weighs as much as a short one; a story with fewer than two
    sentences has no pair and is left out). coherence_other: the same for sentence i of story j
    and sentence i of story derangement[j], where both exist (a fixed, seeded pairing; the same
    position, so only the story differs). Their difference, `coherence`, is near 0 when a story's
    sentences follow each other no better than sentences of two stories do, however well each
    one alone matches the prompt or the genre; None where there are no pairs (or fewer than two
    stories, for the baseline)."""
    consecutive = mean([mean_cosine(s[:-1], s[1:]) for s in stories])
    other = None
    if len(stories) >= 2:
        other = mean([mean_cosine(stories[j], stories[k])
                      for j, k in enumerate(derangement(len(stories), seed))])
    diff = consecutive - other if consecutive is not None and other is not None else None
    return {"coherence": diff, "coherence_consecutive": consecutive, "coherence_other": other}


def mean_cosine(a: np.ndarray, b: np.ndarray) -> float | None:
    """Mean cosine of row i of `a` with row i of `b` (unit rows), over the rows both have; None
    when one has none."""
    n = min(len(a), len(b))
    return float(np.mean(np.sum(a[:n] * b[:n], axis=1))) if n else None
