"""Config loading, overrides and validation: bad values are rejected with a message naming the key."""

from __future__ import annotations

import dataclasses
import re
import warnings
from pathlib import Path

import pytest
import yaml

from captioner.config import (RENAMED, ConfigError, ConfigRenamedWarning, ExperimentConfig, config_for_estimator,
                              experiment_from_dict, load_config, parse_override)


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
    ("data.scenes.max_objects=0", "data.scenes.max_objects"),
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


def test_sections_say_what_they_are_for():
    config = load_config()
    # the built-in data's settings in their own section, apart from the keys of data sets on disk
    assert {f.name for f in dataclasses.fields(config.data.scenes)} == {
        "train_size", "val_size", "test_size", "image_size", "min_objects", "max_objects", "seed"}
    assert not {"train_size", "image_size", "seed"} & {f.name for f in dataclasses.fields(config.data)}
    # the experiment switches under one section, none left beside the product settings
    switches = {"proposal_source", "prior_control_variate", "prior_update", "layout", "attention_kernel"}
    assert {f.name for f in dataclasses.fields(config.research)} == switches
    for section in (config.data, config.model, config.estimator, config.train, config.decode):
        assert not switches & {f.name for f in dataclasses.fields(section)}
    assert set(RENAMED.values()) <= {f"data.scenes.{f.name}" for f in dataclasses.fields(config.data.scenes)} | {
        f"research.{name}" for name in switches}


def test_old_key_names_still_load_with_a_warning_naming_the_new_one(tmp_path):
    old = tmp_path / "old.yaml"
    old.write_text("data:\n  train_size: 12\n  seed: 3\nestimator:\n  prior_update: expected\n  layout: stepwise\n"
                   "train:\n  attention_kernel: inductor\n")
    with pytest.warns(ConfigRenamedWarning) as caught:
        config = load_config(old, ["estimator.proposal_source=model"])
    messages = " | ".join(str(w.message) for w in caught)
    for old_key, new_key in (("data.train_size", "data.scenes.train_size"), ("estimator.layout", "research.layout"),
                             ("train.attention_kernel", "research.attention_kernel")):
        assert f"{old_key} is now {new_key}" in messages
    assert str(old) in messages and "--set estimator.proposal_source=model" in messages
    assert (config.data.scenes.train_size, config.data.scenes.seed) == (12, 3)
    assert (config.research.prior_update, config.research.layout, config.research.attention_kernel) == (
        "expected", "stepwise", "inductor")
    # the old name and the new one together: refused, naming both
    both = tmp_path / "both.yaml"
    both.write_text("data:\n  train_size: 12\n  scenes:\n    train_size: 13\n")
    with pytest.raises(ConfigError, match=r"data.train_size: renamed to data.scenes.train_size"):
        load_config(both)


def test_recorded_configs_of_earlier_versions_still_load():
    recorded = sorted(Path(__file__).parents[1].glob("eval/**/config.yaml"))
    assert recorded, "the recorded runs in eval/ carry their configs"
    for path in recorded[:40]:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", ConfigRenamedWarning)
            config = experiment_from_dict(yaml.safe_load(path.read_text()), str(path))
        assert isinstance(config, ExperimentConfig), path


def test_no_current_config_or_study_file_uses_an_old_name():
    root = Path(__file__).parents[1]
    files = [p for p in root.glob("eval/**/*.yaml") if p.name not in ("config.yaml", "run_config.yaml")]
    assert any(p.parent.name == "flickr8k" for p in files) and any(p.parent.name == "efficiency" for p in files)
    for path in files:
        if path.parent.name == "flickr8k":  # experiment configs: load without a rename warning
            with warnings.catch_warnings():
                warnings.simplefilter("error", ConfigRenamedWarning)
                load_config(path, ["data.root=x", "data.features=y"])
        text = path.read_text()  # study files: their `set:` overrides use the new names
        for old in RENAMED:
            assert not re.search(rf"\b{re.escape(old)}\b", text), (path, old)
