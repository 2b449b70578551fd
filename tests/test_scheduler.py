"""The continuous-batching scheduler (backstory/scheduler.py) on the tiny model, in process.

A stream that joins a running batch must get exactly the story it gets alone (and the same as the
REST route's generate()), start before the running rows finish, and leave nothing behind."""

import asyncio
import time

import pytest

from backstory.config import Settings
from backstory.engine import Engine
from backstory.scheduler import Scheduler
from backstory.schemas import BackstoryRequest as Request
from backstory.text import clean_backstory

REQUESTS = [
    Request(name="Kaylon", description="An empire of androids.", seed=1, min_new_tokens=40,
            max_new_tokens=40),
    Request(name="Bo", description="A long description of a fisherman who waits by the sea for a "
            "ship that never comes.", seed=2, max_new_tokens=12, temperature=1.5, top_p=0.5),
    Request(name="Zed", description="x", seed=3, min_new_tokens=20, max_new_tokens=20, top_k=0,
            repetition_penalty=1.0),
]


@pytest.fixture(scope="module")
def engine(tiny_model):
    return Engine(Settings(model=str(tiny_model), threads=1))


async def consume(batcher: Scheduler, request: Request, delay: float = 0.0
                  ) -> tuple[str, object]:
    await asyncio.sleep(delay)
    pieces, result = [], None
    async for kind, value in batcher.submit(request):
        if kind == "text":
            pieces.append(value)
        else:
            result = value
    return "".join(pieces), result


def run(coro):
    return asyncio.run(coro)


@pytest.mark.parametrize("lean", [True, False], ids=["lean", "transformers"])
def test_joining_rows_get_their_own_story_alone_or_together(engine, lean):
    """Both decode loops: ours with slots (llama models) and the model's forward (any model)."""
    batcher = Scheduler(engine, max_batch=8, wait_ms=0, lean=lean)
    alone = [run(consume(batcher, r)) for r in REQUESTS]

    async def together():  # the second and third join while the first is running
        return await asyncio.gather(*(consume(batcher, r, delay) for r, delay in
                                      zip(REQUESTS, (0.0, 0.02, 0.05))))

    joined = run(together())
    generated = engine.generate(REQUESTS)
    for (text, result), (text2, result2), reference in zip(alone, joined, generated):
        assert result == result2 == reference
        assert text == text2 and clean_backstory(text)[:10] == result.backstory[:10]
    assert [r.tokens for r in generated] == [40, generated[1].tokens, 20]
    assert engine.in_flight == 0


def test_a_joining_stream_finishes_before_the_running_one(engine):
    batcher = Scheduler(engine, max_batch=8, wait_ms=0)
    long = Request(name="Long", description="A slow teller.", seed=4, min_new_tokens=400,
                   max_new_tokens=400)
    late = Request(name="Late", description="A latecomer.", seed=5, min_new_tokens=5,
                   max_new_tokens=5)
    order: list[str] = []

    async def both():
        running = asyncio.Event()

        async def first():
            async for kind, _ in batcher.submit(long):
                if kind == "text" and not running.is_set():
                    running.set()  # the opener is out: the long row is in the batch
            order.append("Long")

        async def second():
            await running.wait()
            await consume(batcher, late)
            order.append("Late")

        await asyncio.gather(first(), second())

    run(both())
    assert order == ["Late", "Long"]  # it joined the running batch instead of waiting for it


def test_a_full_batch_queues_the_rest(engine):
    batcher = Scheduler(engine, max_batch=2, wait_ms=0)

    async def many():
        return await asyncio.gather(*(consume(batcher, r) for r in REQUESTS * 2))

    results = run(many())
    assert [r.backstory for _, r in results] == [r.backstory for _, r in results[3:] * 2]
    assert engine.in_flight == 0


def test_a_client_that_leaves_frees_its_row(engine):
    batcher = Scheduler(engine, max_batch=8, wait_ms=0)
    before = engine.generated_tokens

    async def leave_early():
        stream = batcher.submit(Request(name="Gone", description="Leaves.", seed=6,
                                        min_new_tokens=300, max_new_tokens=300))
        async for kind, _ in stream:
            if kind == "text":
                break
        await stream.aclose()  # what the service does when the HTTP client disconnects
        return await consume(batcher, REQUESTS[2])  # the loop keeps serving others

    _, result = run(leave_early())
    assert result.tokens == 20
    deadline = time.monotonic() + 10
    while engine.in_flight and time.monotonic() < deadline:
        time.sleep(0.05)
    assert engine.in_flight == 0 and engine.generated_tokens - before < 300
