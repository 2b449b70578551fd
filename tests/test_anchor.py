"""The llama.cpp anchor in the bench (issue 10): the report shows it (a column, ratios, two
targets) when it ran and nothing of it when it did not, which is CI's case; and, where
llama-cpp-python is installed, the anchor server itself gives exactly the tokens asked for."""

import json
import shutil
import sys
from pathlib import Path

import httpx
import numpy as np
import pytest
from gguf import GGUFReader
from gguf.quants import dequantize
from safetensors.numpy import load_file
from safetensors.torch import load_file as load_tensors
from safetensors.torch import save_file

from backstory.base import CACHE, gguf_path
from bench.__main__ import write_outputs
from bench.anchor import available
from bench.lora_gguf import lora_gguf, permute, write_lora_gguf
from bench.runner import aggregate, runs
from bench.servers import ROOT, free_port, running
from bench.session import anchor_skipped
from bench.stats import LoadResult

ANCHOR = "llama.cpp"
TOKENS = 200


def result(server: str, route: str, clients: int, tokens_per_s: float) -> LoadResult:
    stream = route == "stream"
    return LoadResult(
        server=server, route=route, concurrency=clients, requests=2 * clients, ok=2 * clients,
        errors=0, wall_s=1.0, backstories_per_s=tokens_per_s / TOKENS,
        tokens_per_s=tokens_per_s, p50_s=TOKENS / tokens_per_s * clients,
        p95_s=TOKENS / tokens_per_s * clients, p99_s=TOKENS / tokens_per_s * clients,
        ttft_mean_s=0.03 if stream else None, ttft_p50_s=0.03 if stream else None,
        ttft_gen_p50_s=0.2 if stream else None, max_rss_bytes=500 * 2**20)


def fabricated(anchor: bool) -> dict:
    """A bench's results: at 1 client ours does 30 tokens/s against llama.cpp's 40 (0.75x,
    passes 0.5x), at 32 clients 700 against 100 (7x, misses 8x)."""
    levels = []
    for clients, ours, llama in ((1, 30.0, 40.0), (32, 700.0, 100.0)):
        row = {"ours": result("ours", "generate", clients, ours),
               "baseline": result("baseline", "generate", clients, 10.0)}
        row |= {ANCHOR: result(ANCHOR, "generate", clients, llama)} if anchor else {}
        row["ours_stream"] = result("ours", "stream", clients, ours)
        levels.append(aggregate(clients, 2 * clients, [row]))
    status = {"llama_cpp_python": "0.3.36", "gguf": "/x/SmolLM2-135M-Instruct.Q4_1.gguf",
              "threads": 2}
    return {
        "machine": {"cpu": "test CPU", "logical_cores": 2, "physical_cores": 2, "ram_gib": 8,
                    "torch": "2", "torch_threads": 2, "gpu": None, "python": "3.11",
                    "os": "Linux", "load_average_at_start": [0.1, 0.1, 0.1]},
        "plan": {"new_tokens": TOKENS, "requests_per_level": 2, "repeats": 1},
        "model": {"path": "/m", "name": "m", "context": 8192, "parameters": 134_515_008,
                  "device": "cpu"},
        "server_env": {}, "idle_rss_bytes": {"ours": 2**30, "baseline": 2**30,
                                             **({ANCHOR: 2**27} if anchor else {})},
        "bare": {"p50_s": 6.0, "runs": 5}, "matmul_flops": {"1024": 1.0e11},
        "matmul_dtype": "float32",
        "flops": {"non_embedding": 1, "parameters": 2, "n_layer": 30, "d_model": 576,
                  "vocab": 49152, "n_ctx": 171, "flops_per_token": 2.75e8},
        "levels": levels, "soak": None, "quick": True, "date": "today", "command": "bench",
        "anchor": {"skipped": None, "status": status} if anchor else
        {"skipped": "not installed (make bench-anchor)", "status": None},
    }


def write(results: dict, tmp_path) -> str:
    out = tmp_path / "BENCH.md"
    write_outputs(results, {"plot": tmp_path / "plot.png", "out": out, "results_dir": tmp_path})
    assert (tmp_path / "plot.png").stat().st_size > 1000
    return out.read_text()


