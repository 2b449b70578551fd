"""The typed training config and its presets. Every field is a command-line option (see --help)."""

from dataclasses import dataclass, field, fields
from pathlib import Path

CORPUS = Path(__file__).resolve().parent.parent.parent / "shared" / "corpus"
DEFAULT_DATA = [f"{CORPUS}/{d}" for d in ("lore", "fantasy", "scifi", "tinystories")]


def _opt(default, help: str, **kw):
    if isinstance(default, list):
        return field(default_factory=lambda: list(default), metadata={"help": help, **kw})
    return field(default=default, metadata={"help": help, **kw})


@dataclass
class TrainConfig:
    # Data
    data: list[str] = _opt(DEFAULT_DATA, "Sources: a folder of .txt files, a .txt file or a Hub "
                           "dataset id, each optionally weighted as SOURCE=WEIGHT "
                           "(weight 2 = twice).")
    exclude: list[str] = _opt(["*_ocr.txt"], "Glob patterns of file names to leave out.")
    text_column: str = _opt("text", "Text column of Hub datasets.")
    max_chars: int = _opt(0, "Use at most this many characters per source (0 = all).")
    val_fraction: float = _opt(0.01, "Share of every document held out for validation.")
    headers: bool = _opt(True, "Prefix passages with a 'Name:/Description:' header built from "
                         "the passage (teaches the serving prompt format).")
    chunk_chars: int = _opt(1500, "Target characters per passage.")
    sft_data: str = _opt("", "JSONL of name/description/story rows (training/distill.py): learn "
                         "the served chat prompt -> story, loss on the story only; `data` unused.")
    sft_corpus_rows: int = _opt(0, "Human passages from `data` (train split, with a header) added "
                                "to sft_data as rows: the coherence and name use that stories "
                                "sampled from the base cannot teach.")
    dpo_data: str = _opt("", "JSONL of name/description/chosen/rejected rows "
                         "(training/preferences.py): preference fine-tuning (DPO) of base_model "
                         "on the served prompt; `data` and sft_data unused.")
    dpo_beta: float = _opt(0.1, "DPO: how far the model may move from the base (lower = further).")
    dpo_sft: float = _opt(0.2, "DPO: weight of the language-model loss on the chosen stories.")
    cache_dir: str = _opt(".cache/training", "Where tokenized datasets are cached.")
    # Tokenizer and model
    base_model: str = _opt("", "Fine-tune this causal LM (folder, Hub id or "
                           "smollm2-135m-instruct, the packaged base); empty = from scratch.")
    lora_r: int = _opt(0, "LoRA rank (peft) for fine-tuning; 0 = train every weight.")
    init_adapter: str = _opt("", "Start the LoRA from this adapter folder, not from zero (a second "
                             "round of DPO on pairs the adapter wrote); the DPO reference stays "
                             "base_model. lora_r and lora_alpha then come from the adapter.")
    lora_alpha: int = _opt(32, "LoRA scaling numerator (the update is scaled by alpha / r).")
    lora_dropout: float = _opt(0.05, "Dropout on the LoRA path.")
    lora_targets: list[str] = _opt(["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj",
                                    "up_proj", "down_proj"], "Modules that get LoRA adapters.")
    vocab_size: int = _opt(16000, "Byte-level BPE vocabulary when training from scratch.")
    block_size: int = _opt(512, "Tokens per training block (and the model's context).")
    n_layer: int = _opt(6, "Transformer layers.")
    n_embd: int = _opt(384, "Hidden width.")
    n_head: int = _opt(6, "Attention heads.")
    dropout: float = _opt(0.1, "Dropout in attention, residual and embeddings.")
    # Optimisation
    batch_size: int = _opt(32, "Blocks per optimizer step (per device, before accumulation).")
    grad_accum: int = _opt(1, "Gradient accumulation steps.")
    lr: float = _opt(1e-3, "Peak learning rate (cosine decay to a tenth).")
    warmup_steps: int = _opt(100, "Linear warm-up steps.")
    weight_decay: float = _opt(0.1, "AdamW weight decay.")
    precision: str = _opt("auto", "bf16 or fp32; auto = bf16 where the hardware has it (CUDA, "
                          "or a CPU with AVX512-BF16/AMX), else fp32.")
    max_grad_norm: float = _opt(1.0, "Gradient clipping.")
    max_steps: int = _opt(1000, "Stop after this many steps...")
    max_minutes: float = _opt(0.0, "...or after this wall time (0 = no limit); the LR schedule "
                              "follows whichever runs out first.")
    eval_every: int = _opt(200, "Evaluate (and checkpoint) every N steps.")
    eval_batches: int = _opt(50, "Validation batches per evaluation (0 = whole split).")
    seed: int = _opt(1337, "Seed for data order, initialisation and samples.")
    resume: bool = _opt(False, "Resume from the last checkpoint in the output folder.")
    # Output
    output_dir: str = _opt("runs/model", "Where the model folder is written.")
    bentoml_tag: str = _opt("", "Also save into the BentoML model store under this name.")
    preset: str = _opt("", "Preset the defaults: tiny, cpu or gpu (options given win).")


