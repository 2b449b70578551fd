"""One serving setting swept over values: ours only, a fresh server per value.

    python -m bench.sweep --setting max_batch_size --values 8,16,32 --clients 32
    python -m bench.sweep --setting dtype --values float32,bfloat16 --clients 1,32

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

from backstory.config import DEFAULT_MODEL
from bench import load
from bench.machine import describe, markdown
from bench.servers import ROOT, bentoml_serve


def measure(setting: str, value: str, args: argparse.Namespace) -> list[dict]:
    """One server with the value; every client level in turn against it."""
    env = {f"BACKSTORY_{setting.upper()}": value,
           "BACKSTORY_MAX_CONCURRENCY": str(max(64, *args.clients))}
    rows = []
    with tempfile.TemporaryDirectory() as tmp, bentoml_serve(
            args.model, env=env, log_path=Path(tmp) / "serve.log") as url:
        load.run(url, 4, 4, args.new_tokens)  # warm-up: connections, allocator, first batches
        for clients in args.clients:
            requests = max(16, 2 * clients)
            runs = [load.run(url, clients, requests, args.new_tokens)
                    for _ in range(args.repeats)]
            rows.append({
                "value": value, "clients": clients, "requests": requests,
                "errors": sum(r.errors for r in runs),
                "error_samples": sorted({e for r in runs for e in r.error_samples})[:3],
                "tokens_per_s": statistics.median(r.tokens_per_s for r in runs),
                "p50_s": statistics.median(r.p50_s or 0 for r in runs),
                "p95_s": statistics.median(r.p95_s or 0 for r in runs),
                "runs": [asdict(r) for r in runs]})
    return rows


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.sweep", description=__doc__.splitlines()[0])
    p.add_argument("--setting", required=True, help="a backstory/config.py field")
    p.add_argument("--values", required=True, help="comma-separated")
    p.add_argument("--clients", default="32", help="comma-separated levels, e.g. 1,32")
    p.add_argument("--repeats", type=int, default=2)
    p.add_argument("--new-tokens", type=int, default=200)
    p.add_argument("--model", default=DEFAULT_MODEL)
    p.add_argument("--out", type=Path, help="report (default bench/sweep-<setting>.md)")
    args = p.parse_args(argv)
    machine = describe()
    rows = []
    args.clients = [int(c) for c in args.clients.split(",")]
    for value in args.values.split(","):
        start = time.monotonic()
        for row in measure(args.setting, value.strip(), args):
            rows.append(row)
            print(f"{args.setting}={row['value']} at {row['clients']} clients: "
                  f"{row['tokens_per_s']:.0f} tok/s, p50 {row['p50_s'] * 1000:.0f} ms, "
                  f"p95 {row['p95_s'] * 1000:.0f} ms, {row['errors']} errors "
                  f"{row['error_samples']} ({time.monotonic() - start:.0f} s)", flush=True)
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
             f"## Results ({sweep['new_tokens']} new tokens per request, medians of "
             f"{sweep['repeats']} runs, a fresh server per value)", "",
             f"| {sweep['setting']} | Clients | Tokens/s | p50 | p95 | Errors |",
             "|---|---|---|---|---|---|"]
    for r in sweep["rows"]:
        lines.append(f"| {r['value']} | {r['clients']} | {r['tokens_per_s']:,.0f} | "
                     f"{r['p50_s'] * 1000:,.0f} ms | {r['p95_s'] * 1000:,.0f} ms | {r['errors']} |")
    return lines


if __name__ == "__main__":
    raise SystemExit(main())
