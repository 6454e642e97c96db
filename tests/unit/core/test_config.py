from pathlib import Path

import pytest

from roadminer.core.config import Settings, dotted_to_nested, load_settings


def test_defaults() -> None:
    s = Settings()
    assert s.server.port == 8091
    assert s.state.backend == "memory"
    assert s.cascade.tiers, "the default cascade has at least one tier"


def test_precedence_yaml_env_cli(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    cfg = tmp_path / "m.yaml"
    cfg.write_text("server:\n  port: 9000\n  request_deadline_s: 7.5\nguards:\n  min_stake: 5\n")
    s = load_settings(cfg)
    assert (s.server.port, s.server.request_deadline_s, s.guards.min_stake) == (9000, 7.5, 5)
    monkeypatch.setenv("ROADMINER_SERVER__PORT", "9100")
    s = load_settings(cfg)
    assert s.server.port == 9100 and s.server.request_deadline_s == 7.5
    s = load_settings(cfg, {"server.port": 9200, "guards.allow_unregistered": True, "state.backend": None})
    assert s.server.port == 9200 and s.guards.allow_unregistered and s.state.backend == "memory"


def test_bad_config_is_a_clear_error(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError):
        load_settings(tmp_path / "missing.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("- 1\n- 2\n")
    with pytest.raises(ValueError, match="mapping"):
        load_settings(bad)


def test_dotted_to_nested() -> None:
    assert dotted_to_nested({"a.b.c": 1, "a.d": 2, "e": None}) == {"a": {"b": {"c": 1}, "d": 2}}