PRESETS: dict[str, dict] = {
    # Tests: a few seconds on a CPU.
    "tiny": dict(max_chars=60_000, vocab_size=512, block_size=128, n_layer=2, n_embd=64, n_head=2,
                 batch_size=8, max_steps=30, warmup_steps=5, eval_every=15, eval_batches=4,
                 chunk_chars=400, output_dir="runs/tiny"),
    # The best model two CPU cores train in about an hour: small and fast, so it sees more data.
    "cpu": dict(block_size=384, n_layer=4, n_embd=256, n_head=4, batch_size=16, lr=2e-3,
                warmup_steps=200, max_steps=100_000, max_minutes=55, eval_every=200,
                eval_batches=20, dropout=0.0, output_dir="runs/cpu"),
    # The best model one H100/H200 trains in about five minutes (see the training issue's figures).
    # LoRA on the packaged SmolLM2-135M-Instruct, on the distilled backstories: 3 epochs, or 16
    # minutes on 2 CPU cores (25 s a step; the schedule ends with the budget), a minute on a GPU.
    "smollm2": dict(base_model="smollm2-135m-instruct", sft_data="training/data/backstories.jsonl",
                    lora_r=16, lora_alpha=32, lr=3e-4, block_size=384, batch_size=8,
                    warmup_steps=10, max_steps=54, max_minutes=16, eval_every=18,
                    eval_batches=0, weight_decay=0.0, dropout=0.0, output_dir="runs/smollm2"),
    # DPO (LoRA) on the packaged base, on pairs of its own stories (training/preferences.py).
    "smollm2-dpo": dict(base_model="smollm2-135m-instruct",
                        dpo_data="training/data/preferences.jsonl", lora_r=16, lora_alpha=32,
                        lora_dropout=0.0, lr=2e-4, block_size=384, batch_size=2, grad_accum=4,
                        warmup_steps=3, max_steps=30, max_minutes=60, eval_every=15,
                        eval_batches=0, weight_decay=0.0, dropout=0.0,
                        output_dir="runs/smollm2-dpo"),
    "gpu": dict(block_size=512, n_layer=6, n_embd=384, n_head=6, batch_size=64, lr=1e-3,
                warmup_steps=200, max_steps=100_000, max_minutes=5, eval_every=500,
                eval_batches=40, output_dir="runs/gpu"),
}


# The DPO preset's second round: from its adapter, on pairs that adapter wrote (one epoch of 149).
PRESETS["smollm2-dpo2"] = dict(PRESETS["smollm2-dpo"], init_adapter="runs/smollm2-dpo",
                               dpo_data="training/data/preferences-r2.jsonl", max_steps=18,
                               eval_every=9, output_dir="runs/smollm2-dpo2")
# The third round (shipped): from the second's adapter, on pairs it wrote (one epoch of 154).
PRESETS["smollm2-dpo3"] = dict(PRESETS["smollm2-dpo2"], init_adapter="runs/smollm2-dpo2",
                               dpo_data="training/data/preferences-r3.jsonl", max_steps=20,
                               eval_every=10, output_dir="runs/smollm2-dpo3")


def preset_defaults(name: str) -> dict:
    if name and name not in PRESETS:
        raise ValueError(f"unknown preset {name!r}; choose one of {', '.join(PRESETS)}")
    return dict(PRESETS.get(name, {}), preset=name)


def validate(cfg: TrainConfig) -> None:
    """Refuse configs that would fail late (after minutes of tokenising) with a clear message."""
    errors = []
    if cfg.n_embd % cfg.n_head:
        errors.append(f"n_embd ({cfg.n_embd}) must be divisible by n_head ({cfg.n_head})")
    if not 0 < cfg.val_fraction < 0.5:
        errors.append(f"val_fraction must be in (0, 0.5), got {cfg.val_fraction}")
    for name in ("block_size", "batch_size", "max_steps", "vocab_size", "grad_accum"):
        if getattr(cfg, name) < 1:
            errors.append(f"{name} must be at least 1")
    if cfg.precision not in ("auto", "bf16", "fp32"):
        errors.append(f"precision must be auto, bf16 or fp32, got {cfg.precision!r}")
    if cfg.dpo_data and not cfg.base_model:
        errors.append("dpo_data needs a base_model (DPO fine-tunes a model that already writes)")
    if cfg.dpo_data and cfg.sft_data:
        errors.append("give dpo_data (pairs) or sft_data (stories), not both")
    if not cfg.data and not cfg.sft_data:
        errors.append("no data sources given")
    if cfg.lora_r < 0 or (cfg.lora_r and not cfg.base_model):
        errors.append("lora_r needs a base_model to adapt (and must not be negative)")
    if cfg.init_adapter and not (cfg.lora_r and cfg.base_model):
        errors.append("init_adapter needs lora_r and the base_model the adapter was trained on")
    if cfg.init_adapter and not Path(cfg.init_adapter, "adapter_config.json").is_file():
        errors.append(f"init_adapter {cfg.init_adapter!r} is not an adapter folder "
                      "(no adapter_config.json)")
    if errors:
        raise ValueError("bad training config: " + "; ".join(errors))


FIELD_NAMES = [f.name for f in fields(TrainConfig)]
