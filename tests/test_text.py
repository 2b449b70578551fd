"""The shared prompt format and output clean-up (backstory/text.py)."""

from backstory.text import (
    EOS,
    build_prompt,
    clean_backstory,
    find_stop,
    has_control_chars,
    normalize,
    split_sentences,
    trim_to_sentence,
)


def test_prompt_has_header_and_opener():
    prompt = build_prompt("  Kaylon ", "An empire\nof androids.")
    assert prompt == f"{EOS}Name: Kaylon\nDescription: An empire of androids.\n\nKaylon"
    assert build_prompt("Kaylon", "x.", opener=False).endswith("Description: x.\n\n")


def test_chat_prompt_uses_the_template_and_opens_the_story(tiny_model):
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(tiny_model)
    prompt = build_prompt(" Kaylon ", "An empire\nof androids.", tokenizer=tok)
    assert prompt.startswith("<|im_start|>system\n") and "<|im_start|>user\n" in prompt
    assert "Name: Kaylon\nDescription: An empire of androids." in prompt
    assert prompt.endswith("<|im_start|>assistant\nKaylon")
    guided = build_prompt("Kaylon", "x.", opener=False, tokenizer=tok, instruction="guided")
    assert "Call the character Kaylon throughout" in guided
    assert guided.endswith("<|im_start|>assistant\n")


def test_normalize_joins_wrapped_lines_and_keeps_paragraphs():
    assert normalize("a\nb  c\n\n\n d\u00a0e ") == "a b c\n\nd e"


def test_trim_to_last_complete_sentence():
    assert trim_to_sentence('He left. "Go!" she said. And then') == 'He left. "Go!" she said.'
    assert trim_to_sentence("no sentence end") == "no sentence end"


def test_clean_backstory_strips_next_example_and_whitespace():
    raw = " was born  in fire.\n\n\n It ended.  He\nName: Other\nDescription: x"
    assert clean_backstory(raw, opener="Kaylon") == "Kaylon was born in fire.\n\nIt ended."


def test_clean_backstory_cuts_at_eos_text():
    assert clean_backstory(f" rose. {EOS}Name: B", opener="A") == "A rose."


def test_find_stop():
    assert find_stop("story\nName: x") == 5
    assert find_stop("story") is None


def test_control_characters():
    assert has_control_chars("a\x00b") and has_control_chars("a\x1bb") and has_control_chars("\x85")
    assert not has_control_chars("tab\tand\nnewline, ünïcödé, 名前, 🐉")


def test_split_sentences():
    assert split_sentences('He said "Go!" Then he left. And so') == [
        'He said "Go!"', "Then he left.", "And so"]


def test_clean_backstory_drops_control_and_broken_characters():
    assert clean_backstory(" rose\x1b\x19 high.\ufffd", opener="A") == "A rose high."
