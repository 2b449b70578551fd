"""The serving benchmark harness: its statistics, and a quick end-to-end run that must report.

The quick run checks that the harness runs both servers and writes a complete report, not how
fast anything is (numbers from a tiny random model on a shared CI machine mean nothing)."""

import contextlib
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from bench.load import _on_event
from bench.stats import RequestResult, percentile, spread, summarize

ROOT = Path(__file__).resolve().parent.parent


def test_percentile_interpolates_like_numpy():
    values = [5.0, 1.0, 4.0, 2.0, 3.0]
    assert percentile(values, 0) == 1.0
    assert percentile(values, 50) == 3.0
    assert percentile(values, 100) == 5.0
    assert percentile(values, 95) == pytest.approx(4.8)
    assert percentile([1.0, 2.0], 99) == pytest.approx(1.99)
    assert percentile([7.0], 99) == 7.0
    assert percentile([], 50) is None
    with pytest.raises(ValueError):
        percentile([1.0], 101)


def test_summarize_counts_errors_and_unsent_requests_apart_from_latency():
    results = [RequestResult(1.0, tokens=10, ttft_s=0.1, ttft_gen_s=0.2),
               RequestResult(3.0, tokens=10, ttft_s=0.3, ttft_gen_s=0.4),
               RequestResult(99.0, error="HTTP 500: boom")]
    s = summarize(results, wall_s=4.0, server="ours", route="stream", concurrency=2, planned=4)
    assert (s.requests, s.ok, s.errors) == (4, 2, 2)
    assert s.backstories_per_s == pytest.approx(0.5)
    assert s.tokens_per_s == pytest.approx(5.0)
    assert s.p50_s == pytest.approx(2.0)  # the failed request's 99 s is not a latency
    assert s.ttft_mean_s == pytest.approx(0.2)
    assert s.ttft_gen_p50_s == pytest.approx(0.3)
    assert "not sent before the run deadline" in s.error_samples


def test_spread_ignores_missing_values():
    assert spread([3.0, 1.0, 2.0, None]) == {"min": 1.0, "median": 2.0, "max": 3.0}
    assert spread([]) == {"min": None, "median": None, "max": None}


def test_sse_opener_event_is_not_the_first_generated_token():
    r = RequestResult(0.0, error="stream ended without a done event")
    assert not _on_event(r, "token", {"text": "Aldric"}, "Aldric", started=0.0)
    assert r.ttft_s is not None and r.ttft_gen_s is None
    assert not _on_event(r, "token", {"text": " rode"}, "Aldric", started=0.0)
    assert r.ttft_gen_s is not None and r.ttft_gen_s >= r.ttft_s
    assert _on_event(r, "done", {"tokens": 7}, "Aldric", started=0.0)
    assert (r.tokens, r.error) == (7, None)


def run_bench(*args: str, timeout: float = 420) -> None:
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "BENTOML_DO_NOT_TRACK": "true",
           "TOKENIZERS_PARALLELISM": "false"}
    proc = subprocess.run([sys.executable, "-m", *args], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=timeout)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]


LEVERS = ("engine", "engine_1thread", "engine_bf16", "engine_int8", "engine_scheduler",
          "engine_scheduler_transformers", "engine_scheduler_int8", "generate", "static")


def test_levers_are_each_measured_and_reported(tiny_model, tmp_path):
    out = tmp_path / "levers.md"
    run_bench("bench.levers", "--model", str(tiny_model), "--batches", "1,2", "--new-tokens", "4",
              "--repeats", "1", "--levers", ",".join(LEVERS), "--out", str(out), timeout=180)
    rows = json.loads(out.with_suffix(".json").read_text())["results"]
    assert [(r["lever"], r["batch"]) for r in rows] == [(lever, b) for lever in LEVERS
                                                        for b in (1, 2)]
    assert all("error" not in r and r["tokens_per_s"] > 0 for r in rows), rows
    report = out.read_text()
    assert "## Machine" in report and "| engine | 2 |" in report and "x engine |" in report
    assert "x generate |" in report  # static against plain generate()


