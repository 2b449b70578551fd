"""The committed default model: a complete, documented folder that loads and writes on CPU."""

import json
from pathlib import Path

from backstory.config import DEFAULT_MODEL, Settings
from backstory.engine import Engine
from backstory.schemas import BackstoryRequest

MODEL = Path(DEFAULT_MODEL)


def test_folder_has_weights_tokenizer_card_and_metrics():
    for name in ("config.json", "model.safetensors", "tokenizer.json", "generation_config.json",
                 "README.md", "metrics.json", "loss.png"):
        assert (MODEL / name).is_file(), name
    size = sum(f.stat().st_size for f in MODEL.iterdir())
    assert size < 40 * 2**20, f"{size / 2**20:.1f} MiB"
    metrics = json.loads((MODEL / "metrics.json").read_text())
    assert metrics["val_perplexity"] > 1 and metrics["tokens_seen"] > 0
    card = (MODEL / "README.md").read_text()
    assert "python -m training" in card and "Samples" in card and "perplexity" in card.lower()


def test_generates_on_cpu():
    engine = Engine(Settings(model=str(MODEL), device="cpu"))
    (result,) = engine.generate([BackstoryRequest(
        name="Kaylon", description="An empire of androids that killed their creators.",
        seed=1, max_new_tokens=24)])
    assert result.backstory.startswith("Kaylon") and result.tokens > 0
