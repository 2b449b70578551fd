"""A description of the machine a benchmark ran on: numbers mean nothing without it."""

import os
import platform
import subprocess
from pathlib import Path

import psutil
import torch


def cpu_model() -> str:
    """The CPU's marketing name, from /proc/cpuinfo (Linux) or lscpu, else platform's guess."""
    cpuinfo = Path("/proc/cpuinfo")
    if cpuinfo.exists():
        for line in cpuinfo.read_text(errors="replace").splitlines():
            if line.lower().startswith("model name"):
                return line.split(":", 1)[1].strip()
    try:
        out = subprocess.run(["lscpu"], capture_output=True, text=True, timeout=5).stdout
        for line in out.splitlines():
            if line.startswith("Model name:"):
                return line.split(":", 1)[1].strip()
    except (OSError, subprocess.SubprocessError):
        pass
    return platform.processor() or platform.machine()


def describe() -> dict:
    gpu = torch.cuda.get_device_name(0) if torch.cuda.is_available() else None
    return {
        "cpu": cpu_model(),
        "logical_cores": os.cpu_count(),
        "physical_cores": psutil.cpu_count(logical=False),
        "ram_gib": round(psutil.virtual_memory().total / 2**30, 1),
        "torch": torch.__version__,
        "torch_threads": torch.get_num_threads(),
        "gpu": gpu,
        "python": platform.python_version(),
        "os": platform.platform(),
        # A busy machine (e.g. a training job) slows both servers; the ratio survives, the
        # absolute numbers do not.
        "load_average_at_start": [round(x, 2) for x in os.getloadavg()],
    }


def markdown(m: dict) -> list[str]:
    """The machine as Markdown list lines, for every report under bench/."""
    return [
        f"- CPU: {m['cpu']} ({m['logical_cores']} logical / {m['physical_cores']} physical "
        f"cores), {m['ram_gib']} GiB RAM", f"- GPU: {m['gpu'] or 'none'}",
        f"- torch {m['torch']} ({m['torch_threads']} threads in the bench process), "
        f"Python {m['python']}, {m['os']}",
        f"- Load average when the bench started: {', '.join(map(str, m['load_average_at_start']))}",
    ]
