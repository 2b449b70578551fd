"""What makes generation fast, one lever at a time, in process (no HTTP, no batching window).

    python -m bench.levers                         # default model, batches 1,8,32, 200 tokens
    python -m bench.levers --batches 1,32 --levers engine,static

Every lever generates exactly --new-tokens tokens per row (min = max) for the same evaluation
prompts with the served sampling settings, after one warm-up run (which also pays any compile
time, reported apart); the median of --repeats timed runs counts. Writes bench/levers.md (and
the raw numbers to bench/results/levers.json).
"""

import argparse
import asyncio
import functools
import json
import shlex
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path

import torch
from transformers import CompileConfig, GenerationConfig

from backstory.config import DEFAULT_MODEL, Settings
from backstory.engine import Engine
from backstory.schemas import BackstoryRequest
from bench.machine import describe, markdown
from bench.servers import ROOT
from training.evaluate import load_prompts

Run = Callable[[list[BackstoryRequest]], None]
DEFAULT_OUT = ROOT / "bench" / "levers.md"


def sampling(engine: Engine, new_tokens: int, **extra) -> GenerationConfig:
    s = engine.settings
    return GenerationConfig(
        do_sample=True, temperature=s.temperature, top_p=s.top_p, top_k=s.top_k,
        repetition_penalty=s.repetition_penalty, min_new_tokens=new_tokens,
        max_new_tokens=new_tokens, pad_token_id=engine.tokenizer.pad_token_id,
        eos_token_id=engine.tokenizer.eos_token_id, **extra)


def encode(engine: Engine, requests: list[BackstoryRequest]) -> dict:
    """The served prompts, exactly as the engine builds them."""
    return engine.encode(requests, [engine.row_settings(r) for r in requests])


def hf_generate(engine: Engine, config: GenerationConfig, grad: Callable = torch.inference_mode
                ) -> Run:
    def run(requests: list[BackstoryRequest]) -> None:
        with grad():
            engine.model.generate(**encode(engine, requests), generation_config=config)
    return run


def continuous(engine: Engine, config: GenerationConfig) -> Run:
    """transformers' continuous batching (paged KV cache, rows join and leave between steps)."""
    def run(requests: list[BackstoryRequest]) -> None:
        ids = [encode(engine, [r])["input_ids"][0].tolist() for r in requests]  # no padding
        with torch.inference_mode():
            engine.model.generate_batch(ids, generation_config=config)
    return run


def threads(run: Run, n: int) -> Run:
    def limited(requests: list[BackstoryRequest]) -> None:
        before = torch.get_num_threads()
        torch.set_num_threads(n)
        try:
            run(requests)
        finally:
            torch.set_num_threads(before)
    return limited


@functools.cache
def variant(engine: Engine, **update) -> Engine:
    """The same model with other settings (dtype, quantize), loaded once."""
    return Engine(engine.settings.model_copy(update=update))


@functools.cache
def scheduled(engine: Engine, lean: bool = True) -> Run:
    """What the model service runs since issue 10: every request submitted at once to the
    continuous-batching scheduler, which joins them into its running batch."""
    from backstory.scheduler import Scheduler

    scheduler = Scheduler(engine, max_batch=256, wait_ms=0, lean=lean)

    def run(requests: list[BackstoryRequest]) -> None:
        async def all_of() -> list:
            return await asyncio.gather(*(scheduler.complete(r) for r in requests))

        asyncio.run(all_of())
    return run


DESCRIPTIONS = {
    "engine": "Engine.generate, which the evaluation and distillation use: the service's "
              "continuous-batching loop run in the calling thread (per-row sampler and seeds, "
              "the lean decode path, all cores, float32 weights: BACKSTORY_QUANTIZE=none)",
    "engine_1thread": "the same on one torch thread",
    "engine_bf16": "the same with bfloat16 weights (BACKSTORY_DTYPE=bfloat16)",
    "engine_int8": "the same with int8 weights in every linear layer (BACKSTORY_QUANTIZE=int8, "
                   "fbgemm dynamic quantization, rows scaled apart: RowInt8Linear)",
    "engine_int4": "the same with 4-bit decoder layers and an int8 logits head "
                   "(BACKSTORY_QUANTIZE=int4, the default on the CPU: backstory/quant.py)",
    "engine_scheduler": "the served path: the requests submitted to our continuous-batching "
                        "scheduler's thread (backstory/scheduler.py), our decode loop over the "
                        "model's modules with a KV cache of slots (backstory/llama.py)",
    "engine_scheduler_transformers": "the same scheduler over the model's forward and its "
                                     "DynamicCache (BACKSTORY_DECODE=transformers)",
    "engine_scheduler_int8": "the served path with BACKSTORY_QUANTIZE=int8",
    "engine_scheduler_int4": "the served path with BACKSTORY_QUANTIZE=int4",
    "generate": "plain transformers generate() with its own sampling processors",
    "no_grad": "the same under torch.no_grad instead of inference_mode",
    "static": "the same with a static KV cache",
    "static+compile": "static cache and torch.compile (inductor, fixed shapes; the warm-up "
                      "run compiles, 10-20 s per new shape without inductor's disk cache)",
    "continuous": "transformers continuous batching (generate_batch, paged cache; each call "
                  "starts its own manager, and it drops the repetition penalty)",
}


