"""Issue 19, the input / cache / disk side: nothing lost, nothing silent.

A damaged feature cache is found and named (cheaply on open, fully by `captioner extract --verify`
and when a split is preloaded) and a re-run of extraction redoes only the damaged shard; NaN rows
never reach training; a command whose output location is not writable, or whose disk fills up,
says so in one line naming the path; --set numbers parse as written and non-finite ones are
refused; skipped data is counted under the right reason, each item once, and reported by name.
"""

from __future__ import annotations

import errno
import json
import os
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from captioner import outputs
from captioner.cli import main
from captioner.config import ConfigError, DataConfig, load_config
from captioner.data.datasets import CachedFeatures, load_disk_dataset, skip_summary
from captioner.data.feature_cache import (NON_FINITE_REASON, FeatureCache, FeatureCacheError, UncheckedCacheWarning,
                                          extract_features, verify_cache)
from captioner.data.records import SkipReport
from captioner.data.sources import read_flickr8k
from captioner.errors import CaptionerError
from captioner.inference import find_image_files
from captioner.outputs import OutputError, check_file_writable, check_folder_writable, output_error
from tests.test_feature_cache import FakeBackbone, _images
from tests.test_training import TINY

TINY_ARGS = [arg for override in TINY for arg in ("--set", override)]


@pytest.fixture
def cache(tmp_path):
    """5 images in 3 shards of 2, 2, 1; and the rows as first written."""
    records = _images(tmp_path / "images", 5)
    out = tmp_path / "cache"
    extract_features(records, FakeBackbone(), out, shard_size=2, workers=1)
    return records, out, FeatureCache(out).get([f"img{i}" for i in range(5)]).numpy()


def _rerun(records, out):
    backbone = FakeBackbone()
    report = extract_features(records, backbone, out, shard_size=2, workers=1)
    return report, backbone


def _overwrite(path: Path, data: bytes, offset: int | None = None) -> None:
    """Bytes written over the middle of a file (its size unchanged)."""
    size = path.stat().st_size
    offset = size // 2 if offset is None else offset
    with open(path, "r+b") as handle:
        handle.seek(offset)
        handle.write(data[: size - offset])


# ---- the feature cache ----------------------------------------------------------------------------


def test_shards_carry_checksums_in_their_record_and_the_manifest(cache):
    _, out, _ = cache
    manifest = json.loads((out / "manifest.json").read_text())
    assert sorted(manifest["checksums"]) == ["shard-00000.json", "shard-00001.json", "shard-00002.json"]
    record = json.loads((out / "shard-00001.json").read_text())
    import hashlib

    data = (out / "shard-00001.npy").read_bytes()
    assert record["files"] == {"shard-00001.npy": {"bytes": len(data), "sha256": hashlib.sha256(data).hexdigest()}}
    assert record["cache_key"] and verify_cache(out).ok


def test_a_truncated_array_is_named_on_open_and_a_rerun_redoes_only_its_shard(cache):
    records, out, reference = cache
    path = out / "shard-00001.npy"
    path.write_bytes(path.read_bytes()[:-100])
    with pytest.raises(FeatureCacheError, match=r"shard-00001\.npy: .*truncated.*captioner extract") as error:
        FeatureCache(out)
    assert isinstance(error.value, CaptionerError) and "redoes only the damaged" in str(error.value)
    report, backbone = _rerun(records, out)
    assert report.shards_done == 1 and report.shards_skipped == 2 and backbone.calls == 2
    assert list(report.damaged) == [str(path)]
    np.testing.assert_array_equal(FeatureCache(out).get([f"img{i}" for i in range(5)]).numpy(), reference)


