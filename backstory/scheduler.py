"""One continuous-batching scheduler for every route: a request joins the running batch at the
next step, whether it streams (GET /api/stream) or waits for the whole story (REST).

One thread owns a decoding loop over a running batch. Each step it prefills rows that arrived
(together, up to a token budget, so a crowd of long prompts does not stall the running rows for
seconds) into the next free slots of the lean path's KV cache (backstory/llama.py; models other
than llama merge their transformers cache into the batch's: backstory/batch.py), samples every
row with its own settings and seed (backstory/sampling.py), sends streaming rows their text, and
drops finished rows. There are no cohorts: a row that arrives never waits for a running batch to
end, and a burst only waits for free rows (max_batch_size) in arrival order.

BentoML's adaptive batching is not used: it ran whole batches to the end (head-of-line waits) and
its latency model refused bursts with 503s (issue 10). transformers' own continuous batching was
measured slower on CPU and drops the repetition penalty (bench/levers.md).
"""

import asyncio
import queue
import threading
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from typing import Any

import torch

from backstory.batch import Batch, merge, positions, select, trim
from backstory.detokenize import TextStream
from backstory.engine import Engine
from backstory.llama import SlotCache, supports
from backstory.sampling import RowSampler, RowSettings
from backstory.schemas import BackstoryRequest, Generation, PromptRequest
from backstory.telemetry import Timings, telemetry


@dataclass
class Row:
    request: BackstoryRequest | PromptRequest
    settings: RowSettings
    send: Callable[[str, Any], None]  # (kind, value), thread-safe
    streams: bool  # sends its text as it grows (else only the result)
    timings: Timings
    text: TextStream | None = None
    tokens: list[int] = field(default_factory=list)
    prompt_tokens: int = 0
    done: bool = False  # its result or error has been sent
    left: bool = False  # its caller went away before the end


