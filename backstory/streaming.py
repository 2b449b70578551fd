"""Streams with continuous batching: a new stream joins the running batch at the next step.

BentoML's adaptive batching hands over whole batches and returns whole results, and a batch that
runs generate() to the end makes a stream that arrives meanwhile wait for all of it. Here one
thread owns a decoding loop over a running batch: each step it prefills the streams that arrived
(together), merges their KV cache into the batch's (left-padded to a common length), samples every
row with its own settings (backstory.sampling), sends each row its text, and drops finished rows.
transformers' own continuous batching was measured slower on CPU and drops the repetition
penalty (bench/levers.md), hence this loop.
"""

import asyncio
import queue
import threading
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any

import torch
from transformers import DynamicCache

from backstory.engine import Engine, TextStream
from backstory.sampling import RowSampler, RowSettings
from backstory.schemas import BackstoryRequest


@dataclass
class Row:
    request: BackstoryRequest
    settings: RowSettings
    send: Any  # (kind, value) -> None, thread-safe
    text: TextStream | None = None
    tokens: list[int] = field(default_factory=list)
    done: bool = False  # its result or error has been sent


@dataclass
class Batch:
    """The running rows and their state; every tensor has one row per entry of `rows`."""
    rows: list[Row]
    history: torch.Tensor  # prompt + generated ids, left-padded (for the repetition penalty)
    mask: torch.Tensor  # 1 where `history` holds a real token
    cache: DynamicCache
    logits: torch.Tensor  # each row's next-token logits
    sampler: RowSampler | None = None  # built once per set of rows, not every step


class StreamBatcher:
    """The decoding loop behind the stream API: one thread, one running batch."""

    def __init__(self, engine: Engine, max_batch: int, wait_ms: int):
        self.engine, self.max_batch, self.wait_s = engine, max_batch, wait_ms / 1000
        self.waiting: queue.Queue[Row] = queue.Queue()
        self.thread: threading.Thread | None = None

    async def submit(self, request: BackstoryRequest) -> AsyncIterator[tuple[str, Any]]:
        """Yields ("text", str) pieces, then ("result", Generation)."""
        loop, out = asyncio.get_running_loop(), asyncio.Queue()
        row = Row(request, self.engine.row_settings(request),
                  lambda kind, value: loop.call_soon_threadsafe(out.put_nowait, (kind, value)))
        if self.thread is None:
            self.thread = threading.Thread(target=self._run, name="stream-batcher", daemon=True)
            self.thread.start()
        self.waiting.put(row)
        try:
            while True:
                kind, value = await out.get()
                if kind == "error":
                    raise value
                yield kind, value
                if kind == "result":
                    return
        finally:
            row.settings.cancelled.set()  # the client went away (or we are done): free the slot

    def _run(self) -> None:
        batch: Batch | None = None
        while True:
            joining = self._admit(len(batch.rows) if batch else 0)
            if joining:
                try:
                    batch = merge(batch, self._prefill(joining), self.engine.tokenizer.pad_token_id)
                except Exception as e:  # a prefill that fails fails its own rows only
                    self._fail(joining, e)
            if batch is None:
                continue
            try:
                batch = self._step(batch)
            except Exception as e:  # report to every row in the batch, keep serving
                self._fail(batch.rows, e)
                batch = None

    def _fail(self, rows: list[Row], error: Exception) -> None:
        for row in rows:
            self._finish(row, error=error)

    def _step(self, batch: Batch) -> Batch | None:
        """Sample one token for every row, send it, drop finished rows, run the model."""
        engine = self.engine
        if batch.sampler is None:
            batch.sampler = RowSampler([r.settings for r in batch.rows],
                                       engine.tokenizer.eos_token_id, engine.device,
                                       engine.first_banned())
        steps = [len(r.tokens) for r in batch.rows]
        chosen = batch.sampler.sample(batch.history, batch.logits, steps)
        keep = []
        for i, (row, token) in enumerate(zip(batch.rows, chosen.tolist())):
            row.text.push(token)  # sets the row's cancel event at its end
            if row.settings.cancelled.is_set():
                self._finish(row)
            else:
                row.tokens.append(token)
                keep.append(i)
        if not keep:
            return None
        if len(keep) < len(batch.rows):  # copying the cache costs: only when a row has left
            batch, chosen = select(batch, keep), chosen[keep]
        return self._forward(batch, chosen)

    def _admit(self, running: int) -> list[Row]:
        """Waiting rows, up to a full batch. An idle loop blocks for the first, then waits
        `wait_ms` for company; a busy one takes whatever has arrived."""
        rows: list[Row] = []
        if running == 0:
            rows.append(self.waiting.get())
            deadline = time.monotonic() + self.wait_s
            while len(rows) < self.max_batch and (left := deadline - time.monotonic()) > 0:
                try:
                    rows.append(self.waiting.get(timeout=left))
                except queue.Empty:
                    break
        while running + len(rows) < self.max_batch:
            try:
                rows.append(self.waiting.get_nowait())
            except queue.Empty:
                break
        live = [r for r in rows if not r.settings.cancelled.is_set()]
        self.engine.count(in_flight=len(live))
        return live

    @torch.inference_mode()
    def _prefill(self, rows: list[Row]) -> Batch:
        engine = self.engine
        for row in rows:
            row.text = TextStream(engine.tokenizer, row.settings, engine.opener(row.request),
                                  lambda text, row=row: row.send("text", text))
        enc = engine.encode([r.request for r in rows], [r.settings for r in rows])
        ids, mask = enc["input_ids"], enc["attention_mask"]
        with engine.lock:
            out = engine.model(input_ids=ids, attention_mask=mask, position_ids=positions(mask),
                               use_cache=True)
        return Batch(rows, ids, mask, out.cache, out.logits[:, -1].float())

    @torch.inference_mode()
    def _forward(self, batch: Batch, tokens: torch.Tensor) -> Batch:
        tokens = tokens[:, None]
        mask = torch.cat([batch.mask, torch.ones_like(tokens)], dim=1)
        with self.engine.lock:
            out = self.engine.model(input_ids=tokens, attention_mask=mask,
                                    position_ids=mask.sum(1, keepdim=True) - 1,
                                    cache=batch.cache, use_cache=True)
        return Batch(batch.rows, torch.cat([batch.history, tokens], dim=1), mask, out.cache,
                     out.logits[:, -1].float(), batch.sampler)

    def _finish(self, row: Row, error: Exception | None = None) -> None:
        """Send the row its result (or error), once: a step that fails after some of its rows
        finished fails only the others."""
        if row.done:
            return
        row.done = True
        self.engine.count(in_flight=-1, tokens=len(row.tokens))
        if error is not None:
            row.send("error", error)
            return
        opener = row.text.opener if row.text else ""
        row.send("result", self.engine.result(opener, row.settings, row.tokens))


