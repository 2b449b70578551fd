"""Serving benchmark: ours (bentoml serve) against the naive baseline, on this machine.

    python -m bench                      # full run on the served default -> BENCHMARKS.md
    python -m bench --quick --out /tmp/bq/BENCHMARKS.md   # smoke test on a tiny random model
    python -m bench --levels 1,8,32 --requests-per-level 16 --repeats 3 --soak 1000

Writes the report (--out), the plot and bench/results/latest.json; with an --out other than the
default (or --quick) the plot, JSON and server logs go beside the report instead, except in bench/
itself: there the plot is named after the report and the rest goes to bench/results/<name>/.
"""

import argparse
import json
import shlex
import signal
import sys
import tempfile
import threading
import time
from datetime import UTC, datetime
from pathlib import Path

import torch

from backstory.config import DEFAULT_MODEL
from backstory.weights import resolve_model
from bench.servers import ROOT
from bench.session import run_session

DEFAULT_OUT = ROOT / "BENCHMARKS.md"


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m bench", description=__doc__.splitlines()[0])
    p.add_argument("--quick", action="store_true", help="tiny model, levels 1,4, 32 tokens")
    p.add_argument("--model", type=Path, help="HF model or adapter folder (default: the served "
                   "default, the packaged base)")
    p.add_argument("--levels", help="concurrency levels, e.g. 1,8,32")
    p.add_argument("--requests-per-level", type=int, help="at least 2 x clients are sent")
    p.add_argument("--repeats", type=int, help="alternating ours/baseline repeats per level")
    p.add_argument("--new-tokens", type=int, help="tokens per backstory (default 200)")
    p.add_argument("--soak", type=int, default=0, metavar="N",
                   help="then N requests at 32 clients to ours only, tracking RSS")
    p.add_argument("--out", type=Path, help=f"report path (default {DEFAULT_OUT})")
    p.add_argument("--deadline", type=float, default=1800, help="max seconds per run")
    return p.parse_args(argv)


def defaults(args: argparse.Namespace) -> dict:
    """Quick mode stays well under two minutes on a loaded CPU; the full run measures."""
    if args.quick:
        return {"levels": [1, 4], "requests_per_level": 4, "repeats": 1, "new_tokens": 32,
                "bare_repeats": 3, "matmul_sizes": (512, 1024)}
    levels = [1, 8, 32] + ([64, 128] if torch.cuda.is_available() else [])
    return {"levels": levels, "requests_per_level": 16, "repeats": 3, "new_tokens": 200,
            "bare_repeats": 5, "matmul_sizes": (1024, 2048)}


def settings(args: argparse.Namespace) -> dict:
    cfg = defaults(args)
    if args.levels:
        cfg["levels"] = sorted({int(v) for v in args.levels.split(",") if v.strip()})
    for name in ("requests_per_level", "repeats", "new_tokens"):
        if getattr(args, name) is not None:
            cfg[name] = getattr(args, name)
    if min(cfg["levels"]) < 1 or cfg["repeats"] < 1 or cfg["new_tokens"] < 1:
        raise SystemExit("levels, repeats and new tokens must be at least 1")
    quick_out = Path(tempfile.gettempdir()) / "backstory-bench-quick" / "BENCHMARKS.md"
    out = (args.out or (quick_out if args.quick else DEFAULT_OUT)).resolve()
    beside = out.parent if out != DEFAULT_OUT else None
    # Another report in bench/ (bench/soak.md) gets its own plot and keeps its raw results out
    # of the tree: it once overwrote the main report's plot.
    in_bench = beside == ROOT / "bench"
    plot = f"{out.stem}.png" if in_bench else "throughput.png"
    results_dir = ROOT / "bench" / "results" / out.stem if in_bench else beside
    cfg.update(out=out, plot=(beside or ROOT / "bench") / plot,
               results_dir=results_dir or ROOT / "bench" / "results", soak=args.soak,
               deadline_s=args.deadline)
    return cfg


def log(message: str) -> None:
    print(f"[bench {time.strftime('%H:%M:%S')}] {message}", flush=True)


def stop_on_sigterm() -> None:
    """SIGTERM (a CI job cancelled, `timeout`, `kill`) unwinds like Ctrl-C: the servers run in
    their own process groups, so only our exit stack stops them, and Python's default SIGTERM
    exit skips it."""
    if threading.current_thread() is threading.main_thread():
        signal.signal(signal.SIGTERM, lambda signum, frame: sys.exit(128 + signum))


def main(argv: list[str] | None = None) -> int:
    stop_on_sigterm()
    args = parse_args(argv)
    cfg = settings(args)
    with tempfile.TemporaryDirectory(prefix="bench-") as tmp:
        model = args.model or (None if args.quick else resolve_model(DEFAULT_MODEL))
        if model is None:
            from bench.tiny import make_tiny_model  # the test suite's random llama

            model = make_tiny_model(Path(tmp) / "tiny-model")
        model = Path(model).resolve()
        if not any((model / f).exists() for f in ("config.json", "adapter_config.json")):
            log(f"no model at {model} (train one first, or pass --model DIR)")
            return 2
        command = shlex.join(["python", "-m", "bench", *(sys.argv[1:] if argv is None else argv)])
        results = run_session(model, cfg, log)
        results.update(date=datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC"), command=command,
                       quick=args.quick)
    write_outputs(results, cfg)
    errors = sum(sum(lv["errors"].values()) for lv in results["levels"])
    log(f"report: {cfg['out']}  ({errors} errors)")
    return 0


def write_outputs(results: dict, cfg: dict) -> None:
    from bench.plot import write_plot
    from bench.report import write_report

    results["plot_path"] = str(cfg["plot"])
    write_plot(results, cfg["plot"])
    write_report(results, cfg["out"])
    cfg["results_dir"].mkdir(parents=True, exist_ok=True)
    (cfg["results_dir"] / "latest.json").write_text(json.dumps(results, indent=1, default=str))
    for line in Path(cfg["out"]).read_text().splitlines():
        if line.startswith("- ") and line[2] in "✅❌➖":
            log(line[2:])


if __name__ == "__main__":
    sys.exit(main())
