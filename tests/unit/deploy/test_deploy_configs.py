"""Every shipped configuration runs as meant: configs/*.yaml, the docker compose services' environment and
commands, the Kubernetes ConfigMap with its Deployments' environment and arguments, and pm2's apps are
loaded by the real settings loader (their command lines parsed by the real CLI), and each miner builds its
cascade here (on the CPU, from the shipped weights)."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
from pathlib import Path
from typing import Any

import click
import pytest
import typer
import yaml

from roadminer.cascade.router import VLM_KINDS, EarlyExitRouter
from roadminer.cli import app
from roadminer.core.cli_args import parse_sets
from roadminer.core.config import Settings, load_settings

REPO = Path(__file__).resolve().parents[3]
DOCKER = REPO / "docker"
K8S = DOCKER / "k8s"
SHIPPED_CONSENSUS_TIERS = ["classifier", "classifier2"]
_ROUTERS: dict[str, EarlyExitRouter] = {}


@pytest.fixture(autouse=True)
def _clean_env(monkeypatch: pytest.MonkeyPatch) -> None:
    for key in list(os.environ):
        if key.upper().startswith("ROADMINER_"):
            monkeypatch.delenv(key)


@pytest.fixture(scope="module", autouse=True)
def _close_routers() -> Any:
    yield
    for router in _ROUTERS.values():
        router.close()
    _ROUTERS.clear()


def build_router(settings: Settings) -> EarlyExitRouter:
    """The cascade of ``settings`` (built once per distinct cascade: most files share the shipped one)."""
    key = settings.cascade.model_dump_json() + settings.device
    if key not in _ROUTERS:
        router = EarlyExitRouter.from_settings(settings)  # as the miner builds it: device and engine placed
        router.warmup()
        _ROUTERS[key] = router
    return _ROUTERS[key]


def command_settings(args: list[str], env: dict[str, str], monkeypatch: pytest.MonkeyPatch,
                     files: dict[str, Path] | None = None) -> tuple[str, Settings]:
    """Parse ``args`` (``miner --config F ...``) with the real CLI, then load the settings that command
    would load under ``env``; the GPU device is swapped for the CPU on the command line (CLI > env > YAML)."""
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    group = typer.main.get_command(app)
    name, rest = args[0], list(args[1:])
    with click.Context(group, info_name="roadminer") as ctx:
        cmd = group.get_command(ctx, name)
        assert cmd is not None, f"unknown command {name!r}"
        with cmd.make_context(name, rest, parent=ctx) as sub:  # refuses an unknown flag
            params = dict(sub.params)
    config = params.get("config")
    if config is not None:
        config = (files or {}).get(str(config), REPO / str(config))
    overrides: dict[str, Any] = {"device": "cpu", **parse_sets(params.get("set_"))}
    if name == "miner":
        from roadminer.miner.commands import miner_overrides

        overrides |= miner_overrides(params["port"], params["host"], params["chain"], params["allow_unregistered"],
                                     params["wallet_path"], params["wallet_name"], params["wallet_hotkey"],
                                     params["netuid"])
    elif name == "dashboard":
        overrides |= {"dashboard.host": params["host"], "dashboard.port": params["port"]}
    return name, load_settings(config, overrides)


def assert_cascade_runs(settings: Settings) -> EarlyExitRouter:
    router = build_router(settings)
    wanted = [t.name for t in settings.cascade.tiers
              if t.enabled and (t.kind not in VLM_KINDS or settings.cascade.vlm)]
    assert [t.name for t in router.tiers] == wanted
    names = [t.name for t in router.tiers]
    if names[:2] == SHIPPED_CONSENSUS_TIERS:  # the shipped stacking applies, not plain weights
        assert router.consensus.fitted and router.consensus.tiers == names
    # Answers where a VLM judge disagrees are queued only for tiers the queue policy knows as VLMs.
    vlm_names = {t.name for t in settings.cascade.tiers if t.kind in VLM_KINDS and t.enabled}
    if settings.cascade.vlm:
        assert vlm_names <= set(settings.state.queue_vlm_tiers), (vlm_names, settings.state.queue_vlm_tiers)
    return router


# ---------------------------------------------------------------- configs/
@pytest.mark.parametrize(("command", "name"), [("miner", "miner.yaml"), ("miner", "miner-gpu.yaml"),
                                              ("miner", "cascade.yaml"), ("validator", "validator.yaml")])
def test_shipped_yaml_configs_load_and_build(command: str, name: str, monkeypatch: pytest.MonkeyPatch) -> None:
    _, settings = command_settings([command, "--config", f"configs/{name}"], {}, monkeypatch)
    router = assert_cascade_runs(settings)
    assert [t.name for t in router.tiers] == SHIPPED_CONSENSUS_TIERS
    assert router.consensus.fitted


def test_cascade_yaml_with_the_vlm_on_keeps_the_fitted_consensus(monkeypatch: pytest.MonkeyPatch) -> None:
    _, settings = command_settings(["miner", "--config", "configs/cascade.yaml", "--set", "cascade.vlm=true"],
                                   {}, monkeypatch)
    router = assert_cascade_runs(settings)
    assert [t.name for t in router.tiers] == [*SHIPPED_CONSENSUS_TIERS, "vlm"]
    assert router.consensus.fitted
    assert router.tiers[2].url == "http://127.0.0.1:8000/v1/chat/completions"  # type: ignore[attr-defined]


def test_local_chain_file_parses() -> None:
    from roadminer.chain.local import parse_local_chain

    snap = parse_local_chain(yaml.safe_load((REPO / "configs/local_chain.yaml").read_text()), 72)
    assert len(snap.neurons) == 5


# ---------------------------------------------------------------- docker compose
def _interpolate(value: str) -> str:
    """Compose's ``${VAR:-default}`` with nothing set in the environment."""
    return re.sub(r"\$\{[A-Z0-9_]+:-([^}]*)\}", r"\1", str(value))


