"""Controls, sections and export as pure functions (backstory/controls.py, gateway/export.py):
no server needed to check a prompt, a split or a card's fields."""

import json

import pytest
from pydantic import ValidationError

from backstory.config import get_settings
from backstory.controls import LENGTHS, SECTIONS, join_sections, split_sections
from backstory.schemas import BackstoryRequest, Controls
from backstory.text import build_prompt, opening
from gateway import export
from gateway.shapes import ExportStory, GenerateRequest
from gateway.stories import candidates, roster

KAYLON = {"name": "Kaylon", "description": "An empire of androids."}


@pytest.fixture(scope="module")
def tok(tiny_model):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(tiny_model)


def test_no_controls_is_the_old_prompt(tok):
    """Defaults are today's behaviour: an old request gets exactly the old prompt and opener."""
    old = build_prompt("Kaylon", "An empire.", tokenizer=tok)
    assert build_prompt("Kaylon", "An empire.", tokenizer=tok, controls=Controls()) == old
    standard = BackstoryRequest(**KAYLON, length="standard")
    assert build_prompt("Kaylon", "An empire.", tokenizer=tok, controls=standard) == old
    assert standard.max_new_tokens == get_settings().max_new_tokens  # standard = the default


def test_controls_reach_the_prompt(tok):
    c = BackstoryRequest(**KAYLON, genre="horror", tone="tragic", length="long",
                         setting="The Vess Empire, a desert theocracy.")
    prompt = build_prompt(c.name, c.description, tokenizer=tok, controls=c)
    for text in ("lore-rich, tragic backstories for characters of horror.",
                 "Make it a horror story", "Make it tragic", "four or five paragraphs",
                 "Setting: The Vess Empire, a desert theocracy."):
        assert text in prompt
    assert prompt.endswith("<|im_start|>assistant\nKaylon")


@pytest.mark.parametrize("controls,start", [
    ({"pov": "first"}, "My name is Kaylon"), ({"pov": "third"}, "Kaylon"),
    ({"structure": "sections"}, "Origin: Kaylon"),
    ({"structure": "sections", "pov": "first"}, "Origin: My name is Kaylon"),
    ({"structure": "sections", "section": "secret"}, "Secret: Kaylon")])
def test_opening_fits_the_point_of_view_and_structure(tok, controls, start):
    c = Controls(**controls)
    assert opening("Kaylon", "x", controls=c) == start
    assert build_prompt("Kaylon", "x", tokenizer=tok, controls=c).endswith(start)
    assert opening("Kaylon", "x", opener=False, controls=c) == ""


def test_length_sets_the_token_budget_unless_given():
    assert BackstoryRequest(**KAYLON, length="short").max_new_tokens == LENGTHS["short"].tokens
    assert BackstoryRequest(**KAYLON, length="long", max_new_tokens=50).max_new_tokens == 50
    assert BackstoryRequest(**KAYLON).max_new_tokens is None


@pytest.mark.parametrize("field,value", [("genre", "western"), ("tone", "sarcastic"),
                                         ("length", "epic"), ("pov", "second"),
                                         ("structure", "list"), ("setting", "x" * 301),
                                         ("setting", "  "), ("n", 5), ("n", 0)])
def test_control_validation_names_the_field(field, value):
    with pytest.raises(ValidationError) as e:
        GenerateRequest(**KAYLON, **{field: value})
    assert e.value.errors()[0]["loc"][0] == field


def test_split_sections_finds_every_heading_and_shows_missing_ones():
    text = ("Origin: Kaylon was built.\n**Turning Point:** The war.\n\nmotivation: Peace.\n"
            "## Plot hook: A child survives.")
    got = split_sections(text)
    assert list(got) == list(SECTIONS)
    assert got == {"origin": "Kaylon was built.", "turning_point": "The war.",
                   "motivation": "Peace.", "secret": "", "plot_hooks": "A child survives."}
    assert split_sections("no headings at all.") == dict.fromkeys(SECTIONS, "")
    assert split_sections("Origin:\nSecret: x.")["origin"] == ""  # empty counts as missing


