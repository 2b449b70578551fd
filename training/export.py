"""Write the model folder: fp16 safetensors, tokenizer, generation config, metrics, loss curve
and model card."""

import json
import math
import platform
import shlex
import sys
from dataclasses import asdict
from pathlib import Path

import torch
from transformers import GenerationConfig, Trainer

from backstory.config import Settings
from training.card import SAMPLE_PROMPTS, render_card
from training.config import TrainConfig
from training.model import count_parameters


def hardware() -> str:
    if torch.cuda.is_available():
        return torch.cuda.get_device_name(0)
    return f"CPU ({torch.get_num_threads()} threads, {platform.processor() or platform.machine()})"


def plot_loss(log_history: list[dict], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    train = [(h["step"], h["loss"]) for h in log_history if "loss" in h]
    val = [(h["step"], h["eval_loss"]) for h in log_history if "eval_loss" in h]
    fig, ax = plt.subplots(figsize=(7, 4))
    for points, label in ((train, "train"), (val, "validation")):
        if points:
            ax.plot(*zip(*points), label=label, marker="o" if label == "validation" else None)
    ax.set(xlabel="step", ylabel="loss (nats/token)", title="Training loss")
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def sample_backstories(out: Path, seed: int) -> list[dict]:
    """Three backstories from the exported folder, with the settings the service uses."""
    from backstory.engine import Engine
    from backstory.schemas import BackstoryRequest

    engine = Engine(Settings(model=str(out), device="auto"))
    requests = [BackstoryRequest(name=n, description=d, seed=seed) for n, d in SAMPLE_PROMPTS]
    return [{"name": r.name, "description": r.description, "backstory": g.backstory}
            for r, g in zip(requests, engine.generate(requests))]


def _rounded(value: float | None) -> float | None:
    return None if value is None else round(value, 3)


def export(cfg: TrainConfig, trainer: Trainer, tokenizer, final: dict, wall_s: float,
           n_train_blocks: int) -> Path:
    out = Path(cfg.output_dir)
    model = trainer.model
    state = trainer.state
    # Fine-tuning examples are shorter than a block: count what the model really read.
    tokens_seen = (state.num_input_tokens_seen if cfg.sft_data or cfg.dpo_data else
                   state.global_step * cfg.batch_size * cfg.grad_accum * cfg.block_size)
    command = "python -m training " + shlex.join(sys.argv[1:])
    before = out / "metrics.json"
    if cfg.resume and before.exists():  # a resumed run: the card tells the whole history
        previous = json.loads(before.read_text())
        wall_s += previous["wall_seconds"]
        command = f"{previous['command']}\n{command}"
    metrics = {
        "val_loss": round(final["eval_loss"], 4),
        # DPO's validation loss is its preference loss: no perplexity, but how often the held-out
        # pairs' chosen story wins, and by how much (beta x log-probability ratio).
        "val_perplexity": None if cfg.dpo_data else round(math.exp(final["eval_loss"]), 2),
        "val_preference_accuracy": _rounded(final.get("eval_rewards/accuracies")),
        "val_reward_margin": _rounded(final.get("eval_rewards/margins")),
        "parameters": count_parameters(model),
        "trained_parameters": count_parameters(model, trainable=True),
        "steps": state.global_step,
        "tokens_seen": tokens_seen,
        "epochs": round(state.epoch or 0, 3),
        "train_examples": n_train_blocks,
        "wall_seconds": round(wall_s, 1),
        "tokens_per_second": round(tokens_seen / max(wall_s, 1e-9)),
        "hardware": hardware(),
        "command": command,
        "config": asdict(cfg),
    }
    s = Settings()
    generation = GenerationConfig(
        do_sample=True, temperature=s.temperature, top_p=s.top_p, top_k=s.top_k,
        repetition_penalty=s.repetition_penalty, max_new_tokens=s.max_new_tokens,
        bos_token_id=tokenizer.bos_token_id or tokenizer.eos_token_id,
        eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id)
    model.config.use_cache = True  # the Trainer turns the KV cache off; generation wants it
    # A LoRA model saves its adapter only (adapter_config.json + adapter_model.safetensors).
    model.to(torch.float16).save_pretrained(out, safe_serialization=True)
    model.to(torch.float32)
    generation.save_pretrained(out)
    tokenizer.save_pretrained(out)
    plot_loss(state.log_history, out / "loss.png")
    metrics["samples"] = sample_backstories(out, cfg.seed)
    (out / "metrics.json").write_text(json.dumps(metrics, indent=2) + "\n")
    (out / "README.md").write_text(render_card(metrics))
    if cfg.bentoml_tag:
        save_to_bentoml(out, cfg.bentoml_tag, metrics)
    print(f"wrote {out}: val loss {metrics['val_loss']} (perplexity {metrics['val_perplexity']})")
    return out


def save_to_bentoml(folder: Path, name: str, metrics: dict) -> str:
    """Copy the folder into the BentoML model store, so a Bento can pack it by tag."""
    import shutil

    import bentoml

    with bentoml.models.create(name, metadata={k: metrics[k] for k in
                                               ("val_loss", "parameters", "tokens_seen")}) as bm:
        shutil.copytree(folder, bm.path, dirs_exist_ok=True)
    print(f"saved to the BentoML model store as {bm.tag}")
    return str(bm.tag)
