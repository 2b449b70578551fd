"""Start real servers as subprocesses, for the tests and the benchmarks.

Each server runs in its own process group on 127.0.0.1 and a free port; we poll its readiness URL
with a deadline and kill the whole group afterwards (a failed BentoML worker can leave
`bentoml serve` running without ever becoming ready).
"""

import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager, nullcontext
from pathlib import Path

import httpx

ROOT = Path(__file__).resolve().parent.parent
OFFLINE_ENV = {"HF_HUB_OFFLINE": "1", "BENTOML_DO_NOT_TRACK": "true",
               "TOKENIZERS_PARALLELISM": "false", "PYTHONUNBUFFERED": "1"}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_ready(url: str, proc: subprocess.Popen, deadline_s: float) -> None:
    deadline = time.monotonic() + deadline_s
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"server exited with {proc.returncode} before becoming ready")
        try:
            if httpx.get(url, timeout=2).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.25)
    raise TimeoutError(f"{url} not ready after {deadline_s:.0f} s")


def stop(proc: subprocess.Popen, grace_s: float = 10) -> None:
    """SIGTERM the process group, then SIGKILL whatever is left after the grace period."""
    for sig, wait in ((signal.SIGTERM, grace_s), (signal.SIGKILL, 5)):
        try:
            os.killpg(proc.pid, sig)
        except ProcessLookupError:
            return
        try:
            proc.wait(wait)
            return
        except subprocess.TimeoutExpired:
            continue


@contextmanager
def spawned(cmd: list[str], env: dict[str, str] | None = None,
            log_path: Path | None = None, cwd: Path = ROOT) -> Iterator[subprocess.Popen]:
    """The process in its own group, killed on exit; no readiness wait, so that a caller can
    start several servers and let them load their models at the same time."""
    with open(log_path, "wb") if log_path else nullcontext(subprocess.DEVNULL) as log:
        proc = subprocess.Popen(cmd, cwd=cwd, env={**os.environ, **OFFLINE_ENV, **(env or {})},
                                stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
        try:
            yield proc
        finally:
            stop(proc)


@contextmanager
def running(cmd: list[str], ready_url: str, env: dict[str, str] | None = None,
            log_path: Path | None = None, deadline_s: float = 180,
            cwd: Path = ROOT) -> Iterator[subprocess.Popen]:
    with spawned(cmd, env, log_path, cwd) as proc:
        wait_ready(ready_url, proc, deadline_s)
        yield proc


def bentoml_command(port: int, target: str = "service:Gateway") -> list[str]:
    return [sys.executable, "-m", "bentoml", "serve", target, "--host", "127.0.0.1",
            "--port", str(port)]


@contextmanager
def bentoml_serve(model: str, port: int | None = None, env: dict[str, str] | None = None,
                  log_path: Path | None = None, target: str = "service:Gateway") -> Iterator[str]:
    """`bentoml serve` of the whole stack on `model`; yields the base URL."""
    port = port or free_port()
    base = f"http://127.0.0.1:{port}"
    # A BENTOML_HOME of its own: servers that share one also share (and wipe at start-up) the
    # Prometheus multiprocess directory, so a second server would zero the first one's /metrics.
    with tempfile.TemporaryDirectory(prefix="bentoml-home-") as home, running(
            bentoml_command(port, target), f"{base}/readyz",
            {"BENTOML_HOME": home, "BACKSTORY_MODEL": model, **(env or {})}, log_path):
        yield base
