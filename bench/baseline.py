"""The baseline the benchmark compares against: the naive server the original seed was.

    python -m bench.baseline --model DIR --port 8001

One uvicorn process, one worker. `POST /api/generate` takes the product's JSON fields and returns
the product's JSON shape, but runs one `model.generate()` per request (batch of 1). The route is a
plain `def`, so FastAPI runs each call in its threadpool (anyio's default: 40 threads): concurrent
requests become concurrent generate() calls that share the CPU cores (or the GPU) and the GIL,
with no batching. That is what a straightforward FastAPI + transformers server does.

The app's shape (routes, request and response fields, command line) is shared with the
llama.cpp anchor (bench/anchor.py), which differs only in what generates.
"""

import argparse
import os
import random
import time
from collections.abc import Callable

import uvicorn
from fastapi import FastAPI
from pydantic import BaseModel, Field

from bench.naive import NaiveGenerator, Output


class GenerateBody(BaseModel):
    name: str = Field(min_length=1, max_length=200)
    description: str = Field(min_length=1, max_length=2000)
    max_new_tokens: int = Field(200, ge=1, le=1000)
    min_new_tokens: int = Field(0, ge=0, le=1000)
    temperature: float | None = Field(None, gt=0, le=2)
    seed: int | None = Field(None, ge=0, le=2**32 - 1)


Generate = Callable[[GenerateBody, int], Output]  # (request, seed) -> one backstory


def serving_app(title: str, model_name: str, generate: Generate, status: dict) -> FastAPI:
    """/readyz, /status and `POST /api/generate` around `generate`; the route is a plain def,
    so FastAPI calls it from its threadpool."""
    app = FastAPI(title=title)

    @app.get("/readyz")
    def readyz() -> dict:
        return {"status": "ok"}

    @app.get("/status")
    def status_route() -> dict:
        return status

    @app.post("/api/generate")
    def generate_route(body: GenerateBody) -> dict:
        started = time.perf_counter()
        seed = random.getrandbits(32) if body.seed is None else body.seed
        out = generate(body, seed)
        return {"backstory": out.backstory, "tokens": out.tokens, "seed": out.seed,
                "model": model_name, "name": body.name, "description": body.description,
                "seconds": round(time.perf_counter() - started, 3)}

    return app


def create_app(model_dir: str) -> FastAPI:
    """The app with the model loaded up front (the seed loaded it at import)."""
    generator = NaiveGenerator(model_dir)

    def generate(body: GenerateBody, seed: int) -> Output:
        # The bench sends min = max; the naive server honours max_new_tokens as the length.
        return generator.generate(body.name, body.description, body.max_new_tokens, seed,
                                  body.temperature)

    status = {"server": "baseline", "model": generator.name, "device": str(generator.device)}
    return serving_app("Backstory baseline (naive)", generator.name, generate, status)


def main(argv: list[str] | None = None, create: Callable[[str], FastAPI] = create_app,
         description: str = __doc__) -> None:
    parser = argparse.ArgumentParser(description=description.splitlines()[0])
    parser.add_argument("--model", required=True, help="HF model folder")
    parser.add_argument("--port", type=int, default=8001)
    args = parser.parse_args(argv)
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    uvicorn.run(create(args.model), host="127.0.0.1", port=args.port, workers=1,
                log_level="warning", access_log=False)


if __name__ == "__main__":
    main()
