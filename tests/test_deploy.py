"""deploy/: the Kubernetes manifests, the BentoCloud config and the Grafana dashboard, checked
offline: each manifest against the Kubernetes JSON schemas (kubernetes-validate carries them),
then against what the code declares (service.py's resources and timeouts, the BentoML service
names, backstory/telemetry.py's metric names), and the split itself run locally as deployed."""

import json
import os
import re
import subprocess
import sys
import tempfile
import typing
from functools import cache
from pathlib import Path

import attrs
import httpx
import kubernetes_validate
import pytest
import yaml

from backstory.config import ROOT
from backstory.telemetry import METRIC_NAMES, telemetry

DEPLOY = ROOT / "deploy"
K8S = DEPLOY / "k8s"
# The oldest and the newest schemas the pinned kubernetes-validate carries.
K8S_VERSIONS = ("1.25.0", "1.37.0")
# BentoML's own request metrics, as /metrics of bentoml 1.4 exposes them on every service.
BENTOML_SERIES = (
    *(f"bentoml_service_{histogram}_{part}"
      for histogram in ("request_duration_seconds", "adaptive_batch_size")
      for part in ("bucket", "sum", "count")),
    "bentoml_service_request_total", "bentoml_service_request_in_progress",
    "bentoml_service_last_request_timestamp_seconds",
)


def docs(path: Path) -> list[dict]:
    return [d for d in yaml.safe_load_all(path.read_text()) if d]


MANIFESTS = sorted(p for p in K8S.rglob("*.yaml") if p.name != "kustomization.yaml")
RESOURCES = [(p, d) for p in MANIFESTS for d in docs(p)]
APPLIED = [d for p, d in RESOURCES if p.parent == K8S]  # monitoring/ is applied apart


def of_kind(kind: str) -> list[dict]:
    return [d for d in APPLIED if d["kind"] == kind]


def by_name(kind: str) -> dict[str, dict]:
    return {d["metadata"]["name"]: d for d in of_kind(kind)}


def container(deployment: dict) -> dict:
    (only,) = deployment["spec"]["template"]["spec"]["containers"]
    return only


def arg(c: dict, flag: str) -> str:
    return c["args"][c["args"].index(flag) + 1]


def pod_env(deployment: dict) -> dict[str, str]:
    """The environment a pod gets: its ConfigMaps (envFrom), then its own env over them."""
    maps = by_name("ConfigMap")
    c = container(deployment)
    env = {}
    for source in c.get("envFrom", []):
        env.update(maps[source["configMapRef"]["name"]]["data"])
    env.update({e["name"]: e["value"] for e in c.get("env", [])})
    return env


PROBE = ("import json, service; print(json.dumps({'settings': service.settings.model_dump("
         "mode='json'), **{s.name: s.config for s in (service.Backstory, service.Gateway)}}))")


@cache
def declared(deployment_name: str) -> dict:
    """service.py's decorator values and Settings, imported under that pod's environment."""
    with tempfile.TemporaryDirectory(prefix="bentoml-home-") as home:
        # Only the pod's BACKSTORY_* settings: none of this shell's.
        env = {k: v for k, v in os.environ.items() if not k.startswith("BACKSTORY_")}
        env.update(pod_env(by_name("Deployment")[deployment_name]), BENTOML_HOME=home)
        out = subprocess.run([sys.executable, "-c", PROBE], cwd=ROOT, env=env, check=True,
                             capture_output=True, text=True, timeout=120).stdout
    return json.loads(out.strip().splitlines()[-1])


def served(deployment: dict) -> dict:
    """The BentoML service config of the one service this Deployment's container serves."""
    return declared(deployment["metadata"]["name"])[arg(container(deployment), "--service-name")]


def quantity(value: str | int) -> float:
    """A Kubernetes quantity as a number: '2' / '2000m' cores, '2Gi' / '512Mi' bytes."""
    units = {"m": 1e-3, "Ki": 2**10, "Mi": 2**20, "Gi": 2**30, "Ti": 2**40,
             "k": 1e3, "M": 1e6, "G": 1e9, "T": 1e12}
    number, unit = re.fullmatch(r"([0-9.]+)([A-Za-z]*)", str(value)).groups()
    return float(number) * (units.get(unit, float("nan")) if unit else 1)


@pytest.mark.parametrize("version", K8S_VERSIONS)
@pytest.mark.parametrize("path,doc", RESOURCES, ids=[
    f"{p.name}:{d['kind']}/{d['metadata']['name']}" for p, d in RESOURCES])
