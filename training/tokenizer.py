"""A byte-level BPE tokenizer trained from scratch (GPT-2's scheme), or the base model's own."""

from collections.abc import Iterator

from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
from transformers import AutoTokenizer, PreTrainedTokenizerFast

from backstory.text import EOS


def train_tokenizer(texts: Iterator[str], vocab_size: int) -> PreTrainedTokenizerFast:
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=[EOS], show_progress=True,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tok.train_from_iterator(texts, trainer=trainer)
    return PreTrainedTokenizerFast(tokenizer_object=tok, bos_token=EOS, eos_token=EOS,
                                   unk_token=EOS, pad_token=EOS, padding_side="left",
                                   model_max_length=1_000_000)


def load_tokenizer(base_model: str) -> PreTrainedTokenizerFast:
    """A base model's tokenizer, given a pad token (GPT-2's has none) and left padding."""
    from backstory.weights import resolve_model

    tok = AutoTokenizer.from_pretrained(resolve_model(base_model))
    if tok.pad_token is None:
        tok.pad_token = tok.eos_token
    tok.padding_side = "left"
    return tok
