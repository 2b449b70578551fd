"""Batched streaming: concurrent stream requests share one generate() and get their own text.

BentoML's adaptive batching returns whole results, so streams have their own small batcher:
requests that arrive within `wait_ms` of the first (or while the model is busy) run together.
"""

import asyncio
from collections.abc import AsyncIterator
from typing import Any

from backstory.schemas import BackstoryRequest


class StreamBatcher:
    def __init__(self, engine, max_batch: int, wait_ms: int):
        self.engine, self.max_batch, self.wait_s = engine, max_batch, wait_ms / 1000
        self.queue: asyncio.Queue | None = None

    async def submit(self, request: BackstoryRequest) -> AsyncIterator[tuple[str, Any]]:
        """Yields ("text", str) pieces, then ("result", Generation)."""
        if self.queue is None:  # created here, inside the server's event loop
            self.queue = asyncio.Queue()
            asyncio.get_running_loop().create_task(self._run())
        out: asyncio.Queue = asyncio.Queue()
        row = self.engine.row_settings(request)
        await self.queue.put((request, row, out))
        try:
            while True:
                kind, value = await out.get()
                if kind == "error":
                    raise value
                yield kind, value
                if kind == "result":
                    return
        finally:
            row.cancelled.set()  # the client went away (or we are done): free the row's slot

    async def _next_batch(self) -> list[tuple]:
        batch = [await self.queue.get()]
        deadline = asyncio.get_running_loop().time() + self.wait_s
        while len(batch) < self.max_batch:
            try:
                timeout = max(0.0, deadline - asyncio.get_running_loop().time())
                batch.append(await asyncio.wait_for(self.queue.get(), timeout))
            except TimeoutError:
                break
        return [b for b in batch if not b[1].cancelled.is_set()]

    async def _run(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            batch = await self._next_batch()
            if not batch:
                continue

            def emit(i: int, text: str, batch=batch) -> None:
                loop.call_soon_threadsafe(batch[i][2].put_nowait, ("text", text))

            try:
                results = await asyncio.to_thread(
                    self.engine.generate, [b[0] for b in batch], emit, [b[1] for b in batch])
                for (_, _, out), result in zip(batch, results):
                    out.put_nowait(("result", result))
            except Exception as e:  # report to every waiting client, keep serving
                for _, _, out in batch:
                    out.put_nowait(("error", e))