def test_manifest_matches_the_kubernetes_schema(path, doc, version):
    # strict: an unknown field (a typo such as `httpGett`) is an error, not silently dropped.
    kubernetes_validate.validate(doc, version, strict=True)


def test_kustomization_applies_every_manifest_and_names_the_image():
    kustomization = yaml.safe_load((K8S / "kustomization.yaml").read_text())
    assert sorted(kustomization["resources"]) == sorted(
        p.name for p in MANIFESTS if p.parent == K8S)
    images = {i["name"] for i in kustomization["images"]}
    assert {container(d)["image"] for d in of_kind("Deployment")} <= images


def test_each_service_runs_in_its_own_deployment():
    assert {arg(container(d), "--service-name") for d in of_kind("Deployment")} == {
        "backstory-model", "backstory-gateway"}
    assert set(declared("backstory-model")) - {"settings"} == {"backstory-model",
                                                                "backstory-gateway"}


def test_probes_use_bentoml_health_endpoints():
    for d in of_kind("Deployment"):
        c = container(d)
        ports = {p["name"] for p in c["ports"]}
        assert c["readinessProbe"]["httpGet"]["path"] == "/readyz"
        assert c["livenessProbe"]["httpGet"]["path"] == "/livez"
        assert c["startupProbe"]["httpGet"]["path"] == "/livez"
        for probe in ("readinessProbe", "livenessProbe", "startupProbe"):
            assert c[probe]["httpGet"]["port"] in ports
        assert int(arg(c, "--port")) in {p["containerPort"] for p in c["ports"]}


def test_resources_are_what_service_py_declares():
    for d in of_kind("Deployment"):
        declared_resources = served(d)["resources"]
        want = {"cpu": quantity(declared_resources["cpu"]),
                "memory": quantity(declared_resources["memory"])}
        if "gpu" in declared_resources:
            want["nvidia.com/gpu"] = float(declared_resources["gpu"])
        for side in ("requests", "limits"):
            have = {k: quantity(v) for k, v in container(d)["resources"][side].items()}
            assert have == want, (d["metadata"]["name"], side)


def test_grace_period_outlasts_the_traffic_timeout_and_the_drain():
    for d in of_kind("Deployment"):
        spec, c = d["spec"]["template"]["spec"], container(d)
        command = c["lifecycle"]["preStop"]["exec"]["command"]
        assert command[0] == "sleep"
        drain = int(command[1])
        assert drain > 0
        assert spec["terminationGracePeriodSeconds"] > drain + served(d)["traffic"]["timeout"]


def test_model_threads_match_its_cpu():
    """torch otherwise starts a thread per core of the node, not of the pod."""
    model = by_name("Deployment")["backstory-model"]
    threads = declared("backstory-model")["settings"]["threads"]
    assert threads == quantity(container(model)["resources"]["limits"]["cpu"])


def test_gateway_depends_on_the_model_service():
    gateway = container(by_name("Deployment")["backstory-gateway"])
    name, url = arg(gateway, "--depends").split("=", 1)
    assert name == "backstory-model"
    host, port = re.fullmatch(r"http://([a-z0-9-]+):(\d+)", url).groups()
    service = by_name("Service")[host]
    assert int(port) in {p["port"] for p in service["spec"]["ports"]}
    model_labels = by_name("Deployment")["backstory-model"]["spec"]["template"]["metadata"]
    assert service["spec"]["selector"].items() <= model_labels["labels"].items()


@pytest.mark.parametrize("kind", ["Service", "PodDisruptionBudget"])
def test_selectors_pick_exactly_their_own_deployment(kind):
    for d in of_kind(kind):
        selector = d["spec"]["selector"]
        selector = selector.get("matchLabels", selector)
        picked = [dep["metadata"]["name"] for dep in of_kind("Deployment")
                  if selector.items() <= dep["spec"]["template"]["metadata"]["labels"].items()]
        assert picked == [d["metadata"]["name"]], (kind, d["metadata"]["name"])
    for dep in of_kind("Deployment"):
        assert dep["spec"]["selector"]["matchLabels"].items() <= \
            dep["spec"]["template"]["metadata"]["labels"].items()


def test_prometheus_scrapes_every_pod_on_its_port():
    for d in of_kind("Deployment"):
        notes = d["spec"]["template"]["metadata"]["annotations"]
        assert notes["prometheus.io/scrape"] == "true"
        assert notes["prometheus.io/path"] == "/metrics"
        assert int(notes["prometheus.io/port"]) == int(arg(container(d), "--port"))


