"""A tiny random chat model built in seconds: the default's architecture (llama, grouped-query
attention, a chat template) in miniature, for the test suite and `python -m bench --quick`."""

import os
from pathlib import Path

TEXT = """Name: Aldric
Description: A knight of the northern marches.

Aldric rode out at dawn. The king had fallen, and the old keep burned behind him. He swore that
he would find the witch who had cursed his line, and he did not look back.

Once upon a time there was a dragon named Ember who lived under the mountain. She guarded gold
and old songs, and the villagers brought her bread so that she would leave their sheep alone.
"""


# SmolLM2-Instruct's chat template (the default base's), so prompts take the served chat path.
CHAT_TEMPLATE = (
    "{% for message in messages %}{% if loop.first and messages[0]['role'] != 'system' %}"
    "{{ '<|im_start|>system\nYou are a helpful AI assistant<|im_end|>\n' }}{% endif %}"
    "{{'<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n'}}"
    "{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}")


def make_tiny_model(folder: Path, n_positions: int = 1024) -> Path:
    """A random-init llama (2 layers, 32 wide, grouped-query attention) with a byte-level BPE
    trained on TEXT, chat tokens and template: the default model's shape and 4-bit layers, in
    miniature."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    from backstory.quant import Int4Linear
    from training.tokenizer import train_tokenizer

    tokenizer = train_tokenizer(iter([TEXT] * 4), vocab_size=300)
    tokenizer.add_special_tokens({"additional_special_tokens": ["<|im_start|>", "<|im_end|>"]})
    tokenizer.eos_token = tokenizer.pad_token = "<|im_end|>"
    tokenizer.bos_token = "<|im_start|>"
    tokenizer.chat_template = CHAT_TEMPLATE
    config = LlamaConfig(vocab_size=len(tokenizer), hidden_size=32, intermediate_size=64,
                         num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
                         max_position_embeddings=n_positions, tie_word_embeddings=True,
                         bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
                         pad_token_id=tokenizer.pad_token_id)
    # The same weights on every run; set TINY_MODEL_SEED to hunt for luck-dependent tests.
    torch.manual_seed(int(os.environ.get("TINY_MODEL_SEED", "0")))
    model = LlamaForCausalLM(config)
    with torch.no_grad():  # 4-bit layers, as the packaged base's are: served as int4 on a CPU
        for layer in model.model.layers:
            for linear in layer.modules():
                if isinstance(linear, torch.nn.Linear):
                    linear.weight.copy_(Int4Linear.dequantized(linear.weight))
    model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder
