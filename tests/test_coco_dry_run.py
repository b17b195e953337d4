"""The COCO dry run (benchmarks/coco_dry_run.py) at tiny sizes on the CPU, the cache writer it uses
(feature_cache.write_cache) and the Karpathy reader without image files (data.check_image_files)."""

from __future__ import annotations

import json
import sys
import warnings
from pathlib import Path

import numpy as np
import pytest

from benchmarks import coco_dry_run
from captioner.config import ConfigError, load_config
from captioner.data.feature_cache import (CacheMismatchError, FeatureCache, FeatureCacheError, dequantize_int8,
                                          quantize_int8, verify_cache, write_cache)
from captioner.data.sources import read_karpathy
from captioner.models.backbones import backbone_spec

SPEC = backbone_spec("efficientnet-lite0", "block0", 4)  # 2 x 2 x 16
HASH = "0123456789abcdef"


def _grids(rows: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).normal(size=(rows, SPEC.num_locations, SPEC.channels)).astype(np.float32)


def _shards(values: np.ndarray, shard_size: int, storage: str):
    for first in range(0, len(values), shard_size):
        block = values[first:first + shard_size]
        yield quantize_int8(block) if storage == "int8" else block.astype(np.float16)


@pytest.mark.parametrize("storage", ["int8", "float16"])
def test_write_cache_opens_with_the_reader_and_passes_every_check(tmp_path, storage):
    values, ids = _grids(11), [f"img{i}" for i in range(11)]
    report = write_cache(tmp_path / "cache", ids, _shards(values, 4, storage), SPEC, HASH, storage=storage,
                         shard_size=4, workers=2)
    assert (report.images, report.shards) == (11, 3)
    assert report.bytes == sum(path.stat().st_size for path in (tmp_path / "cache").iterdir())
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no UncheckedCacheWarning: every shard carries checksums
        cache = FeatureCache(tmp_path / "cache")
    cache.verify()
    assert verify_cache(tmp_path / "cache").ok
    assert len(cache) == 11 and cache.num_locations == 4 and cache.channels == 16 and cache.storage == storage
    cache.check_encoder(SPEC.to_dict(), HASH)
    with pytest.raises(CacheMismatchError, match="weights"):
        cache.check_encoder(SPEC.to_dict(), "another-hash")
    expected = dequantize_int8(*quantize_int8(values)) if storage == "int8" else values.astype(np.float16)
    np.testing.assert_allclose(cache.get(ids).numpy(), expected.astype(np.float32), rtol=0, atol=1e-6)


def test_write_cache_checksums_find_damage(tmp_path):
    write_cache(tmp_path / "cache", [f"img{i}" for i in range(6)], _shards(_grids(6), 4, "int8"), SPEC, HASH,
                storage="int8", shard_size=4)
    shard = tmp_path / "cache" / "shard-00001.npy"
    data = bytearray(shard.read_bytes())
    data[-1] ^= 0x55  # same size, other bytes: only the checksum can tell
    shard.write_bytes(bytes(data))
    report = verify_cache(tmp_path / "cache")
    assert not report.ok and list(report.damaged) == [str(shard)]


def test_write_cache_refuses_bad_arguments_with_clear_errors(tmp_path):
    ids = [f"img{i}" for i in range(6)]

    def write(folder: str, **options):
        arguments = {"image_ids": ids, "shards": _shards(_grids(6), 4, "int8"), "spec": SPEC, "weights_hash": HASH,
                     "storage": "int8", "shard_size": 4, **options}
        return write_cache(tmp_path / folder, **arguments)

    with pytest.raises(ValueError, match="storage must be one of"):
        write("a", storage="bfloat16")
    with pytest.raises(ValueError, match="shard_size must be a positive integer"):
        write("b", shard_size=0)
    with pytest.raises(ValueError, match="1 repeated image id"):
        write("c", image_ids=ids[:-1] + ["img0"])
    with pytest.raises(ValueError, match=r"shard 0 \(shard-00000.*grids must be int8 \(4, 4, 16\)"):
        write("d", shards=iter([(np.zeros((4, 4, 8), np.int8), np.ones((4, 8), np.float16))]))
    with pytest.raises(ValueError, match="int8 storage takes"):
        write("e", shards=_shards(_grids(6), 4, "float16"))
    q, scale = quantize_int8(_grids(4))
    scale[2, 3] = np.nan
    with pytest.raises(ValueError, match="row 2 holds NaN or infinite values"):
        write("f", shards=iter([(q, scale)]))
    with pytest.raises(ValueError, match="gave 1 shard"):
        write("g", shards=iter([quantize_int8(_grids(4))]))
    with pytest.raises(FeatureCacheError, match="incomplete"):
        FeatureCache(tmp_path / "g")  # what a short write leaves is not a cache anyone reads
    write("h")
    with pytest.raises(FeatureCacheError, match="a feature cache is already here"):
        write("h")


def _karpathy_file(path: Path) -> Path:
    images = [{"filepath": "train2014", "filename": f"x{i}.jpg", "cocoid": i, "split": split,
               "sentences": [{"raw": "a dog runs"}]} for i, split in enumerate(["train", "train", "val", "test"])]
    path.write_text(json.dumps({"dataset": "coco", "images": images}))
    return path