def test_a_truncated_or_edited_shard_record_is_named_and_redone(cache):
    records, out, reference = cache
    path = out / "shard-00000.json"
    text = path.read_text()
    path.write_text(text[: len(text) // 2])
    with pytest.raises(FeatureCacheError, match=r"shard-00000\.json: .*not valid JSON"):
        FeatureCache(out)
    report, backbone = _rerun(records, out)
    assert report.shards_done == 1 and backbone.calls == 2 and str(path) in report.damaged
    # Still valid JSON, but not what was written: the manifest's checksum of it says so.
    record = json.loads(path.read_text())
    record["image_ids"] = list(reversed(record["image_ids"]))
    path.write_text(json.dumps(record, indent=1) + "\n")
    with pytest.raises(FeatureCacheError, match=r"shard-00000\.json: changed since extraction"):
        FeatureCache(out)
    _rerun(records, out)
    np.testing.assert_array_equal(FeatureCache(out).get([f"img{i}" for i in range(5)]).numpy(), reference)


def test_a_wrong_header_is_named(cache):
    _, out, _ = cache
    _overwrite(out / "shard-00002.npy", b"garbage!", offset=0)
    with pytest.raises(FeatureCacheError, match=r"shard-00002\.npy: not a readable \.npy array"):
        FeatureCache(out)


def test_zeros_inside_a_shard_are_found_by_verify_preload_and_get_and_a_rerun_repairs_them(cache, capsys):
    records, out, reference = cache
    path = out / "shard-00001.npy"
    header = path.stat().st_size - 2 * 4 * 6 * 2  # two rows of 4 x 6 float16 at the end
    _overwrite(path, bytes(path.stat().st_size), offset=header)
    features = FeatureCache(out)  # same size, same header: the cheap checks pass
    with pytest.raises(FeatureCacheError, match=r"shard-00001\.npy: row 0 \(image img2\) is all zeros.*changed since"):
        features.get(["img2"])
    assert features.get(["img0", "img4"]).shape == (2, 4, 6)  # the other shards are fine
    with pytest.raises(FeatureCacheError, match=r"shard-00001\.npy: changed since extraction"):
        CachedFeatures(FeatureCache(out), ["img0", "img3"]).preload()
    report = verify_cache(out)
    assert not report.ok and list(report.damaged) == [str(path)] and "sha256" in report.damaged[str(path)]
    assert main(["extract", "--verify", "--out", str(out)]) == 1
    printed = capsys.readouterr()
    assert f"DAMAGED {path}" in printed.out and "redoes only the damaged" in printed.err
    report, backbone = _rerun(records, out)
    assert report.shards_done == 1 and backbone.calls == 2
    assert main(["extract", "--verify", "--out", str(out)]) == 0
    assert "no damage found" in capsys.readouterr().out
    np.testing.assert_array_equal(FeatureCache(out).get([f"img{i}" for i in range(5)]).numpy(), reference)


def test_garbage_bytes_give_an_error_naming_file_and_row_not_a_nan_loss(cache):
    _, out, _ = cache
    path = out / "shard-00000.npy"
    _overwrite(path, b"\xff" * 10_000, offset=path.stat().st_size - 4 * 6 * 2)  # the last row: NaN bit patterns
    features = FeatureCache(out)
    with pytest.raises(FeatureCacheError, match=r"shard-00000\.npy: row 1 \(image img1\) holds NaN or infinite "
                                                r"values: .*changed since extraction.*captioner extract"):
        features.get(["img0", "img1"])
    streamed = CachedFeatures(features, ["img0", "img1"])  # not preloaded: checked batch by batch
    assert streamed[[0]].shape == (1, 4, 6)
    with pytest.raises(FeatureCacheError, match="row 1"):
        streamed[[0, 1]]


def _strip_checksums(out: Path) -> None:
    """The cache as an earlier version wrote it: no checksums, no cache keys."""
    manifest = json.loads((out / "manifest.json").read_text())
    del manifest["checksums"]
    (out / "manifest.json").write_text(json.dumps(manifest))
    for name in manifest["shards"]:
        record = json.loads((out / f"{name}.json").read_text())
        del record["files"], record["cache_key"]
        (out / f"{name}.json").write_text(json.dumps(record))


def test_a_cache_written_before_checksums_still_opens_with_a_warning(cache, capsys):
    records, out, reference = cache
    _strip_checksums(out)
    with pytest.warns(UncheckedCacheWarning, match="before shards carried checksums"):
        features = FeatureCache(out)
    np.testing.assert_array_equal(features.get([f"img{i}" for i in range(5)]).numpy(), reference)
    CachedFeatures(features, ["img0"]).preload()
    report = verify_cache(out)
    assert report.ok and report.unchecked == ["shard-00000", "shard-00001", "shard-00002"]
    assert main(["extract", "--verify", "--out", str(out)]) == 0
    assert "written before shards carried checksums" in capsys.readouterr().out
    # NaN rows are still found, and the message says why damage cannot be told from what was written.
    _overwrite(out / "shard-00002.npy", b"\xff" * 100, offset=(out / "shard-00002.npy").stat().st_size - 10)
    with pytest.warns(UncheckedCacheWarning):
        features = FeatureCache(out)
    with pytest.raises(FeatureCacheError, match=r"shard-00002\.npy: row 0 \(image img4\).*no checksums"):
        features.get(["img4"])
    assert "shard-00002.npy" in next(iter(verify_cache(out).damaged))
    # A re-run keeps the old shards that pass (the manifest vouches for them) and redoes the one with NaNs.
    report, backbone = _rerun(records, out)
    assert report.shards_done == 1 and backbone.calls == 1 and list(report.damaged) == [str(out / "shard-00002.npy")]
    with pytest.warns(UncheckedCacheWarning, match="2 shard"):
        np.testing.assert_array_equal(FeatureCache(out).get([f"img{i}" for i in range(5)]).numpy(), reference)


def test_a_damaged_manifest_is_named_and_a_rerun_checks_each_shard_by_its_own_record(cache):
    records, out, reference = cache
    (out / "manifest.json").write_text('{"format_version": 1, "enc')
    with pytest.raises(FeatureCacheError, match=r"manifest\.json: damaged, not valid JSON"):
        FeatureCache(out)
    assert not verify_cache(out).ok
    with pytest.warns(UserWarning, match="manifest.json: damaged"):
        report, backbone = _rerun(records, out)
    assert report.shards_done == 0 and backbone.calls == 0  # every shard's cache key matches
    np.testing.assert_array_equal(FeatureCache(out).get([f"img{i}" for i in range(5)]).numpy(), reference)


class NaNForFirstRow(FakeBackbone):
    """Gives NaN for the first image of every batch (a backbone that overflows on some inputs)."""

    def forward(self, images):
        grid = super().forward(images)
        grid[0] = float("nan")
        return grid


@pytest.mark.parametrize("storage", ["float16", "int8"])
def test_extraction_never_stores_a_non_finite_row(tmp_path, storage):
    records = _images(tmp_path / "images", 5)
    report = extract_features(records, NaNForFirstRow(), tmp_path / "cache", storage=storage, shard_size=4,
                              batch_size=2, workers=1)
    assert report.skipped.counts[NON_FINITE_REASON] == 3  # img0, img2 (batches of shard 0) and img4
    assert "img2.jpg" in " ".join(report.skipped.details[NON_FINITE_REASON])
    features = FeatureCache(tmp_path / "cache")
    assert sorted(features.index) == ["img1", "img3"] and np.isfinite(features.get(["img1", "img3"]).numpy()).all()


def test_a_full_disk_during_extraction_names_the_shard_and_keeps_the_finished_ones(tmp_path, monkeypatch):
    from captioner.data import feature_cache

    records = _images(tmp_path / "images", 5)
    out = tmp_path / "cache"
    real_write = feature_cache._HashingWriter.write

    def full_after_the_first_shard(self, data):
        if "shard-00001" in self.handle.name:
            raise OSError(errno.ENOSPC, "No space left on device")
        return real_write(self, data)

    monkeypatch.setattr(feature_cache._HashingWriter, "write", full_after_the_first_shard)
    with pytest.raises(OutputError, match=r"^no space left on device: .*shard-00001\.npy") as error:
        extract_features(records, FakeBackbone(), out, shard_size=2, workers=1)
    assert error.value.errno == errno.ENOSPC
    assert sorted(p.name for p in out.iterdir()) == ["manifest.json", "shard-00000.json", "shard-00000.npy"]
    monkeypatch.setattr(feature_cache._HashingWriter, "write", real_write)
    report, backbone = _rerun(records, out)
    assert report.shards_skipped == 1 and backbone.calls == 3 and not report.damaged


# ---- output locations and write failures ------------------------------------------------------------


def _refuse(cause: int):
    def probe(folder: Path) -> None:
        raise OSError(cause, os.strerror(cause), str(folder / "probe"))
    return probe


@pytest.mark.skipif(os.geteuid() == 0, reason="root writes to a read-only folder anyway (injected errno below)")
def test_a_read_only_folder_is_refused(tmp_path):
    folder = tmp_path / "ro"
    folder.mkdir()
    folder.chmod(0o500)
    try:
        with pytest.raises(OutputError, match="permission denied"):
            check_folder_writable(folder)
    finally:
        folder.chmod(0o700)


@pytest.mark.parametrize("cause,said", [(errno.EACCES, "permission denied"), (errno.EROFS, "read-only file system"),
                                        (errno.ENOSPC, "no space left on device"),
                                        (errno.EDQUOT, "disk quota exceeded")])
def test_an_unwritable_folder_is_refused_naming_it_and_the_cause(tmp_path, monkeypatch, cause, said):
    monkeypatch.setattr(outputs, "_write_probe", _refuse(cause))
    with pytest.raises(OutputError, match=f"output folder {tmp_path / 'out'} is not writable: {said}"):
        check_folder_writable(tmp_path / "out")
    with pytest.raises(OutputError, match=f"{said}"):
        check_file_writable(tmp_path / "deeper" / "report.json")


def test_the_probe_leaves_nothing_and_files_and_folders_are_told_apart(tmp_path):
    assert check_folder_writable(tmp_path / "a" / "b") == tmp_path / "a" / "b"
    assert list((tmp_path / "a" / "b").iterdir()) == []
    (tmp_path / "file").write_text("x")
    with pytest.raises(OutputError, match="is a file, not a folder"):
        check_folder_writable(tmp_path / "file")
    with pytest.raises(OutputError, match="is a folder; give a file name"):
        check_file_writable(tmp_path / "a")


@pytest.mark.parametrize("command", [
    ["train", "--out", "{out}"],
    ["demo", "--out", "{out}"],
    ["extract", "--out", "{out}"],
    ["caption", "{missing}", "x.jpg", "--output", "{out}/captions.jsonl"],
    ["caption", "{missing}", "x.jpg", "--attention-dir", "{out}/pictures"],
    ["evaluate", "--results", "{missing}", "--annotations", "{missing}", "--metrics", "bleu",
     "--out", "{out}/scores.json"],
])
def test_every_command_checks_its_output_before_it_starts(tmp_path, monkeypatch, capsys, command):
    monkeypatch.setattr(outputs, "_write_probe", _refuse(errno.EROFS))
    out = tmp_path / "out"
    args = [a.format(out=out, missing=tmp_path / "missing") for a in command]
    assert main(args) == 1  # before any work: the model, results and data named here do not exist
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "read-only file system" in err and str(out) in err, err


def test_torch_save_on_a_full_disk_is_said_as_no_space_naming_the_checkpoint(tmp_path, monkeypatch, capsys):
    def full_disk(obj, f, *args, **kwargs):
        Path(f).write_bytes(b"partial")
        raise RuntimeError("[enforce fail at inline_container.cc:672] . unexpected pos 4288 vs 4185")

    monkeypatch.setattr(torch, "save", full_disk)
    out = tmp_path / "run"
    assert main(["train", "--out", str(out), "--quiet", *TINY_ARGS]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith(f"captioner train: error: no space left on device: {out}/checkpoints/")
    assert "unexpected pos" in err[0] and "free" in err[0]
    assert not [p for p in (out / "checkpoints").iterdir()]  # no temporary, no half checkpoint
    assert (out / "config.yaml").is_file()  # written before: intact


def test_write_errors_become_one_line_naming_the_path(tmp_path):
    from captioner.files import atomic_write

    def full(temporary: Path) -> None:
        with open(temporary, "wb"):
            raise OSError(errno.ENOSPC, "No space left on device")  # a write() names no file

    with pytest.raises(OSError) as caught:
        atomic_write(tmp_path / "metrics.json", full)
    said = output_error(caught.value)
    assert str(said).startswith(f"no space left on device: {tmp_path / 'metrics.json'} (") and "free" in str(said)
    assert str(output_error(PermissionError(errno.EACCES, "Permission denied", "/x/y"))) == "permission denied: /x/y"
    assert output_error(ValueError("not a write failure")) is None
    assert output_error(RuntimeError("something else")) is None
    assert not (tmp_path / "metrics.json.tmp").exists()


def test_caption_output_keeps_whole_lines_when_the_disk_fills(tmp_path, monkeypatch, capsys):
    import captioner.inference
    from captioner.inference import CaptionRecord

    def two_then_full(*args, **kwargs):
        yield CaptionRecord("a.jpg", "a dog", [])
        yield CaptionRecord("b.jpg", "a cat", [])
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(captioner, "load", lambda *args, **kwargs: type("M", (), {"decoding": None})())
    monkeypatch.setattr("captioner.cli._decode_overrides", lambda args, decode: decode)
    monkeypatch.setattr(captioner.inference, "caption_files", two_then_full)
    (tmp_path / "a.jpg").write_bytes(b"x")
    output = tmp_path / "captions.jsonl"
    assert main(["caption", "model", str(tmp_path / "a.jpg"), "--output", str(output)]) == 1
    assert "no space left on device" in capsys.readouterr().err
    assert [json.loads(line)["file"] for line in output.read_text().splitlines()] == ["a.jpg", "b.jpg"]


def test_verify_reads_the_cache_that_the_config_names(tmp_path, capsys, cache):
    _, out, _ = cache
    (out / "shard-00000.npy").write_bytes(b"")
    config = tmp_path / "c.yaml"
    config.write_text("data: {dataset: flickr8k, root: %s, features: %s}\n"
                      "model: {encoder: {name: efficientnet-lite0}}\n" % (tmp_path, out))
    assert main(["extract", "--verify", "--config", str(config)]) == 1
    assert f"DAMAGED {out / 'shard-00000.npy'}: not a readable .npy array" in capsys.readouterr().out


def test_a_damaged_cache_stops_train_with_one_line_exit_1(tmp_path, capsys):
    root = _flickr(tmp_path / "flickr")
    with pytest.warns(UserWarning):
        records = read_flickr8k(root)
    extract_features(records.all_records(), FakeBackbone(), tmp_path / "cache", shard_size=4, workers=1)
    npy = tmp_path / "cache" / "shard-00001.npy"
    npy.write_bytes(npy.read_bytes()[:-10])
    with pytest.warns(UserWarning):
        code = main(["train", "--out", str(tmp_path / "run"), "--quiet", "--set", "data.dataset=flickr8k",
                     "--set", f"data.root={root}", "--set", f"data.features={tmp_path / 'cache'}",
                     "--set", "model.encoder.name=efficientnet-lite0"])
    assert code == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith(f"captioner train: error: {npy}: ") and "truncated" in err[0]
    assert "captioner extract" in err[0]


# ---- --set numbers --------------------------------------------------------------------------------


@pytest.mark.parametrize("text,value", [("1e-3", 1e-3), ("5e-4", 5e-4), ("1E6", 1e6), ("2.5e-1", 0.25),
                                        ("3", 3.0), ("0.01", 0.01), ("+1.5E+2", 150.0)])
def test_numbers_parse_as_users_write_them(tmp_path, text, value):
    config = load_config(overrides=[f"train.learning_rate={text}"])
    assert config.train.learning_rate == value and isinstance(config.train.learning_rate, float)
    assert load_config(overrides=[f"decode.length_penalty={text}"]).decode.length_penalty == value
    path = tmp_path / "c.yaml"
    path.write_text(f"train:\n  learning_rate: {text}\n")
    assert load_config(path).train.learning_rate == value
    assert load_config(overrides=["estimator.samples=3"]).estimator.samples == 3
    assert isinstance(load_config(overrides=["train.epochs=3"]).train.epochs, int)
    assert load_config(overrides=["train.max_steps=1e3"]).train.max_steps == 1000


@pytest.mark.parametrize("text", ["nan", ".nan", "NaN", "inf", ".inf", "-inf", "-.inf", "Infinity", "1e999"])
@pytest.mark.parametrize("key", ["train.learning_rate", "train.epochs", "estimator.defensive_weight"])
def test_non_finite_numbers_are_refused_naming_the_key(tmp_path, text, key):
    with pytest.raises(ConfigError) as error:
        load_config(overrides=[f"{key}={text}"])
    assert str(error.value).startswith(f"{key}: must be a finite number"), str(error.value)
    section, name = key.split(".")
    path = tmp_path / "c.yaml"
    path.write_text(f"{section}:\n  {name}: {text}\n")
    with pytest.raises(ConfigError, match=f"^{key}: must be a finite number"):
        load_config(path)


def test_bad_yaml_in_an_override_names_the_key(capsys, tmp_path):
    with pytest.raises(ConfigError, match=r"^data\.root: the value '\[x' is not valid YAML"):
        load_config(overrides=["data.root=[x"])
    assert main(["train", "--out", str(tmp_path), "--set", "train.learning_rate=.nan"]) == 2
    assert "train.learning_rate: must be a finite number" in capsys.readouterr().err


# ---- what is skipped --------------------------------------------------------------------------------


def _jpeg(path: Path, seed: int) -> None:
    rng = np.random.default_rng(seed)
    Image.fromarray(rng.integers(0, 255, (40, 48, 3), dtype=np.uint8)).save(path, quality=90)


def _flickr(root: Path) -> Path:
    """Images a..e, f.jpg a folder, g.jpg a symlink loop, h.jpg unreadable; ghost.jpg only in the token file."""
    images = root / "Flicker8k_Dataset"
    images.mkdir(parents=True)
    for seed, name in enumerate("abcde"):
        _jpeg(images / f"{name}.jpg", seed)
    (images / "f.jpg").mkdir()
    os.symlink("g2.jpg", images / "g.jpg")
    os.symlink("g.jpg", images / "g2.jpg")
    (images / "h.jpg").write_bytes(b"\xff\xd8\xff\xe0 not a jpeg")
    text = root / "Flickr8k_text"
    text.mkdir()
    names = ["a", "b", "c", "d", "e", "f", "g", "h"]
    (text / "Flickr8k.token.txt").write_text("".join(f"{n}.jpg#0\ta picture of {n} .\n" for n in names) +
                                             "ghost.jpg#0\tno file and no split .\n")
    (text / "Flickr_8k.trainImages.txt").write_text("a.jpg\nb.jpg\nf.jpg\nh.jpg\n")
    (text / "Flickr_8k.devImages.txt").write_text("c.jpg\ng.jpg\n")
    (text / "Flickr_8k.testImages.txt").write_text("d.jpg\ne.jpg\n")
    return root


def test_skips_have_their_own_reasons_are_named_once_and_reach_a_summary(tmp_path):
    root = _flickr(tmp_path / "flickr")
    with pytest.warns(UserWarning) as caught:
        records = read_flickr8k(root)
    assert len(caught) == 1
    assert dict(records.skipped.counts) == {"image path is a folder": 1, "image path is a symlink loop": 1,
                                            "captions of an image in no split": 1}
    details = " ".join(d for items in records.skipped.details.values() for d in items)
    assert "f.jpg is a folder" in details and "g.jpg is a symlink loop" in details and "ghost.jpg" in details
    assert "image file missing" not in str(caught[0].message)

    extract_features(records.all_records(), FakeBackbone(), tmp_path / "cache", shard_size=4, workers=1)
    config = DataConfig(dataset="flickr8k", root=str(root), features=str(tmp_path / "cache"))
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        splits = load_disk_dataset(config)
    loading = [str(w.message) for w in caught if "not in the feature cache" in str(w.message)]
    assert len(loading) == 1 and loading[0].count("h.jpg") == 1
    summary = skip_summary(splits)
    assert summary["counts"] == {"image path is a folder": 1, "image path is a symlink loop": 1,
                                 "captions of an image in no split": 1,
                                 "not in the feature cache (unreadable at extraction)": 1}
    assert summary["total"] == 4
    (unreadable,) = summary["splits"]["train"]["details"]["not in the feature cache (unreadable at extraction)"]
    assert "h.jpg" in unreadable and "unreadable image" in unreadable
    json.dumps(summary, allow_nan=False)


def test_a_skip_report_names_each_item_once_and_says_how_many_it_does_not_show():
    report = SkipReport()
    for i in range(8):
        report.add("unreadable image", f"img{i}.jpg: broken")
    report.add("unreadable image", "img0.jpg: broken")  # the same item again
    other = SkipReport()
    other.add("unreadable image", "img1.jpg: broken")
    report.merge(other)
    assert report.counts["unreadable image"] == 8 and len(report.details["unreadable image"]) == 8
    assert "and 3 more" in report.summary()
    assert SkipReport.from_dict(report.to_dict(full=True)).to_dict(full=True) == report.to_dict(full=True)


def test_caption_names_folders_symlink_loops_and_broken_links_among_the_images(tmp_path, capsys):
    folder = tmp_path / "photos"
    (folder / "sub").mkdir(parents=True)
    _jpeg(folder / "a.jpg", 0)
    _jpeg(folder / "sub" / "b.jpg", 1)
    (folder / "x.jpg").mkdir()
    _jpeg(folder / "x.jpg" / "inside.jpg", 2)
    os.symlink("loop2.jpg", folder / "loop1.jpg")
    os.symlink("loop1.jpg", folder / "loop2.jpg")
    os.symlink("gone.jpg", folder / "dangling.jpg")
    os.symlink("..", folder / "sub" / "up")
    skipped = SkipReport()
    found = find_image_files([str(folder), str(tmp_path / "nothing.png"), str(tmp_path / "*.gif")], skipped)
    assert [p.relative_to(folder).as_posix() for p in found] == ["a.jpg", "sub/b.jpg", "x.jpg/inside.jpg"]
    assert dict(skipped.counts) == {"folder named like an image": 1, "symlink loop": 3, "broken symlink": 1,
                                    "no such file": 1, "pattern matched nothing": 1}
    shown = " ".join(d for items in skipped.details.values() for d in items)
    for name in ("x.jpg: a folder", "loop1.jpg: a symlink loop", "dangling.jpg: a broken symlink", "sub/up",
                 "nothing.png: not there"):
        assert name in shown, name


def test_caption_command_reports_what_is_not_an_image(tmp_path, capsys):
    from tests.test_captioning import WORDS
    from captioner.config import DecodeConfig, EncoderConfig, ModelConfig
    from captioner.data.vocabulary import Vocabulary
    from captioner.models.captioner import CaptionModel

    config = ModelConfig(encoder=EncoderConfig(name="efficientnet-lite0", layer="block15", image_size=64,
                                               feature_dim=8), embedding_dim=8, hidden_dim=12, attention_dim=6,
                         proposal_hidden_dim=6)
    CaptionModel(config, Vocabulary(WORDS), 64).save_pretrained(tmp_path / "model", DecodeConfig(beam_size=1,
                                                                                                    max_length=4))
    folder = tmp_path / "photos"
    folder.mkdir()
    _jpeg(folder / "a.jpg", 0)
    (folder / "x.jpg").mkdir()
    os.symlink("loop.jpg", folder / "loop.jpg")
    assert main(["caption", str(tmp_path / "model"), str(folder), "--output", str(tmp_path / "c.jsonl")]) == 0
    err = capsys.readouterr().err
    assert f"skipped: {folder / 'x.jpg'}: a folder" in err and f"skipped: {folder / 'loop.jpg'}: a symlink loop" in err
    assert "not image files (folder named like an image, symlink loop)" in err
    assert len((tmp_path / "c.jsonl").read_text().splitlines()) == 1


def test_npy_headers_are_parsed_one_thread_at_a_time(cache, monkeypatch):
    """numpy parses .npy headers with ast.literal_eval, which CPython 3.11 cannot run in two
    threads at once (python/cpython#106905: a spurious SystemError that CI met in verify_cache).
    The shard checks run in threads; no two of them may be inside a header parse together."""
    import ast
    import threading
    import time

    _, out, _ = cache
    parse, inside, most, lock = ast.literal_eval, [0], [0], threading.Lock()

    def slow_parse(text):
        with lock:
            inside[0] += 1
            most[0] = max(most[0], inside[0])
        time.sleep(0.02)  # wide enough that unserialized threads overlap every time
        try:
            return parse(text)
        finally:
            with lock:
                inside[0] -= 1

    monkeypatch.setattr(ast, "literal_eval", slow_parse)
    assert verify_cache(out, workers=3).ok  # the checksum path (cheap header checks)
    _strip_checksums(out)
    report = verify_cache(out, workers=3)  # the NaN scan path (np.load of each shard)
    assert report.ok and len(report.unchecked) == 3
    with pytest.warns(UncheckedCacheWarning):
        FeatureCache(out)
    assert most[0] == 1
