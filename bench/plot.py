"""The plot committed next to BENCHMARKS.md: throughput and p95 latency vs concurrency."""

from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # no display on servers and in CI
import matplotlib.pyplot as plt  # noqa: E402

SERIES = (("ours", "Ours (BentoML, batched)", "tab:blue"),
          ("baseline", "Baseline (naive FastAPI)", "tab:gray"),
          ("llama.cpp", "llama.cpp (same weights, Q4_1, one slot)", "tab:orange"))


def write_plot(results: dict, path: Path) -> None:
    levels = [lv["level"] for lv in results["levels"]]
    fig, (top, bottom) = plt.subplots(2, 1, figsize=(7, 7), sharex=True)
    for name, label, color in SERIES:
        if any(name not in lv["summary"] for lv in results["levels"]):
            continue  # the llama.cpp anchor is optional
        summaries = [lv["summary"][name] for lv in results["levels"]]
        top.plot(levels, [s["backstories_per_s"] for s in summaries], "o-", color=color,
                 label=label)
        bottom.plot(levels, [s["p95_s"] for s in summaries], "o-", color=color, label=label)
    top.set_ylabel("backstories / s")
    top.set_title(f"{results['plan']['new_tokens']} new tokens per backstory, "
                  f"model {results['model']['name']}")
    bottom.set_ylabel("p95 latency (s)")
    bottom.set_xlabel("concurrent clients")
    for ax in (top, bottom):
        ax.set_xscale("log", base=2)
        ax.set_xticks(levels, [str(x) for x in levels])
        ax.set_ylim(bottom=0)
        ax.grid(True, alpha=0.3)
        ax.legend()
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)
    plt.close(fig)
