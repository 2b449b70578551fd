"""The Bento: `bentoml build` packs services, UI and model with a container recipe; the exported
Bento imports into a fresh store and serves. (`bentoml containerize` needs a Docker engine.)"""

import os
import subprocess
import sys
from pathlib import Path

import httpx
import pytest
import yaml

from bench.servers import free_port, running

pytestmark = pytest.mark.slow
ROOT = Path(__file__).resolve().parent.parent


def bentoml(home: Path, *args: str, env: dict[str, str] | None = None) -> str:
    env = {**os.environ, "BENTOML_HOME": str(home), "BENTOML_DO_NOT_TRACK": "true", **(env or {})}
    out = subprocess.run([sys.executable, "-m", "bentoml", *args], cwd=ROOT, env=env,
                         capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    return out.stdout


@pytest.fixture(scope="module")
def built(tmp_path_factory) -> tuple[Path, str, Path]:
    home = tmp_path_factory.mktemp("bentoml-home")
    tag = bentoml(home, "build", "-o", "tag").strip().split("__tag__:")[-1]
    name, version = tag.split(":")
    return home, tag, home / "bentos" / name / version


def test_bento_holds_services_ui_and_model(built):
    _, _, bento = built
    meta = yaml.safe_load((bento / "bento.yaml").read_text())
    assert meta["entry_service"] == "backstory-gateway"
    services = {s["name"]: s for s in meta["services"]}
    assert services["backstory-gateway"]["dependencies"] == [{"service": "backstory-model"}]
    assert services["backstory-model"]["config"]["traffic"]["timeout"] > 0
    assert {"name": "HF_HUB_OFFLINE", "value": "1", "stage": "all"} in meta["envs"]
    src = bento / "src"
    for path in ("service.py", "gateway/app.py", "backstory/engine.py", "ui/templates/index.html",
                 "ui/static/app.js", "models/backstory/model.safetensors",
                 "models/backstory/tokenizer.json", "models/backstory/config.json"):
        assert (src / path).is_file(), path
    assert not (src / "tests").exists() and not (src / "runs").exists()


def test_container_recipe(built):
    _, _, bento = built
    dockerfile = (bento / "env" / "docker" / "Dockerfile").read_text()
    assert "python:3.11" in dockerfile or "3.11" in dockerfile
    assert "requirements.txt" in dockerfile and "bentoml" in dockerfile.lower()
    requirements = (bento / "env" / "python" / "requirements.txt").read_text()
    assert "torch==2.13.0" in requirements and "bentoml==1.4.40" in requirements


def test_cuda_recipe_asks_for_a_gpu(tmp_path):
    home = tmp_path / "bentoml-home"
    tag = bentoml(home, "build", "-f", "bentofile.cuda.yaml", "-o", "tag",
                  env={"BACKSTORY_GPUS": "1"}).strip().split("__tag__:")[-1]
    bento = home / "bentos" / tag.replace(":", "/")
    meta = yaml.safe_load((bento / "bento.yaml").read_text())
    services = {s["name"]: s for s in meta["services"]}
    assert services["backstory-model"]["config"]["resources"]["gpu"] == 1
    assert "gpu" not in services["backstory-gateway"]["config"].get("resources", {})
    assert {"name": "BACKSTORY_GPUS", "value": "1", "stage": "all"} in meta["envs"]
    assert "cuda" in (bento / "env" / "docker" / "Dockerfile").read_text().lower()


def test_cpu_recipe_asks_for_no_gpu(built):
    _, _, bento = built
    meta = yaml.safe_load((bento / "bento.yaml").read_text())
    assert all("gpu" not in s["config"].get("resources", {}) for s in meta["services"])


def test_exported_bento_imports_and_serves(built, tmp_path):
    home, tag, _ = built
    archive = tmp_path / "backstory.bento"
    bentoml(home, "export", tag, str(archive))
    fresh = tmp_path / "fresh-home"
    bentoml(fresh, "import", str(archive))
    port = free_port()
    cmd = [sys.executable, "-m", "bentoml", "serve", tag, "--host", "127.0.0.1", "--port",
           str(port)]
    url = f"http://127.0.0.1:{port}"
    # Served from the imported Bento, not from this checkout: a different working directory.
    with running(cmd, f"{url}/readyz", {"BENTOML_HOME": str(fresh)}, cwd=tmp_path):
        r = httpx.post(f"{url}/api/generate", timeout=120, data={
            "name": "Kaylon", "description": "An empire of androids.", "max_new_tokens": 16})
        assert r.status_code == 200 and r.json()["backstory"].startswith("Kaylon")
        assert "<form" in httpx.get(url, timeout=30).text