def test_report_shows_the_anchor_its_ratios_and_both_targets(tmp_path):
    report = write(fabricated(anchor=True), tmp_path)
    assert "| 1 | llama.cpp | 0.20 | 40 |" in report and "| 32 | llama.cpp | 0.50 | 100 |" in report
    assert "Tokens/s ours/llama.cpp" in report
    assert "| 1 | 3.00x / 3.00x / 3.00x | 0.33x | 0.75x | 0.75x | 1.33x |" in report
    assert "- ✅ Tokens/s at 1 client ≥ 0.5x llama.cpp (goal 0.8x): 0.75x (30 vs 40" in report
    assert "- ❌ Throughput at 32 clients ≥ 8x llama.cpp: 7.00x (700 vs 100" in report
    assert "llama-cpp-python 0.3.36 on the packaged GGUF file `SmolLM2-135M-Instruct" in report
    assert "llama.cpp 128 MiB" in report  # idle memory
    assert "also holds the Python tokenizer" in report  # what its RSS counts
    assert report.count("- ✅") + report.count("- ❌") + report.count("- ➖") == 8
    saved = json.loads((tmp_path / "latest.json").read_text())
    assert saved["levels"][1]["anchor_ratios"]["throughput"]["median"] == pytest.approx(7.0)
    assert saved["levels"][0]["rss_bytes"][ANCHOR] == 500 * 2**20


def test_report_without_the_anchor_says_why_and_shows_no_column_or_target(tmp_path):
    report = write(fabricated(anchor=False), tmp_path)
    assert "**llama.cpp** (anchor): not run, not installed (make bench-anchor)." in report
    assert "| llama.cpp |" not in report and "ours/llama.cpp" not in report
    assert "x llama.cpp" not in report and "Python tokenizer" not in report
    assert report.count("- ✅") + report.count("- ❌") + report.count("- ➖") == 6
    assert "anchor_ratios" not in json.loads((tmp_path / "latest.json").read_text())["levels"][0]


def test_anchor_runs_after_ours_and_the_baseline_only_on_the_packaged_weights(tmp_path):
    urls = {"ours": "a", "baseline": "b"}
    assert runs(urls) == [("ours", "generate"), ("baseline", "generate"), ("ours", "stream")]
    assert runs({**urls, ANCHOR: "c"})[2] == (ANCHOR, "generate")
    assert anchor_skipped(tmp_path).startswith("skipped: it runs the packaged base's GGUF")


@pytest.mark.slow
def test_anchor_server_gives_exactly_the_tokens_asked_for(tmp_path):
    why = available() or (None if (CACHE / "config.json").is_file() else "base not converted")
    if why:
        pytest.skip(f"llama.cpp anchor: {why}")
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    cmd = [sys.executable, "-m", "bench.anchor", "--model", str(CACHE), "--port", str(port)]
    with running(cmd, f"{base}/readyz", log_path=tmp_path / "anchor.log"):
        status = httpx.get(f"{base}/status").json()
        body = {"name": "Aldric", "description": "A knight of the northern marches.",
                "max_new_tokens": 24, "min_new_tokens": 24, "temperature": 0.8, "seed": 3}
        out = httpx.post(f"{base}/api/generate", json=body, timeout=120).json()
    assert status["server"] == ANCHOR and status["slots"] == 1
    assert out["tokens"] == 24 and out["seed"] == 3
    assert out["backstory"].startswith("Aldric")  # the opener, as ours


def gguf_weight(reader, name: str) -> np.ndarray:
    (t,) = [t for t in reader.tensors if t.name == name]
    return dequantize(t.data, t.tensor_type).reshape(t.data.shape[0], -1)


@pytest.mark.skipif(not (CACHE / "config.json").is_file(), reason="base not converted")
def test_lora_file_permutes_q_and_k_rows_as_the_packaged_gguf_does():
    """The packaged GGUF holds q and k with llama.cpp's rotary row order; our converted base holds
    transformers'. `permute` must map one onto the other, or the LoRA file's B factors of q and k
    would add to the wrong rows."""
    reader = GGUFReader(str(gguf_path()))
    base = load_tensors(str(CACHE / "model.safetensors"))  # bfloat16: torch reads it
    config = json.loads((CACHE / "config.json").read_text())
    for ours, theirs, heads in (("q_proj", "attn_q", config["num_attention_heads"]),
                                ("k_proj", "attn_k", config["num_key_value_heads"])):
        hf = base[f"model.layers.3.self_attn.{ours}.weight"].float().numpy()
        packaged = gguf_weight(reader, f"blk.3.{theirs}.weight")
        # 4-bit rounding apart when the rows match; unrelated rows when they do not
        assert np.corrcoef(permute(hf, heads).ravel(), packaged.ravel())[0, 1] > 0.99
        assert np.corrcoef(hf.ravel(), packaged.ravel())[0, 1] < 0.5


