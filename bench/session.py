"""One bench session: the servers up side by side on free ports (ours, the baseline, and the
llama.cpp anchor where it is installed), warm-up, the in-process references (bare generate,
matmul FLOP/s), every level, the optional soak; then all stopped."""

import os
import sys
from collections.abc import Callable
from contextlib import ExitStack
from dataclasses import asdict
from pathlib import Path

import httpx
import psutil

from backstory.config import Settings
from bench.anchor import available, runs_on
from bench.ceiling import bare_generate, in_worker_thread, matmul_flops, model_flops
from bench.machine import describe
from bench.memory import RssMonitor, find_worker
from bench.naive import NaiveGenerator
from bench.runner import ANCHOR, Log, Plan, measure_level, soak, warm_up
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


def free_ports(n: int) -> list[int]:
    """n distinct free ports (bounded: the OS rotates ephemeral ports)."""
    ports: list[int] = []
    while len(ports) < n:
        port = free_port()
        ports += [port] if port not in ports else []
    return ports


def anchor_skipped(model: Path) -> str | None:
    """Why the llama.cpp anchor does not run, or None when it does: it runs the packaged GGUF
    file (with our adapter, when the model is one on it), so it is an anchor only when the bench
    measures those weights."""
    if not runs_on(model):
        return f"skipped: it runs the packaged base's GGUF file, and the model is {model.name}"
    return available()


def start_servers(stack: ExitStack, model: Path, logs: Path, env: dict[str, str],
                  anchor: bool = False) -> tuple[dict, dict]:
    """Start the servers together (they load their models in parallel), then wait for all.
    All live until the stack closes, which kills their process groups."""
    logs.mkdir(parents=True, exist_ok=True)
    ports = free_ports(3 if anchor else 2)
    local = [sys.executable, "-m"]
    model_args = ["--model", str(model)]
    commands = {
        "ours": (bentoml_command(ports[0]), env, "bentoml-serve.log"),
        "baseline": ([*local, "bench.baseline", *model_args, "--port", str(ports[1])], None,
                     "baseline.log"),
    }
    if anchor:
        commands[ANCHOR] = ([*local, "bench.anchor", *model_args, "--port", str(ports[2])],
                            None, "anchor.log")
    procs = {name: stack.enter_context(spawned(cmd, cmd_env, logs / log_name))
             for name, (cmd, cmd_env, log_name) in commands.items()}
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
    skipped = anchor_skipped(model)
    with ExitStack() as stack:
        log(f"llama.cpp anchor: {skipped}" if skipped else "llama.cpp anchor: installed")
        log(f"starting the servers on {model}")
        env = server_env(model, plan.levels)
        urls, procs = start_servers(stack, model, cfg["results_dir"] / "logs", env,
                                    anchor=not skipped)
        finders = {"ours": lambda: find_worker(procs["ours"].pid)}
        finders |= {n: _process(p.pid) for n, p in procs.items() if n != "ours"}
        monitor = stack.enter_context(RssMonitor(finders))
        info, idle = model_info(urls["ours"]), {n: monitor.current(n) for n in finders}
        anchor = {"skipped": skipped, "status": None if skipped else model_info(urls[ANCHOR])}
        log("ready: " + ", ".join(f"{n} {u}" for n, u in urls.items()) + "; warming up")
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
        "levels": levels, "soak": soaked, "anchor": anchor,
    }


def _process(pid: int) -> Callable[[], psutil.Process]:
    return lambda: psutil.Process(pid)
