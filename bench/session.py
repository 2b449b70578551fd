"""One bench session: both servers up side by side on free ports, warm-up, the in-process
references (bare generate, matmul FLOP/s), every level, the optional soak; then both stopped."""

import os
import sys
from contextlib import ExitStack
from dataclasses import asdict
from pathlib import Path

import httpx
import psutil

from backstory.config import Settings
from bench.ceiling import bare_generate, in_worker_thread, matmul_flops, model_flops
from bench.machine import describe
from bench.memory import RssMonitor, find_worker
from bench.naive import NaiveGenerator
from bench.runner import Log, Plan, measure_level, soak, warm_up
from bench.servers import bentoml_command, free_port, spawned, wait_ready

READY_DEADLINE_S = 300  # model load on a busy CPU can take a while; a dead server fails sooner


def server_env(model: Path, levels: list[int]) -> dict[str, str]:
    """Our server's settings: the model, any BACKSTORY_* already exported (they reach both
    servers), and an admission limit of at least the top level. The model service answers 429
    past BACKSTORY_MAX_CONCURRENCY (64 by default), which would measure the limit, not the
    server; an exported value wins."""
    env = {k: v for k, v in os.environ.items() if k.startswith("BACKSTORY_")}
    env["BACKSTORY_MODEL"] = str(model)
    if max(levels) > Settings().max_concurrency and "BACKSTORY_MAX_CONCURRENCY" not in env:
        env["BACKSTORY_MAX_CONCURRENCY"] = str(max(levels))
    return env


def start_servers(stack: ExitStack, model: Path, logs: Path,
                  env: dict[str, str]) -> tuple[dict, dict]:
    """Start ours and the baseline together (they load their models in parallel), then wait for
    both. Both live until the stack closes, which kills their process groups."""
    logs.mkdir(parents=True, exist_ok=True)
    ports = [free_port()]
    while len(ports) < 2:  # two free ports, distinct (bounded: the OS rotates ephemeral ports)
        port = free_port()
        ports += [port] if port not in ports else []
    ours_cmd = bentoml_command(ports[0])
    base_cmd = [sys.executable, "-m", "bench.baseline", "--model", str(model),
                "--port", str(ports[1])]
    procs = {
        "ours": stack.enter_context(spawned(ours_cmd, env, logs / "bentoml-serve.log")),
        "baseline": stack.enter_context(spawned(base_cmd, None, logs / "baseline.log")),
    }
    urls = {name: f"http://127.0.0.1:{port}" for name, port in zip(procs, ports)}
    for name, proc in procs.items():
        wait_ready(f"{urls[name]}/readyz", proc, READY_DEADLINE_S)
    return urls, procs


def model_info(url: str) -> dict:
    try:
        return httpx.get(f"{url}/status", timeout=30).json()
    except (httpx.HTTPError, ValueError):
        return {}


def run_session(model: Path, cfg: dict, log: Log) -> dict:
    plan = Plan(cfg["levels"], cfg["requests_per_level"], cfg["repeats"], cfg["new_tokens"],
                deadline_s=cfg["deadline_s"])
    machine = describe()
    with ExitStack() as stack:
        log(f"starting both servers on {model}")
        env = server_env(model, plan.levels)
        urls, procs = start_servers(stack, model, cfg["results_dir"] / "logs", env)
        finders = {"ours": lambda: find_worker(procs["ours"].pid),
                   "baseline": lambda: psutil.Process(procs["baseline"].pid)}
        monitor = stack.enter_context(RssMonitor(finders))
        info, idle = model_info(urls["ours"]), {n: monitor.current(n) for n in finders}
        log(f"ready: ours {urls['ours']}, baseline {urls['baseline']}; warming up")
        warm_up(urls, monitor, plan, log)
        generator = NaiveGenerator(str(model))
        bare = bare_generate(generator, plan.new_tokens, cfg["bare_repeats"])
        attempts = ", ".join(f"{t * 1000:.0f}" for t in bare["attempt_p50s"])
        log(f"bare generate() at batch 1: p50 {bare['p50_s'] * 1000:.0f} ms "
            f"(best of attempts: {attempts} ms)")
        if bare["prompt_tokens"] + plan.new_tokens > generator.context:
            log(f"warning: prompt + {plan.new_tokens} tokens exceeds the context "
                f"({generator.context}); requests get fewer tokens")
        dtype = generator.model.dtype
        matmul = in_worker_thread(matmul_flops, cfg["matmul_sizes"], device=generator.device,
                                  dtype=dtype)
        flops = model_flops(generator.model, bare["prompt_tokens"], plan.new_tokens)
        context, parameters = generator.context, flops.parameters
        del generator
        levels = [measure_level(urls, monitor, plan, lv, log) for lv in plan.levels]
        soaked = soak(urls["ours"], monitor, plan, cfg["soak"], 32, log) if cfg["soak"] else None
    return {
        "machine": machine, "plan": {**asdict(plan), "bare_repeats": cfg["bare_repeats"]},
        "model": {"path": str(model), "name": model.name, "context": context,
                  "parameters": parameters, "device": info.get("device", "?"), "status": info},
        "server_env": env, "idle_rss_bytes": idle, "bare": bare, "matmul_flops": matmul,
        "matmul_dtype": str(dtype).removeprefix("torch."), "flops": asdict(flops),
        "levels": levels, "soak": soaked,
    }
