"""The numbers of one load run: throughput, latency percentiles, time to first token, errors.

Percentiles interpolate linearly between order statistics (numpy's default), so a run of a few
dozen requests still gives a p99 between its two slowest requests rather than a jump to the max.
"""

import math
import statistics
from collections.abc import Sequence
from dataclasses import dataclass, field


@dataclass
class RequestResult:
    latency_s: float
    tokens: int = 0
    ttft_s: float | None = None  # first `token` event (stream route only)
    ttft_gen_s: float | None = None  # first `token` event with generated text (after the opener)
    error: str | None = None


@dataclass
class LoadResult:
    server: str
    route: str
    concurrency: int
    requests: int
    ok: int
    errors: int
    wall_s: float
    backstories_per_s: float
    tokens_per_s: float
    p50_s: float | None
    p95_s: float | None
    p99_s: float | None
    ttft_mean_s: float | None = None
    ttft_p50_s: float | None = None
    ttft_gen_p50_s: float | None = None
    error_samples: list[str] = field(default_factory=list)
    max_rss_bytes: int | None = None  # filled in by the runner from its RSS monitor
    settle_s: float = 0.0  # waited first for the servers to be idle (bench/runner.py: settle)


def percentile(values: Sequence[float], q: float) -> float | None:
    """The q-th percentile (0..100) with linear interpolation; None for no values."""
    if not values:
        return None
    if not 0 <= q <= 100:
        raise ValueError(f"percentile must be in [0, 100], not {q}")
    ordered = sorted(values)
    rank = (len(ordered) - 1) * q / 100
    lo, hi = math.floor(rank), math.ceil(rank)
    return ordered[lo] + (ordered[hi] - ordered[lo]) * (rank - lo)


def mean(values: Sequence[float]) -> float | None:
    return statistics.fmean(values) if values else None


def median(values: Sequence[float]) -> float | None:
    return statistics.median(values) if values else None


def summarize(results: Sequence[RequestResult], wall_s: float, server: str, route: str,
              concurrency: int, planned: int) -> LoadResult:
    """Throughput counts successful requests over the run's wall time (first send to last
    answer); latency and TTFT statistics ignore failed requests, which are counted instead.
    Requests never sent (the run hit its deadline) count as errors."""
    good = [r for r in results if r.error is None]
    bad = [r.error for r in results if r.error is not None]
    bad += ["not sent before the run deadline"] * max(0, planned - len(results))
    latencies = [r.latency_s for r in good]
    ttft = [r.ttft_s for r in good if r.ttft_s is not None]
    ttft_gen = [r.ttft_gen_s for r in good if r.ttft_gen_s is not None]
    wall = max(wall_s, 1e-9)
    return LoadResult(
        server=server, route=route, concurrency=concurrency, requests=planned, ok=len(good),
        errors=len(bad), wall_s=wall_s, backstories_per_s=len(good) / wall,
        tokens_per_s=sum(r.tokens for r in good) / wall,
        p50_s=percentile(latencies, 50), p95_s=percentile(latencies, 95),
        p99_s=percentile(latencies, 99), ttft_mean_s=mean(ttft), ttft_p50_s=percentile(ttft, 50),
        ttft_gen_p50_s=percentile(ttft_gen, 50), error_samples=sorted(set(bad))[:5])


def spread(values: Sequence[float]) -> dict[str, float | None]:
    """min / median / max of per-repeat values (the ratio ours/baseline over repeats)."""
    vals = [v for v in values if v is not None and math.isfinite(v)]
    if not vals:
        return {"min": None, "median": None, "max": None}
    return {"min": min(vals), "median": statistics.median(vals), "max": max(vals)}
