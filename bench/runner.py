"""The measurement protocol: all servers stay up, and each repeat of each level measures ours,
then the baseline, then the llama.cpp anchor when it runs, back to back (ours, baseline,
llama.cpp, ours, ...), so slow drift of the machine (thermal, background jobs) hits all alike
and the per-repeat ratios cancel it. After each round, our stream route runs at the same
concurrency for time to first token."""

import statistics
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, fields

from bench import load
from bench.fmt import ANCHOR
from bench.memory import RssMonitor
from bench.stats import LoadResult, spread

Log = Callable[[str], None]
SERVERS = ("ours", "baseline", ANCHOR)  # each on the generate route, in this order


@dataclass
class Plan:
    levels: list[int]
    requests_per_level: int
    repeats: int
    new_tokens: int
    timeout_s: float = 600  # one request
    deadline_s: float = 1800  # one run: no request starts after this

    def requests(self, level: int) -> int:
        """At least two requests per worker, so a level measures more than one wave."""
        return max(self.requests_per_level, 2 * level)


def key(server: str, route: str) -> str:
    return server if route == "generate" else f"{server}_{route}"


def runs(urls: dict[str, str]) -> list[tuple[str, str]]:
    """(server, route) in the order measured: every server up on generate, then our stream."""
    return [(s, "generate") for s in SERVERS if s in urls] + [("ours", "stream")]


def settle(monitor: RssMonitor, limit_s: float = 900, busy_cores: float = 0.2) -> float:
    """Wait until no server is still computing; the seconds waited. The naive baseline does not
    stop a generate() whose client timed out (at 32 clients on the 135M base every request did),
    and its leftover work would be measured as the next server's slowness."""
    start = time.monotonic()
    while time.monotonic() - start < limit_s:
        before = monitor.cpu_seconds()
        time.sleep(1)
        if monitor.cpu_seconds() - before < busy_cores:
            break
    return time.monotonic() - start


def one_run(urls: dict[str, str], monitor: RssMonitor, plan: Plan, level: int, server: str,
            route: str, requests: int | None = None) -> LoadResult:
    waited = settle(monitor)
    monitor.take_peaks()
    result = load.run(urls[server], level, requests or plan.requests(level), plan.new_tokens,
                      route=route, server=server, timeout_s=plan.timeout_s,
                      deadline_s=plan.deadline_s)
    result.max_rss_bytes = monitor.take_peaks().get(server)
    result.settle_s = round(waited, 1)
    return result


def warm_up(urls: dict[str, str], monitor: RssMonitor, plan: Plan, log: Log) -> None:
    """Compile paths, fill caches and open connections before anything is timed."""
    level = min(4, max(plan.levels))
    for server, route in runs(urls):
        result = one_run(urls, monitor, plan, level, server, route, requests=level)
        log(f"warm-up {key(server, route)}: {result.ok} ok, {result.errors} errors")


def measure_level(urls: dict[str, str], monitor: RssMonitor, plan: Plan, level: int,
                  log: Log) -> dict:
    rounds: list[dict[str, LoadResult]] = []
    for repeat in range(plan.repeats):
        row = {}
        for server, route in runs(urls):
            result = row[key(server, route)] = one_run(urls, monitor, plan, level, server, route)
            log(f"level {level} repeat {repeat + 1}/{plan.repeats} {key(server, route)}: "
                f"{result.backstories_per_s:.2f} backstories/s, {result.tokens_per_s:.0f} tok/s, "
                f"p50 {_ms(result.p50_s)}, {result.errors} errors"
                + (f" (after {result.settle_s:.0f} s for the servers to go idle)"
                   if result.settle_s > 2 else ""))
        rounds.append(row)
    return aggregate(level, plan.requests(level), rounds)


def aggregate(level: int, requests: int, rounds: list[dict[str, LoadResult]]) -> dict:
    """Medians over repeats per server, ratios ours/baseline and ours/llama.cpp (when it ran)
    per repeat (min/median/max), the largest RSS seen during the level and all errors."""
    names = list(rounds[0])
    rss = {"ours": max((r[n].max_rss_bytes or 0 for r in rounds for n in names
                        if n.startswith("ours")), default=0)}
    rss |= {n: max(r[n].max_rss_bytes or 0 for r in rounds) for n in SERVERS[1:] if n in names}
    out = {
        "level": level, "requests": requests,
        "summary": {n: _medians([r[n] for r in rounds]) for n in names},
        "ratios": ratios(rounds, "baseline"),
        "rss_bytes": rss,
        "errors": {n: sum(r[n].errors for r in rounds) for n in names},
        "error_samples": sorted({e for r in rounds for n in names for e in r[n].error_samples}),
        "runs": [{n: asdict(res) for n, res in r.items()} for r in rounds],
    }
    if ANCHOR in names:
        out["anchor_ratios"] = ratios(rounds, ANCHOR)
    return out


def ratios(rounds: list[dict[str, LoadResult]], other: str) -> dict:
    """ours/other per repeat, spread over repeats: throughput, tokens/s and p50 latency."""
    def ratio(metric: str) -> dict:
        pairs = [(getattr(r["ours"], metric), getattr(r[other], metric)) for r in rounds]
        return spread([a / b for a, b in pairs if a and b])

    return {"throughput": ratio("backstories_per_s"), "tokens_per_s": ratio("tokens_per_s"),
            "p50_latency": ratio("p50_s")}


def _medians(results: list[LoadResult]) -> dict:
    out = {}
    for f in fields(LoadResult):
        values = [getattr(r, f.name) for r in results]
        numbers = [v for v in values if isinstance(v, int | float) and not isinstance(v, bool)]
        out[f.name] = statistics.median(numbers) if numbers else values[0]
    out["errors"] = sum(r.errors for r in results)
    return out


def soak(url: str, monitor: RssMonitor, plan: Plan, requests: int, concurrency: int,
         log: Log, every: int = 100) -> dict:
    """Ours only, one long run; the model worker's RSS before, every `every` answers, after.
    Growth is measured from the first sample after `every` requests (allocator pools and
    caches fill during the first batches) to the end."""
    samples = [{"requests": 0, "rss_bytes": monitor.current("ours")}]

    def on_done(n: int) -> None:
        if n % every == 0:
            samples.append({"requests": n, "rss_bytes": monitor.current("ours")})
            log(f"soak: {n}/{requests} answered, RSS {samples[-1]['rss_bytes'] / 2**20:.0f} MiB")

    result = load.run(url, concurrency, requests, plan.new_tokens, server="ours",
                      timeout_s=plan.timeout_s, deadline_s=plan.deadline_s, on_done=on_done)
    answered = result.ok + result.errors
    if samples[-1]["requests"] != answered:
        samples.append({"requests": answered, "rss_bytes": monitor.current("ours")})
    start = samples[1] if len(samples) > 2 else samples[0]
    growth = (samples[-1]["rss_bytes"] or 0) - (start["rss_bytes"] or 0)
    return {"requests": requests, "concurrency": concurrency, "samples": samples,
            "growth_bytes": growth, "growth_from": start["requests"],
            "growth_fraction": growth / start["rss_bytes"] if start["rss_bytes"] else None,
            "result": asdict(result)}


def _ms(seconds: float | None) -> str:
    return "n/a" if seconds is None else f"{seconds * 1000:.0f} ms"
