"""The training run, top to bottom: data -> tokenizer -> model -> Trainer -> export."""

import math
import time
from pathlib import Path

import torch
from transformers import Trainer, TrainerCallback, TrainingArguments, set_seed
from transformers.trainer_utils import get_last_checkpoint

from backstory.weights import has_fast_bf16, pick_device
from training.config import TrainConfig, validate
from training.data import load_passages, tokenize_and_group
from training.dpo import dpo_settings, load_pairs
from training.export import export
from training.model import build_model, count_parameters
from training.sft import PadCollator, sft_dataset
from training.tokenizer import load_tokenizer, train_tokenizer


class WallClock(TrainerCallback):
    """Ends training cleanly (evaluate, checkpoint, stop) once the time budget is spent."""

    def __init__(self, max_minutes: float):
        self.budget_s = max_minutes * 60
        self.start = time.monotonic()
        self.start_step = 0

    def on_train_begin(self, args, state, control, **kwargs):
        # After a checkpoint is loaded: a resumed run gets its own budget (and LR cycle).
        self.start, self.start_step = time.monotonic(), state.global_step

    def fraction(self) -> float:
        return (time.monotonic() - self.start) / self.budget_s if self.budget_s else 0.0

    def on_step_end(self, args, state, control, **kwargs):
        if self.budget_s and self.fraction() >= 1:
            control.should_training_stop = control.should_save = control.should_evaluate = True
        return control


def cosine_schedule(optimizer, cfg: TrainConfig, clock: WallClock):
    """Linear warm-up, then cosine decay to 10% of the peak over max_steps or the time budget,
    whichever runs out first, so a time-limited run still ends at a low learning rate. A resumed
    run starts a new cycle (SGDR-style) at its own --lr, over its own budget."""

    def lr_lambda(step: int) -> float:
        step -= clock.start_step  # a resumed run warms up again and decays over its own budget
        warm = min(1.0, (step + 1) / max(1, cfg.warmup_steps))
        progress = min(1.0, max(step / max(1, cfg.max_steps - clock.start_step), clock.fraction()))
        return warm * (0.1 + 0.45 * (1 + math.cos(math.pi * progress)))

    return torch.optim.lr_scheduler.LambdaLR(optimizer, lr_lambda)


def use_bf16(precision: str) -> bool:
    if precision != "auto":
        return precision == "bf16"
    return has_fast_bf16(pick_device())  # ~1.2-1.5x faster than fp32 there


def collate(rows: list[dict]) -> dict:
    # Not DataCollatorForLanguageModeling: it masks pad tokens out of the labels, and our pad token
    # is EOS, which the model must learn to produce. Blocks are full, so there is no padding.
    ids = torch.tensor([r["input_ids"] for r in rows])
    return {"input_ids": ids, "labels": ids}


def work_dir(cfg: TrainConfig) -> Path:
    """Checkpoints and the tokenizer live beside the model folder, so the folder stays clean."""
    return Path(cfg.output_dir + ".work")


def get_tokenizer(cfg: TrainConfig, passages):
    saved = work_dir(cfg) / "tokenizer"
    if cfg.base_model:
        return load_tokenizer(cfg.base_model)
    if cfg.resume and saved.exists():
        return load_tokenizer(str(saved))
    tokenizer = train_tokenizer(iter(passages["train"]["text"]), cfg.vocab_size)
    tokenizer.save_pretrained(saved)
    return tokenizer


def load_data(cfg: TrainConfig):
    """(tokenizer, train/val dataset, collator): preference pairs (dpo_data; trl collates),
    stories to fine-tune on (sft_data), or corpus text cut into blocks of block_size."""
    if cfg.dpo_data:
        tokenizer = load_tokenizer(cfg.base_model)
        return tokenizer, load_pairs(cfg.dpo_data, tokenizer), None
    if cfg.sft_data:
        tokenizer = load_tokenizer(cfg.base_model)
        return tokenizer, sft_dataset(cfg, tokenizer), PadCollator(tokenizer.pad_token_id)
    passages = load_passages(cfg)
    tokenizer = get_tokenizer(cfg, passages)
    blocks = tokenize_and_group(passages, tokenizer, cfg.block_size).with_format("numpy")
    return tokenizer, blocks, collate


def train(cfg: TrainConfig) -> Path:
    validate(cfg)
    set_seed(cfg.seed)
    tokenizer, blocks, collator = load_data(cfg)
    model = build_model(cfg, tokenizer)
    cuda = torch.cuda.is_available()
    print(f"model: {count_parameters(model) / 1e6:.1f}M parameters "
          f"({count_parameters(model, trainable=True) / 1e6:.2f}M trained); train examples: "
          f"{len(blocks['train'])}, val: {len(blocks['val'])} (up to {cfg.block_size} tokens)")

    trainer_class, args_class, extra = Trainer, TrainingArguments, {}
    if cfg.dpo_data:  # trl's trainer: a Trainer with the DPO loss and a frozen reference
        from trl import DPOConfig, DPOTrainer

        trainer_class, args_class, extra = DPOTrainer, DPOConfig, dpo_settings(cfg)
    args = args_class(
        output_dir=str(work_dir(cfg) / "checkpoints"), per_device_train_batch_size=cfg.batch_size,
        per_device_eval_batch_size=cfg.batch_size, gradient_accumulation_steps=cfg.grad_accum,
        learning_rate=cfg.lr, weight_decay=cfg.weight_decay, max_grad_norm=cfg.max_grad_norm,
        adam_beta2=0.95, max_steps=cfg.max_steps, eval_strategy="steps",
        eval_steps=cfg.eval_every, save_steps=cfg.eval_every, save_total_limit=2,
        logging_steps=max(1, min(50, cfg.eval_every // 5)), bf16=use_bf16(cfg.precision),
        seed=cfg.seed, report_to="none", dataloader_num_workers=0, remove_unused_columns=False,
        torch_compile=False, use_cpu=not cuda, include_num_input_tokens_seen=True, **extra,
    )
    eval_rows = len(blocks["val"]) if not cfg.eval_batches else cfg.eval_batches * cfg.batch_size
    clock = WallClock(cfg.max_minutes)
    trained = [p for p in model.parameters() if p.requires_grad]  # LoRA: the adapters only
    optimizer = torch.optim.AdamW(trained, lr=cfg.lr, betas=(0.9, 0.95),
                                  weight_decay=cfg.weight_decay, fused=cuda)
    trainer = trainer_class(
        model=model, args=args, data_collator=collator, processing_class=tokenizer,
        train_dataset=blocks["train"],
        eval_dataset=blocks["val"].select(range(min(eval_rows, len(blocks["val"])))),
        callbacks=[clock], optimizers=(optimizer, cosine_schedule(optimizer, cfg, clock)),
    )
    resumable = cfg.resume and Path(args.output_dir).exists()
    last = get_last_checkpoint(args.output_dir) if resumable else None
    if cfg.resume and last is None:
        print("no checkpoint to resume from: starting fresh")
    started = time.time()
    trainer.train(resume_from_checkpoint=last)
    wall_s = time.time() - started
    final = trainer.evaluate(eval_dataset=blocks["val"])  # the whole held-out split
    return export(cfg, trainer, tokenizer, final, wall_s, n_train_blocks=len(blocks["train"]))