@pytest.mark.parametrize("service", ["miner", "miner-gpu", "dashboard"])
def test_compose_services_load_and_build(service: str, monkeypatch: pytest.MonkeyPatch) -> None:
    svc = yaml.safe_load((DOCKER / "compose.yaml").read_text())["services"][service]
    env = {k: _interpolate(v) for k, v in svc["environment"].items()}
    name, settings = command_settings([_interpolate(a) for a in svc["command"]], env, monkeypatch)
    assert settings.state.backend == "redis" and settings.state.redis_url == "redis://redis:6379/0"
    assert settings.chain.network == "finney" and settings.wallet.create_if_missing is False
    if name == "miner":
        assert_cascade_runs(settings)
    else:
        assert settings.dashboard.miner_url == "http://miner:8091" and settings.dashboard.port == 8095


# ---------------------------------------------------------------- pm2
def _pm2_apps(env: dict[str, str]) -> list[dict[str, Any]]:
    node = shutil.which("node")
    if node is None:
        pytest.skip("node is not installed")
    code = "process.stdout.write(JSON.stringify(require(process.argv[1])))"
    run_env = {k: v for k, v in os.environ.items() if not k.startswith("ROADMINER_")} | env
    out = subprocess.run([node, "-e", code, str(REPO / "pm2.config.js")], capture_output=True, text=True,
                         check=True, env=run_env, timeout=30)
    return json.loads(out.stdout)["apps"]


def test_pm2_apps_load_and_build(monkeypatch: pytest.MonkeyPatch) -> None:
    apps = _pm2_apps({"ROADMINER_VLLM": "1"})
    seen = set()
    for a in apps:
        if not a["script"].endswith("/bin/roadminer"):
            continue  # the vLLM server
        # pm2 starts the app in cwd with its env (plus the shell's, which here holds no ROADMINER_* values)
        assert a["cwd"] == str(REPO)
        env = {k: str(v) for k, v in a["env"].items() if k.startswith("ROADMINER_")}
        with monkeypatch.context() as m:
            name, settings = command_settings(list(a["args"]), env, m)
            assert settings.state.backend == "redis" and settings.chain.network == "finney"
            if name == "miner":
                assert_cascade_runs(settings)
        seen.add(name)
    assert seen == {"miner", "dashboard", "validator"}


# ---------------------------------------------------------------- kubernetes
def _k8s() -> dict[tuple[str, str], dict[str, Any]]:
    docs = {}
    for path in sorted(K8S.glob("*.yaml")):
        for d in yaml.safe_load_all(path.read_text()):
            if d and "kind" in d and "metadata" in d:
                docs[(d["kind"], d["metadata"]["name"])] = d
    return docs


def _container_env(deploy: dict[str, Any]) -> tuple[list[str], dict[str, str]]:
    c = deploy["spec"]["template"]["spec"]["containers"][0]
    return list(c["args"]), {e["name"]: str(e["value"]) for e in c.get("env", []) if "value" in e}


def test_k8s_configmap_runs_the_judge_behind_the_shipped_consensus(tmp_path: Path,
                                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    docs = _k8s()
    cfg = tmp_path / "miner.yaml"
    cfg.write_text(docs[("ConfigMap", "roadminer-config")]["data"]["miner.yaml"])
    args, env = _container_env(docs[("Deployment", "roadminer-miner")])
    assert yaml.safe_load(cfg.read_text())["device"] == "cuda"
    name, settings = command_settings(args, env, monkeypatch, files={"/app/configs/miner.yaml": cfg})
    assert name == "miner" and settings.cascade.vlm is True
    router = assert_cascade_runs(settings)
    assert [t.name for t in router.tiers] == [*SHIPPED_CONSENSUS_TIERS, "vlm"]
    assert router.consensus.fitted and router.version.endswith("/stacked")
    judge = router.tiers[2]
    # The judge asks the vLLM Service for the model name the vLLM Deployment serves.
    vllm_args = docs[("Deployment", "roadminer-vllm")]["spec"]["template"]["spec"]["containers"][0]["args"]
    served = next(a.split("=", 1)[1] for a in vllm_args if a.startswith("--served-model-name="))
    assert judge.model == served  # type: ignore[attr-defined]
    port = docs[("Service", "roadminer-vllm")]["spec"]["ports"][0]["port"]
    host = f"roadminer-vllm.{docs[('Service', 'roadminer-vllm')]['metadata']['namespace']}.svc.cluster.local"
    assert judge.url == f"http://{host}:{port}/v1/chat/completions"  # type: ignore[attr-defined]
    # The dashboard Deployment reads the same ConfigMap.
    dargs, denv = _container_env(docs[("Deployment", "roadminer-dashboard")])
    with monkeypatch.context() as m:
        dname, dash = command_settings(dargs, denv, m, files={"/app/configs/miner.yaml": cfg})
    assert dname == "dashboard" and dash.dashboard.miner_url and dash.state.backend == "redis"
