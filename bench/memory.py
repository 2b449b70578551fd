"""Server memory: find the model-service worker and sample resident memory while load runs.

`bentoml serve` is a supervisor: the model lives in a worker process started with
`--service-name backstory-model`, a child (or grandchild) of the process we started. Its RSS is
what matters for "does it fit in 1 GB"; the gateway worker and supervisor are reported apart.
"""

import threading
from collections.abc import Callable

import psutil

Finder = Callable[[], psutil.Process | None]


def find_worker(parent_pid: int, service_name: str = "backstory-model") -> psutil.Process | None:
    """The child process whose command line names `service_name`, or None."""
    try:
        children = psutil.Process(parent_pid).children(recursive=True)
    except psutil.NoSuchProcess:
        return None
    for child in children:
        try:
            cmdline = child.cmdline()
        except psutil.Error:
            continue
        if service_name in cmdline or any(a.endswith(service_name) for a in cmdline):
            return child
    return None


def rss(process: psutil.Process | None) -> int | None:
    try:
        return process.memory_info().rss if process else None
    except psutil.Error:
        return None


class RssMonitor:
    """Samples each named process's RSS every `interval_s` on a daemon thread and keeps the
    maximum since the last `take_peaks()`: the peak during a run, not a before/after snapshot.
    A finder is re-run when its process is gone (BentoML restarts a dead worker)."""

    def __init__(self, finders: dict[str, Finder], interval_s: float = 0.2):
        self.finders, self.interval_s = finders, interval_s
        self.procs: dict[str, psutil.Process | None] = {k: None for k in finders}
        self.peaks: dict[str, int] = {}
        self.lock, self.stopping = threading.Lock(), threading.Event()
        self.thread = threading.Thread(target=self._loop, name="rss-monitor", daemon=True)

    def __enter__(self) -> "RssMonitor":
        self.sample()
        self.thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self.stopping.set()
        self.thread.join(timeout=5)

    def current(self, name: str) -> int | None:
        proc = self.procs.get(name)
        if proc is None or not proc.is_running():
            proc = self.procs[name] = self.finders[name]()
        return rss(proc)

    def sample(self) -> None:
        for name in self.finders:
            value = self.current(name)
            if value is not None:
                with self.lock:
                    self.peaks[name] = max(self.peaks.get(name, 0), value)

    def cpu_seconds(self) -> float:
        """CPU time the named processes have used so far, all together."""
        total = 0.0
        for name in self.finders:
            self.current(name)  # re-finds a restarted worker
            try:
                times = self.procs[name].cpu_times() if self.procs[name] else None
            except psutil.Error:
                times = None
            total += times.user + times.system if times else 0.0
        return total

    def take_peaks(self) -> dict[str, int]:
        """The peaks since the last call, then start over from the current values."""
        self.sample()
        with self.lock:
            peaks, self.peaks = self.peaks, {}
        self.sample()
        return peaks

    def _loop(self) -> None:
        while not self.stopping.wait(self.interval_s):
            self.sample()
