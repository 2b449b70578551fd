"""One serving setting swept over values: ours only, one level, a fresh server per value.

    python -m bench.sweep --setting max_batch_size --values 8,16,32 --clients 32
    python -m bench.sweep --setting batch_wait_ms --values 0,10,50 --clients 8

Each value: `bentoml serve` on the default model with BACKSTORY_<SETTING>=value, a warm-up, then
--repeats runs of max(16, 2 x clients) requests of exactly --new-tokens tokens. Medians go to
stdout and bench/sweep-<setting>.md (raw runs: bench/results/sweep-<setting>.json).
"""

import argparse
import json
import shlex
import statistics
import sys
import tempfile
import time
from dataclasses import asdict
from pathlib import Path

from bench import load
from bench.machine import describe, markdown
from bench.servers import ROOT, bentoml_serve


def measure(setting: str, value: str, args: argparse.Namespace) -> dict:
    env = {f"BACKSTORY_{setting.upper()}": value,
           "BACKSTORY_MAX_CONCURRENCY": str(max(64, args.clients))}
    requests = max(16, 2 * args.clients)
    with tempfile.TemporaryDirectory() as tmp, bentoml_serve(
            args.model, env=env, log_path=Path(tmp) / "serve.log") as url:
        load.run(url, 4, 4, args.new_tokens)  # warm-up: connections, allocator, first batches
        runs = [load.run(url, args.clients, requests, args.new_tokens)
                for _ in range(args.repeats)]
    errors = sum(r.errors for r in runs)
    if errors:
        print(f"  {errors} errors, e.g. {runs[0].error_samples[:2]}", flush=True)
    return {"value": value, "clients": args.clients, "requests": requests, "errors": errors,
            "tokens_per_s": statistics.median(r.tokens_per_s for r in runs),
            "p50_s": statistics.median(r.p50_s or 0 for r in runs),
            "p95_s": statistics.median(r.p95_s or 0 for r in runs),
            "runs": [asdict(r) for r in runs]}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.sweep", description=__doc__.splitlines()[0])
    p.add_argument("--setting", required=True, help="a backstory/config.py field")
    p.add_argument("--values", required=True, help="comma-separated")
    p.add_argument("--clients", type=int, default=32)
    p.add_argument("--repeats", type=int, default=2)
    p.add_argument("--new-tokens", type=int, default=200)
    p.add_argument("--model", default=str(ROOT / "models" / "backstory"))
    p.add_argument("--out", type=Path, help="report (default bench/sweep-<setting>.md)")
    args = p.parse_args(argv)
    machine = describe()
    rows = []
    for value in args.values.split(","):
        start = time.monotonic()
        rows.append(row := measure(args.setting, value.strip(), args))
        print(f"{args.setting}={row['value']}: {row['tokens_per_s']:.0f} tok/s, "
              f"p50 {row['p50_s'] * 1000:.0f} ms, p95 {row['p95_s'] * 1000:.0f} ms, "
              f"{row['errors']} errors ({time.monotonic() - start:.0f} s)", flush=True)
    out = args.out or ROOT / "bench" / f"sweep-{args.setting}.md"
    raw = (ROOT / "bench" / "results" / out.name if args.out is None else out).with_suffix(".json")
    raw.parent.mkdir(parents=True, exist_ok=True)
    sweep = {"setting": args.setting, "clients": args.clients, "new_tokens": args.new_tokens,
             "repeats": args.repeats, "machine": machine, "rows": rows,
             "command": shlex.join(["python", "-m", "bench.sweep", *sys.argv[1:]])}
    raw.write_text(json.dumps(sweep, indent=1))
    out.write_text("\n".join(report(sweep)) + "\n")
    return 0


def report(sweep: dict) -> list[str]:
    lines = [f"# Served stack, `{sweep['setting']}` swept", "",
             f"Date: {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}", "", "Command:", "",
             f"    {sweep['command']}", "", "## Machine", "", *markdown(sweep["machine"]), "",
             f"## Results ({sweep['clients']} clients, {sweep['new_tokens']} new tokens per "
             f"request, medians of {sweep['repeats']} runs, a fresh server per value)", "",
             f"| {sweep['setting']} | Tokens/s | p50 | p95 | Errors |", "|---|---|---|---|---|"]
    for r in sweep["rows"]:
        lines.append(f"| {r['value']} | {r['tokens_per_s']:,.0f} | {r['p50_s'] * 1000:,.0f} ms "
                     f"| {r['p95_s'] * 1000:,.0f} ms | {r['errors']} |")
    return lines


if __name__ == "__main__":
    raise SystemExit(main())
