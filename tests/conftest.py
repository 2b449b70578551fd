"""Shared fixtures: a tiny random GPT-2 built in seconds, and a real `bentoml serve` on it."""

import os
from collections.abc import Iterator
from pathlib import Path

import pytest

os.environ.update(HF_HUB_OFFLINE="1", BENTOML_DO_NOT_TRACK="true", TOKENIZERS_PARALLELISM="false")

from bench.servers import bentoml_serve  # noqa: E402

TEXT = """Name: Aldric
Description: A knight of the northern marches.

Aldric rode out at dawn. The king had fallen, and the old keep burned behind him. He swore that
he would find the witch who had cursed his line, and he did not look back.

Once upon a time there was a dragon named Ember who lived under the mountain. She guarded gold
and old songs, and the villagers brought her bread so that she would leave their sheep alone.
"""


def make_tiny_model(folder: Path, n_positions: int = 512) -> Path:
    """A random-init GPT-2 (2 layers, 32 wide) with a byte-level BPE trained on TEXT."""
    import torch
    from transformers import GPT2Config, GPT2LMHeadModel

    from training.tokenizer import train_tokenizer

    tokenizer = train_tokenizer(iter([TEXT] * 4), vocab_size=300)
    config = GPT2Config(vocab_size=len(tokenizer), n_positions=n_positions, n_embd=32, n_layer=2,
                        n_head=2, bos_token_id=tokenizer.eos_token_id,
                        eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id)
    # The same weights on every run; set TINY_MODEL_SEED to hunt for luck-dependent tests.
    torch.manual_seed(int(os.environ.get("TINY_MODEL_SEED", "0")))
    GPT2LMHeadModel(config).save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder


@pytest.fixture(scope="session")
def tiny_model(tmp_path_factory) -> Path:
    return make_tiny_model(tmp_path_factory.mktemp("tiny-model"))


@pytest.fixture(scope="session")
def server(tiny_model, tmp_path_factory) -> Iterator[str]:
    """The whole stack (`bentoml serve service:Gateway`) on the tiny model; yields its URL."""
    log = tmp_path_factory.mktemp("logs") / "bentoml-serve.log"
    with bentoml_serve(str(tiny_model), log_path=log,
                       env={"BACKSTORY_MAX_LATENCY_MS": "20000"}) as url:
        yield url
