"""What the machine could do at best: model FLOPs per token against measured matmul FLOP/s, and
the bare in-process generate() that the served latency at one client is compared with."""

import statistics
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import TypeVar

import torch

from bench.load import CHARACTERS, payload
from bench.naive import NaiveGenerator

T = TypeVar("T")
FORMULA = ("FLOPs/token = 2 × N_non-embedding + 2 × n_layer × n_ctx × d_model + "
           "2 × vocab × d_model")


@dataclass
class ModelFlops:
    parameters: int
    non_embedding: int
    n_layer: int
    d_model: int
    vocab: int
    n_ctx: float  # mean number of positions attended per generated token
    flops_per_token: float


def model_flops(model: torch.nn.Module, prompt_tokens: int, new_tokens: int) -> ModelFlops:
    """Forward FLOPs per generated token (Kaplan et al. 2020, with the LM head counted apart).
    Non-embedding = all parameters but the token and position embeddings (GPT-2 ties the LM
    head to the token embedding, so its matmul is the 2 × vocab × d_model term). With a KV cache
    the attention term uses the mean context over the generation, prompt + new_tokens / 2."""
    config = model.config
    d_model = getattr(config, "n_embd", None) or config.hidden_size
    n_layer = getattr(config, "n_layer", None) or config.num_hidden_layers
    params = sum(p.numel() for p in model.parameters())
    embeddings = {id(p): p.numel() for m in model.modules() if isinstance(m, torch.nn.Embedding)
                  for p in m.parameters()}
    non_embedding = params - sum(embeddings.values())
    n_ctx = prompt_tokens + new_tokens / 2
    flops = 2 * non_embedding + 2 * n_layer * n_ctx * d_model + 2 * config.vocab_size * d_model
    return ModelFlops(params, non_embedding, n_layer, d_model, config.vocab_size, n_ctx, flops)


def matmul_flops(sizes: tuple[int, ...] = (1024, 2048), repeats: int = 3,
                 device: torch.device | None = None,
                 dtype: torch.dtype = torch.float32) -> dict[str, float]:
    """Best torch.matmul FLOP/s for each square size, in the model's dtype (fp32 on CPU, bf16
    on GPU) with this process's thread count: the practical peak of the model's kernels."""
    device = device or torch.device("cpu")
    out = {}
    for n in sizes:
        a, b = (torch.randn(n, n, device=device, dtype=dtype) for _ in range(2))
        torch.matmul(a, b)  # warm-up: thread pool, caches, cuBLAS handles
        best = float("inf")
        for _ in range(repeats):
            _sync(device)
            t0 = time.perf_counter()
            torch.matmul(a, b)
            _sync(device)
            best = min(best, time.perf_counter() - t0)
        out[str(n)] = 2 * n**3 / best
    return out


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def in_worker_thread(fn: Callable[..., T], *args, **kwargs) -> T:
    """Run `fn` on a fresh pool thread, as both servers run generate() (BentoML's and
    FastAPI's threadpools)."""
    with ThreadPoolExecutor(1, thread_name_prefix="bench-bare") as pool:
        return pool.submit(fn, *args, **kwargs).result()


def timed_runs(generator: NaiveGenerator, new_tokens: int, repeats: int,
               deadline: float) -> list[float]:
    """model.generate() seconds of `repeats` requests after one untimed warm-up; stops early
    past `deadline` (time.monotonic), so slow machines stay bounded."""
    generator.generate(**_args(0, new_tokens))
    times: list[float] = []
    for i in range(1, repeats + 1):
        times.append(generator.generate(**_args(i, new_tokens)).generate_seconds)
        if time.monotonic() > deadline:
            break
    return times


def bare_generate(generator: NaiveGenerator, new_tokens: int, repeats: int = 5,
                  attempts: int = 2, budget_s: float = 300) -> dict:
    """Latency of a bare model.generate() at batch 1, the same prompts and length as the bench
    requests, in this process: the floor for our latency at one client.

    Each attempt runs on a fresh thread and the fastest attempt's median is the reference.
    On a busy 2-core machine the first thread to run the model was several times slower for
    a while than later ones (OpenMP thread teams competing for cores); taking the best keeps
    the reference a floor, which makes the 1.2x target harder for us, never easier."""
    deadline = time.monotonic() + budget_s
    runs = [in_worker_thread(timed_runs, generator, new_tokens, repeats, deadline)
            for _ in range(attempts)]
    best = min(runs, key=statistics.median)
    prompts = [generator.prompt_ids(*character).shape[1] for character in CHARACTERS]
    return {"runs": len(best), "p50_s": statistics.median(best), "min_s": min(best),
            "attempt_p50s": [statistics.median(r) for r in runs],
            "threads": torch.get_num_threads(), "prompt_tokens": statistics.fmean(prompts),
            "new_tokens": new_tokens}


def _args(i: int, new_tokens: int) -> dict:
    body = payload(i, new_tokens)
    return {"name": body["name"], "description": body["description"], "new_tokens": new_tokens,
            "seed": i, "temperature": body["temperature"]}
