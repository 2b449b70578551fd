"""Configuration has one home (backstory/config.py) and one table in the README: they agree."""

from pathlib import Path

import pytest
from pydantic import ValidationError

from backstory.config import Settings

README = (Path(__file__).resolve().parent.parent / "README.md").read_text()


@pytest.mark.parametrize("name", sorted(Settings.model_fields))
def test_every_setting_is_in_the_readme_table(name):
    assert f"| `BACKSTORY_{name.upper()}` |" in README


def test_settings_come_from_the_environment(monkeypatch):
    monkeypatch.setenv("BACKSTORY_DTYPE", "bfloat16")
    monkeypatch.setenv("BACKSTORY_MAX_BATCH_SIZE", "8")
    s = Settings()
    assert (s.dtype, s.max_batch_size) == ("bfloat16", 8)
    monkeypatch.setenv("BACKSTORY_DTYPE", "int4")
    with pytest.raises(ValidationError, match="dtype"):
        Settings()