def test_every_deployment_has_an_hpa_and_a_pdb_that_allow_a_drain():
    hpas = {h["spec"]["scaleTargetRef"]["name"]: h for h in of_kind("HorizontalPodAutoscaler")}
    pdbs = by_name("PodDisruptionBudget")
    for name, d in by_name("Deployment").items():
        assert hpas[name]["spec"]["scaleTargetRef"]["kind"] == "Deployment"
        assert "replicas" not in d["spec"]  # else each apply resets what the HPA chose
        # minAvailable >= minReplicas would forbid evicting any pod: no node could be drained.
        assert 1 <= pdbs[name]["spec"]["minAvailable"] < hpas[name]["spec"]["minReplicas"]


def test_model_scales_on_rows_running_below_a_full_batch():
    hpa = next(h for h in of_kind("HorizontalPodAutoscaler")
               if h["spec"]["scaleTargetRef"]["name"] == "backstory-model")
    (metric,) = hpa["spec"]["metrics"]
    assert metric["type"] == "Pods"
    assert metric["pods"]["metric"]["name"] == "backstory_num_requests_running"
    assert metric["pods"]["metric"]["name"] in METRIC_NAMES
    target = quantity(metric["pods"]["target"]["averageValue"])
    assert 0 < target < declared("backstory-model")["settings"]["max_batch_size"]


def test_prometheus_adapter_serves_the_hpa_metrics():
    (config_map,) = docs(K8S / "monitoring" / "prometheus-adapter.yaml")
    rules = yaml.safe_load(config_map["data"]["config.yaml"])["rules"]
    wanted = [m["pods"]["metric"]["name"] for h in of_kind("HorizontalPodAutoscaler")
              for m in h["spec"]["metrics"] if m["type"] == "Pods"]
    wanted += ["backstory_num_requests_waiting"]  # named in autoscaling.yaml as the next one
    for name in wanted:
        served_as = []
        for rule in rules:
            series = re.search(r'__name__=~"([^"]+)"', rule["seriesQuery"])
            series_ok = (re.fullmatch(series.group(1), name) if series
                         else rule["seriesQuery"].startswith(name + "{"))
            match = re.fullmatch(rule["name"]["matches"], name)
            if series_ok and match:
                served_as.append(match.expand(rule["name"]["as"].replace("$", "\\")
                                              .replace("{", "g<").replace("}", ">")))
            assert {"namespace", "pod"} <= set(rule["resources"]["overrides"])
        assert served_as == [name]


@cache
def exposed_series() -> set[str]:
    """What /metrics shows for telemetry's metrics: a counter `x` as `x_total`, a histogram
    as `x_bucket`, `x_sum`, `x_count`."""
    suffixes = {"counter": ("_total",), "gauge": ("",),
                "histogram": ("_bucket", "_sum", "_count")}
    families = [m.describe()[0] for m in vars(telemetry()).values() if hasattr(m, "describe")]
    bases = {f.name + ("_total" if f.type == "counter" else "") for f in families}
    assert bases == set(METRIC_NAMES)
    return {f.name + s for f in families for s in suffixes[f.type]}


DASHBOARD = json.loads((DEPLOY / "grafana-dashboard.json").read_text())


def queries() -> list[str]:
    exprs = [t["expr"] for p in DASHBOARD["panels"] for t in p.get("targets", [])]
    variables = [v["definition"] for v in DASHBOARD["templating"]["list"] if v["type"] == "query"]
    assert exprs and variables
    return exprs + variables


def test_dashboard_queries_only_metrics_that_exist():
    used = {m for q in queries() for m in re.findall(r"\b(?:backstory|bentoml)_\w+", q)}
    assert used - (exposed_series() | set(BENTOML_SERIES)) == set()


def test_dashboard_plots_every_metric_of_ours():
    text = " ".join(queries())
    for name in METRIC_NAMES:
        assert re.search(rf"\b{name}(_bucket|_sum|_count)?\b", text), name


def test_dashboard_reads_its_datasource_from_a_variable():
    variables = {v["name"]: v for v in DASHBOARD["templating"]["list"]}
    assert variables["DS_PROMETHEUS"]["type"] == "datasource"
    assert variables["DS_PROMETHEUS"]["query"] == "prometheus"
    panels = [p for p in DASHBOARD["panels"] if p["type"] != "row"]
    assert len({p["id"] for p in DASHBOARD["panels"]}) == len(DASHBOARD["panels"])
    for p in panels:
        for source in [p["datasource"], *(t["datasource"] for t in p["targets"])]:
            assert source == {"type": "prometheus", "uid": "${DS_PROMETHEUS}"}, p["title"]


