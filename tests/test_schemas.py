"""Request validation (backstory/schemas.py): limits come from Settings."""

import pytest
from pydantic import ValidationError

from backstory.config import get_settings
from backstory.schemas import BackstoryRequest

LIMITS = get_settings()


def test_trims_and_accepts_unicode():
    r = BackstoryRequest(name="  名前 ‏שלום 🐉 é ", description=" A dragon. ")
    assert r.name == "名前 ‏שלום 🐉 é" and r.description == "A dragon."


@pytest.mark.parametrize("name", ["", "   ", "a\x00b", "bad\x07bell"])
def test_refuses_empty_and_control_characters(name):
    with pytest.raises(ValidationError) as e:
        BackstoryRequest(name=name, description="x")
    assert e.value.errors()[0]["loc"] == ("name",)


def test_length_limits():
    BackstoryRequest(name="n" * LIMITS.name_max_chars,
                     description="d" * LIMITS.description_max_chars)
    with pytest.raises(ValidationError):
        BackstoryRequest(name="n" * (LIMITS.name_max_chars + 1), description="d")
    with pytest.raises(ValidationError):
        BackstoryRequest(name="n", description="d" * 5000)


@pytest.mark.parametrize("field,value", [("max_new_tokens", 0), ("temperature", 0),
                                         ("temperature", 3), ("top_p", 1.5), ("seed", -1),
                                         ("max_new_tokens", LIMITS.max_new_tokens_limit + 1)])
def test_option_limits(field, value):
    with pytest.raises(ValidationError) as e:
        BackstoryRequest(name="n", description="d", **{field: value})
    assert e.value.errors()[0]["loc"] == (field,)
