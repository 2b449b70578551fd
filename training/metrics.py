"""Pure text metrics of generated backstories (and of human text, as the reference).

No model in here: every function takes strings and returns numbers, so each is unit-tested with
hand-computed values (tests/test_metrics.py) and the evaluation (evaluate.py) only orchestrates.

Words are lower-cased runs of letters/digits (apostrophes inside a word kept), so punctuation and
case do not make "Dragon," and "dragon" different words for repetition and distinct-n.
"""

import random
import re
import unicodedata
from collections.abc import Sequence

import numpy as np

from backstory.text import split_sentences

_WORD = re.compile(r"\w+(?:['\u2019]\w+)*")
# A complete sentence ends with . ! ? or an ellipsis, optionally closed by quotes or brackets.
_COMPLETE_END = re.compile(r"[.!?\u2026][\"'\u201d\u2019)\]]*\s*$")
# Leading words that are not a name's own ("The Iron Legion" is found by "Iron", not "The").
_NAME_ARTICLES = {"the", "a", "an"}
NEAR_EMPTY_WORDS = 5


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


def after_first_sentence(text: str) -> str:
    """The text without its first sentence: with the opener on, every story starts with the name,
    so a mention there says nothing about whether the model kept using it."""
    sentences = [s for p in text.split("\n\n") for s in split_sentences(p)]
    return " ".join(sentences[1:])


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
    for sentence in (s for p in text.split("\n\n") for s in split_sentences(p)):
        k = len(words(sentence))
        if kept and abs(n + k - target) >= abs(n - target):
            break
        kept.append(sentence)
        n += k
    return " ".join(kept)


def relevance(stories: np.ndarray, descriptions: np.ndarray, matched: Sequence[int],
              shuffled: Sequence[int]) -> dict:
    """Mean cosine of each story with its own description, minus the same with another prompt's
    description: near 0 when the story ignores the prompt. Rows must be unit-normalised."""
    own = float(np.mean(np.sum(stories * descriptions[list(matched)], axis=1)))
    other = float(np.mean(np.sum(stories * descriptions[list(shuffled)], axis=1)))
    return {"relevance": own - other, "relevance_matched": own, "relevance_shuffled": other}
