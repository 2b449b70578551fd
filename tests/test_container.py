"""The container: `bentoml containerize` of the Bento (the recipe in deploy/docker) builds an image
that serves, with `docker run` on the host network, and drains a request in flight on SIGTERM.
The tiny model stands in for the default, as in test_bento.py. Needs a Docker engine (and root,
for debootstrap, the first time): skipped without one, except in CI (CI=1), where it fails."""

import json
import os
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import httpx
import pytest

from bench.servers import free_port

pytestmark = pytest.mark.slow
ROOT = Path(__file__).resolve().parent.parent
FORM = {"name": "Kaylon", "description": "An empire of androids."}
LONG = 400  # the largest max_new_tokens: a stream long enough to overlap the shutdown


def run(*cmd: str, env: dict[str, str] | None = None, timeout: float = 300,
        cwd: Path | str = ROOT) -> str:
    out = subprocess.run(cmd, cwd=cwd, env={**os.environ, **(env or {})}, capture_output=True,
                         text=True, timeout=timeout)
    assert out.returncode == 0, f"{cmd[:3]} failed:\n{out.stdout[-3000:]}\n{out.stderr[-3000:]}"
    return out.stdout


def docker_missing() -> str | None:
    """Why this machine cannot build and run the image, or None."""
    if shutil.which("docker") is None:
        return "no docker client"
    info = subprocess.run(["docker", "info"], capture_output=True, text=True, timeout=60)
    if info.returncode:
        return f"no Docker engine: {info.stderr.strip()[-300:]}"
    base = subprocess.run(["docker", "image", "inspect", "backstory-base:bookworm"],
                          capture_output=True)
    if base.returncode and (os.geteuid() != 0 or shutil.which("debootstrap") is None):
        return "the base image is missing and building it needs root and debootstrap"
    return None


@pytest.fixture(scope="module")
def image(tmp_path_factory, tiny_model) -> Iterator[str]:
    if reason := docker_missing():
        if os.environ.get("CI"):  # CI installs and starts Docker (.ci/run): this is a failure
            pytest.fail(f"Docker is required in CI: {reason}")
        pytest.skip(reason)
    started = time.monotonic()
    run("deploy/docker/base-image.sh", env={"PYTHON": sys.executable}, timeout=1500)
    print(f"\nbase images: {time.monotonic() - started:.0f} s")
    home = tmp_path_factory.mktemp("bentoml-home")
    env = {"BENTOML_HOME": str(home), "BENTOML_DO_NOT_TRACK": "true"}
    run(sys.executable, "-m", "backstory.store", "--model", str(tiny_model), env=env)
    tag = run(sys.executable, "-m", "bentoml", "build", "-o", "tag",
              env={**env, "BACKSTORY_MODEL": "backstory-model:latest"}).split("__tag__:")[-1]
    name = f"backstory-test:{tag.strip().split(':')[1]}"
    started = time.monotonic()
    # From the temp dir: BentoML 1.4.40 rejects a Dockerfile template outside the working
    # directory, and it reads ours from its copy of the Bento there (bentoml/BentoML#5566).
    run(sys.executable, "-m", "bentoml", "containerize", tag.strip(), "-t", name,
        "--opt", "network=host", env={**env, "DOCKER_BUILDKIT": "0"}, timeout=1500,
        cwd=tempfile.gettempdir())
    try:
        size = run("docker", "image", "inspect", "-f", "{{.Size}}", name).strip()
        print(f"image {name}: {int(size) / 1e6:.0f} MB, built in "
              f"{time.monotonic() - started:.0f} s")
        yield name
    finally:
        subprocess.run(["docker", "rmi", "-f", name], capture_output=True, timeout=120)