def levers(engine: Engine, new_tokens: int) -> dict[str, Run]:
    compile_cfg = CompileConfig(dynamic=False, mode="default")
    compile_cfg._compile_all_devices = True  # transformers compiles on CUDA only unless told
    return {
        "engine": lambda reqs: engine.generate(reqs),
        "engine_1thread": threads(lambda reqs: engine.generate(reqs), 1),
        "engine_bf16": lambda reqs: variant(engine, dtype="bfloat16").generate(reqs),
        "engine_int8": lambda reqs: variant(engine, quantize="int8").generate(reqs),
        "engine_int4": lambda reqs: variant(engine, quantize="int4").generate(reqs),
        "engine_scheduler": scheduled(engine),
        "engine_scheduler_transformers": scheduled(engine, lean=False),
        "engine_scheduler_int8": lambda reqs: scheduled(variant(engine, quantize="int8"))(reqs),
        "engine_scheduler_int4": lambda reqs: scheduled(variant(engine, quantize="int4"))(reqs),
        "generate": hf_generate(engine, sampling(engine, new_tokens)),
        "no_grad": hf_generate(engine, sampling(engine, new_tokens), torch.no_grad),
        "static": hf_generate(engine, sampling(engine, new_tokens, cache_implementation="static")),
        "static+compile": hf_generate(engine, sampling(
            engine, new_tokens, cache_implementation="static", compile_config=compile_cfg)),
        "continuous": continuous(engine, sampling(engine, new_tokens)),
    }


def measure(run: Run, requests: list[BackstoryRequest], new_tokens: int, repeats: int) -> dict:
    timings = []
    for _ in range(repeats + 1):  # the first is the warm-up
        start = time.perf_counter()
        run(requests)
        timings.append(time.perf_counter() - start)
    warmup, seconds = timings[0], statistics.median(timings[1:])
    return {"batch": len(requests), "seconds": round(seconds, 3), "warmup_s": round(warmup, 2),
            "tokens_per_s": round(len(requests) * new_tokens / seconds, 1),
            "ms_per_step": round(1000 * seconds / new_tokens, 2)}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.levers", description=__doc__.splitlines()[0])
    p.add_argument("--model", default=DEFAULT_MODEL)
    p.add_argument("--batches", default="1,8,32")
    p.add_argument("--new-tokens", type=int, default=200)
    p.add_argument("--levers", help="comma-separated subset (default: all)")
    p.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's choice)")
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--out", type=Path, default=DEFAULT_OUT)
    args = p.parse_args(argv)
    machine = describe()
    # Every lever is measured against the plain float32 model: quantization is a lever too.
    engine = Engine(Settings(model=args.model, threads=args.threads, quantize="none"))
    prompts = [BackstoryRequest(name=p.name, description=p.description, seed=i,
                                min_new_tokens=args.new_tokens, max_new_tokens=args.new_tokens)
               for i, p in enumerate(load_prompts())]
    chosen = levers(engine, args.new_tokens)
    if args.levers:
        chosen = {k: v for k, v in chosen.items() if k in args.levers.split(",")}
    results = []
    for name, run in chosen.items():
        for batch in (int(b) for b in args.batches.split(",")):
            try:
                timing = measure(run, prompts[:batch], args.new_tokens, args.repeats)
                row = {"lever": name, **timing}
            except Exception as e:  # a lever this torch/transformers/CPU cannot run is a result too
                row = {"lever": name, "batch": batch, "error": f"{type(e).__name__}: {e}"[:300]}
            print(json.dumps(row), flush=True)
            results.append(row)
    raw = ROOT / "bench" / "results" / "levers.json" if args.out == DEFAULT_OUT else (
        args.out.with_suffix(".json"))  # a test's or a trial's numbers stay beside its report
    raw.parent.mkdir(parents=True, exist_ok=True)
    run = {"date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()), "machine": machine,
           "command": shlex.join(["python", "-m", "bench.levers", *sys.argv[1:]]),
           "model": args.model, "new_tokens": args.new_tokens, "results": results}
    raw.write_text(json.dumps(run, indent=1))
    args.out.write_text("\n".join(report(run)) + "\n")
    return 0


def report(run: dict) -> list[str]:
    """Each lever against its base: engine_* against the engine, the rest against generate."""
    ms = {(r["lever"], r["batch"]): r.get("ms_per_step") for r in run["results"]}
    lines = ["# Generation levers, one at a time", "", f"Date: {run['date']}", "", "Command:", "",
             f"    {run['command']}", "", "## Machine", "", *markdown(run["machine"]), "",
             "## Levers", "", *[f"- **{k}**: {v}" for k, v in DESCRIPTIONS.items()], "",
             f"## Results ({run['new_tokens']} new tokens per row, median of timed runs)", "",
             "| Lever | Batch | ms/step | Tokens/s | Speed vs its base | Warm-up run |",
             "|---|---|---|---|---|---|"]
    for r in run["results"]:
        if "error" in r:
            lines.append(f"| {r['lever']} | {r['batch']} | failed: {r['error']} | | | |")
            continue
        base = "engine" if r["lever"].startswith("engine") else "generate"
        base_ms = ms.get((base, r["batch"])) if r["lever"] not in ("engine", "generate") else None
        vs = f"{base_ms / r['ms_per_step']:.2f}x {base}" if base_ms else "-"
        lines.append(f"| {r['lever']} | {r['batch']} | {r['ms_per_step']:.1f} | "
                     f"{r['tokens_per_s']:,.0f} | {vs} | {r['warmup_s']:.1f} s |")
    return lines


if __name__ == "__main__":
    raise SystemExit(main())
