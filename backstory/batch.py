"""The running batch's tensors: rows enter (merge, left-padding both sides to one width) and
leave (select) between decode steps, with their KV cache: transformers' DynamicCache, laid out
like the history (rotary models take their positions from the attention mask, so left padding
changes no row's numbers), or the lean path's SlotCache (backstory/llama.py), which keeps its
rows in slots of its own and is only told who joins and who stays."""

from dataclasses import dataclass

import torch
from transformers import DynamicCache

from backstory.llama import SlotCache


@dataclass
class Batch:
    """The running rows and their state; every tensor has one row per entry of `rows`."""
    rows: list  # the scheduler's rows, one per tensor row
    history: torch.Tensor  # prompt + generated ids, left-padded (for the repetition penalty)
    mask: torch.Tensor  # 1 where `history` holds a real token
    cache: DynamicCache | SlotCache
    logits: torch.Tensor  # each row's next-token logits
    sampler: object | None = None  # built once per set of rows, not every step


def positions(mask: torch.Tensor) -> torch.Tensor:
    """Left padding: each row counts its positions from its first real token."""
    return (mask.cumsum(dim=1) - 1).clamp(min=0)


def left_pad(batch: Batch, width: int, pad_id: int) -> Batch:
    if width == 0:
        return batch
    rows, cache = batch.mask.shape[0], batch.cache
    if not isinstance(cache, SlotCache):
        layers = []
        for layer in cache.layers:
            k, v = layer.keys, layer.values
            zeros = k.new_zeros(k.shape[0], k.shape[1], width, k.shape[3])
            layers.append((torch.cat([zeros, k], dim=2), torch.cat([zeros, v], dim=2)))
        cache = DynamicCache(layers)
    return Batch(batch.rows, torch.cat([batch.history.new_full((rows, width), pad_id),
                                        batch.history], dim=1),
                 torch.cat([batch.mask.new_zeros(rows, width), batch.mask], dim=1),
                 cache, batch.logits)


def merge(running: Batch | None, joining: Batch, pad_id: int) -> Batch:
    """One batch of both, left-padded to the longer of the two."""
    if running is None:
        return joining
    width = max(running.mask.shape[1], joining.mask.shape[1])
    a = left_pad(running, width - running.mask.shape[1], pad_id)
    b = left_pad(joining, width - joining.mask.shape[1], pad_id)
    cache = a.cache  # a SlotCache prefilled the joining rows into the slots after a's
    if not isinstance(cache, SlotCache):
        cache = DynamicCache([(torch.cat([x.keys, y.keys]), torch.cat([x.values, y.values]))
                              for x, y in zip(a.cache.layers, b.cache.layers)])
    return Batch(a.rows + b.rows, torch.cat([a.history, b.history]), torch.cat([a.mask, b.mask]),
                 cache, torch.cat([a.logits, b.logits]))


def select(batch: Batch, keep: list[int]) -> Batch:
    """Only the rows in `keep`, without the columns that are padding for all of them."""
    index = torch.tensor(keep, device=batch.mask.device)
    mask = batch.mask[index]
    start = int(mask.any(dim=0).float().argmax())  # first column some row still uses (trim)
    cache = batch.cache
    if isinstance(cache, SlotCache):
        cache.keep(keep)
    else:
        cache = DynamicCache([(layer.keys[index, :, start:], layer.values[index, :, start:])
                              for layer in cache.layers])
    return Batch([batch.rows[i] for i in keep], batch.history[index, start:], mask[:, start:],
                 cache, batch.logits[index])


def trim(ids: torch.Tensor, mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Left-padded rows without the columns that are padding in every row."""
    start = int(mask.any(dim=0).float().argmax())
    return ids[:, start:], mask[:, start:]