@contextmanager
def container(image: str, deadline_s: float = 180) -> Iterator[tuple[str, str]]:
    """The image serving on 127.0.0.1 and a free port; yields (container name, base URL)."""
    port = free_port()
    name = f"backstory-test-{port}"
    run("docker", "run", "-d", "--name", name, "--network", "host", image,
        "serve", "--host", "127.0.0.1", "--port", str(port))
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + deadline_s
        while True:
            try:
                if httpx.get(f"{url}/readyz", timeout=2).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            state = run("docker", "inspect", "-f", "{{.State.Status}}", name).strip()
            assert state == "running", f"container {state}:\n{logs(name)}"
            assert time.monotonic() < deadline, f"not ready in {deadline_s} s:\n{logs(name)}"
            time.sleep(0.5)
        yield name, url
    finally:
        subprocess.run(["docker", "rm", "-f", name], capture_output=True, timeout=120)


def logs(name: str) -> str:
    out = subprocess.run(["docker", "logs", "--tail", "60", name], capture_output=True, text=True)
    return out.stdout + out.stderr


def events(response: httpx.Response) -> Iterator[tuple[str, dict, float]]:
    """Server-Sent Events as (event, data, arrival time)."""
    event = None
    for line in response.iter_lines():
        if line.startswith("event: "):
            event = line.removeprefix("event: ")
        elif line.startswith("data: "):
            yield event, json.loads(line.removeprefix("data: ")), time.monotonic()


def test_image_serves_the_api_and_the_ui(image):
    with container(image) as (name, url):
        # The recipe's torch is the CPU wheel, not PyPI's CUDA build.
        version = run("docker", "exec", name, "python", "-c",
                      "import torch; print(torch.__version__)")
        assert version.strip().endswith("+cpu")
        r = httpx.post(f"{url}/api/generate", data={**FORM, "max_new_tokens": 16}, timeout=120)
        assert r.status_code == 200, r.text
        assert r.json()["backstory"].startswith("Kaylon") and r.json()["tokens"] == 16
        with httpx.stream("GET", f"{url}/api/stream", timeout=120,
                          params={**FORM, "max_new_tokens": 24, "min_new_tokens": 24}) as r:
            assert r.status_code == 200
            got = list(events(r))
        assert {e for e, _, _ in got[:-1]} == {"token"} and got[-1][0] == "done"
        assert got[-1][1]["tokens"] == 24 and got[-1][1]["backstory"].startswith("Kaylon")
        status = httpx.get(f"{url}/status", timeout=30)
        assert status.status_code == 200
        assert status.json()["status"] == "ok" and status.json()["device"] == "cpu"
        assert "<form" in httpx.get(url, timeout=30).text


def test_sigterm_lets_the_request_in_flight_finish(image):
    with container(image) as (name, url):
        stopped: dict[str, float] = {}

        def stop() -> None:  # what `docker stop` and Kubernetes do: SIGTERM, SIGKILL 30 s later
            stopped["at"] = time.monotonic()
            subprocess.run(["docker", "stop", "--time", "30", name], capture_output=True,
                           timeout=60)
            stopped["took"] = time.monotonic() - stopped["at"]

        stopper = threading.Thread(target=stop)
        with httpx.stream("GET", f"{url}/api/stream", timeout=120,
                          params={**FORM, "max_new_tokens": LONG, "min_new_tokens": LONG}) as r:
            assert r.status_code == 200
            got = []
            for item in events(r):
                got.append(item)
                if len(got) == 1:  # the request is in flight: stop the container now
                    stopper.start()
        stopper.join()
        assert got[-1][0] == "done", f"cut after {len(got)} events: {got[-1]}\n{logs(name)}"
        assert got[-1][1]["tokens"] == LONG
        # The stream went on after SIGTERM (else this test proved nothing), and the container
        # then exited on its own, well before docker's SIGKILL.
        assert sum(1 for *_, at in got if at > stopped["at"]) > 1, "over before SIGTERM"
        assert stopped["took"] < 25, f"docker stop took {stopped['took']:.0f} s"
        code = run("docker", "inspect", "-f", "{{.State.ExitCode}}", name).strip()
        assert code != "137", f"SIGKILLed:\n{logs(name)}"
        after = sum(1 for *_, at in got if at > stopped["at"])
        print(f"SIGTERM after event 1 of {len(got)}: {after} came after it; the container "
              f"stopped in {stopped['took']:.1f} s with exit code {code}")
