"""Issue 17 item 3: the speed switches of extraction keep the cache identical, the int8 quantisation
on the device is quantize_int8 bit for bit, and benchmarks/extract_cold runs on a CPU."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from captioner.data.feature_cache import (ExtractionOptions, FeatureCache, extract_features, quantize_int8,
                                          quantize_int8_torch)
from tests.test_feature_cache import FakeBackbone, _images
from tests.test_gpu_decode import _tiny_flickr


def test_quantize_on_the_device_is_quantize_int8_bit_for_bit():
    generator = torch.Generator().manual_seed(0)
    features = torch.randn((7, 49, 33), generator=generator) * torch.logspace(-6, 3, 33)
    features[1] = 0.0  # all-zero image: scale 0
    features[2, :, 5] = 0.0  # one silent channel
    features[3, 0, :] = 127 * 1e-4  # exact multiples and ties
    features[4] = torch.round(torch.randn((49, 33), generator=generator) * 4) / 2  # .5 ties for round-half-even
    q, scale = quantize_int8_torch(features)
    q_ref, scale_ref = quantize_int8(features.numpy())
    np.testing.assert_array_equal(q.numpy(), q_ref)
    np.testing.assert_array_equal(scale.numpy().view(np.uint16), scale_ref.view(np.uint16))
    assert q.dtype == torch.int8 and scale.dtype == torch.float16


OLD = ExtractionOptions(prefetch=1, early_read=False, warmup=False, device_quantize=False, async_copy=False,
                        background_write=False)
NEW = ExtractionOptions(prefetch=3, early_read=True, warmup=True, device_quantize=True, background_write=True)


@pytest.mark.parametrize("storage", ["float16", "int8"])
def test_the_speed_switches_write_the_same_cache(tmp_path, storage):
    records = _images(tmp_path / "images", 7, corrupt=3)
    old = extract_features(records, FakeBackbone(), tmp_path / "old", storage=storage, shard_size=3, batch_size=2,
                           workers=2, options=OLD)
    marks = []
    new = extract_features(records, FakeBackbone(), tmp_path / "new", storage=storage, shard_size=3, batch_size=2,
                           workers=2, options=NEW, mark=lambda name, at=None: marks.append(name))
    assert (old.written, old.skipped.counts) == (new.written, new.skipped.counts) == (6, {"unreadable image": 1})
    for name in ("manifest.json", *[f"shard-0000{i}.json" for i in range(3)]):
        assert (tmp_path / "old" / name).read_bytes() == (tmp_path / "new" / name).read_bytes(), name
    for name in sorted(p.name for p in (tmp_path / "old").glob("*.npy")):
        assert (tmp_path / "old" / name).read_bytes() == (tmp_path / "new" / name).read_bytes(), name
    assert marks[:2] == ["backbone_built", "moved_to_device"] and "first_batch_encoded" in marks
    assert marks[-2:] == ["files_written", "manifest_done"]
    # Resumable as before: a missing shard is redone by the new path into the old path's cache.
    (tmp_path / "old" / "shard-00001.json").unlink()
    again = extract_features(records, FakeBackbone(), tmp_path / "old", storage=storage, shard_size=3, batch_size=2,
                             workers=2, options=NEW)
    assert again.shards_done == 1 and again.shards_skipped == 2
    assert len(FeatureCache(tmp_path / "old")) == 6


def test_extraction_from_a_backbone_built_while_files_are_read(tmp_path):
    records = _images(tmp_path / "images", 5)
    backbone = FakeBackbone()
    report = extract_features(records, lambda: backbone, tmp_path / "cache", shard_size=2, options=NEW,
                              spec=backbone.spec)
    assert report.written == 5 and backbone.calls == 5 + 5  # and the warm-up batch: min(batch size, images)
    with pytest.raises(ValueError, match="spec"):
        extract_features(records, lambda: backbone, tmp_path / "other", options=NEW)


def test_extract_cold_benchmark_runs_fresh_processes_on_a_cpu(tmp_path, capsys):
    from benchmarks import extract_cold

    _tiny_flickr(tmp_path / "flickr")
    out = tmp_path / "result.json"
    code = extract_cold.main(["--config", "eval/flickr8k/wsram.yaml", "--set", f"data.root={tmp_path / 'flickr'}",
                              "--set", "model.encoder.image_size=64", "--set", "model.encoder.pretrained=false",
                              "--out-dir", str(tmp_path / "runs"), "--json", str(out), "--device", "cpu",
                              "--variants", "before,default", "--compare-to", "before",
                              "--repeats", "1", "--storage", "int8", "--workers", "2"])
    result = json.loads(out.read_text())
    runs = result["runs"]
    assert code == 0, [run.get("stderr_tail") for run in runs]
    assert [(r["variant"], r["repeat"], r["fresh_machine"]) for r in runs] == [("default", 0, True),
                                                                            ("before", 0, False)]
    for run in runs:
        assert run["ok"] and run["images"] == 7 and run["wall_seconds"] >= run["whole_process_seconds"] > 0
        phases = run["extraction"]["phases"]
        assert phases["clock"] and phases["images_per_second_whole_process"] > 0
        seconds = phases["seconds_since_process_start"]
        order = ["imports_done", "records_read", "backbone_built", "moved_to_device", "first_batch_read",
                 "first_batch_decoded", "first_batch_encoded", "loop_end", "files_written", "manifest_done"]
        assert [seconds[name] for name in order] == sorted(seconds[name] for name in order), seconds
        assert run["extraction"]["storage"] == "int8"
    default, before = (run["extraction"] for run in runs)
    assert not default["torchvision_imported"] and before["torchvision_imported"]
    assert before["options"]["prefetch"] == 1 and not before["options"]["background_write"]
    assert result["card"]["torch"] == torch.__version__
    comparison = runs[0]["comparison"]  # default's features against before's: the same up to rounding
    assert comparison["images"] == 7 and comparison["missing"] == 0 and comparison["beyond_tolerance"] == 0
    assert comparison["max_relative_l2"] < 1e-2 and "comparison" not in runs[1]
    assert runs[0]["non_finite_skips"] == 0
    assert "default" in capsys.readouterr().out
    assert not any((tmp_path / "runs").iterdir())  # each run's cache removed unless --keep


def test_extract_cold_records_a_failing_variant_and_goes_on(tmp_path):
    from benchmarks import extract_cold

    out = tmp_path / "result.json"
    code = extract_cold.main(["--config", "eval/flickr8k/wsram.yaml", "--set", f"data.root={tmp_path / 'missing'}",
                              "--out-dir", str(tmp_path / "runs"), "--json", str(out), "--device", "cpu",
                              "--variants", "default,no-warmup"])
    runs = json.loads(out.read_text())["runs"]
    assert code == 1 and [r["variant"] for r in runs] == ["default", "no-warmup"]
    assert not any(r["ok"] for r in runs) and all(r["stderr_tail"] for r in runs)


def test_a_failing_extraction_waits_for_the_cuda_start_up_thread(tmp_path, monkeypatch):
    """A start-up thread still inside CUDA's initialisation when the interpreter exits hung the
    process (seen on an H200 when the backbone's package was missing): on an error, run_extraction
    lets the thread finish before the error propagates."""
    import threading
    import time

    from captioner import extract
    from captioner.config import load_config

    _tiny_flickr(tmp_path / "flickr")
    config = load_config("eval/flickr8k/wsram.yaml", [f"data.root={tmp_path / 'flickr'}"])
    finished = threading.Event()

    def slow_warm_up(*args, **kwargs):
        time.sleep(0.5)
        finished.set()

    def missing(*args, **kwargs):
        raise RuntimeError("efficientnet-lite0: not installed")

    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(extract, "warm_up_device", slow_warm_up)
    monkeypatch.setattr(extract, "resolve_decoder", lambda decoder, device: "pil")
    monkeypatch.setattr(extract, "build_backbone", missing)
    with pytest.raises(RuntimeError, match="not installed"):
        extract.run_extraction(config, tmp_path / "cache", device="cuda", progress=False)
    assert finished.is_set()


def test_extract_cold_can_mark_no_run_fresh(tmp_path):
    from benchmarks import extract_cold

    _tiny_flickr(tmp_path / "flickr")
    out = tmp_path / "result.json"
    code = extract_cold.main(["--config", "eval/flickr8k/wsram.yaml", "--set", f"data.root={tmp_path / 'flickr'}",
                              "--set", "model.encoder.image_size=64", "--set", "model.encoder.pretrained=false",
                              "--out-dir", str(tmp_path / "runs"), "--json", str(out), "--device", "cpu",
                              "--variants", "default", "--warm-machine", "--storage", "int8", "--workers", "2"])
    runs = json.loads(out.read_text())["runs"]
    assert code == 0 and [(r["variant"], r["fresh_machine"]) for r in runs] == [("default", False)]
