"""The pure text metrics of the evaluation (training/metrics.py), against hand-computed values."""

import numpy as np
import pytest

from training import metrics


def test_words_lowercase_and_drop_punctuation():
    assert metrics.words("The Dragon's gold, the dragon!") == ["the", "dragon's", "gold", "the",
                                                               "dragon"]


def test_repetition_of_a_loop():
    # 3-grams: abc bca cab abc -> 4 in all, 3 unique -> 1 - 3/4
    assert metrics.repetition("a b c a b c") == pytest.approx(0.25)
    assert metrics.repetition("a b c d e") == 0.0
    # 5 x "a": three identical 3-grams
    assert metrics.repetition("a a a a a") == pytest.approx(1 - 1 / 3)
    assert metrics.repetition("A, b. C a B c") == pytest.approx(0.25)  # case and punctuation
    assert metrics.repetition("too short") is None


def test_distinct_n_across_texts():
    texts = ["a b c", "a b d"]
    assert metrics.distinct_n(texts, 1) == pytest.approx(4 / 6)  # a b c d of 6 words
    assert metrics.distinct_n(texts, 2) == pytest.approx(3 / 4)  # ab bc ab bd
    assert metrics.distinct_n(["a b", "c d"], 2) == 1.0  # "b c" would cross texts: not counted
    assert metrics.distinct_n([], 1) == 0.0


@pytest.mark.parametrize("text,complete", [
    ("He left.", True), ("Why?", True), ("Run!", True), ('She said "go."', True),
    ("It ended (as it began.)", True), ("It was over\u2026", True), ("He left. ", True),
    ("He left", False), ("He left,", False), ("", False), ("Dr. Who and the", False),
])
def test_ends_complete(text, complete):
    assert metrics.ends_complete(text) is complete


def test_name_keys_full_name_and_first_word():
    assert metrics.name_keys("Mira Solvane") == ["Mira Solvane", "Mira"]
    assert metrics.name_keys("Kaylon") == ["Kaylon"]
    assert metrics.name_keys("The Iron Legion") == ["The Iron Legion", "Iron"]
    assert metrics.name_keys("  ") == []


def test_mentions_whole_words_case_sensitive():
    assert metrics.mentions("Long ago, Mira fled.", "Mira Solvane")
    assert metrics.mentions("Mira Solvane fled.", "Mira Solvane")
    assert not metrics.mentions("Miranda fled.", "Mira Solvane")  # not a whole word
    assert not metrics.mentions("Kaylonen mio.", "Kaylon")
    assert not metrics.mentions("There was hope.", "Hope")  # names are proper nouns
    assert metrics.mentions("Then Väinämöinen sang.", "Väinämöinen")
    assert metrics.mentions("the Iron banners rose", "The Iron Legion")
    assert metrics.mentions("Cú Roí mac Dáire laughed.", "Cú Roí mac Dáire")


def test_after_first_sentence():
    assert metrics.after_first_sentence("Kaylon rose. Then Kaylon fell.") == "Then Kaylon fell."
    assert metrics.after_first_sentence("One.\n\nTwo. Three") == "Two. Three"
    assert metrics.after_first_sentence("Only one sentence") == ""


def test_name_use_with_and_without_opener():
    texts = ["Kaylon rose. The empire fell.", "Kaylon rose. Kaylon fell.", "Nothing here."]
    out = metrics.name_use(texts, ["Kaylon"] * 3)
    assert out["name_use"] == pytest.approx(2 / 3)
    assert out["name_use_beyond_opener"] == pytest.approx(1 / 3)


def test_text_stats():
    stats = metrics.text_stats(["a b c a b c.", "Tiny"])
    assert stats["n"] == 2
    assert stats["mean_words"] == 3.5
    assert stats["near_empty"] == 0.5  # "Tiny" has fewer than 5 words
    assert stats["complete_sentence"] == 0.5
    assert stats["repetition_3gram"] == pytest.approx(0.25)  # "Tiny" has no 3-gram: left out
    assert stats["distinct_1"] == pytest.approx(4 / 7)


def test_derangement_is_fixed_and_has_no_fixed_point():
    for n in (2, 3, 10, 120):
        perm = metrics.derangement(n)
        assert sorted(perm) == list(range(n))
        assert all(i != p for i, p in enumerate(perm))
        assert perm == metrics.derangement(n)
    assert metrics.derangement(2) == [1, 0]
    with pytest.raises(ValueError):
        metrics.derangement(1)


def test_cut_to_words_keeps_whole_sentences_near_the_target():
    text = "One two three. Four five six seven. Eight nine.\n\nTen eleven twelve."
    assert metrics.cut_to_words(text, 3) == "One two three."
    assert metrics.cut_to_words(text, 5) == "One two three."  # 3 and 7 words: a tie, shorter
    assert metrics.cut_to_words(text, 6) == "One two three. Four five six seven."
    assert metrics.cut_to_words(text, 100) == ("One two three. Four five six seven. Eight nine. "
                                               "Ten eleven twelve.")
    assert metrics.cut_to_words("A single long sentence without end", 2) == (
        "A single long sentence without end")


def test_relevance_own_minus_shuffled():
    desc = np.array([[1.0, 0.0], [0.0, 1.0]])
    stories = np.array([[1.0, 0.0], [0.0, 1.0], [0.6, 0.8]])
    out = metrics.relevance(stories, desc, matched=[0, 1, 1], shuffled=[1, 0, 0])
    assert out["relevance_matched"] == pytest.approx((1 + 1 + 0.8) / 3)
    assert out["relevance_shuffled"] == pytest.approx((0 + 0 + 0.6) / 3)
    assert out["relevance"] == pytest.approx(2.2 / 3)


