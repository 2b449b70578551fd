"""The model: a GPT-2 sized by the config, or a pretrained causal LM to fine-tune."""

import torch
from transformers import AutoModelForCausalLM, GPT2Config, GPT2LMHeadModel, PreTrainedModel

from backstory.weights import resolve_model
from training.config import TrainConfig


def build_model(cfg: TrainConfig, tokenizer) -> PreTrainedModel:
    if cfg.base_model:
        # fp32 master weights, whatever the checkpoint holds (ours are fp16).
        model = AutoModelForCausalLM.from_pretrained(resolve_model(cfg.base_model),
                                                     dtype=torch.float32)
        if len(tokenizer) > model.get_input_embeddings().num_embeddings:
            model.resize_token_embeddings(len(tokenizer))
        return add_lora(model, cfg) if cfg.lora_r else model
    config = GPT2Config(
        vocab_size=len(tokenizer), n_positions=cfg.block_size, n_embd=cfg.n_embd,
        n_layer=cfg.n_layer, n_head=cfg.n_head, resid_pdrop=cfg.dropout, embd_pdrop=cfg.dropout,
        attn_pdrop=cfg.dropout, bos_token_id=tokenizer.eos_token_id,
        eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id,
    )
    return GPT2LMHeadModel(config)


def add_lora(model: PreTrainedModel, cfg: TrainConfig) -> PreTrainedModel:
    """Freeze the base, train low-rank updates of the named projections (peft). What ships is the
    adapter (a few MB); the service loads it with the base (backstory.weights)."""
    from peft import LoraConfig, PeftModel, get_peft_model

    if cfg.init_adapter:  # a further round: the adapter's own rank and targets, trainable
        model = PeftModel.from_pretrained(model, cfg.init_adapter, is_trainable=True)
        model.print_trainable_parameters()
        return model
    lora = LoraConfig(r=cfg.lora_r, lora_alpha=cfg.lora_alpha, lora_dropout=cfg.lora_dropout,
                      target_modules=cfg.lora_targets, task_type="CAUSAL_LM")
    model = get_peft_model(model, lora)
    model.peft_config["default"].base_model_name_or_path = cfg.base_model  # not the cache path
    model.print_trainable_parameters()
    return model


def count_parameters(model: PreTrainedModel, trainable: bool = False) -> int:
    return sum(p.numel() for p in model.parameters() if p.requires_grad or not trainable)
