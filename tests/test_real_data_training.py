"""Data sets on disk, end to end: extract a feature cache with the real EfficientNet-Lite0, train all
three estimators on it, score the test split, caption a JPEG with the saved model; fine-tuning, and
the last blocks trained on a cache of an earlier tap (model.encoder.tune_to)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from captioner.cli import main
from captioner.config import load_config
from captioner.data.feature_cache import CacheMismatchError
from captioner.train import Trainer

WORDS = "a dog cat man woman runs sits on the grass beach red blue ball with plays near water".split()


@pytest.fixture(scope="module")
def tiny_flickr(tmp_path_factory) -> Path:
    """A Flickr8k-layout folder: 8 train, 3 dev, 3 test images with 5 captions each, one corrupt JPEG."""
    root = tmp_path_factory.mktemp("flickr")
    images = root / "Flicker8k_Dataset"
    text = root / "Flickr8k_text"
    images.mkdir()
    text.mkdir()
    rng = np.random.default_rng(0)
    names = {"train": [f"tr{i}" for i in range(8)], "dev": [f"dv{i}" for i in range(3)],
             "test": [f"te{i}" for i in range(3)]}
    lines = []
    for split, stems in names.items():
        (text / f"Flickr_8k.{split}Images.txt").write_text("".join(f"{s}.jpg\n" for s in stems))
        for stem in stems:
            path = images / f"{stem}.jpg"
            if stem == "tr7":
                path.write_bytes(b"\xff\xd8\xff not really a jpeg")
            else:
                pixels = rng.integers(0, 255, (80, 96, 3), dtype=np.uint8)
                Image.fromarray(pixels).save(path, quality=90)
            for k in range(5):
                words = rng.choice(WORDS, size=rng.integers(4, 9))
                lines.append(f"{stem}.jpg#{k}\t{' '.join(words).capitalize()} .")
    (text / "Flickr8k.token.txt").write_text("\n".join(lines) + "\n")
    return root


TINY_MODEL = ["model.encoder.image_size=64", "model.encoder.feature_dim=16", "model.embedding_dim=16",
              "model.hidden_dim=24", "model.attention_dim=8", "model.proposal_hidden_dim=8",
              "data.min_word_count=1", "train.batch_size=4", "train.epochs=1", "train.device=cpu",
              "train.validation_samples=2", "decode.beam_size=2", "decode.max_length=8"]


def _base(root: Path, cache: Path) -> list[str]:
    return [f"data.root={root}", f"data.features={cache}", *TINY_MODEL]


@pytest.fixture(scope="module")
def cache(tiny_flickr, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("cache") / "block15"
    args = ["extract", "--config", "eval/flickr8k/wsram.yaml", "--quiet", "--shard-size", "5", "--workers", "2"]
    for item in _base(tiny_flickr, out):
        args += ["--set", item]
    assert main(args) == 0
    return out


@pytest.mark.slow
def test_extract_writes_a_complete_cache_and_counts_the_corrupt_image(cache):
    manifest = json.loads((cache / "manifest.json").read_text())
    assert manifest["complete"] and manifest["images_planned"] == 14 and manifest["images_stored"] == 13
    assert manifest["skipped"]["counts"] == {"unreadable image": 1}
    assert manifest["encoder"]["name"] == "efficientnet-lite0" and manifest["encoder"]["layer"] == "block15"
    assert manifest["num_locations"] == 4 and manifest["channels"] == 320  # 64 px / 32 = 2x2 grid
    report = json.loads((cache / "extraction.json").read_text())
    assert report["images_per_second"] > 0 and report["splits"] == {"train": 8, "val": 3, "test": 3}


@pytest.mark.slow
@pytest.mark.parametrize("estimator", ["wsram", "var", "soft"])
def test_each_estimator_trains_on_cached_features_and_scores_the_test_split(estimator, tiny_flickr, cache, tmp_path):
    out = tmp_path / estimator
    args = ["train", "--config", f"eval/flickr8k/{estimator}.yaml", "--out", str(out), "--quiet"]
    for item in _base(tiny_flickr, cache):
        args += ["--set", item]
    with pytest.warns(UserWarning, match="not in the feature cache"):
        assert main(args) == 0
    metrics = json.loads((out / "metrics.json").read_text())
    assert (metrics["dataset"], metrics["split"], metrics["estimator"], metrics["beam_size"]) == (
        "flickr8k", "test", estimator, 2)
    for key in ("Bleu_1", "Bleu_4", "ROUGE_L", "CIDEr", "bound_prior"):
        assert np.isfinite(metrics[key]), key
    assert "attention_accuracy" not in metrics  # only the built-in data knows where objects are
    captions = json.loads((out / "test_captions.json").read_text())
    assert sorted(c["image_id"] for c in captions) == ["te0", "te1", "te2"]
    log = [json.loads(line) for line in (out / "log.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in log if r["type"] == "validation"] == [1]
    assert (out / "learning_curves.png").is_file()
    if estimator == "wsram":
        # The saved model carries its backbone: it captions a JPEG from pixels.
        caption_out = tmp_path / "captions.jsonl"
        assert main(["caption", str(out / "model"), str(tiny_flickr / "Flicker8k_Dataset" / "te0.jpg"),
                     "--output", str(caption_out)]) == 0
        record = json.loads(caption_out.read_text())
        assert record["file"].endswith("te0.jpg") and all(0 <= w["location"] < 4 for w in record["words"])


@pytest.mark.slow
def test_training_refuses_a_cache_of_another_layer(tiny_flickr, cache, tmp_path):
    config = load_config("eval/flickr8k/wsram.yaml", _base(tiny_flickr, cache) + ["model.encoder.layer=head"])
    with pytest.raises(CacheMismatchError, match="layer"), pytest.warns(UserWarning, match="not in the feature cache"):
        Trainer(config, tmp_path / "run")


@pytest.mark.slow
def test_fine_tuning_trains_the_backbone_from_images_and_keeps_batch_norm_statistics(tiny_flickr, tmp_path):
    config = load_config("eval/flickr8k/wsram.yaml", _base(tiny_flickr, Path("unused")) + [
        "data.features=", "model.encoder.fine_tune=true"])
    with pytest.warns(UserWarning, match="unreadable image"):
        trainer = Trainer(config, tmp_path / "run")
    backbone = trainer.model.encoder.backbone
    weights = {k: v.clone() for k, v in backbone.named_parameters()}
    buffers = {k: v.clone() for k, v in backbone.named_buffers() if "running" in k}
    assert buffers, "the backbone has batch-norm statistics"
    train = trainer.splits["train"]
    assert train.input_kind == "images" and len(train) == 7
    batch = train.batch(range(4), trainer.vocabulary, 16)
    assert batch.inputs.dtype == torch.uint8 and batch.inputs.shape == (4, 3, 64, 64)
    trainer.model.train()
    trainer.train_step(batch)
    changed = [k for k, v in backbone.named_parameters() if not torch.equal(v, weights[k])]
    assert changed, "fine-tuning must update backbone weights"
    for key, value in backbone.named_buffers():
        if key in buffers:
            assert torch.equal(value, buffers[key]), f"{key}: batch-norm statistics must stay frozen"
    groups = trainer.optimizer.param_groups
    assert [g["lr_scale"] for g in groups] == [1.0, config.model.encoder.fine_tune_lr_scale]


@pytest.mark.slow
def test_tune_to_trains_the_last_blocks_on_a_cache_of_an_earlier_tap(tiny_flickr, tmp_path):
    cache = tmp_path / "block10"
    base = _base(tiny_flickr, cache) + ["model.encoder.layer=block10"]
    args = ["extract", "--config", "eval/flickr8k/wsram.yaml", "--quiet", "--workers", "2"]
    for item in base:
        args += ["--set", item]
    assert main(args) == 0
    manifest = json.loads((cache / "manifest.json").read_text())
    assert (manifest["encoder"]["layer"], manifest["num_locations"], manifest["channels"]) == ("block10", 16, 112)

    config = load_config("eval/flickr8k/wsram.yaml", base + ["model.encoder.tune_to=block15"])
    with pytest.warns(UserWarning, match="not in the feature cache"):
        trainer = Trainer(config, tmp_path / "probe")
    encoder = trainer.model.encoder
    assert trainer.model.num_locations == 4  # the decoder reads block15's 2 x 2 grid
    groups = trainer.optimizer.param_groups
    assert [g["lr_scale"] for g in groups] == [1.0, config.model.encoder.fine_tune_lr_scale]
    assert {id(p) for p in groups[1]["params"]} == {id(p) for p in encoder.tuned.parameters()}
    assert not any(p.requires_grad for p in encoder.backbone.parameters())
    tuned = {k: v.clone() for k, v in encoder.tuned.state_dict().items()}
    backbone_hash = encoder.backbone.weights_hash()
    trainer.model.train()
    trainer.train_step(trainer.splits["train"].batch(range(4), trainer.vocabulary, 16))
    after = encoder.tuned.state_dict()
    assert any(not torch.equal(after[k], v) for k, v in tuned.items() if "running" not in k), "tuned blocks learn"
    assert all(torch.equal(after[k], v) for k, v in tuned.items() if "running" in k), "BatchNorm statistics stay"
    assert encoder.backbone.weights_hash() == backbone_hash

    out = tmp_path / "run"
    args = ["train", "--config", "eval/flickr8k/wsram.yaml", "--out", str(out), "--quiet"]
    for item in base + ["model.encoder.tune_to=block15"]:
        args += ["--set", item]
    with pytest.warns(UserWarning, match="not in the feature cache"):
        assert main(args) == 0
    assert np.isfinite(json.loads((out / "metrics.json").read_text())["Bleu_4"])
    caption_out = tmp_path / "captions.jsonl"  # from pixels: the backbone to block10, then the tuned blocks
    assert main(["caption", str(out / "model"), str(tiny_flickr / "Flicker8k_Dataset" / "te0.jpg"),
                 "--output", str(caption_out)]) == 0
    assert all(0 <= w["location"] < 4 for w in json.loads(caption_out.read_text())["words"])


@pytest.mark.slow
def test_grids_beyond_the_preload_limit_are_read_from_the_memory_mapped_shards(tiny_flickr, cache):
    from captioner.data.datasets import load_dataset

    config = load_config("eval/flickr8k/wsram.yaml", _base(tiny_flickr, cache))
    small = load_config("eval/flickr8k/wsram.yaml", _base(tiny_flickr, cache) + ["data.preload_limit_gib=0"])
    with pytest.warns(UserWarning):
        loaded = load_dataset(config.data, config.model)["test"].inputs
    with pytest.warns(UserWarning):
        mapped = load_dataset(small.data, small.model)["test"].inputs
    assert loaded.loaded is not None and mapped.loaded is None
    torch.testing.assert_close(mapped[[2, 0]], loaded[[2, 0]])