class Scheduler:
    """The decoding loop behind the model service's routes: one thread, one running batch."""

    def __init__(self, engine: Engine, max_batch: int, wait_ms: int, prefill_tokens: int = 2048,
                 lean: bool = True):
        self.engine, self.max_batch, self.wait_s = engine, max_batch, wait_ms / 1000
        self.prefill_tokens = prefill_tokens
        # The lean decode path (backstory/llama.py) where the model is a llama; else (GPT-2
        # models trained from scratch) transformers' forward with its DynamicCache.
        self.slots = (SlotCache(engine.model, max_batch, engine.context,
                                engine.settings.dense_decode_rows)
                      if lean and supports(engine.model) else None)
        if self.slots is not None:  # served prompts prefill from their shared start's K and V
            self.slots.set_prefix(engine.shared_prefix())
        self.waiting: queue.Queue[Row] = queue.Queue()
        self.pending: list[Row] = []  # admitted, not yet prefilled (over the token budget)
        self.thread: threading.Thread | None = None
        self.metrics = telemetry()

    async def complete(self, request: BackstoryRequest | PromptRequest) -> Generation:
        """The whole story, from the same running batch as the streams."""
        async for kind, value in self.submit(request, stream=False):
            if kind == "result":
                return value
        raise RuntimeError("the scheduler ended a row without a result")

    async def submit(self, request: BackstoryRequest | PromptRequest, stream: bool = True
                     ) -> AsyncIterator[tuple[str, Any]]:
        """Yields ("text", str) pieces (if `stream`), then ("result", Generation)."""
        loop, out = asyncio.get_running_loop(), asyncio.Queue()

        def send(kind: str, value: Any) -> None:
            if not loop.is_closed():  # a caller that left may have closed its loop
                loop.call_soon_threadsafe(out.put_nowait, (kind, value))

        row = Row(request, self.engine.row_settings(request), send, stream,
                  Timings(arrived=time.monotonic()))
        if self.thread is None:
            self.thread = threading.Thread(target=self._run, name="scheduler", daemon=True)
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
        finally:  # the client went away (or we are done): free the slot at the next step
            row.left = not row.done
            row.settings.cancelled.set()

    def generate(self, requests: list[BackstoryRequest | PromptRequest],
                 rows: list[RowSettings] | None = None) -> list[Generation]:
        """Every request to its end, in the calling thread, through the loop the service runs
        (Engine.generate: the evaluation, the distillation). `rows` lets the caller hold the
        rows' cancel events. Not while this scheduler's service thread runs."""
        if self.thread is not None:
            raise RuntimeError("this scheduler's loop already runs in its own thread")
        results: list[Any] = [None] * len(requests)  # each row's Generation or error

        def collect(i: int, kind: str, value: Any) -> None:
            if kind in ("result", "error"):
                results[i] = value

        rows = rows or [self.engine.row_settings(r) for r in requests]
        self.pending = [Row(r, row, lambda kind, value, i=i: collect(i, kind, value), False,
                            Timings(arrived=time.monotonic()))
                        for i, (r, row) in enumerate(zip(requests, rows, strict=True))]
        batch: Batch | None = None
        while self.pending or batch is not None:
            batch = self._turn(batch)
        if self.slots is not None:
            self.slots.clear()
        for value in results:
            if isinstance(value, Exception):
                raise value
        return results

    def _run(self) -> None:
        batch: Batch | None = None
        while True:
            batch = self._turn(batch)
            if batch is None:  # idle until the next row: the gauges must say so now
                if self.slots is not None:
                    self.slots.clear()
                self.metrics.idle(self.waiting.qsize() + len(self.pending))

    def _turn(self, batch: Batch | None) -> Batch | None:
        """Rows that arrived join (prefilled), then one step for all: the loop's body."""
        joining = self._admit(len(batch.rows) if batch else 0)
        if joining:
            try:
                batch = merge(batch, self._prefill(joining), self.engine.tokenizer.pad_token_id)
            except Exception as e:  # a prefill that fails fails its own rows only
                self._fail(joining, e)
        if batch is None:
            return None
        try:
            return self._step(batch)
        except Exception as e:  # report to every row in the batch, keep serving
            self._fail(batch.rows, e)
            return None

    def _admit(self, running: int) -> list[Row]:
        """Rows to prefill now: those left over from the last step's budget first, then waiting
        ones, up to a full batch. An idle loop blocks for the first row, then waits `wait_ms` for
        company; a busy one takes whatever has arrived."""
        rows, self.pending = self.pending, []
        if running == 0 and not rows:
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
        for row in rows:
            if row.settings.cancelled.is_set():  # left while waiting: never starts
                self._finish(row)
        return [r for r in rows if not r.done]

    @torch.inference_mode()
    def _prefill(self, rows: list[Row]) -> Batch:
        engine = self.engine
        enc = engine.encode([r.request for r in rows], [r.settings for r in rows])
        ids, mask = enc["input_ids"], enc["attention_mask"]
        fits = max(1, self.prefill_tokens // ids.shape[1])
        if fits < len(rows):  # over the budget: the rest join at the next steps
            self.pending, rows = rows[fits:], rows[:fits]
            ids, mask = trim(ids[:fits], mask[:fits])
        now = time.monotonic()
        for row, n in zip(rows, mask.sum(dim=1).tolist()):
            self.engine.count(in_flight=1)
            self.metrics.admitted(row.timings, now, n)
            row.prompt_tokens = n
            emit = (lambda text, row=row: row.send("text", text)) if row.streams else _ignore
            row.text = TextStream(engine.tokenizer, row.settings, engine.opener(row.request),
                                  emit)
        with engine.lock:
            if self.slots is not None:  # into the slots after the running rows'
                return Batch(rows, ids, mask, self.slots, self.slots.prefill(ids, mask))
            out = engine.model(input_ids=ids, attention_mask=mask, position_ids=positions(mask),
                               use_cache=True)
        return Batch(rows, ids, mask, out.cache, out.logits[:, -1].float())

    def _step(self, batch: Batch) -> Batch | None:
        """Sample one token for every row, send it, drop finished rows, run the model."""
        engine = self.engine
        if batch.sampler is None:
            batch.sampler = RowSampler([r.settings for r in batch.rows],
                                       engine.tokenizer.eos_token_id, engine.device,
                                       engine.first_banned(),
                                       engine.settings.no_repeat_ngram_size)
        self.metrics.step(len(batch.rows), self.waiting.qsize() + len(self.pending))
        steps = [len(r.tokens) for r in batch.rows]
        chosen = batch.sampler.sample(batch.history, batch.logits, steps)
        now, keep = time.monotonic(), []
        for i, (row, token) in enumerate(zip(batch.rows, chosen.tolist())):
            row.text.push(token)  # sets the row's cancel event at its end
            if row.settings.cancelled.is_set():
                self._finish(row)
                continue
            if not row.tokens:
                self.metrics.first_token(row.timings, now)
            row.tokens.append(token)
            keep.append(i)
        if not keep:
            return None
        if len(keep) < len(batch.rows):  # copying the cache costs: only when a row has left
            batch, chosen = select(batch, keep), chosen[keep]
        return self._forward(batch, chosen)

    @torch.inference_mode()
    def _forward(self, batch: Batch, tokens: torch.Tensor) -> Batch:
        tokens = tokens[:, None]
        mask = torch.cat([batch.mask, torch.ones_like(tokens)], dim=1)
        with self.engine.lock:
            if isinstance(batch.cache, SlotCache):
                cache, logits = batch.cache, batch.cache.decode_one_token(tokens[:, 0])
            else:
                out = self.engine.model(input_ids=tokens, attention_mask=mask,
                                        position_ids=mask.sum(1, keepdim=True) - 1,
                                        cache=batch.cache, use_cache=True)
                cache, logits = out.cache, out.logits[:, -1].float()
        return Batch(batch.rows, torch.cat([batch.history, tokens], dim=1), mask, cache, logits,
                     batch.sampler)

    def _fail(self, rows: list[Row], error: Exception) -> None:
        for row in rows:
            self._finish(row, error=error)

    def _finish(self, row: Row, error: Exception | None = None) -> None:
        """Send the row its result (or error), once: a step that fails after some of its rows
        finished fails only the others."""
        if row.done:
            return
        row.done = True
        started = row.text is not None
        self.engine.count(in_flight=-1 if started else 0, tokens=len(row.tokens))
        reason = finish_reason(row, error)
        self.metrics.finish(row.timings, time.monotonic(), len(row.tokens), reason)
        if error is not None:
            row.send("error", error)
            return
        result = self.engine.result(row.text.opener if started else "", row.settings, row.tokens)
        result.finish_reason = "length" if reason == "length" else "stop"
        result.prompt_tokens = row.prompt_tokens
        row.send("result", result)


def finish_reason(row: Row, error: Exception | None) -> str:
    if error is not None:
        return "error"
    if row.left:
        return "cancelled"
    return "length" if len(row.tokens) >= row.settings.max_new_tokens else "stop"


def _ignore(text: str) -> None:
    pass