def test_an_invented_heading_ends_a_section():
    got = split_sections("Origin: Ember said: go.\nTipping Point: junk.\nSecret: x.\nTitle: y")
    assert got["origin"] == "Ember said: go." and got["secret"] == "x."


def test_join_then_split_round_trips():
    sections = {"origin": "A.", "turning_point": "B.", "motivation": "C.", "secret": "D.",
                "plot_hooks": "E."}
    assert split_sections(join_sections(sections)) == sections


def test_candidates_and_roster_seeds():
    rows = candidates(BackstoryRequest(**KAYLON, seed=2**32 - 2, genre="myth"), 3)
    assert [r.seed for r in rows] == [2**32 - 2, 2**32 - 1, 0]
    assert {r.genre for r in rows} == {"myth"}
    drawn = candidates(BackstoryRequest(**KAYLON), 2)  # drawn once, then seed+1
    assert drawn[1].seed == (drawn[0].seed + 1) % 2**32
    team = roster(BackstoryRequest(**KAYLON, seed=5, tone="grim"), [("A", "a."), ("B", "b.")])
    assert [(r.name, r.seed, r.tone) for r in team] == [("A", 5, "grim"), ("B", 6, "grim")]


STORY = ExportStory(name="Kaylon Ünï", description="An empire of androids.", seed=42,
                    model="smollm2-135m-instruct", genre="sci-fi", tone="grim",
                    setting="The Vess Empire.",
                    backstory="Kaylon rose. They ruled.\n\nThen they fell. It ended. Silence.")


def test_card_has_every_field_of_the_spec():
    card = json.loads(export.render(STORY, "card"))
    assert card["spec"] == "chara_card_v2" and card["spec_version"] == "2.0"
    data = card["data"]
    for field, kind in export.CARD_V2_FIELDS.items():
        assert isinstance(data[field], kind), field
    assert data["name"] == "Kaylon Ünï" and "Then they fell." in data["description"]
    assert data["first_mes"] == "*Kaylon rose. They ruled.*"
    assert data["scenario"] == "The Vess Empire.\n\nIt ended. Silence."
    assert "smollm2-135m-instruct" in data["creator_notes"] and "42" in data["creator_notes"]
    assert data["tags"] == ["sci-fi", "grim", "backstory"]
    assert data["extensions"]["backstory_generator"]["seed"] == 42


def test_markdown_json_and_file_names():
    md = export.render(STORY, "markdown")
    assert md.startswith("# Kaylon Ünï\n\n*An empire of androids.*") and "seed 42" in md
    assert json.loads(export.render(STORY, "json"))["backstory"] == STORY.backstory
    assert export.filename(STORY, "card") == "kaylon-uni-42.card.json"
    assert export.filename(STORY.model_copy(update={"name": "名前"}), "markdown") == \
        "backstory-42.md"


def test_sections_export_shows_missing_sections():
    story = STORY.model_copy(update={"structure": "sections", "sections": {
        **dict.fromkeys(SECTIONS, ""), "origin": "Kaylon was built.", "secret": "They lie."}})
    md = export.render(story, "markdown")
    assert "## Secret\n\nThey lie." in md and "## Motivation\n\n*(missing" in md
    data = export.card(story)["data"]
    assert data["first_mes"] == "*Kaylon was built.*"
    assert data["extensions"]["backstory_generator"]["sections"]["secret"] == "They lie."


@pytest.mark.parametrize("fmt", ["markdown", "json", "card"])
@pytest.mark.parametrize("story", [
    {"backstory": "0", "sections": {"motivation": ""}},  # every section empty (found by fuzzing)
    {"backstory": " "}])
def test_export_of_a_story_with_nothing_in_it_is_still_a_file(fmt, story):
    empty = ExportStory(name="Zed", description="x", seed=0, model="m", **story)
    assert export.render(empty, fmt)