@pytest.mark.slow
def test_sweep_serves_each_value_and_reports(tiny_model, tmp_path):
    out = tmp_path / "sweep.md"
    run_bench("bench.sweep", "--model", str(tiny_model), "--setting", "max_batch_size",
              "--values", "2", "--clients", "1,2", "--repeats", "1", "--new-tokens", "4",
              "--out", str(out), timeout=240)
    rows = json.loads(out.with_suffix(".json").read_text())["rows"]
    assert [(r["value"], r["clients"]) for r in rows] == [("2", 1), ("2", 2)]
    assert all(r["errors"] == 0 and r["tokens_per_s"] > 0 for r in rows), rows
    assert "| 2 | 1 |" in out.read_text() and "| 2 | 2 |" in out.read_text()


@pytest.mark.slow
def test_sigterm_stops_the_bench_and_its_servers(tmp_path):
    """The servers run in their own process groups: a SIGTERM to the bench must still stop them
    (they used to outlive it, holding ports and memory)."""
    import psutil

    log = tmp_path / "bench.log"
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "BENTOML_DO_NOT_TRACK": "true"}
    with open(log, "wb") as out:
        proc = subprocess.Popen([sys.executable, "-m", "bench", "--quick", "--out",
                                 str(tmp_path / "BENCH.md")], cwd=ROOT, env=env, stdout=out,
                                stderr=subprocess.STDOUT, start_new_session=True)
    servers: list[psutil.Process] = []
    try:
        deadline = time.monotonic() + 300
        while "ready:" not in log.read_text(errors="replace"):
            assert proc.poll() is None and time.monotonic() < deadline, log.read_text()[-2000:]
            time.sleep(0.5)
        servers = psutil.Process(proc.pid).children(recursive=True)
        assert servers
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=120) == 128 + signal.SIGTERM
        gone, alive = psutil.wait_procs(servers, timeout=30)
        assert not alive, [p.cmdline() for p in alive]
    finally:
        if proc.poll() is None:
            proc.kill()
        for server in servers:
            with contextlib.suppress(psutil.NoSuchProcess):
                server.kill()


def test_quick_bench_runs_and_reports_both_servers(tmp_path):
    out = tmp_path / "BENCH.md"
    run_bench("bench", "--quick", "--out", str(out))
    report = out.read_text()
    results = json.loads((tmp_path / "latest.json").read_text())
    assert (tmp_path / "throughput.png").stat().st_size > 1000
    assert [lv["level"] for lv in results["levels"]] == [1, 4]
    for lv in results["levels"]:
        assert set(lv["summary"]) == {"ours", "baseline", "ours_stream"}
        assert all(n == 0 for n in lv["errors"].values()), lv["error_samples"]
        assert lv["ratios"]["throughput"]["median"] > 0
        assert lv["summary"]["ours_stream"]["ttft_p50_s"] > 0
        assert lv["rss_bytes"]["ours"] > 0 and lv["rss_bytes"]["baseline"] > 0
        for server in ("ours", "baseline"):
            assert f"| {lv['level']} | {server} |" in report
    assert results["bare"]["p50_s"] > 0 and results["flops"]["flops_per_token"] > 0
    for section in ("## Machine", "## Results", "## Compute ceiling", "## Memory", "## Targets",
                    "ours/baseline"):
        assert section in report
    assert report.count("- ✅") + report.count("- ❌") + report.count("- ➖") == 6


def test_settle_waits_while_a_server_still_computes_and_not_once_it_is_idle():
    """The naive baseline goes on computing after its clients time out; the next server must not
    be measured against that leftover work (bench/runner.py: settle)."""
    import psutil

    from bench.memory import RssMonitor
    from bench.runner import settle

    busy = subprocess.Popen([sys.executable, "-c", "while True: pass"])
    idle = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        procs = {"busy": psutil.Process(busy.pid), "idle": psutil.Process(idle.pid)}
        with RssMonitor({"busy": lambda: procs["busy"]}) as monitor:
            assert settle(monitor, limit_s=3) >= 3  # gave up at its limit, still busy
        with RssMonitor({"idle": lambda: procs["idle"]}) as monitor:
            assert settle(monitor, limit_s=30) < 3  # one quiet second is enough
    finally:
        busy.kill(), idle.kill()
        busy.wait(), idle.wait()
