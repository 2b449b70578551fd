"""The report's parts about the llama.cpp anchor (bench/anchor.py): its setup line, the ratio
table's columns ours/llama.cpp and issue 10's two targets against it. Each part is empty or
says "not run" when the anchor did not run, so a report without it reads as before."""

from pathlib import Path

from bench.fmt import ANCHOR, check, level, x

# Against llama.cpp on the same weights (issue 10): tokens/s at 1 client (0.8x is the goal),
# throughput at 32 clients.
ANCHOR_ONE, ANCHOR_ONE_GOAL, ANCHOR_MANY = 0.5, 0.8, 8.0


def anchor_setup(anchor: dict | None) -> list[str]:
    if anchor is None:  # results from before the anchor existed
        return []
    if anchor["skipped"]:
        return [f"- **llama.cpp** (anchor): not run, {anchor['skipped']}."]
    st = anchor["status"] or {}
    lora = (" with our adapter as a llama.cpp LoRA file, applied unmerged as ours does "
            "(bench/lora_gguf.py)," if st.get("lora") else "")
    return [f"- **llama.cpp** (anchor): `python -m bench.anchor`, llama-cpp-python "
            f"{st.get('llama_cpp_python', '?')} on the packaged GGUF file "
            f"`{Path(st.get('gguf', '?')).name}` (the weights ours converts),{lora} "
            f"{st.get('threads', '?')} threads, one request at a time (one slot, as llama.cpp's "
            "server with `-np 1`), the same prompt tokens and sampling settings (its "
            "repetition penalty sees the last 64 generated tokens), end-of-generation "
            "suppressed; `make bench-anchor` installs it."]


def ratio_table(r: dict) -> list[str]:
    """Ours against the baseline, and against llama.cpp when it ran (medians over repeats)."""
    anchor = any("anchor_ratios" in lv for lv in r["levels"])
    head = "| Clients | Throughput ours/baseline (min / median / max) | p50 latency ours/baseline "
    head += "(median) |" + (" Throughput ours/llama.cpp | Tokens/s ours/llama.cpp | p50 latency "
                            "ours/llama.cpp |" if anchor else "")
    out = [head, "|---|---|---|" + ("---|---|---|" if anchor else "")]
    for lv in r["levels"]:
        t, a = lv["ratios"]["throughput"], lv.get("anchor_ratios")
        row = (f"| {lv['level']} | {x(t['min'])} / {x(t['median'])} / {x(t['max'])} | "
               f"{x(lv['ratios']['p50_latency']['median'])} |")
        if anchor:
            row += "".join(f" {x(a[m]['median'] if a else None)} |"
                           for m in ("throughput", "tokens_per_s", "p50_latency"))
        out.append(row)
    return out


def anchor_targets(r: dict) -> list[str]:
    """The two targets against llama.cpp, when it ran: none otherwise."""
    if not any("anchor_ratios" in lv for lv in r["levels"]):
        return []
    one, many = level(r, 1), level(r, 32)

    def median(lv: dict | None, metric: str) -> float | None:
        return lv["anchor_ratios"][metric]["median"] if lv and "anchor_ratios" in lv else None

    def tps(lv: dict) -> str:
        return " vs ".join(f"{lv['summary'][n]['tokens_per_s']:.0f}" for n in ("ours", ANCHOR))

    t1, t32 = median(one, "tokens_per_s"), median(many, "throughput")
    return [check(None if t1 is None else t1 >= ANCHOR_ONE,
                  f"Tokens/s at 1 client ≥ {ANCHOR_ONE}x llama.cpp (goal {ANCHOR_ONE_GOAL}x): "
                  + (f"{x(t1)} ({tps(one)} tokens/s)" if t1 is not None else "not run")),
            check(None if t32 is None else t32 >= ANCHOR_MANY,
                  f"Throughput at 32 clients ≥ {ANCHOR_MANY:.0f}x llama.cpp: "
                  + (f"{x(t32)} ({tps(many)} tokens/s)" if t32 is not None else "not run"))]
