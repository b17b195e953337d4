"""Batched JPEG decoding for feature extraction (the "gpu" decoder), run on the CPU: torchvision's
decode_jpeg takes device="cpu" too, so the batching, the fallbacks to PIL and the skips are the same
code a CUDA run uses. The pixels must match the PIL reader's, and so must what is skipped."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from captioner.cli import main
from captioner.data.feature_cache import FeatureCache, extract_features, resolve_decoder
from captioner.data.gpu_decode import ReadImage, assemble_batch, read_for_decode_jpeg
from captioner.data.images import read_image
from captioner.data.records import ImageRecord, SkipReport
from tests.test_feature_cache import FakeBackbone

# Per-image mean |tensor path - PIL reader| on the 0..255 scale, where PIL decodes at full scale.
# Both decode with libjpeg-turbo's IDCT, and torch's antialiased bicubic is PIL's filter, so what
# differs is rounding: measured 0.11-0.19 on 224 x 224 Flickr8k photos resized to 64..160 px (0 at
# 224, no resize), at most 0.27 on 150x100 .. 2000x1500 photo-like JPEGs resized to 224, 0.12-0.19
# on this file's images, and 1.3 had the resize been bilinear. 0.5 passes these with room and
# catches a wrong filter, orientation or channel order. (nvjpeg on an H200, which no test here can
# reach, gave 0.25 on average, 0.58 at worst, on 500 x 375 photos resized to 224 px: its chroma
# upsampling differs.)
FULL_SCALE_TOLERANCE = 0.5
# For a JPEG at least 4x the target size PIL decodes at 1/2, 1/4 or 1/8 scale (draft mode), where
# libjpeg's scaled IDCT smooths differently: measured 0.35-1.0 (0.69 here), so 3, about 1 % of the
# range. (Where the scale does not divide the image's sides PIL's reduced image is also shifted by
# a fraction of a pixel: up to 6 seen at 32 px; at 224 px that needs images over 896 px, and
# 2000 x 1500 ones gave 0.26.)
DRAFT_TOLERANCE = 3.0


def _photo(rng: np.random.Generator, width: int, height: int, mode: str = "RGB") -> Image.Image:
    """Photo-like content: smooth colour fields with some grain (plain noise would be all edges)."""
    coarse = Image.fromarray(rng.integers(0, 256, (max(2, height // 12), max(2, width // 12), 3), dtype=np.uint8))
    smooth = np.asarray(coarse.resize((width, height), Image.Resampling.BICUBIC), dtype=np.float32)
    grain = rng.normal(0, 6, smooth.shape)
    return Image.fromarray(np.clip(smooth + grain, 0, 255).astype(np.uint8)).convert(mode)


def _tensor_path(paths: list[Path], size: int) -> tuple[list[str], np.ndarray, SkipReport]:
    skipped = SkipReport()
    ids, pixels = assemble_batch([read_for_decode_jpeg(p.stem, p, size) for p in paths], size, "cpu", skipped)
    return ids, pixels.permute(0, 2, 3, 1).numpy(), skipped


def _mean_differences(paths: list[Path], size: int) -> np.ndarray:
    ids, pixels, skipped = _tensor_path(paths, size)
    assert ids == [p.stem for p in paths] and skipped.total == 0
    reference = np.stack([read_image(p, size) for p in paths]).astype(np.int16)
    return np.abs(pixels.astype(np.int16) - reference).reshape(len(paths), -1).mean(axis=1)


def test_decode_jpeg_gives_the_pil_readers_pixels(tmp_path):
    rng = np.random.default_rng(0)
    full_scale, drafted = [], []
    for i, (width, height, mode) in enumerate([(120, 90, "RGB"), (90, 140, "RGB"), (64, 64, "L"), (200, 150, "RGB")]):
        path = tmp_path / f"photo{i}.jpg"
        _photo(rng, width, height, mode).save(path, quality=90)
        full_scale.append(path)
    for i in range(2):
        path = tmp_path / f"large{i}.jpg"
        _photo(rng, 256, 192).save(path, quality=90)
        drafted.append(path)
    assert all(read_for_decode_jpeg("x", p, 48).jpeg is not None for p in full_scale + drafted)
    assert _mean_differences(full_scale, 48).max() < FULL_SCALE_TOLERANCE
    assert _mean_differences(full_scale, 64).max() < FULL_SCALE_TOLERANCE  # one of them needs no resize
    assert _mean_differences(drafted, 32).max() < DRAFT_TOLERANCE  # 256x192 at 32 px: PIL decodes at 1/2


def test_exif_and_xmp_orientation_are_applied_as_pil_applies_them(tmp_path):
    rng = np.random.default_rng(1)
    image = _photo(rng, 96, 64)
    paths = []
    for orientation in range(1, 9):
        exif = Image.Exif()
        exif.endian = "<" if orientation % 2 else ">"  # both byte orders
        exif[0x0112] = orientation
        path = tmp_path / f"orientation{orientation}.jpg"
        image.save(path, quality=95, exif=exif)
        paths.append(path)
    xmp = tmp_path / "xmp.jpg"  # no EXIF: PIL takes the orientation from XMP
    image.save(xmp, quality=95, xmp=b'<x:xmpmeta><rdf:Description tiff:Orientation="6"/></x:xmpmeta>')
    paths.append(xmp)
    assert [read_for_decode_jpeg("x", p, 40).orientation for p in paths] == [*range(1, 9), 6]
    # Non-square target: a wrong rotation would show as a large difference.
    assert _mean_differences(paths, 40).max() < FULL_SCALE_TOLERANCE


def test_jpegs_decode_jpeg_may_get_wrong_are_left_to_pil(tmp_path):
    rng = np.random.default_rng(3)
    image = _photo(rng, 64, 48)
    image.save(tmp_path / "progressive.jpg", quality=90, progressive=True)
    image.save(tmp_path / "rgb-coded.jpg", quality=90, keep_rgb=True)
    image.convert("CMYK").save(tmp_path / "cmyk.jpg", quality=90)
    image.save(tmp_path / "png.jpg", format="PNG")
    too_large = Image.MAX_IMAGE_PIXELS
    try:
        Image.MAX_IMAGE_PIXELS = 64 * 48 - 1  # PIL would warn or refuse: it decides
        with pytest.warns(Image.DecompressionBombWarning):
            assert read_for_decode_jpeg("x", tmp_path / "progressive.jpg", 32).jpeg is None
    finally:
        Image.MAX_IMAGE_PIXELS = too_large
    assert read_for_decode_jpeg("x", tmp_path / "progressive.jpg", 32).jpeg is not None
    for name in ("rgb-coded", "cmyk", "png"):
        read = read_for_decode_jpeg(name, tmp_path / f"{name}.jpg", 32)
        assert read.jpeg is None and read.pixels is not None, name
    assert _mean_differences([tmp_path / "progressive.jpg"], 32).max() < FULL_SCALE_TOLERANCE
    assert _mean_differences([tmp_path / f"{name}.jpg" for name in ("rgb-coded", "cmyk", "png")], 32).max() == 0


def test_decode_jpeg_matches_pil_on_real_flickr8k_photos(flickr8k_root):
    paths = sorted((flickr8k_root / "Flicker8k_Dataset").glob("*.jpg"))[:400:25]
    for size in (224, 96):
        differences = _mean_differences(paths, size)
        assert differences.max() < FULL_SCALE_TOLERANCE, (size, differences)


def _mixed_folder(folder: Path) -> list[ImageRecord]:
    """Good JPEGs (colour, greyscale, CMYK), a PNG, and three bad files: truncated, text, broken scan header."""
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(2)
    files = {}
    for i in range(4):
        files[f"good{i}.jpg"] = _photo(rng, 72, 56)
    files["grey.jpg"] = _photo(rng, 50, 70, "L")
    files["cmyk.jpg"] = _photo(rng, 60, 60, "CMYK")
    files["drawing.png"] = _photo(rng, 40, 48)
    for name, image in files.items():
        image.save(folder / name, quality=90)
    good = (folder / "good0.jpg").read_bytes()
    (folder / "truncated.jpg").write_bytes(good[:len(good) // 2])
    (folder / "notes.jpg").write_text("not an image at all\n")
    # A JPEG whose scan names a Huffman table that does not exist: the header walk lets it through,
    # decode_jpeg fails the whole batch on it, and PIL fails it too.
    broken = bytearray(good)
    broken[broken.index(b"\xff\xda") + 6] = 0x55
    (folder / "badscan.jpg").write_bytes(bytes(broken))
    names = ["good0.jpg", "truncated.jpg", "grey.jpg", "good1.jpg", "notes.jpg", "drawing.png", "cmyk.jpg",
             "badscan.jpg", "good2.jpg", "good3.jpg"]
    return [ImageRecord(Path(name).stem, folder / name, ("a caption",), "train") for name in names]


BAD = {"truncated", "notes", "badscan"}


def test_a_batch_with_corrupt_files_skips_exactly_those_and_keeps_the_rest(tmp_path):
    records = _mixed_folder(tmp_path / "images")
    reads = [read_for_decode_jpeg(r.image_id, r.path, 32) for r in records]
    # Only what decode_jpeg should take goes to it; the rest was decoded (or failed) by PIL already.
    assert {r.image_id for r in reads if r.jpeg is not None} == {"good0", "good1", "good2", "good3", "grey", "badscan"}
    skipped = SkipReport()
    ids, pixels = assemble_batch(reads, 32, "cpu", skipped)
    assert ids == [r.image_id for r in records if r.image_id not in BAD]
    assert pixels.shape == (7, 3, 32, 32) and pixels.dtype == torch.uint8
    assert skipped.counts == {"unreadable image": 3}
    examples = " ".join(skipped.examples["unreadable image"])
    assert all(f"{name}.jpg" in examples for name in BAD)

    pil = tmp_path / "pil"
    gpu = tmp_path / "gpu"
    backbone = FakeBackbone()
    pil_report = extract_features(records, backbone, pil, shard_size=4, batch_size=3, workers=2, decoder="pil")
    gpu_report = extract_features(records, backbone, gpu, shard_size=4, batch_size=3, workers=2, decoder="gpu")
    assert (pil_report.decoder, gpu_report.decoder) == ("pil", "gpu")
    assert pil_report.skipped.to_dict() == gpu_report.skipped.to_dict()  # same files, same words
    for folder, decoder in ((pil, "pil"), (gpu, "gpu")):
        manifest = json.loads((folder / "manifest.json").read_text())
        assert manifest["decoder"] == decoder and manifest["images_stored"] == 7
        assert manifest["skipped"]["counts"] == {"unreadable image": 3}
        assert [json.loads((folder / f"{s}.json").read_text())["decoder"] for s in manifest["shards"]] == [decoder] * 3
    kept = [r.image_id for r in records if r.image_id not in BAD]
    from_pil = FeatureCache(pil).get(kept).numpy()
    from_gpu = FeatureCache(gpu).get(kept).numpy()
    assert np.abs(from_pil).mean() > 0.5
    np.testing.assert_allclose(from_gpu, from_pil, atol=0.02)  # pixels off by ~0.2 of 255, float16 storage


def test_a_failed_batch_is_decoded_one_by_one(tmp_path, monkeypatch):
    import captioner.data.gpu_decode as gpu_decode

    records = _mixed_folder(tmp_path / "images")
    reads = [read_for_decode_jpeg(r.image_id, r.path, 32) for r in records]
    calls = []
    real = gpu_decode.decode_jpegs

    def counted(jpegs: list[torch.Tensor], device: torch.device):
        calls.append(len(jpegs))
        return real(jpegs, device)

    monkeypatch.setattr(gpu_decode, "decode_jpegs", counted)
    ids, _ = assemble_batch(reads, 32, "cpu", SkipReport())
    assert calls == [6, 1, 1, 1, 1, 1, 1] and "badscan" not in ids and "good3" in ids
    # Bytes decode_jpeg rejects outright go to PIL, which keeps a file it can read.
    calls.clear()
    png = next(r for r in records if r.image_id == "drawing")
    ids, pixels = assemble_batch([ReadImage("drawing", png.path, jpeg=torch.frombuffer(bytearray(png.path.read_bytes()),
                                                                                        dtype=torch.uint8))],
                                 32, "cpu", SkipReport())
    assert calls == [1] and ids == ["drawing"]
    np.testing.assert_array_equal(pixels[0].permute(1, 2, 0).numpy(), read_image(png.path, 32))


def test_auto_decodes_on_the_gpu_only_for_a_cuda_device():
    assert resolve_decoder("auto", "cpu") == "pil" and resolve_decoder("auto", "cuda:1") == "gpu"
    assert resolve_decoder("gpu", "cpu") == "gpu" and resolve_decoder("pil", "cuda") == "pil"
    with pytest.raises(ValueError, match="decoder"):
        resolve_decoder("nvjpeg", "cuda")


def _tiny_flickr(root: Path) -> None:
    """A Flickr8k-layout folder over _mixed_folder's files (the PNG keeps its .png name)."""
    records = _mixed_folder(root / "Flicker8k_Dataset")
    text = root / "Flickr8k_text"
    text.mkdir()
    names = [r.path.name for r in records]
    splits = {"train": names[:6], "dev": names[6:8], "test": names[8:]}
    for split, files in splits.items():
        (text / f"Flickr_8k.{split}Images.txt").write_text("".join(f"{name}\n" for name in files))
    lines = [f"{name}#{k}\ta dog runs on the grass ." for name in names for k in range(5)]
    (text / "Flickr8k.token.txt").write_text("\n".join(lines) + "\n")


