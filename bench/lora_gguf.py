"""Our LoRA adapter as a llama.cpp LoRA file, so that the anchor runs the same weights as ours.

llama.cpp's own converter (convert_lora_to_gguf.py) lives in its repository, not in the
llama-cpp-python package, and pulls in its whole HF converter; for one architecture the format
is a few lines of the `gguf` package (which we install to read the packaged base): the A and B
factors of every adapted projection under the GGUF tensor name of that projection, and the
adapter's alpha. The one subtlety is llama.cpp's rotary layout: its q and k weights have their
rows permuted per head (convert_hf_to_gguf's `LlamaModel.permute`), so B, whose rows are the
projection's outputs, gets the same permutation for q and k; A, on the input side, does not.
"""

import hashlib
import json
from pathlib import Path

import numpy as np
from safetensors.torch import load_file

# peft's module names -> the GGUF names of the llama tensors they adapt
NAMES = {"self_attn.q_proj": "attn_q", "self_attn.k_proj": "attn_k",
         "self_attn.v_proj": "attn_v", "self_attn.o_proj": "attn_output",
         "mlp.gate_proj": "ffn_gate", "mlp.up_proj": "ffn_up", "mlp.down_proj": "ffn_down"}


def permute(rows: np.ndarray, heads: int) -> np.ndarray:
    """convert_hf_to_gguf's LlamaModel.permute: each head's two rotary halves interleaved."""
    return (rows.reshape(heads, 2, rows.shape[0] // heads // 2, *rows.shape[1:])
            .swapaxes(1, 2).reshape(rows.shape))


def tensors(adapter: Path, base_config: dict) -> dict[str, np.ndarray]:
    """GGUF tensor name -> float32 array, for every LoRA factor of the adapter."""
    heads = {"attn_q": base_config["num_attention_heads"],
             "attn_k": base_config["num_key_value_heads"]}
    out = {}
    for key, value in load_file(str(adapter / "adapter_model.safetensors")).items():
        layer, module = key.split(".layers.")[1].split(".", 1)
        module, factor = module.rsplit(".lora_", 1)
        name = f"blk.{layer}.{NAMES[module]}.weight.lora_{factor[0].lower()}"
        value = value.float().numpy()
        if factor.startswith("B") and NAMES[module] in heads:
            value = permute(value, heads[NAMES[module]])
        out[name] = np.ascontiguousarray(value)
    return out


def write_lora_gguf(adapter: Path, base_config: dict, out: Path) -> Path:
    import gguf

    cfg = json.loads((adapter / "adapter_config.json").read_text())
    writer = gguf.GGUFWriter(str(out), "llama")
    writer.add_type(gguf.GGUFType.ADAPTER)
    writer.add_string(gguf.Keys.Adapter.TYPE, "lora")
    writer.add_float32(gguf.Keys.Adapter.LORA_ALPHA, float(cfg["lora_alpha"]))
    for name, value in tensors(adapter, base_config).items():
        writer.add_tensor(name, value)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return out


def lora_gguf(adapter: Path, base: Path, cache: Path) -> Path:
    """The adapter's LoRA GGUF file, converted once into `cache` (named by the adapter's hash)."""
    digest = hashlib.sha256((adapter / "adapter_model.safetensors").read_bytes()).hexdigest()
    out = cache / f"lora-{digest[:16]}.gguf"
    if not out.exists():
        cache.mkdir(parents=True, exist_ok=True)
        partial = out.with_suffix(".partial")
        write_lora_gguf(adapter, json.loads((base / "config.json").read_text()), partial)
        partial.rename(out)
    return out