def test_karpathy_reader_without_image_files(tmp_path):
    annotations = _karpathy_file(tmp_path / "dataset_coco.json")
    with pytest.warns(UserWarning, match="4 x image file missing"):
        assert read_karpathy(annotations, tmp_path).counts()["train"]["images"] == 0
    records = read_karpathy(annotations, tmp_path / "no-such-folder", check_images=False)
    assert {name: count["images"] for name, count in records.counts().items()} == {"train": 2, "val": 1, "test": 1}
    assert records.skipped.total == 0
    assert records.splits["train"][0].path == tmp_path / "no-such-folder" / "train2014" / "x0.jpg"


def test_check_image_files_false_needs_a_karpathy_cache_run():
    base = ["data.root=R", "data.features=F", "model.encoder.name=efficientnet-lite0", "data.check_image_files=false"]
    load_config(None, base + ["data.dataset=karpathy", "data.annotations=A"])
    with pytest.raises(ConfigError, match="data.check_image_files: false is for the karpathy reader only"):
        load_config(None, base + ["data.dataset=flickr8k"])
    with pytest.raises(ConfigError, match="data.check_image_files: false needs a feature cache"):
        load_config(None, base + ["data.dataset=karpathy", "data.annotations=A", "model.encoder.fine_tune=true"])


TINY = ["--device", "cpu", "--images", "48", "--val-images", "4", "--test-images", "4", "--grid", "2",
        "--backbone", "efficientnet-lite0", "--layer", "block0", "--vocabulary", "40", "--batch-size", "8",
        "--shard-size", "16", "--workers", "2", "--set", "data.min_word_count=1"] + \
    [item for key in ("encoder.feature_dim", "embedding_dim", "attention_dim", "hidden_dim", "proposal_hidden_dim")
     for item in ("--set", f"model.{key}=16")]


def _run(monkeypatch, tmp_path: Path, *extra: str) -> dict:
    monkeypatch.setattr(sys, "argv", ["coco_dry_run", "--out", str(tmp_path / "out"), "--work",
                                      str(tmp_path / "work"), *TINY, *extra])
    coco_dry_run.main()
    return json.loads((tmp_path / "out" / "coco_dry_run-grid2.json").read_text())


def test_tiny_dry_run_streams_one_full_epoch_through_the_trainer(tmp_path, monkeypatch, capsys):
    annotations = tmp_path / "captions_val2017.json"  # the official format; lengths 3 and 5 tokens
    annotations.write_text(json.dumps({"images": [{"id": 1}], "annotations": [
        {"id": 1, "image_id": 1, "caption": "A dog runs."}, {"id": 2, "image_id": 1, "caption": "Two cats on a mat"}]}))
    result = _run(monkeypatch, tmp_path, "--preload-limit-gib", "0", "--coco-annotations", str(annotations))
    assert not (tmp_path / "work").exists()  # the scratch folder is gone
    assert result["grids"] == "streamed from memory-mapped shards"
    assert (result["images"], result["val_images"], result["test_images"]) == (48, 4, 4)
    assert result["captions"] == 5 * 48 and result["captions_run"] == result["captions"]
    assert result["caption_samples"] == result["samples_per_caption"] * result["captions"] == 5 * 240
    assert result["updates"] == result["updates_run"] == -(-240 // 40) and result["image_reads"] >= 48
    assert result["vocabulary"] == 40 + 4 and result["skipped_updates"] == 0
    assert 3 <= result["mean_caption_tokens"] <= 5 and result["caption_lengths"].startswith("captions_val2017.json")
    assert result["tokenize_seconds_per_real_caption"] > 0
    assert (result["grid"], result["locations"], result["channels"], result["storage"]) == (2, 4, 16, "int8")
    assert result["cache_shards"] == 4 and result["cache_bytes"] > 56 * 4 * 16
    for key in ("epoch_seconds", "caption_samples_per_second", "cache_write_seconds", "trainer_build_seconds",
                "projected_epoch_seconds", "peak_host_rss_gib", "data_seconds"):
        assert 0 < result[key] < float("inf"), key
    assert result["projected_30_epoch_seconds"] >= result["epoch_seconds"]
    assert 0 < result["data_share"] < 1 and 0 < result["data_share_second_half"] < 1
    assert result["gpu_busy_share"] is None and result["gpu_busy_share_second_half"] is None  # no GPU here
    assert result["peak_gpu_allocated_gib"] is None and result["gpu_update_ms_median"] is None
    assert set(result["validation"]) == {"Bleu_4", "bound_prior", "bound_proposal"}
    summary = capsys.readouterr().out.strip().splitlines()[-1]
    assert summary.startswith("coco_dry_run grid 2: 48 images, 240 captions, 1 epoch")


def test_tiny_dry_run_preloads_within_the_limit_and_keeps_the_scratch_on_request(tmp_path, monkeypatch):
    result = _run(monkeypatch, tmp_path, "--keep", "--distinct-captions", "30")
    assert result["grids"] == "preloaded in host RAM" and result["distinct_caption_texts"] == 30
    assert result["caption_lengths"].startswith("fixed") and result["updates_run"] == 6
    kept = Path(result["scratch_kept"])
    assert (kept / "cache" / "manifest.json").is_file() and verify_cache(kept / "cache").ok
    with pytest.raises(SystemExit):  # the folder of a kept run is not written over
        _run(monkeypatch, tmp_path)


def test_dry_run_refuses_bad_options(tmp_path, monkeypatch, capsys):
    for extra, message in ((["--images", "0"], "--images must be positive"),
                           (["--coco-annotations", str(tmp_path / "none.json")], "no such file"),
                           (["--layer", "layer9"], "unknown layer 'layer9'")):
        with pytest.raises(SystemExit):
            _run(monkeypatch, tmp_path, *extra)
        assert message in capsys.readouterr().err
    assert not (tmp_path / "work").exists()