def schema_of(hint) -> tuple[type | None, str]:
    """The attrs class a field holds, if any, and how: one, a list of them or a dict of them."""
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if origin is typing.Union:
        return schema_of(next(a for a in args if a is not type(None)))
    if origin in (list, dict):
        return schema_of(args[-1])[0], origin.__name__
    return (hint if attrs.has(hint) else None), "one"


def unknown_keys(data: dict, cls: type, path: str = "") -> list[str]:
    """Keys BentoML's deployment schema would drop without a word (it ignores extra keys)."""
    hints, bad = typing.get_type_hints(cls), []
    for key, value in data.items():
        if key not in hints:
            bad.append(path + key)
            continue
        inner, shape = schema_of(hints[key])
        if inner is None:
            continue
        children = {"one": {"": value}, "list": dict(enumerate(value)), "dict": value}[shape]
        for sub, child in children.items():
            if isinstance(child, dict):
                bad += unknown_keys(child, inner, f"{path}{key}{'' if sub == '' else f'.{sub}'}.")
    return bad


def test_bentocloud_config_follows_bentomls_schema_and_names_both_services():
    from bentoml._internal.cloud.schemas.schemasv2 import CreateDeploymentSchema
    from bentoml._internal.utils.cattr import bentoml_cattr

    config = yaml.safe_load((DEPLOY / "bentocloud.yaml").read_text())
    parsed = bentoml_cattr.structure(config, CreateDeploymentSchema)  # types: raises if wrong
    assert unknown_keys(config, CreateDeploymentSchema) == []
    names = set(declared("backstory-model")) - {"settings"}
    assert set(parsed.services) == names
    for name, service in parsed.services.items():
        assert 1 <= service.scaling.min_replicas <= service.scaling.max_replicas, name


def local(c: dict, port: int, model_url: str = "") -> list[str]:
    """A container's args as the Bento image's entrypoint runs them, here from the source tree
    (`start-http-server ARGS` -> `python -m bentoml_cli._internal.start start-http-server ARGS
    $BENTO_PATH`), on a local port and, for the gateway, the local model service."""
    args = list(c["args"])
    assert args[0] == "start-http-server"
    args[args.index("--port") + 1], args[args.index("--host") + 1] = str(port), "127.0.0.1"
    if "--depends" in args:
        i = args.index("--depends") + 1
        args[i] = args[i].split("=", 1)[0] + "=" + model_url
    return [sys.executable, "-m", "bentoml_cli._internal.start", *args, "."]


@pytest.mark.slow
def test_the_split_serves_as_deployed(tiny_model, tmp_path):
    """Both containers' args and env, run locally: the gateway reaches the model service by the
    --depends URL, stays ready with the model service gone and answers our JSON 503."""
    from bench.servers import free_port, running

    deployments = by_name("Deployment")
    model_port, gateway_port = free_port(), free_port()
    model = f"http://127.0.0.1:{model_port}"

    def env(name: str) -> dict[str, str]:
        return {**pod_env(deployments[name]), "BACKSTORY_MODEL": str(tiny_model),
                "BACKSTORY_THREADS": "1", "BENTOML_HOME": str(tmp_path / name)}

    model_cmd = local(container(deployments["backstory-model"]), model_port)
    gateway_cmd = local(container(deployments["backstory-gateway"]), gateway_port, model)
    gateway = f"http://127.0.0.1:{gateway_port}"
    body = {"name": "Ember", "description": "A dragon.", "max_new_tokens": 4, "seed": 1}
    with running(gateway_cmd, f"{gateway}/livez", env("backstory-gateway")):
        with running(model_cmd, f"{model}/readyz", env("backstory-model")):
            r = httpx.post(f"{gateway}/api/generate", json=body, timeout=60)
            assert r.status_code == 200 and r.json()["backstory"].startswith("Ember")
            assert httpx.get(f"{gateway}/readyz", timeout=10).status_code == 200
            metrics = httpx.get(f"{model}/metrics", timeout=10).text
            assert "backstory_num_requests_running" in metrics
        assert httpx.get(f"{gateway}/readyz", timeout=10).status_code == 200
        r = httpx.post(f"{gateway}/api/generate", json=body, timeout=30)
        assert r.status_code == 503 and r.json()["error"] and r.headers["retry-after"]
