"""What the scheduler reports in `/metrics`, beside BentoML's own request metrics.

Names and units follow vLLM's (`vllm:time_to_first_token_seconds` is ours
`backstory_time_to_first_token_seconds`), so dashboards, alerts and autoscalers written for LLM
servers read them with a prefix changed. deploy/grafana-dashboard.json plots them and
deploy/k8s scales the model service on `backstory_num_requests_running`.

The metrics are made on first use, not at import: BentoML sets PROMETHEUS_MULTIPROC_DIR in the
worker after importing service.py, and a metric made before that would never reach /metrics.
"""

from dataclasses import dataclass
from functools import cache

# As exposed (a Counter `x` is scraped as `x_total`); tests and the dashboard check against these.
METRIC_NAMES = (
    "backstory_time_to_first_token_seconds", "backstory_time_per_output_token_seconds",
    "backstory_e2e_request_latency_seconds", "backstory_request_queue_time_seconds",
    "backstory_batch_size", "backstory_generation_tokens_total", "backstory_prompt_tokens_total",
    "backstory_request_success_total", "backstory_num_requests_running",
    "backstory_num_requests_waiting",
)
FINISH_REASONS = ("length", "stop", "cancelled", "error")
LATENCY_BUCKETS = (0.3, 0.5, 0.8, 1, 1.5, 2, 2.5, 5, 10, 15, 20, 30, 40, 50, 60, 120, 240, 480,
                   960)
TTFT_BUCKETS = (0.005, 0.01, 0.02, 0.04, 0.06, 0.08, 0.1, 0.15, 0.2, 0.3, 0.5, 0.75, 1, 2.5, 5,
                7.5, 10, 20, 40, 80)
TPOT_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.075, 0.1, 0.15, 0.2, 0.3, 0.4, 0.5, 0.75, 1, 2.5)
BATCH_BUCKETS = (1, 2, 4, 8, 12, 16, 24, 32, 48, 64, 128, 256)


@dataclass
class Timings:
    """One row's life, in time.monotonic() seconds; admitted/first None until they happen."""
    arrived: float
    admitted: float | None = None
    first_token: float | None = None


class Telemetry:
    def __init__(self):
        from prometheus_client import Counter, Gauge, Histogram

        def hist(name: str, doc: str, buckets) -> Histogram:
            return Histogram(f"backstory_{name}", doc, buckets=buckets)

        self.ttft = hist("time_to_first_token_seconds", "Time to first token.", TTFT_BUCKETS)
        self.tpot = hist("time_per_output_token_seconds", "Time per output token after the "
                         "first.", TPOT_BUCKETS)
        self.e2e = hist("e2e_request_latency_seconds", "Arrival to last token.",
                        LATENCY_BUCKETS)
        self.queue = hist("request_queue_time_seconds", "Arrival to joining the batch.",
                          LATENCY_BUCKETS)
        self.batch = hist("batch_size", "Rows in each decode step.", BATCH_BUCKETS)
        self.generated = Counter("backstory_generation_tokens", "Tokens generated.")
        self.prompt = Counter("backstory_prompt_tokens", "Prompt tokens prefilled.")
        self.finished = Counter("backstory_request_success", "Rows finished, by reason: length "
                                "(max_new_tokens), stop (end of text or a stop marker), "
                                "cancelled (the client left), error.", ["finished_reason"])
        # livesum: a multi-worker service reports the sum over its live workers.
        self.running = Gauge("backstory_num_requests_running", "Rows in the running batch.",
                             multiprocess_mode="livesum")
        self.waiting = Gauge("backstory_num_requests_waiting", "Rows waiting to join it.",
                             multiprocess_mode="livesum")

    def step(self, rows: int, waiting: int) -> None:
        self.batch.observe(rows)
        self.running.set(rows)
        self.waiting.set(waiting)

    def idle(self, waiting: int) -> None:
        self.running.set(0)
        self.waiting.set(waiting)

    def admitted(self, t: Timings, now: float, prompt_tokens: int) -> None:
        t.admitted = now
        self.queue.observe(now - t.arrived)
        self.prompt.inc(prompt_tokens)

    def first_token(self, t: Timings, now: float) -> None:
        t.first_token = now
        self.ttft.observe(now - t.arrived)

    def finish(self, t: Timings, now: float, tokens: int, reason: str) -> None:
        self.finished.labels(finished_reason=reason).inc()
        self.generated.inc(tokens)
        self.e2e.observe(now - t.arrived)
        if t.first_token is not None and tokens > 1:
            self.tpot.observe((now - t.first_token) / (tokens - 1))


@cache
def telemetry() -> Telemetry:
    """The process's metrics, made once (Prometheus refuses a name registered twice)."""
    return Telemetry()