def test_sentences_across_paragraphs():
    assert metrics.sentences("One. Two!\n\nThree") == ["One.", "Two!", "Three"]
    assert metrics.sentences("") == []


def test_relevance_after_first_ignores_a_restated_description():
    desc = np.array([[1.0, 0.0], [0.0, 1.0]])
    vectors = {"It wandered.": [0.0, 1.0], "It flew away.": [0.0, 1.0], "": [0.6, 0.8]}
    seen = []

    def embed(texts):
        seen.extend(texts)
        return np.array([vectors[t] for t in texts])

    stories = ["Zero was a thing of zero. It wandered.", "One was a thing of one. It flew away.",
               "Zero was only a thing of zero."]
    out = metrics.relevance_after_first(stories, desc, [0, 1, 0], [1, 0, 1], embed)
    assert seen == ["It wandered.", "It flew away.", ""]  # the first sentences never embedded
    assert out["relevance_after_first_matched"] == pytest.approx((0 + 1 + 0.6) / 3)
    assert out["relevance_after_first_shuffled"] == pytest.approx((1 + 0 + 0.8) / 3)
    assert out["relevance_after_first"] == pytest.approx(-0.2 / 3)
    assert set(out) == {"relevance_after_first", "relevance_after_first_matched",
                        "relevance_after_first_shuffled"}


def test_coherence_consecutive_minus_other_stories():
    a = np.array([[1.0, 0.0], [0.6, 0.8], [0.0, 1.0]])  # consecutive: 0.6, 0.8 -> 0.7
    b = np.array([[0.0, 1.0], [0.0, 1.0]])  # consecutive: 1
    out = metrics.coherence([a, b])
    assert out["coherence_consecutive"] == pytest.approx((0.7 + 1) / 2)
    # two stories pair with each other: (a0.b0, a1.b1) = (0, 0.8) both ways; a2 has no partner
    assert out["coherence_other"] == pytest.approx(0.4)
    assert out["coherence"] == pytest.approx(0.85 - 0.4)


def test_coherence_short_stories_have_no_pairs():
    a = np.array([[1.0, 0.0], [0.6, 0.8]])
    one, empty = np.array([[0.0, 1.0]]), np.zeros((0, 2))
    out = metrics.coherence([a, one, empty])
    assert out["coherence_consecutive"] == pytest.approx(0.6)  # only a has a consecutive pair
    assert out == metrics.coherence([a, one, empty])  # the pairing is seeded
    assert metrics.coherence([one, one])["coherence_consecutive"] is None
    assert metrics.coherence([one, one])["coherence"] is None
    assert metrics.coherence([a]) == {"coherence": None, "coherence_other": None,  # no pairing
                                      "coherence_consecutive": pytest.approx(0.6)}


@pytest.mark.parametrize("text", [
    "Sure! Here is a backstory for Kaylon.", "Certainly. Kaylon was...", "Of course, Kaylon...",
    "Here's Kaylon's story:", "Here\u2019s the tale.", "Below is a backstory.",
    "As an AI, I cannot...", "I'd be happy to write that.", "I can write that for you.",
    "Absolutely! Kaylon began...", "Title: The Fall of Kaylon", "Backstory: Kaylon was...",
    "**Backstory of Kaylon:** Kaylon was...", "# Kaylon\n\nKaylon was...",
    "**The Fall of Kaylon**\n\nKaylon was...", "  sure, Kaylon was...",
    "Kaylon was an empire. In this backstory we see its fall.",
    "Kaylon was an empire. I hope this helps!", "Kaylon rose. As a language model, I...",
    "Kaylon's backstory begins in the void.",
])
def test_has_preamble(text):
    assert metrics.has_preamble(text)


@pytest.mark.parametrize("text", [
    "Once upon a time there was an empire called Kaylon.", "Kaylon was an empire of androids.",
    "Surely no one remembered Kaylon.", "Herein lies the tale of Kaylon.", "The Kaylon rose.",
    "Mira Solvane was born in the fens. She learned **many** secrets.", "",
    "Kaylon rose. " + "The war went on. " * 12 + "I hope this ends.",  # meta only past 200 chars
])
def test_has_no_preamble(text):
    assert not metrics.has_preamble(text)


def test_preamble_share_in_text_stats():
    stats = metrics.text_stats(["Sure, here it is. Kaylon rose.", "Kaylon rose.", "Kaylon fell."])
    assert stats["preamble"] == pytest.approx(1 / 3)


@pytest.mark.parametrize("text", [
    "V\u00e4in\u00e4m\u00f6inen is a legendary figure in the realm of mythology and folklore.",
    "N\u00fcwa was a goddess in Chinese mythology who mended the sky.",
    "Kaylon was not actually an actual character. The story continues to inspire.",
    "Olwyn is a shepherd. She has a secret. Her family is known for it. She has seen it.",
])
def test_encyclopedic(text):
    assert metrics.encyclopedic(text)


@pytest.mark.parametrize("text", [
    "Olwyn was a shepherd. She had a secret. Her family was known for it. She is silent now.",
    "Kaylon is an empire.",  # too few verbs to tell the tense
    "The story of his people was old, and Aldric had heard it at his mother's knee.",
    "",
])
def test_not_encyclopedic(text):
    assert not metrics.encyclopedic(text)


def test_mean_skips_none():
    assert metrics.mean([1.0, None, 3.0]) == 2.0
    assert metrics.mean([None]) is None
