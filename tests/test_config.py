"""The config schema: defaults, overrides and one-line errors."""

from __future__ import annotations

from pathlib import Path

import pytest

from btard_ray.config import ConfigError, JobConfig, apply_overrides, dump_config, load_config

REPO = Path(__file__).resolve().parents[1]


def test_quickstart_loads_and_names_the_job():
    cfg = load_config(REPO / "configs" / "quickstart.yaml")
    assert cfg.name == "quickstart"
    assert cfg.peers == 6 and cfg.data.name == "digits" and cfg.aggregator.name == "centered_clip"


def test_overrides_are_typed_and_nested():
    cfg = load_config(REPO / "configs" / "quickstart.yaml", ["optimizer.lr=0.1", "peers=4", "aggregator.name=mean", "protocol.checks=false"])
    assert cfg.optimizer.lr == 0.1 and isinstance(cfg.peers, int) and cfg.peers == 4
    assert cfg.aggregator.name == "mean"


def test_name_defaults_to_file_stem(tmp_path):
    path = tmp_path / "my_job.yaml"
    path.write_text("peers: 3\n")
    assert load_config(path).name == "my_job"


def test_dump_round_trips(tmp_path):
    cfg = load_config(REPO / "configs" / "quickstart.yaml", ["steps=7"])
    path = tmp_path / "resolved.yaml"
    path.write_text(dump_config(cfg))
    assert load_config(path) == cfg


@pytest.mark.parametrize(
    "overrides, fragment",
    [
        (["optimizer.lrr=0.1"], "optimizer.lrr: unknown key"),
        (["peers=many"], "peers:"),
        (["aggregator.tau=-1"], "aggregator.tau:"),
        (["aggregator.name=best"], "aggregator.name:"),
        (["aggregator.name=mean"], "protocol.checks needs centered_clip"),
        (["attack.name=nope"], "attack.name: unknown attack"),
        (["attack.name=sign_flip", "attack.count=3"], "honest peers must be a strict majority"),
        (["data.name=idx"], "data.path is required"),
        (["noequals"], "expected dotted.key=value"),
        (["peers.count=3"], "peers is not a mapping"),
    ],
)
def test_bad_values_give_one_line_naming_the_key(overrides, fragment):
    with pytest.raises(ConfigError) as info:
        load_config(REPO / "configs" / "quickstart.yaml", overrides)
    message = str(info.value)
    assert fragment in message
    assert "\n" not in message


def test_missing_file_and_bad_yaml(tmp_path):
    with pytest.raises(ConfigError, match="config file not found"):
        load_config(tmp_path / "nope.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("peers: [1, 2\n")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_config(bad)
    listy = tmp_path / "list.yaml"
    listy.write_text("- 1\n- 2\n")
    with pytest.raises(ConfigError, match="top level must be a mapping"):
        load_config(listy)


def test_apply_overrides_does_not_mutate_input():
    raw = {"optimizer": {"lr": 0.05}}
    result = apply_overrides(raw, ["optimizer.lr=0.2", "model.name=resnet18"])
    assert raw == {"optimizer": {"lr": 0.05}}
    assert result == {"optimizer": {"lr": 0.2}, "model": {"name": "resnet18"}}


def test_defaults_are_valid():
    assert JobConfig().aggregator.params() == {"tau": 5.0, "eps": 1e-6, "max_iters": 500}