def test_lora_file_holds_every_factor_of_the_adapter_under_llama_cpp_names(tmp_path):
    adapter = ROOT / "models" / "backstory"
    config = {"num_attention_heads": 9, "num_key_value_heads": 3}  # SmolLM2-135M's
    out = lora_gguf(adapter, CACHE, tmp_path) if (CACHE / "config.json").is_file() else \
        write_lora_gguf(adapter, config, tmp_path / "lora.gguf")
    reader = GGUFReader(str(out))
    fields = {f.name: f for f in reader.fields.values()}
    assert bytes(fields["general.type"].parts[-1]).decode() == "adapter"
    assert float(fields["adapter.lora.alpha"].parts[-1][0]) == 32.0
    peft = load_file(str(adapter / "adapter_model.safetensors"))
    got = {t.name: np.asarray(t.data).reshape(t.data.shape) for t in reader.tensors}
    assert len(got) == len(peft) == 30 * 7 * 2
    prefix = "base_model.model.model.layers.7."
    np.testing.assert_array_equal(got["blk.7.attn_v.weight.lora_a"],
                                  peft[prefix + "self_attn.v_proj.lora_A.weight"])
    np.testing.assert_array_equal(got["blk.7.ffn_down.weight.lora_b"],
                                  peft[prefix + "mlp.down_proj.lora_B.weight"])
    np.testing.assert_array_equal(got["blk.7.attn_k.weight.lora_b"],
                                  permute(peft[prefix + "self_attn.k_proj.lora_B.weight"], 3))
    np.testing.assert_array_equal(got["blk.7.attn_q.weight.lora_a"],  # A: the input side
                                  peft[prefix + "self_attn.q_proj.lora_A.weight"])


def only_q_and_k(adapter: Path, out: Path) -> Path:
    """A copy of the adapter with only its q and k factors: the ones llama.cpp's row order moves."""
    shutil.copytree(adapter, out)
    factors = load_tensors(str(adapter / "adapter_model.safetensors"))
    save_file({k: v for k, v in factors.items() if ".q_proj." in k or ".k_proj." in k},
              str(out / "adapter_model.safetensors"))
    config = json.loads((adapter / "adapter_config.json").read_text())
    (out / "adapter_config.json").write_text(json.dumps(config | {"target_modules": [
        "q_proj", "k_proj"]}))
    return out


@pytest.mark.slow
def test_llama_cpp_applies_our_adapter_as_ours_does(tmp_path):
    """What the adapter changes in the next-token logits, llama.cpp (LoRA file) against ours
    (merged, float32): the same change, up to 4-bit rounding. With only its q and k factors the
    change is small beside that rounding, but q and k in transformers' row order would make it
    unrelated (correlation about 0, measured); in llama.cpp's about 0.55."""
    why = available() or (None if (CACHE / "config.json").is_file() else "base not converted")
    if why:
        pytest.skip(f"llama.cpp anchor: {why}")
    import llama_cpp
    import torch

    from backstory.config import Settings
    from backstory.engine import Engine
    from bench.naive import encode_prompt

    adapter = ROOT / "models" / "backstory"
    settings = Settings(model=str(adapter), quantize="none", device="cpu")
    ids = encode_prompt(Engine(settings).tokenizer, settings, "Kaylon",
                        "An empire of androids that killed their creators.")

    def ours(model: Path) -> np.ndarray:
        engine = Engine(Settings(model=str(model), quantize="none", device="cpu"))
        with torch.inference_mode():
            return engine.model(torch.tensor([ids])).logits[0, -1].float().numpy()

    def theirs(lora: Path | None) -> np.ndarray:
        llm = llama_cpp.Llama(model_path=str(gguf_path()), lora_path=lora and str(lora),
                              n_ctx=512, n_threads=2, logits_all=True, verbose=False)
        llm.eval(ids)
        return np.array(llm.scores[llm.n_tokens - 1])  # kept with logits_all only

    base_ours, base_theirs = ours(CACHE), theirs(None)
    for model, least in ((adapter, 0.9), (only_q_and_k(adapter, tmp_path / "qk"), 0.4)):
        change_ours = ours(model) - base_ours
        change_theirs = theirs(lora_gguf(model, CACHE, tmp_path / model.name)) - base_theirs
        correlation = np.corrcoef(change_ours, change_theirs)[0, 1]
        print(f"{model.name}: correlation of the changes {correlation:.3f}")
        assert correlation > least
