"""Config loading, overrides and validation: bad values are rejected with a message naming the key."""

from __future__ import annotations

import pytest

from captioner.config import ConfigError, ExperimentConfig, config_for_estimator, load_config, parse_override


def test_defaults_are_valid_and_overrides_apply(tmp_path):
    config = load_config()
    assert isinstance(config, ExperimentConfig)
    assert config.estimator.name == "wsram" and config.estimator.samples == 5
    path = tmp_path / "c.yaml"
    path.write_text("train:\n  epochs: 3\nmodel:\n  encoder:\n    feature_dim: 32\n")
    config = load_config(path, ["train.epochs=5", "estimator.control_variates=false"])
    assert config.train.epochs == 5
    assert config.model.encoder.feature_dim == 32
    assert config.estimator.control_variates is False


def test_round_trip_through_yaml(tmp_path):
    config = load_config(overrides=["train.learning_rate=0.01", "decode.beam_size=5"])
    config.save(tmp_path / "saved.yaml")
    assert load_config(tmp_path / "saved.yaml") == config


@pytest.mark.parametrize("override,key", [
    ("train.epochs=0", "train.epochs"),
    ("train.epochs=three", "train.epochs"),
    ("train.learning_rate=-1", "train.learning_rate"),
    ("estimator.name=reinforce", "estimator.name"),
    ("estimator.samples=0", "estimator.samples"),
    ("estimator.defensive_weight=1.5", "estimator.defensive_weight"),
    ("estimator.control_variates=maybe", "estimator.control_variates"),
    ("model.hiden_dim=3", "model.hiden_dim"),
    ("model.dropout=1.0", "model.dropout"),
    ("model.encoder.grid=0", "model.encoder.grid"),
    ("decode.attention_mode=random", "decode.attention_mode"),
    ("train.device=tpu", "train.device"),
    ("data.max_objects=0", "data.max_objects"),
    ("model.proposal=none", "model.proposal"),
    ("model.attention=soft", "estimator.name"),
])
def test_bad_values_name_their_key(override, key):
    with pytest.raises(ConfigError) as error:
        load_config(overrides=[override])
    assert str(error.value).startswith(key)


def test_bad_files_are_reported(tmp_path):
    with pytest.raises(ConfigError, match="not found"):
        load_config(tmp_path / "missing.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("train: [1, 2\n")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_config(bad)
    listing = tmp_path / "list.yaml"
    listing.write_text("- 1\n- 2\n")
    with pytest.raises(ConfigError, match="mapping"):
        load_config(listing)
    with pytest.raises(ConfigError, match="section.key=value"):
        parse_override("epochs")


def test_estimator_presets_fit_their_models():
    soft = load_config(base=config_for_estimator("soft"))
    assert soft.model.attention == "soft" and soft.model.proposal == "none"
    var = load_config(base=config_for_estimator("var"))
    assert var.model.attention == "hard" and var.model.proposal == "none"
    wsram = load_config(base=config_for_estimator("wsram"))
    assert wsram.model.proposal == "factorised"
