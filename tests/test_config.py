"""Config: YAML + ACR_* environment, validated with messages naming field and range."""

from __future__ import annotations

from pathlib import Path

import pytest

from router.config import AppConfig, ConfigError, config_to_yaml, load_config

REPO = Path(__file__).resolve().parents[1]


def test_defaults_validate_and_leave_redis_embedded() -> None:
    cfg = load_config(env={})
    assert cfg.redis.url is None
    assert cfg.server.port == 8000
    assert cfg.strategies.effort["high"] in cfg.strategies.budgets


def test_environment_overrides_the_yaml_file(tmp_path: Path) -> None:
    f = tmp_path / "c.yaml"
    f.write_text("server:\n  port: 9001\nredis:\n  url: redis://file:1/0\n")
    cfg = load_config(f, env={"ACR_REDIS_URL": "redis://env:2/0"})
    assert cfg.server.port == 9001
    assert cfg.redis.url == "redis://env:2/0"


def test_nested_values_come_from_json_in_the_environment() -> None:
    cfg = load_config(env={"ACR_MODEL_AUTOSCALING": '{"min_replicas": 1, "max_replicas": 4}'})
    assert cfg.model.autoscaling.max_replicas == 4


def test_an_out_of_range_value_names_the_field_and_the_bound(tmp_path: Path) -> None:
    f = tmp_path / "c.yaml"
    f.write_text("server:\n  port: 70000\n")
    with pytest.raises(ConfigError) as err:
        load_config(f, env={})
    assert "server.port" in str(err.value)
    assert "65535" in str(err.value)


def test_unknown_keys_are_rejected(tmp_path: Path) -> None:
    f = tmp_path / "c.yaml"
    f.write_text("server:\n  prot: 1\n")
    with pytest.raises(ConfigError, match="server.prot"):
        load_config(f, env={})


def test_an_unknown_strategy_in_the_effort_map_lists_the_valid_ones(tmp_path: Path) -> None:
    f = tmp_path / "c.yaml"
    f.write_text("strategies:\n  effort:\n    high: brute_force\n")
    with pytest.raises(ConfigError, match="valid: single_pass"):
        load_config(f, env={})


def test_cross_field_checks_quote_both_values() -> None:
    with pytest.raises(ConfigError, match=r"max_replicas \(1\) must be >= min_replicas \(3\)"):
        load_config(env={"ACR_MODEL_AUTOSCALING": '{"min_replicas": 3, "max_replicas": 1}'})


def test_a_missing_file_and_bad_yaml_are_clear_errors(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="does not exist"):
        load_config(tmp_path / "nope.yaml", env={})
    bad = tmp_path / "bad.yaml"
    bad.write_text("server: [unclosed\n")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_config(bad, env={})


def test_the_example_config_documents_every_field_and_loads() -> None:
    example = REPO / "config.example.yaml"
    cfg = load_config(example, env={})
    text = example.read_text()
    dumped = AppConfig().model_dump()
    for section, fields in dumped.items():
        assert f"{section}:" in text, section
        for name in fields:
            assert f"{name}:" in text, f"{section}.{name} is not documented in the example"
    assert isinstance(cfg, AppConfig)


def test_the_dumped_yaml_round_trips(tmp_path: Path) -> None:
    cfg = load_config(env={"ACR_SERVER_PORT": "8123"})
    f = tmp_path / "round.yaml"
    f.write_text(config_to_yaml(cfg))
    assert load_config(f, env={}) == cfg


def test_a_strategy_option_is_set_from_config_and_a_bad_value_is_refused() -> None:
    cfg = load_config(env={"ACR_STRATEGIES_OPTIONS": '{"self_consistency": {"rule": "settled"}}'})
    assert cfg.strategies.strategy("self_consistency").rule == "settled"  # type: ignore[attr-defined]
    with pytest.raises(ConfigError, match="unknown stopping rule 'fancy'; valid: settled, beta"):
        load_config(env={"ACR_STRATEGIES_OPTIONS": '{"self_consistency": {"rule": "fancy"}}'})
