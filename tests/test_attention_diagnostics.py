"""The research scripts of issue 16 on tiny models: the look-away probe, VAR's prior signal and the
demo results table."""

from __future__ import annotations

import importlib
import json

import pytest
import torch

from captioner.config import load_config
from captioner.data.datasets import load_dataset
from captioner.models.captioner import CaptionModel
from captioner.data.vocabulary import Vocabulary
from tests.test_training import TINY



def _script(name: str):
    return importlib.import_module(f"research.{name}")


@pytest.fixture(scope="module")
def scenes():
    config = load_config(overrides=TINY)
    splits = load_dataset(config.data, config.model)
    captions = [c for caps in splits["train"].captions for c in caps]
    vocabulary = Vocabulary.build(captions, config.data.min_word_count)
    return config, splits, vocabulary


def _blind(model: CaptionModel) -> CaptionModel:
    """Words independent of the glimpse: LSTM input weights and deep-output weights of z_t zeroed."""
    with torch.no_grad():
        model.decoder.lstm.weight_ih_l0[:, model.config.embedding_dim:] = 0.0
        model.decoder.out_glimpse.weight.zero_()
    return model


def test_oracle_path_follows_the_objects():
    probe = _script("lookaway_probe")
    cells = torch.tensor([[-1, 4, 4, -1, -1, 7, -1], [-1, -1, -1, -1, -1, -1, -1]])
    assert probe.oracle_path(cells).tolist() == [[4, 4, 4, 4, 4, 7, 7], [0, 0, 0, 0, 0, 0, 0]]


def test_lookaway_probe_on_a_model_blind_to_its_glimpse(scenes):
    probe = _script("lookaway_probe")
    config, splits, vocabulary = scenes
    torch.manual_seed(0)
    model = _blind(CaptionModel(config.model, vocabulary, config.data.scenes.image_size))
    record = probe.probe(model, splits["val"], "cpu", images=4)
    total = record["posterior_true"] + record["posterior_empty"] + record["posterior_other_object"]
    assert total == pytest.approx(1.0, abs=1e-5)
    # the glimpse cannot change the words, and a uniform prior (the default init) weighs every cell alike
    assert record["glimpse_gain_true_vs_empty"] == pytest.approx(0.0, abs=1e-5)
    assert record["posterior_true"] == pytest.approx(1 / 9, abs=1e-4)
    assert 0.0 <= record["prior_accuracy"] <= 1.0 and "proposal_accuracy" in record
    assert model.training  # the probe puts the model back as it found it


def test_var_signal_is_zero_when_the_words_ignore_the_glimpse(scenes):
    signal = _script("var_signal")
    config, splits, vocabulary = scenes
    torch.manual_seed(0)
    config.model.uniform_attention_init = False  # a prior that is not uniform, so grad log pi != 0
    model = _blind(CaptionModel(config.model, vocabulary, config.data.scenes.image_size))
    report = signal.measure(model, splits["val"], "cpu", captions=12, paths=4)
    assert report["reward_std_within_caption"] == pytest.approx(0.0, abs=1e-5)
    assert report["reinforce_per_caption_baseline"]["signal_norm"] == pytest.approx(0.0, abs=1e-6)
    assert report["reinforce_moving_average_baseline"]["noise_norm"] > 0.0  # the baseline leaves caption noise
    assert report["entropy_bonus_gradient_norm"] > 0.0
    torch.manual_seed(0)
    seeing = CaptionModel(config.model, vocabulary, config.data.scenes.image_size)
    assert signal.measure(seeing, splits["val"], "cpu", captions=12, paths=4)["reward_std_within_caption"] > 1e-4


def test_demo_results_table_and_readme_block(tmp_path):
    results = _script("demo_results")
    assert results.parse_seeds("0-2,5") == [0, 1, 2, 5]
    out = tmp_path / "seeds"
    for seed, (bleu, accuracy) in enumerate([(0.85, 0.95), (0.79, 0.97)]):
        folder = out / f"seed-{seed}"
        folder.mkdir(parents=True)
        (folder / "metrics.json").write_text(json.dumps({
            "Bleu_1": 0.9, "Bleu_2": 0.88, "Bleu_3": 0.86, "Bleu_4": bleu, "attention_accuracy": accuracy,
            "bound_prior": -5.0, "wall_seconds": 100.0 + seed, "train_seconds": 80.0,
            "config": {"train": {"device": "cpu"}}}))
    readme = tmp_path / "README.md"
    readme.write_text(f"intro\n{results.START}\nold table\n{results.END}\noutro\n")
    assert results.main(["--seeds", "0-1", "--out", str(out), "--summarise", "--readme", str(readme)]) == 0
    text = readme.read_text()
    assert "old table" not in text and text.startswith("intro\n") and text.endswith("outro\n")
    assert "| 1 | 0.900 | 0.880 | 0.860 | 0.790 | 0.970 |" in text
    assert "0.820 (0.790..0.850)" in text and "1 of 2 seeds reach" in text
    summary = json.loads((out / "summary.json").read_text())
    assert [r["seed"] for r in summary["runs"]] == [0, 1]
    with pytest.raises(SystemExit, match="missing"):
        results.main(["--seeds", "0-2", "--out", str(out), "--summarise"])
