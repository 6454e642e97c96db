"""Configuration layers: CLI > environment > YAML > defaults in every case (a value equal to the default
included), unknown keys refused with the key and the file/variable named, `roadminer config show`."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from typer.testing import CliRunner

from roadminer.cli import app
from roadminer.core.cli_args import parse_sets
from roadminer.core.config import ConfigError, Settings, load_settings, resolve_settings

REPO = Path(__file__).resolve().parents[3]


@pytest.fixture(autouse=True)
def _clean_env(monkeypatch: pytest.MonkeyPatch) -> None:
    for key in list(os.environ):
        if key.upper().startswith("ROADMINER_"):
            monkeypatch.delenv(key)


def _yaml(tmp_path: Path, text: str, name: str = "miner.yaml") -> Path:
    path = tmp_path / name
    path.write_text(text)
    return path


# ---------------------------------------------------------------- precedence
def test_env_beats_yaml_even_when_the_env_value_is_the_default(tmp_path: Path, monkeypatch) -> None:
    cfg = _yaml(tmp_path, "server:\n  port: 9000\nstate:\n  backend: redis\n")
    assert Settings().server.port == 8091  # the default the env value below equals
    monkeypatch.setenv("ROADMINER_SERVER__PORT", "8091")
    monkeypatch.setenv("ROADMINER_STATE__BACKEND", "memory")
    settings, layers = resolve_settings(cfg)
    assert settings.server.port == 8091
    assert settings.state.backend == "memory"
    assert layers.label_of(("server", "port")) == "env:ROADMINER_SERVER__PORT"
    assert layers.label_of(("state", "backend")) == "env:ROADMINER_STATE__BACKEND"
    # Untouched keys of the same sections keep their YAML / default layer.
    assert layers.label_of(("server", "host")) == "default"


def test_cli_beats_env_beats_yaml_beats_defaults(tmp_path: Path, monkeypatch) -> None:
    cfg = _yaml(tmp_path, "server:\n  port: 9000\n  request_deadline_s: 7.5\nbatcher:\n  max_batch: 16\n")
    monkeypatch.setenv("ROADMINER_SERVER__PORT", "9100")
    monkeypatch.setenv("ROADMINER_BATCHER__MAX_BATCH", "32")
    # The command line wins even with the default value (8091) over the environment's 9100.
    settings, layers = resolve_settings(cfg, {"server.port": 8091, **parse_sets(["batcher.max_wait_ms=0.5"])})
    assert settings.server.port == 8091 and layers.label_of(("server", "port")) == "cli"
    assert settings.batcher.max_batch == 32 and layers.label_of(("batcher", "max_batch")).startswith("env:")
    assert settings.batcher.max_wait_ms == 0.5 and layers.label_of(("batcher", "max_wait_ms")) == "cli"
    assert settings.server.request_deadline_s == 7.5
    assert layers.label_of(("server", "request_deadline_s")) == f"yaml:{cfg}"
    assert settings.batcher.workers == 1 and layers.label_of(("batcher", "workers")) == "default"
    # A command-line option left unset (None) does not clear a lower layer.
    assert load_settings(cfg, {"server.port": None}).server.port == 9100


def test_env_json_for_a_whole_section_and_lists(tmp_path: Path, monkeypatch) -> None:
    cfg = _yaml(tmp_path, "state:\n  queue_vlm_tiers: [vlm]\n")
    monkeypatch.setenv("ROADMINER_STATE__QUEUE_VLM_TIERS", '["judge", "vlm2"]')
    settings, layers = resolve_settings(cfg)
    assert settings.state.queue_vlm_tiers == ["judge", "vlm2"]
    assert layers.label_of(("state", "queue_vlm_tiers")) == "env:ROADMINER_STATE__QUEUE_VLM_TIERS"


def test_a_list_is_taken_whole_from_the_highest_layer(tmp_path: Path) -> None:
    cfg = _yaml(tmp_path, "cascade:\n  tiers:\n    - {name: a, kind: colour}\n    - {name: b, kind: colour}\n")
    settings, layers = resolve_settings(cfg, {"cascade.tiers": [{"name": "c", "kind": "colour", "weight": 2}]})
    assert [t.name for t in settings.cascade.tiers] == ["c"]
    assert layers.label_of(("cascade", "tiers", 0, "weight")) == "cli"
    assert layers.label_of(("cascade", "tiers", 0, "enabled")) == "default"


# ---------------------------------------------------------------- unknown keys
@pytest.mark.parametrize(
    ("text", "key", "hint"),
    [
        ("devcie: cuda\n", "devcie", "did you mean 'device'"),
        ("server:\n  prot: 9000\n", "server.prot", "did you mean 'port'"),
        (
            "cascade:\n  tiers:\n    - {name: c, kind: classifier, options: {devcie: cpu}}\n",
            "cascade.tiers[0].options.devcie",
            "did you mean 'device'",
        ),
        (
            "cascade:\n  tiers:\n    - {name: c, kind: colour}\n    - {name: d, kind: vlm_vllm, options: {modle: x}}\n",
            "cascade.tiers[1].options.modle",
            "did you mean 'model'",
        ),
    ],
)
def test_unknown_keys_in_yaml_name_the_key_and_the_file(tmp_path: Path, text: str, key: str, hint: str) -> None:
    cfg = _yaml(tmp_path, text)
    with pytest.raises(ConfigError) as info:
        load_settings(cfg)
    msg = str(info.value)
    assert f"{cfg}: {key}: unknown" in msg, msg
    assert hint in msg


def test_swallowed_tier_options_are_refused(tmp_path: Path) -> None:
    # What the old k8s ConfigMap passed: a classifier takes its architecture and dtype from its weights file.
    cfg = _yaml(tmp_path, "cascade:\n  tiers:\n    - {name: fast, kind: classifier, "
                          "options: {arch: efficientnet_lite0, dtype: fp16}}\n")
    with pytest.raises(ConfigError) as info:
        load_settings(cfg)
    msg = str(info.value)
    assert "2 problems" in msg
    assert "cascade.tiers[0].options.arch: unknown option" in msg
    assert "cascade.tiers[0].options.dtype: unknown option" in msg
    assert "a classifier tier takes: batch_size, device, threads, tta_flip, weights" in msg


def test_unknown_keys_from_env_and_cli_name_their_layer(monkeypatch) -> None:
    monkeypatch.setenv("ROADMINER_SERVER__PROT", "9000")
    with pytest.raises(ConfigError, match=r"environment ROADMINER_SERVER__PROT: server\.prot: unknown key"):
        load_settings()
    monkeypatch.delenv("ROADMINER_SERVER__PROT")
    # A nested variable of a section that does not exist (pydantic-settings alone would ignore it).
    monkeypatch.setenv("ROADMINER_SERVR__PORT", "9000")
    with pytest.raises(ConfigError, match=r"environment ROADMINER_SERVR__PORT: unknown section 'servr'"):
        load_settings()
    monkeypatch.delenv("ROADMINER_SERVR__PORT")
    # Plain ROADMINER_NAME variables are other tools' knobs (pm2, scripts): left alone.
    monkeypatch.setenv("ROADMINER_VENV", "/opt/venv")
    assert load_settings().server.port == 8091
    with pytest.raises(ConfigError, match=r"command line: batcher\.max_bach: unknown key; did you mean 'max_batch'"):
        load_settings(overrides=parse_sets(["batcher.max_bach=4"]))


def test_bad_values_and_files_are_clear_errors(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setenv("ROADMINER_SERVER__PORT", "eighty")
    with pytest.raises(ConfigError, match=r"environment ROADMINER_SERVER__PORT: server\.port: .*integer"):
        load_settings()
    monkeypatch.delenv("ROADMINER_SERVER__PORT")
    with pytest.raises(ConfigError, match="unknown tier kind 'clasifier'"):
        load_settings(_yaml(tmp_path, "cascade:\n  tiers:\n    - {name: a, kind: clasifier}\n"))
    with pytest.raises(ConfigError, match="tier names must be unique"):
        load_settings(_yaml(tmp_path, "cascade:\n  tiers:\n    - {name: a, kind: colour}\n"
                                      "    - {name: a, kind: colour}\n"))
    with pytest.raises(ConfigError, match=r"bad\.yaml is not valid YAML"):
        load_settings(_yaml(tmp_path, "server: [1, 2\n", "bad.yaml"))
    with pytest.raises(ConfigError, match="must hold a mapping"):
        load_settings(_yaml(tmp_path, "- 1\n", "list.yaml"))
    with pytest.raises(FileNotFoundError):
        load_settings(tmp_path / "missing.yaml")


# ---------------------------------------------------------------- roadminer config show
def test_config_show_prints_values_and_their_layers(tmp_path: Path, monkeypatch) -> None:
    cfg = _yaml(tmp_path, "server:\n  port: 9000\n  host: 127.0.0.1\nstate:\n  backend: redis\n")
    monkeypatch.setenv("ROADMINER_SERVER__PORT", "8091")
    runner = CliRunner()
    res = runner.invoke(app, ["config", "show", "--config", str(cfg), "--set", "batcher.max_batch=8",
                              "server", "state.backend", "batcher.max_batch", "cascade.tiers"])
    assert res.exit_code == 0, res.output
    lines = {ln.split(" = ")[0]: ln for ln in res.output.splitlines() if " = " in ln}
    assert lines["server.port"].split("#")[-1].strip() == "env:ROADMINER_SERVER__PORT"
    assert lines["server.port"].startswith("server.port = 8091 ")
    assert lines["server.host"].endswith(f"# yaml:{cfg}") and '"127.0.0.1"' in lines["server.host"]
    assert lines["server.request_deadline_s"].endswith("# default")
    assert lines["state.backend"].endswith(f"# yaml:{cfg}")
    assert lines["batcher.max_batch"].startswith("batcher.max_batch = 8 ") and lines["batcher.max_batch"].endswith(
        "# cli")
    # Tier options are listed in full: the typed defaults the tier is built with.
    assert lines["cascade.tiers[0].options.batch_size"].startswith("cascade.tiers[0].options.batch_size = 64 ")
    assert "batcher.max_wait_ms" not in lines  # only the keys asked for

    js = runner.invoke(app, ["config", "show", "--config", str(cfg), "--json"])
    assert js.exit_code == 0, js.output
    values = json.loads(js.output)["values"]
    assert values["server.port"] == {"value": 8091, "source": "env:ROADMINER_SERVER__PORT"}
    assert values["wallet.name"] == {"value": "roadminer", "source": "default"}


def test_config_show_refuses_a_bad_config(tmp_path: Path) -> None:
    cfg = _yaml(tmp_path, "server:\n  prot: 1\n")
    res = CliRunner().invoke(app, ["config", "show", "--config", str(cfg)])
    assert res.exit_code == 2
    assert f"{cfg}: server.prot: unknown key" in res.output


def test_miner_start_stops_on_an_unknown_key_with_the_reason(tmp_path: Path) -> None:
    """The real entry point: exit status 2 and the key and file on stderr, no traceback, nothing served."""
    cfg = _yaml(tmp_path, "server:\n  port: 0\ncascade:\n  tiers:\n    - {name: c, kind: classifier, "
                          "options: {devcie: cpu}}\n")
    env = {k: v for k, v in os.environ.items() if not k.upper().startswith("ROADMINER_")}
    env["PYTHONPATH"] = str(REPO / "src") + os.pathsep + env.get("PYTHONPATH", "")
    proc = subprocess.run([sys.executable, str(REPO / "neurons" / "miner.py"), "--config", str(cfg)],
                          capture_output=True, text=True, timeout=120, env=env, cwd=tmp_path)
    assert proc.returncode == 2, proc.stderr[-2000:]
    assert f"{cfg}: cascade.tiers[0].options.devcie: unknown option" in proc.stderr
    assert "Traceback" not in proc.stderr
