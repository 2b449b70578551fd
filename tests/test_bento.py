"""The Bento: `bentoml build` packs services, UI and the model (by its model-store tag) with a
container recipe; the exported Bento imports into a fresh store and serves. (`bentoml containerize`
needs a Docker engine.) The tiny model stands in for the default: the mechanism is the same."""

import os
import subprocess
import sys
import tarfile
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


def store(home: Path, model: Path) -> str:
    out = subprocess.run([sys.executable, "-m", "backstory.store", "--model", str(model)],
                         cwd=ROOT, env={**os.environ, "BENTOML_HOME": str(home)},
                         capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    return out.stdout.strip().splitlines()[-1]


@pytest.fixture(scope="module")
def built(tmp_path_factory, tiny_model) -> tuple[Path, str, Path]:
    home = tmp_path_factory.mktemp("bentoml-home")
    model_tag = store(home, tiny_model)
    assert model_tag.startswith("backstory-model:") and store(home, tiny_model) == model_tag
    tag = bentoml(home, "build", "-o", "tag", env={"BACKSTORY_MODEL": "backstory-model:latest"}
                  ).strip().split("__tag__:")[-1]
    name, version = tag.split(":")
    (home / "model-tag").write_text(model_tag)
    return home, tag, home / "bentos" / name / version


def built_model_tag(built) -> str:
    return (built[0] / "model-tag").read_text()


def test_bento_holds_services_ui_and_model(built):
    _, _, bento = built
    meta = yaml.safe_load((bento / "bento.yaml").read_text())
    assert meta["entry_service"] == "backstory-gateway"
    services = {s["name"]: s for s in meta["services"]}
    assert services["backstory-gateway"]["dependencies"] == [{"service": "backstory-model"}]
    assert services["backstory-model"]["config"]["traffic"]["timeout"] > 0
    assert {"name": "HF_HUB_OFFLINE", "value": "1", "stage": "all"} in meta["envs"]
    assert {"name": "BACKSTORY_MODEL", "value": "backstory-model:latest", "stage": "all"} \
        in meta["envs"]
    # The model service declares the model by its exact tag; export packs it (see below).
    (packed,) = services["backstory-model"]["models"]
    assert packed["tag"] == built_model_tag(built)
    src = bento / "src"
    for path in ("service.py", "gateway/app.py", "backstory/engine.py", "ui/templates/index.html",
                 "ui/static/app.js"):
        assert (src / path).is_file(), path
    assert not (src / "tests").exists() and not (src / "runs").exists()
    assert not (src / "models").exists()  # no adapter or base beside the packed model


def test_container_recipe(built):
    _, _, bento = built
    dockerfile = (bento / "env" / "docker" / "Dockerfile").read_text()
    assert "python:3.11" in dockerfile or "3.11" in dockerfile
    assert "requirements.txt" in dockerfile and "bentoml" in dockerfile.lower()
    requirements = (bento / "env" / "python" / "requirements.txt").read_text()
    assert "torch==2.13.0" in requirements and "bentoml==1.4.40" in requirements


def test_cuda_recipe_asks_for_a_gpu(built):
    home = built[0]
    tag = bentoml(home, "build", "-f", "bentofile.cuda.yaml", "-o", "tag",
                  env={"BACKSTORY_GPUS": "1", "BACKSTORY_MODEL": "backstory-model:latest"}
                  ).strip().split("__tag__:")[-1]
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
    name, version = built_model_tag(built).split(":")
    with tarfile.open(archive) as tar:  # the model travels inside the Bento
        assert f"./models/{name}/{version}/config.json" in tar.getnames()
    fresh = tmp_path / "fresh-home"  # a store without the model: the Bento must bring it
    bentoml(fresh, "import", str(archive))
    port = free_port()
    cmd = [sys.executable, "-m", "bentoml", "serve", tag, "--host", "127.0.0.1", "--port",
           str(port)]
    url = f"http://127.0.0.1:{port}"
    # Served from the imported Bento, not from this checkout: a different working directory.
    # A container gets BACKSTORY_MODEL from the Bento's envs; `bentoml serve <bento>` does not.
    env = {"BENTOML_HOME": str(fresh), "BACKSTORY_MODEL": "backstory-model:latest"}
    with running(cmd, f"{url}/readyz", env, cwd=tmp_path):
        r = httpx.post(f"{url}/api/generate", timeout=120, data={
            "name": "Kaylon", "description": "An empire of androids.", "max_new_tokens": 16})
        assert r.status_code == 200 and r.json()["backstory"].startswith("Kaylon")
        assert "<form" in httpx.get(url, timeout=30).text
