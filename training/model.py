"""The model: a GPT-2 sized by the config, or a pretrained causal LM to fine-tune."""

import torch
from transformers import AutoModelForCausalLM, GPT2Config, GPT2LMHeadModel, PreTrainedModel

from training.config import TrainConfig


def build_model(cfg: TrainConfig, tokenizer) -> PreTrainedModel:
    if cfg.base_model:
        # fp32 master weights, whatever the checkpoint holds (ours are fp16).
        model = AutoModelForCausalLM.from_pretrained(cfg.base_model, dtype=torch.float32)
        if len(tokenizer) > model.get_input_embeddings().num_embeddings:
            model.resize_token_embeddings(len(tokenizer))
        return model
    config = GPT2Config(
        vocab_size=len(tokenizer), n_positions=cfg.block_size, n_embd=cfg.n_embd,
        n_layer=cfg.n_layer, n_head=cfg.n_head, resid_pdrop=cfg.dropout, embd_pdrop=cfg.dropout,
        attn_pdrop=cfg.dropout, bos_token_id=tokenizer.eos_token_id,
        eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id,
    )
    return GPT2LMHeadModel(config)


def count_parameters(model: PreTrainedModel) -> int:
    return sum(p.numel() for p in model.parameters())
