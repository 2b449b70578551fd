"""Finding and loading the served model: a folder, the packaged base, a model-store tag or a Hub
id; a LoRA adapter merged into its base, or kept beside it for int4 (backstory/quant.py); the
device, dtype and quantization the settings ask for."""

from pathlib import Path

import torch
from transformers import (
    AutoModelForCausalLM,
    AutoTokenizer,
    GenerationConfig,
    PreTrainedModel,
    PreTrainedTokenizerBase,
)

from backstory.base import PACKAGED_BASE, ensure_base
from backstory.quant import four_bit_grid


def resolve_model(ref: str) -> str:
    """A model folder as is; the packaged base's name as its converted folder (converted on first
    use); otherwise a BentoML model-store tag; otherwise a Hub id."""
    if Path(ref).is_dir():
        return ref
    if ref == PACKAGED_BASE:
        return str(ensure_base())
    import bentoml

    try:
        return bentoml.models.get(ref).path
    except Exception:  # not a tag, or not in the store: let transformers try the Hub
        return ref


def pick_device(setting: str = "auto") -> torch.device:
    if setting == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(setting)


def has_fast_bf16(device: torch.device) -> bool:
    """bf16 matmuls run natively: CUDA with bf16 support, or a CPU with AVX512-BF16 / AMX."""
    if device.type == "cuda":
        return torch.cuda.is_bf16_supported()
    cpuinfo = Path("/proc/cpuinfo")
    flags = cpuinfo.read_text(errors="replace") if cpuinfo.exists() else ""
    return "avx512_bf16" in flags or "amx_bf16" in flags


def pick_dtype(setting: str, device: torch.device) -> torch.dtype:
    """`auto`: bf16 on CUDA, fp32 on CPU. A CPU with native bf16 ran float32 layers 20-35 %
    faster per step in bf16 (bench/levers.md; beside int4 layers it is slower, README), but bf16
    rounding depends on the batch's shape, so a seeded story would change with its batch mates;
    fp32 keeps it exact, bf16 is opt-in.
    fp16 weights are upcast: half precision matmuls without hardware support are slow."""
    if setting == "auto":
        return torch.bfloat16 if device.type == "cuda" and has_fast_bf16(device) else torch.float32
    return getattr(torch, setting)


def pick_quantize(setting: str, device: torch.device, model: PreTrainedModel) -> str:
    """`auto`: int4 on the CPU for a llama model whose layers are 4-bit already (the packaged
    base, and an adapter on it, kept unmerged: int4 reads them as they are, about 2x faster steps
    for 1-8 rows, backstory/quant.py); otherwise none (a merged fine-tune keeps what 4 bits would
    round away)."""
    if setting != "auto":
        return setting
    if device.type != "cpu" or model.config.model_type != "llama":
        return "none"
    four_bit = getattr(model, "four_bit", None)  # set by load_weights for a kept adapter's base
    return "int4" if (four_bit_grid(model) if four_bit is None else four_bit) else "none"


def is_adapter(path: str) -> bool:
    return (Path(path) / "adapter_config.json").is_file()


def adapter_base(path: str, base: str = "") -> str:
    """What an adapter applies to: `base` if given, else the base stored beside it (a model-store
    copy, backstory/store.py), else the one its adapter_config.json names."""
    from peft import PeftConfig

    from backstory.store import BASE_FOLDER

    beside = Path(path) / BASE_FOLDER
    return base or (str(beside) if beside.is_dir() else
                    PeftConfig.from_pretrained(path).base_model_name_or_path)


def load_weights(path: str, dtype: torch.dtype, base: str = "", keep_low_rank: bool = False
                 ) -> PreTrainedModel:
    """A full model folder as is; a LoRA adapter folder merged into `base` (default: the base its
    adapter_config.json names), one plain model again: no adapter arithmetic at serving time.

    keep_low_rank: for a llama base whose layers are 4-bit already (the packaged one, which int4
    then serves as it is), the adapter's changes are not merged but left in `model.low_rank`
    ({layer name: (A, scaled B)}) for quant.quantized to keep beside the int4 layers: merged,
    4-bit rounding would take most of a fine-tune's change away."""
    if not is_adapter(path):
        return AutoModelForCausalLM.from_pretrained(path, dtype=dtype)
    from peft import PeftModel
    from peft.tuners.lora import LoraLayer

    base = adapter_base(path, base)
    model = AutoModelForCausalLM.from_pretrained(resolve_model(base), dtype=torch.float32)
    keep = keep_low_rank and model.config.model_type == "llama" and four_bit_grid(model)
    tuned = PeftModel.from_pretrained(model, path)
    if not keep:
        return tuned.merge_and_unload().to(dtype)  # merged in fp32
    low_rank = {name.removeprefix("base_model.model."): (m.lora_A[a].weight.detach().clone(),
                                                         m.lora_B[a].weight.detach() * m.scaling[a])
                for name, m in tuned.named_modules() if isinstance(m, LoraLayer)
                for a in m.active_adapters}
    model = tuned.unload().to(dtype)
    # Judged in float32 above: a bfloat16 copy is off the grid by its own rounding.
    model.low_rank, model.four_bit = low_rank, True
    return model


def load_model(path: str, device: torch.device, dtype: str = "auto", base: str = "",
               keep_low_rank: bool = False) -> tuple[PreTrainedTokenizerBase, PreTrainedModel]:
    """Tokenizer (left padding, a pad token) and model in eval mode on `device`, in `dtype`
    (see pick_dtype). An adapter folder brings its tokenizer; its weights merge into `base`
    (see load_weights for keep_low_rank)."""
    dtype = pick_dtype(dtype, device)
    tokenizer = AutoTokenizer.from_pretrained(path, padding_side="left")
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    model = load_weights(path, dtype, base, keep_low_rank).to(device).eval()
    # The folder's generation_config.json (sampling defaults for users of model.generate, as the
    # bench's naive server and levers are) would be merged into every generate() call: its
    # repetition penalty on top of the settings'. The settings are the one source of defaults.
    model.generation_config = GenerationConfig(
        bos_token_id=model.config.bos_token_id, eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id)
    return tokenizer, model


def context_length(model: PreTrainedModel) -> int:
    config = model.config
    return getattr(config, "n_positions", None) or getattr(config, "max_position_embeddings", 2048)