def positions(mask: torch.Tensor) -> torch.Tensor:
    """Left padding: each row counts its positions from its first real token."""
    return (mask.cumsum(dim=1) - 1).clamp(min=0)


def left_pad(batch: Batch, width: int, pad_id: int) -> Batch:
    if width == 0:
        return batch
    rows = batch.mask.shape[0]
    layers = []
    for layer in batch.cache.layers:
        k, v = layer.keys, layer.values
        zeros = k.new_zeros(k.shape[0], k.shape[1], width, k.shape[3])
        layers.append((torch.cat([zeros, k], dim=2), torch.cat([zeros, v], dim=2)))
    return Batch(batch.rows, torch.cat([batch.history.new_full((rows, width), pad_id),
                                        batch.history], dim=1),
                 torch.cat([batch.mask.new_zeros(rows, width), batch.mask], dim=1),
                 DynamicCache(layers), batch.logits)


def merge(running: Batch | None, joining: Batch, pad_id: int) -> Batch:
    """One batch of both, left-padded to the longer of the two."""
    if running is None:
        return joining
    width = max(running.mask.shape[1], joining.mask.shape[1])
    a = left_pad(running, width - running.mask.shape[1], pad_id)
    b = left_pad(joining, width - joining.mask.shape[1], pad_id)
    layers = [(torch.cat([x.keys, y.keys]), torch.cat([x.values, y.values]))
              for x, y in zip(a.cache.layers, b.cache.layers)]
    return Batch(a.rows + b.rows, torch.cat([a.history, b.history]), torch.cat([a.mask, b.mask]),
                 DynamicCache(layers), torch.cat([a.logits, b.logits]))


def select(batch: Batch, keep: list[int]) -> Batch:
    """Only the rows in `keep`, without the columns that are padding for all of them."""
    index = torch.tensor(keep, device=batch.mask.device)
    mask = batch.mask[index]
    start = int(mask.any(dim=0).float().argmax())  # first column some row still uses
    layers = [(layer.keys[index, :, start:], layer.values[index, :, start:])
              for layer in batch.cache.layers]
    return Batch([batch.rows[i] for i in keep], batch.history[index, start:], mask[:, start:],
                 DynamicCache(layers), batch.logits[index])
