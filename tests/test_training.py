"""The training pipeline end to end with the `tiny` preset, on the real corpus (offline)."""

import json
import subprocess
import sys
from pathlib import Path

import pytest
from transformers import AutoModelForCausalLM, AutoTokenizer

from backstory.config import Settings
from backstory.engine import Engine
from backstory.schemas import BackstoryRequest
from training.__main__ import parse_args
from training.config import CORPUS, TrainConfig, validate
from training.data import find_name, headed, load_passages, to_passages

pytestmark = pytest.mark.slow
ROOT = Path(__file__).resolve().parent.parent


def train_cli(*args: str, timeout: int = 300, **env: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "training", *args], cwd=ROOT, text=True,
                          capture_output=True, timeout=timeout,
                          env={"HF_HUB_OFFLINE": "1", "PATH": "/usr/bin:/bin",
                               "BENTOML_DO_NOT_TRACK": "true", "TOKENIZERS_PARALLELISM": "false",
                               **env})


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("train") / "tiny"
    r = train_cli("--preset", "tiny", "--output_dir", str(out), "--max_steps", "8",
                  "--cache_dir", str(out.parent / "cache"))
    assert r.returncode == 0, r.stderr[-3000:]
    return out


def test_tiny_preset_writes_a_loadable_model_folder(tiny_run):
    for name in ("config.json", "model.safetensors", "tokenizer.json", "generation_config.json",
                 "README.md", "metrics.json", "loss.png"):
        assert (tiny_run / name).is_file(), name
    metrics = json.loads((tiny_run / "metrics.json").read_text())
    assert metrics["steps"] == 8 and metrics["val_loss"] > 0 and len(metrics["samples"]) == 3
    card = (tiny_run / "README.md").read_text()
    assert "python -m training --preset tiny" in card and "perplexity" in card
    model = AutoModelForCausalLM.from_pretrained(tiny_run)
    assert model.config.use_cache  # the folder generates with a KV cache by default
    tok = AutoTokenizer.from_pretrained(tiny_run)
    out = model.generate(**tok("Name: A", return_tensors="pt"), max_new_tokens=5, do_sample=False)
    assert out.shape[1] > 3


def test_weights_are_saved_in_fp16(tiny_run):
    from safetensors import safe_open

    with safe_open(tiny_run / "model.safetensors", "pt") as f:
        assert {str(f.get_tensor(k).dtype) for k in f.keys()}  # noqa: SIM118 (safe_open is no dict) == {"torch.float16"}


def test_resume_continues_from_the_last_checkpoint(tiny_run):
    r = train_cli("--preset", "tiny", "--output_dir", str(tiny_run), "--max_steps", "12",
                  "--resume", "--cache_dir", str(tiny_run.parent / "cache"))
    assert r.returncode == 0, r.stderr[-3000:]
    assert "no checkpoint to resume from" not in r.stdout
    assert json.loads((tiny_run / "metrics.json").read_text())["steps"] == 12


@pytest.mark.parametrize("args,message", [
    (["--n_embd", "65"], "divisible by n_head"),
    (["--data", "/nonexistent/folder"], "does not exist"),
    (["--preset", "huge"], "unknown preset"),
    (["--precision", "fp8"], "precision"),
    (["--preset", "smollm2-dpo", "--sft_data", "x.jsonl"], "not both"),
    (["--dpo_data", "x.jsonl"], "needs a base_model")])
def test_bad_config_is_a_clear_error(args, message, tmp_path):
    r = train_cli(*args, "--output_dir", str(tmp_path / "m"), timeout=120)
    assert r.returncode == 2 and message in r.stderr


def test_empty_data_is_a_clear_error(tmp_path):
    (tmp_path / "empty.txt").write_text("")
    with pytest.raises(ValueError, match="no text"):
        load_passages(TrainConfig(data=[str(tmp_path)], cache_dir=str(tmp_path / "c")))
    (tmp_path / "no-text").mkdir()
    with pytest.raises(ValueError, match="no .txt files"):
        load_passages(TrainConfig(data=[str(tmp_path / "no-text")], cache_dir=str(tmp_path)))


def test_presets_and_options_parse():
    cfg = parse_args(["--preset", "tiny", "--n_layer", "3"])
    assert cfg.n_layer == 3 and cfg.block_size == 128 and cfg.preset == "tiny"
    validate(parse_args(["--preset", "cpu"]))
    assert str(CORPUS).endswith("shared/corpus")


def test_passages_get_the_serving_header_and_every_document_gives_validation():
    text = "\n\n".join(["The old king called for Aldric, and the hall fell silent when Aldric "
                        "came. Aldric knelt before him and waited."] * 30)
    out = to_passages({"text": [text, text]}, TrainConfig(chunk_chars=400, val_fraction=0.2))
    assert find_name(text) == "Aldric"
    assert out["text"][0].startswith("Name: Aldric\nDescription: ")
    per_doc = len(out["split"]) // 2
    assert "val" in out["split"][:per_doc] and "val" in out["split"][per_doc:]
    assert headed("no names here at all, only words.") == "no names here at all, only words."


def test_fine_tunes_a_base_model_into_the_bentoml_store(tiny_run, tmp_path, monkeypatch):
    out, home = tmp_path / "fine-tuned", tmp_path / "bentoml"
    r = train_cli("--preset", "tiny", "--base_model", str(tiny_run), "--max_steps", "3",
                  "--output_dir", str(out), "--cache_dir", str(tmp_path / "cache"),
                  "--bentoml_tag", "backstory-test", BENTOML_HOME=str(home))
    assert r.returncode == 0, r.stderr[-3000:]
    # The service loads it by tag from the model store.
    monkeypatch.setenv("BENTOML_HOME", str(home))
    engine = Engine(Settings(model="backstory-test:latest", device="cpu"))
    assert engine.generate([BackstoryRequest(name="A", description="b", max_new_tokens=3)])
    base, tuned = AutoTokenizer.from_pretrained(tiny_run), AutoTokenizer.from_pretrained(out)
    assert base.get_vocab() == tuned.get_vocab()
    assert json.loads((out / "metrics.json").read_text())["config"]["base_model"] == str(tiny_run)
