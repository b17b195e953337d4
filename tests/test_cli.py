"""The `captioner` command end to end on a tiny run: demo, evaluate, caption, help and errors."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest
from PIL import Image

import captioner
from captioner.cli import main
from captioner.config import DecodeConfig
from tests.test_training import TINY

TINY_DEMO = [arg for override in TINY for arg in ("--set", override)]


@pytest.fixture(scope="module")
def demo_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("demo")
    assert main(["demo", "--out", str(out), "--quiet", "--examples", "2", *TINY_DEMO]) == 0
    return out


@pytest.mark.slow
def test_demo_writes_metrics_model_and_pictures(demo_run):
    metrics = json.loads((demo_run / "metrics.json").read_text())
    for key in ("Bleu_1", "Bleu_2", "Bleu_3", "Bleu_4"):
        assert 0.0 <= metrics[key] <= 1.0
    assert 0.0 <= metrics["attention_accuracy"] <= 1.0
    assert metrics["estimator"] == "wsram" and metrics["split"] == "test" and metrics["beam_size"] == 3
    assert metrics["wall_seconds"] > 0
    assert len(metrics["validation"]) == 2
    for name in ("config.json", "model.safetensors", "decoding.json", "training_config.yaml"):
        assert (demo_run / "model" / name).is_file()
    assert (demo_run / "learning_curves.png").stat().st_size > 1000
    records = [json.loads(line) for line in (demo_run / "captions.jsonl").read_text().splitlines()]
    assert len(records) == 2
    assert len(list((demo_run / "attention").glob("*.png"))) == 2


@pytest.mark.slow
def test_saved_model_round_trip_gives_identical_captions(demo_run, tmp_path):
    import torch

    from captioner.models.decode import beam_search

    model = captioner.load(demo_run / "model")
    model.save_pretrained(tmp_path / "again")
    again = captioner.load(tmp_path / "again")
    images = torch.randn(3, 3, model.image_size, model.image_size)
    with torch.no_grad():
        a = beam_search(model, model.encode(images), DecodeConfig(beam_size=3, max_length=6))
        b = beam_search(again, again.encode(images), DecodeConfig(beam_size=3, max_length=6))
    assert [x.tokens for x in a] == [x.tokens for x in b]
    assert [x.log_prob for x in a] == [x.log_prob for x in b]


@pytest.mark.slow
def test_caption_command_reads_images_and_skips_bad_ones(demo_run, tmp_path, capsys):
    folder = tmp_path / "images"
    (folder / "sub").mkdir(parents=True)
    rng = np.random.default_rng(0)
    Image.fromarray(rng.integers(0, 255, (50, 70, 3), dtype=np.uint8)).save(folder / "a.jpg")
    Image.fromarray(rng.integers(0, 255, (40, 40), dtype=np.uint8), mode="L").save(folder / "sub" / "b.png")
    Image.fromarray(rng.integers(0, 255, (30, 30, 4), dtype=np.uint8), mode="RGBA").save(folder / "c.webp")
    (folder / "broken.jpg").write_bytes(b"not an image")
    output = tmp_path / "captions.jsonl"
    code = main(["caption", str(demo_run / "model"), str(folder), "--output", str(output),
                 "--attention-dir", str(tmp_path / "att"), "--beam-size", "2"])
    assert code == 0
    records = [json.loads(line) for line in output.read_text().splitlines()]
    assert sorted(r["file"].rsplit("/", 1)[-1] for r in records) == ["a.jpg", "b.png", "c.webp"]
    for record in records:
        assert set(record) == {"file", "caption", "words"}
        assert len(record["words"]) == len(record["caption"].split())
        for word in record["words"]:
            assert set(word) == {"word", "location", "location_prob", "word_prob"}
            assert 0 <= word["location"] < 9 and 0 < word["location_prob"] <= 1 and 0 < word["word_prob"] <= 1
    assert "broken.jpg" in capsys.readouterr().err
    assert len(list((tmp_path / "att").glob("*.png"))) == 3


@pytest.mark.slow
def test_evaluate_command(demo_run, tmp_path):
    out = tmp_path / "scores.json"
    assert main(["evaluate", str(demo_run / "model"), "--split", "val", "--beam-size", "1",
                 "--samples", "2", "--out", str(out)]) == 0
    scores = json.loads(out.read_text())
    assert scores["split"] == "val" and scores["beam_size"] == 1
    assert 0.0 <= scores["Bleu_4"] <= 1.0 and len(scores["captions"]) == 4


def test_errors_are_reported_not_raised(tmp_path, capsys):
    assert main(["train", "--out", str(tmp_path), "--set", "train.epochs=0"]) == 2
    assert "train.epochs" in capsys.readouterr().err
    assert main(["caption", str(tmp_path / "no-model"), "x.png"]) == 2
    assert "config.json" in capsys.readouterr().err


def test_help_runs_as_a_console_command():
    result = subprocess.run([sys.executable, "-m", "captioner.cli", "--help"], capture_output=True, text=True)
    assert result.returncode == 0
    for command in ("demo", "train", "evaluate", "caption"):
        assert command in result.stdout


def test_train_check_config_prints_the_settings_and_writes_nothing(tmp_path, capsys):
    import yaml

    out = tmp_path / "run"
    assert main(["train", "--out", str(out), "--check-config", "--set", "model.glimpses_per_word=2",
                 "--estimator", "var"]) == 0
    printed = capsys.readouterr()
    settings = yaml.safe_load(printed.out)
    assert settings["model"]["glimpses_per_word"] == 2 and settings["estimator"]["name"] == "var"
    assert "nothing was trained" in printed.err and not out.exists()
    assert main(["train", "--out", str(out), "--check-config", "--estimator", "soft",
                 "--set", "model.glimpses_per_word=2"]) == 2
    assert "model.glimpses_per_word: soft attention's glimpse" in capsys.readouterr().err and not out.exists()
