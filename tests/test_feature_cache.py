"""The feature cache: what is stored is what the backbone computed, shards resume, mismatches refuse."""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from torch import nn

from captioner.data.feature_cache import (CacheMismatchError, FeatureCache, dequantize_int8, extract_features,
                                          quantize_int8)
from captioner.data.records import ImageRecord


@dataclass(frozen=True)
class FakeSpec:
    name: str = "fake"
    layer: str = "pool"
    image_size: int = 32
    grid: int = 2
    channels: int = 6
    mean: tuple = (0.5, 0.5, 0.5)
    std: tuple = (0.5, 0.5, 0.5)

    def to_dict(self) -> dict:
        return asdict(self)


class FakeBackbone(nn.Module):
    """A fixed random 1x1 conv over 16x16 average pools: cheap, deterministic, with real arithmetic."""

    def __init__(self, seed: int = 0):
        super().__init__()
        self.spec = FakeSpec()
        self.conv = nn.Conv2d(3, self.spec.channels, 1)
        generator = torch.Generator().manual_seed(seed)
        with torch.no_grad():
            self.conv.weight.copy_(torch.randn(self.conv.weight.shape, generator=generator))
            self.conv.bias.copy_(torch.randn(self.conv.bias.shape, generator=generator))
        self.calls = 0

    def preprocess(self, images: torch.Tensor) -> torch.Tensor:
        return (images.float() / 255.0 - 0.5) / 0.5

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        self.calls += images.shape[0]
        grid = self.conv(nn.functional.avg_pool2d(images, 16))  # (N, C, 2, 2)
        return grid.flatten(2).transpose(1, 2)

    def weights_hash(self) -> str:
        return f"fake{float(self.conv.weight.detach().sum() + self.conv.bias.detach().sum()):.6f}"


def _images(folder: Path, count: int, corrupt: int | None = None) -> list[ImageRecord]:
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    records = []
    for i in range(count):
        path = folder / f"img{i}.jpg"
        if i == corrupt:
            path.write_bytes(b"\xff\xd8\xff\xe0 this is not a jpeg")
        else:
            Image.fromarray(rng.integers(0, 255, (40, 48, 3), dtype=np.uint8)).save(path, quality=95)
        records.append(ImageRecord(f"img{i}", path, ("a caption",), "train"))
    return records


def _direct(backbone: FakeBackbone, record: ImageRecord) -> np.ndarray:
    from captioner.data.images import read_image

    pixels = torch.from_numpy(read_image(record.path, 32)).permute(2, 0, 1)[None]
    with torch.no_grad():
        return backbone(backbone.preprocess(pixels))[0].numpy()


def test_cache_stores_what_the_backbone_computes_and_skips_a_corrupt_image(tmp_path):
    records = _images(tmp_path / "images", 7, corrupt=3)
    backbone = FakeBackbone()
    report = extract_features(records, backbone, tmp_path / "cache", shard_size=3, batch_size=2, workers=2)
    assert report.written == 6 and report.skipped.counts["unreadable image"] == 1
    assert "img3.jpg" in report.skipped.examples["unreadable image"][0]
    cache = FeatureCache(tmp_path / "cache")
    manifest = json.loads((tmp_path / "cache" / "manifest.json").read_text())
    assert manifest["complete"] and manifest["images_stored"] == 6 and manifest["skipped"]["total"] == 1
    assert manifest["encoder"] == json.loads(json.dumps(FakeSpec().to_dict())) and len(manifest["shards"]) == 3
    assert "img3" not in cache and len(cache) == 6
    got = cache.get(["img5", "img0"]).numpy()
    for row, name in zip(got, ("img5", "img0")):
        expected = _direct(backbone, records[int(name[3:])])
        np.testing.assert_allclose(row, expected, rtol=2e-3, atol=2e-3)  # float16 storage


def test_int8_storage_keeps_features_within_half_a_step(tmp_path):
    rng = np.random.default_rng(1)
    features = rng.normal(size=(4, 5, 6)).astype(np.float32) * rng.uniform(0.01, 10, size=(1, 1, 6))
    q, scale = quantize_int8(features)
    assert q.dtype == np.int8 and scale.shape == (4, 6)
    error = np.abs(dequantize_int8(q, scale) - features)
    assert np.all(error <= scale.astype(np.float32)[:, None, :] * 0.5 + 1e-3 * np.abs(features))

    records = _images(tmp_path / "images", 3)
    backbone = FakeBackbone()
    extract_features(records, backbone, tmp_path / "cache8", storage="int8", shard_size=2)
    got = FeatureCache(tmp_path / "cache8").get(["img1"]).numpy()[0]
    expected = _direct(backbone, records[1])
    cosine = (got * expected).sum() / np.linalg.norm(got) / np.linalg.norm(expected)
    assert cosine > 0.999
    assert (tmp_path / "cache8" / "shard-00000.scale.npy").is_file()


def test_a_rerun_skips_finished_shards_and_completes_the_rest(tmp_path):
    records = _images(tmp_path / "images", 5)
    out = tmp_path / "cache"
    extract_features(records, FakeBackbone(), out, shard_size=2)
    reference = FeatureCache(out).get(["img4"]).numpy()
    (out / "shard-00002.json").unlink()  # as if the run died while writing the last shard
    manifest = json.loads((out / "manifest.json").read_text())
    manifest["complete"] = False
    (out / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(ValueError, match="incomplete"):
        FeatureCache(out)
    backbone = FakeBackbone()
    report = extract_features(records, backbone, out, shard_size=2)
    assert report.shards_skipped == 2 and report.shards_done == 1 and backbone.calls == 1
    np.testing.assert_array_equal(FeatureCache(out).get(["img4"]).numpy(), reference)


def test_a_cache_refuses_other_weights_other_images_and_other_encoders(tmp_path):
    records = _images(tmp_path / "images", 3)
    out = tmp_path / "cache"
    extract_features(records, FakeBackbone(seed=0), out, shard_size=2)
    with pytest.raises(CacheMismatchError, match="weights_hash"):
        extract_features(records, FakeBackbone(seed=1), out, shard_size=2)
    with pytest.raises(CacheMismatchError, match="plan_hash"):
        extract_features(records[:2], FakeBackbone(seed=0), out, shard_size=2)
    cache = FeatureCache(out)
    cache.check_encoder(FakeSpec().to_dict(), FakeBackbone(seed=0).weights_hash())
    with pytest.raises(CacheMismatchError, match="layer"):
        cache.check_encoder({**FakeSpec().to_dict(), "layer": "other"})
    with pytest.raises(CacheMismatchError, match="weights"):
        cache.check_encoder(FakeSpec().to_dict(), "0123")
    with pytest.raises(FileNotFoundError, match="captioner extract"):
        FeatureCache(tmp_path / "nowhere")
