"""Deployment files: pm2 (loaded with node), docker compose (validated by the compose client where one
exists), Prometheus/Grafana provisioning (metric names exist), Kubernetes manifests (offline schema)."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from pathlib import Path

import pytest
import yaml

from roadminer.core.config import load_settings
from roadminer.core.metrics import REGISTRY
from roadminer.deploy.planner import make_plan

REPO = Path(__file__).resolve().parents[3]
DOCKER = REPO / "docker"
K8S = DOCKER / "k8s"
K8S_VERSION = "1.33.0"


def _metric_names() -> set[str]:
    names: set[str] = set()
    for metric in REGISTRY.collect():
        for sample in metric.samples:
            names.add(sample.name)
        names.add(metric.name)
    # Histograms/counters/info also expose derived series.
    for n in list(names):
        names.update({f"{n}_total", f"{n}_bucket", f"{n}_sum", f"{n}_count", f"{n}_info"})
    return names


def _exprs_metrics(expr: str) -> set[str]:
    return set(re.findall(r"\b(roadminer_[a-z0-9_]+)\b", expr))


# ---------------------------------------------------------------- pm2
def _pm2(env: dict[str, str] | None = None) -> list[dict]:
    node = shutil.which("node")
    if node is None:
        pytest.skip("node is not installed")
    code = "process.stdout.write(JSON.stringify(require(process.argv[1])))"
    import os

    run_env = {k: v for k, v in os.environ.items() if not k.startswith("ROADMINER_")}
    run_env.update(env or {})
    out = subprocess.run(
        [node, "-e", code, str(REPO / "pm2.config.js")],
        capture_output=True,
        text=True,
        check=True,
        env=run_env,
        timeout=30,
    )
    data = json.loads(out.stdout)
    assert set(data) == {"apps"}
    return data["apps"]


def test_pm2_config_loads_with_node() -> None:
    apps = {a["name"]: a for a in _pm2()}
    assert set(apps) == {"roadminer-miner", "roadminer-dashboard", "roadminer-validator"}
    for name, app in apps.items():
        assert app["script"].endswith("/bin/roadminer"), name
        assert app["interpreter"] == "none"
        assert app["autorestart"] is True and app["max_restarts"] > 0
        assert app["exp_backoff_restart_delay"] > 0 and app["kill_timeout"] >= 10000
        assert app["out_file"].endswith(".log") and app["error_file"].endswith(".log")
        assert app["env"]["ROADMINER_STATE__BACKEND"] == "redis"
        assert app["cwd"] == str(REPO)
    assert apps["roadminer-miner"]["args"][0] == "miner"
    assert apps["roadminer-validator"]["args"][0] == "validator"
    assert apps["roadminer-dashboard"]["args"][0] == "dashboard"
    # Every app logs to its own files.
    assert len({a["out_file"] for a in apps.values()}) == len(apps)


def test_pm2_optional_vllm_and_miner_only_node() -> None:
    apps = {
        a["name"]: a
        for a in _pm2(
            {"ROADMINER_VLLM": "1", "ROADMINER_VALIDATOR": "0", "ROADMINER_VLLM_MODEL": "/models/vlm"}
        )
    }
    assert set(apps) == {"roadminer-miner", "roadminer-dashboard", "roadminer-vllm"}
    vllm = apps["roadminer-vllm"]
    assert vllm["script"].endswith("/bin/vllm") and vllm["args"][:2] == ["serve", "/models/vlm"]
    assert "--enable-prefix-caching" in vllm["args"]
    assert vllm["min_uptime"] == "300s"  # slow weight loading is not a crash loop


def test_pm2_commands_exist_in_cli() -> None:
    from roadminer.cli import app

    registered = {c.name or c.callback.__name__ for c in app.registered_commands}
    assert "dashboard" in registered and "plan" in registered


# ---------------------------------------------------------------- docker compose
def _compose() -> dict:
    return yaml.safe_load((DOCKER / "compose.yaml").read_text())


def test_compose_structure() -> None:
    c = _compose()
    services = c["services"]
    assert {"miner", "miner-gpu", "dashboard", "redis", "prometheus", "grafana", "vllm"} <= set(services)
    redis_cmd = " ".join(services["redis"]["command"])
    assert "--appendonly yes" in redis_cmd
    assert any(v.startswith("redis-data:") for v in services["redis"]["volumes"])
    assert services["vllm"]["profiles"] == ["vlm"] and services["miner-gpu"]["profiles"] == ["gpu"]
    for name in ("miner", "miner-gpu"):
        env = services[name]["environment"]
        assert env["ROADMINER_STATE__BACKEND"] == "redis"
        assert env["ROADMINER_STATE__REDIS_URL"].startswith("redis://redis:")
        assert services[name]["depends_on"]["redis"]["condition"] == "service_healthy"
    gpu = services["miner-gpu"]["deploy"]["resources"]["reservations"]["devices"][0]
    assert gpu["driver"] == "nvidia" and "gpu" in gpu["capabilities"]
    for svc in services.values():
        for vol in svc.get("volumes", []):
            src = vol.split(":")[0]
            if src.startswith("./") or src.startswith("../"):
                assert (DOCKER / src).exists(), f"compose mounts missing {src}"
        build = svc.get("build")
        if build:
            assert (DOCKER / build["context"] / build["dockerfile"]).is_file()
    for name in ("Dockerfile", "Dockerfile.cuda"):
        text = (DOCKER / name).read_text()
        assert "ENTRYPOINT" in text and "roadminer" in text and "USER roadminer" in text


def _compose_client() -> list[str] | None:
    docker = shutil.which("docker")
    if docker and subprocess.run([docker, "compose", "version"], capture_output=True).returncode == 0:
        return [docker, "compose"]
    legacy = shutil.which("docker-compose")
    return [legacy] if legacy else None


def test_compose_config_validates_with_compose_client() -> None:
    client = _compose_client()
    if client is None:
        pytest.skip("no docker compose client here (neither `docker compose` nor `docker-compose`)")
    for profiles in ([], ["--profile", "gpu", "--profile", "vlm"]):
        res = subprocess.run(
            [*client, "-f", str(DOCKER / "compose.yaml"), *profiles, "config", "--services"],
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert res.returncode == 0, res.stderr
        listed = set(res.stdout.split())
        assert {"miner", "redis", "prometheus", "grafana", "dashboard"} <= listed
        if profiles:
            assert {"vllm", "miner-gpu"} <= listed


# ---------------------------------------------------------------- prometheus + grafana
def test_prometheus_scrapes_compose_services() -> None:
    prom = yaml.safe_load((DOCKER / "prometheus.yml").read_text())
    services = _compose()["services"]
    targets = [t for job in prom["scrape_configs"] for sc in job["static_configs"] for t in sc["targets"]]
    for target in targets:
        host, _port = target.split(":")
        assert host in services, f"scrape target {target} is not a compose service"
    rules = yaml.safe_load((DOCKER / "prometheus-rules.yml").read_text())
    known = _metric_names()
    recorded = {r["record"] for g in rules["groups"] for r in g["rules"] if "record" in r}
    for group in rules["groups"]:
        for rule in group["rules"]:
            assert _exprs_metrics(rule["expr"]) <= known, rule
    assert recorded


def test_grafana_provisioning_and_dashboard_metrics() -> None:
    ds = yaml.safe_load((DOCKER / "grafana/provisioning/datasources/prometheus.yml").read_text())
    uid = ds["datasources"][0]["uid"]
    prov = yaml.safe_load((DOCKER / "grafana/provisioning/dashboards/roadminer.yml").read_text())
    assert prov["providers"][0]["options"]["path"] == "/var/lib/grafana/dashboards"
    dash = json.loads((DOCKER / "grafana/dashboards/roadminer.json").read_text())
    known = _metric_names()
    used: set[str] = set()
    ids = [p["id"] for p in dash["panels"]]
    assert len(ids) == len(set(ids))
    for panel in dash["panels"]:
        if panel["type"] == "row":
            continue
        assert panel["datasource"]["uid"] == uid
        assert panel["targets"], panel["title"]
        for t in panel["targets"]:
            names = _exprs_metrics(t["expr"])
            assert names, t["expr"]
            assert names <= known, f"{panel['title']}: unknown metric(s) {names - known}"
            used |= names
    # The list: requests, latency, batch sizes, tier exits, cache, queue depth, model, reward/MCC.
    for needed in (
        "roadminer_requests_total",
        "roadminer_request_latency_seconds_bucket",
        "roadminer_batch_size_sum",
        "roadminer_tier_exits_total",
        "roadminer_result_cache_total",
        "roadminer_hard_example_queue_depth",
        "roadminer_model_info",
        "roadminer_reward",
        "roadminer_mcc",
        "roadminer_chain_incentive",
    ):
        assert needed in used, needed


# ---------------------------------------------------------------- kubernetes
def _k8s_docs() -> list[tuple[Path, dict]]:
    docs = []
    for path in sorted(K8S.glob("*.yaml")):
        if path.name == "kustomization.yaml":
            continue
        docs += [(path, d) for d in yaml.safe_load_all(path.read_text()) if d]
    return docs


def test_k8s_manifests_validate_offline() -> None:
    kv = pytest.importorskip("kubernetes_validate", reason="kubernetes-validate (dev extra) not installed")
    docs = _k8s_docs()
    kinds = {d["kind"] for _, d in docs}
    assert {"Deployment", "StatefulSet", "Service", "ConfigMap", "HorizontalPodAutoscaler"} <= kinds
    for _path, doc in docs:
        kv.validate(doc, K8S_VERSION, strict=True)  # raises on any schema error
    kust = yaml.safe_load((K8S / "kustomization.yaml").read_text())
    files = sorted(p.name for p in K8S.glob("*.yaml") if p.name != "kustomization.yaml")
    assert sorted(kust["resources"]) == files


def test_k8s_validator_rejects_a_broken_manifest() -> None:
    kv = pytest.importorskip("kubernetes_validate", reason="kubernetes-validate (dev extra) not installed")
    _, miner = next(
        (p, d)
        for p, d in _k8s_docs()
        if d["kind"] == "Deployment" and d["metadata"]["name"] == "roadminer-miner"
    )
    broken = json.loads(json.dumps(miner))
    broken["spec"]["replicas"] = "two"
    with pytest.raises(kv.ValidationError):
        kv.validate(broken, K8S_VERSION, strict=True)


def test_k8s_wiring(tmp_path: Path) -> None:
    docs = _k8s_docs()
    by = {(d["kind"], d["metadata"]["name"]): d for _, d in docs}
    miner = by[("Deployment", "roadminer-miner")]
    pod = miner["spec"]["template"]["spec"]["containers"][0]
    assert pod["resources"]["limits"]["nvidia.com/gpu"] == 1  # one replica per GPU
    redis = by[("StatefulSet", "roadminer-redis")]
    conf = by[("ConfigMap", "roadminer-redis-config")]["data"]["redis.conf"]
    assert "appendonly yes" in conf
    assert redis["spec"]["volumeClaimTemplates"]
    # Services select the pods they are named for.
    for (kind, name), d in by.items():
        if kind != "Service":
            continue
        target = next(x for (k, n), x in by.items() if k in ("Deployment", "StatefulSet") and n == name)
        labels = target["spec"]["template"]["metadata"]["labels"]
        assert d["spec"]["selector"].items() <= labels.items(), name
    hpa = by[("HorizontalPodAutoscaler", "roadminer-miner")]
    assert hpa["spec"]["scaleTargetRef"]["name"] == "roadminer-miner"
    metric = hpa["spec"]["metrics"][0]["pods"]["metric"]["name"]
    assert metric in _metric_names()
    # The miner's ConfigMap is a valid roadminer config whose GPU plan fits one 80 GiB card, and it
    # points at the Redis StatefulSet.
    cfg_text = by[("ConfigMap", "roadminer-config")]["data"]["miner.yaml"]
    cfg_path = tmp_path / "miner.yaml"
    cfg_path.write_text(cfg_text)
    settings = load_settings(cfg_path)
    assert "roadminer-redis" in settings.state.redis_url
    assert make_plan(settings, gpus=1, gpu_mem_gib=80).fits