def test_extract_command_with_gpu_decoding_writes_an_interchangeable_cache(tmp_path):
    _tiny_flickr(tmp_path / "flickr")
    common = ["extract", "--config", "eval/flickr8k/wsram.yaml", "--quiet", "--shard-size", "4", "--workers", "2",
              "--set", f"data.root={tmp_path / 'flickr'}", "--set", "model.encoder.image_size=64"]
    assert main([*common, "--out", str(tmp_path / "gpu"), "--decode", "gpu"]) == 0
    assert main([*common, "--out", str(tmp_path / "pil"), "--decode", "pil"]) == 0
    gpu, pil = FeatureCache(tmp_path / "gpu"), FeatureCache(tmp_path / "pil")
    report = json.loads((tmp_path / "gpu" / "extraction.json").read_text())
    assert report["decoder"] == "gpu" and report["skipped"]["counts"]["unreadable image"] == 3
    assert gpu.manifest["decoder"] == "gpu" and pil.manifest["decoder"] == "pil"
    for key in ("encoder", "weights_hash", "plan_hash", "images_stored", "skipped"):
        assert gpu.manifest[key] == pil.manifest[key], key
    ids = sorted(gpu.index)
    assert ids == sorted(pil.index) and len(ids) == 7
    a, b = gpu.get(ids).numpy().reshape(len(ids), -1), pil.get(ids).numpy().reshape(len(ids), -1)
    # EfficientNet amplifies the ~0.2/255 pixel differences: per-image cosine 0.997-1 here, >= 0.9992 on
    # Flickr8k photos, where the bf16 autocast that CUDA extraction uses anyway gives >= 0.9988.
    cosine = (a * b).sum(1) / np.linalg.norm(a, axis=1) / np.linalg.norm(b, axis=1)
    assert cosine.min() > 0.99, cosine
    # The decoder is no part of the compatibility check: a GPU-decoded cache resumes with PIL.
    (tmp_path / "gpu" / "shard-00001.json").unlink()
    assert main([*common, "--out", str(tmp_path / "gpu"), "--decode", "pil"]) == 0
    resumed = FeatureCache(tmp_path / "gpu")
    assert resumed.manifest["decoder"] == "gpu+pil" and len(resumed) == 7
