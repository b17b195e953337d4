"""An on-disk cache of feature grids: sharded, memory-mapped, float16 or int8, resumable.

Layout of a cache folder:

    manifest.json          encoder spec, weights hash, storage type, the shard plan, what was skipped
    shard-00000.npy        (n, L, D) float16, or int8 with
    shard-00000.scale.npy  (n, D) float16 per-image, per-channel scales (int8 only): x = q * scale
    shard-00000.json       the image ids of the rows, and the images of this shard that were skipped

A shard is written to temporary files and renamed, its .json last, so a shard whose .json exists
is complete; a re-run skips those. RAM stays bounded by one shard whatever the data set size.
The manifest names the encoder (backbone, layer, resolution, preprocessing, weights hash), and
`FeatureCache.check_encoder` refuses a model built on anything else.
"""

from __future__ import annotations

import hashlib
import json
import os
import time
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from captioner.data.images import ImageReadError, read_image
from captioner.data.records import ImageRecord, SkipReport

FORMAT_VERSION = 1
MANIFEST = "manifest.json"
STORAGE_TYPES = ("float16", "int8")


class CacheMismatchError(ValueError):
    """A feature cache was made with another encoder, weights or image list than asked for."""


def _atomic_write_bytes(path: Path, write: Callable[[Path], None]) -> None:
    temporary = path.with_name(path.name + ".tmp")
    write(temporary)
    os.replace(temporary, path)


def _save_npy(path: Path, array: np.ndarray) -> None:
    def write(temporary: Path) -> None:
        with open(temporary, "wb") as handle:
            np.save(handle, array)
    _atomic_write_bytes(path, write)


def _write_json(path: Path, data: dict) -> None:
    _atomic_write_bytes(path, lambda p: p.write_text(json.dumps(data, indent=1)))


def _as_json(data: dict) -> dict:
    """`data` as it reads back from JSON (tuples become lists), so specs compare equal after a round trip."""
    return json.loads(json.dumps(data))


def _plan_hash(image_ids: Sequence[str]) -> str:
    digest = hashlib.sha256()
    for image_id in image_ids:
        digest.update(image_id.encode() + b"\n")
    return digest.hexdigest()[:16]


def quantize_int8(features: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(n, L, D) float -> int8 (n, L, D) and float16 scales (n, D), one per image and channel, such
    that features ~= q * scale (symmetric, max-abs over the L locations)."""
    peak = np.abs(features).max(axis=1)  # (n, D)
    scale = (peak / 127.0).astype(np.float16)
    safe = np.where(scale > 0, scale.astype(np.float32), 1.0)
    q = np.clip(np.rint(features / safe[:, None, :]), -127, 127).astype(np.int8)
    return q, scale


def dequantize_int8(q: np.ndarray, scale: np.ndarray) -> np.ndarray:
    return q.astype(np.float32) * scale.astype(np.float32)[:, None, :]


@dataclass
class ExtractionReport:
    images: int
    written: int
    skipped: SkipReport
    shards_done: int
    shards_skipped: int
    seconds: float

    @property
    def images_per_second(self) -> float:
        return self.written / self.seconds if self.seconds > 0 else float("nan")


def _load_batches(records: Sequence[ImageRecord], image_size: int, batch_size: int, workers: int,
                  skipped: SkipReport) -> Iterator[tuple[list[str], torch.Tensor]]:
    """Decode images with PIL in `workers` threads (PIL releases the GIL while decoding), yielding
    (ids, uint8 (n, 3, S, S)); unreadable files are counted in `skipped` and left out."""

    def read(record: ImageRecord):
        try:
            return record.image_id, read_image(record.path, image_size)
        except ImageReadError as error:
            return record.image_id, error

    with ThreadPoolExecutor(max_workers=max(1, workers)) as pool:
        for start in range(0, len(records), batch_size):
            ids, pixels = [], []
            for image_id, result in pool.map(read, records[start:start + batch_size]):
                if isinstance(result, ImageReadError):
                    skipped.add("unreadable image", str(result))
                    continue
                ids.append(image_id)
                pixels.append(torch.from_numpy(result).permute(2, 0, 1))
            if ids:
                yield ids, torch.stack(pixels)


def extract_features(records: Sequence[ImageRecord], backbone, out_dir: str | Path, storage: str = "float16",
                     shard_size: int = 1024, batch_size: int = 64, device: str | torch.device = "cpu",
                     workers: int = 4, bf16: bool = False, progress: Callable[[int, int], None] | None = None
                     ) -> ExtractionReport:
    """Run `backbone` on every distinct image of `records` and store the grids under `out_dir`.

    Resumable: shards already complete are skipped, after checking that the folder was made by the
    same encoder, weights, storage type and image list (CacheMismatchError otherwise)."""
    if storage not in STORAGE_TYPES:
        raise ValueError(f"storage must be one of {STORAGE_TYPES}, got {storage!r}")
    if shard_size <= 0 or batch_size <= 0:
        raise ValueError("shard_size and batch_size must be positive")
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    device = torch.device(device)
    unique: dict[str, ImageRecord] = {}
    for record in records:
        unique.setdefault(record.image_id, record)
    ordered = list(unique.values())
    image_ids = [r.image_id for r in ordered]
    spec = backbone.spec
    manifest = {
        "format_version": FORMAT_VERSION,
        "encoder": _as_json(spec.to_dict()),
        "weights_hash": backbone.weights_hash(),
        "storage": storage,
        "num_locations": spec.grid * spec.grid,
        "channels": spec.channels,
        "shard_size": shard_size,
        "images_planned": len(ordered),
        "plan_hash": _plan_hash(image_ids),
        "shards": [f"shard-{i:05d}" for i in range((len(ordered) + shard_size - 1) // shard_size)],
    }
    manifest_path = out_dir / MANIFEST
    if manifest_path.is_file():
        existing = json.loads(manifest_path.read_text())
        for key in ("format_version", "encoder", "weights_hash", "storage", "shard_size", "plan_hash"):
            if existing.get(key) != manifest[key]:
                raise CacheMismatchError(
                    f"{manifest_path}: this cache was made with {key}={existing.get(key)!r}, this run asks for "
                    f"{manifest[key]!r}; use another folder (or delete this one) to make a new cache")
    _write_json(manifest_path, {**manifest, "complete": False})

    backbone = backbone.to(device).eval()
    skipped = SkipReport()
    start = time.perf_counter()
    written = shards_skipped = 0
    for index, name in enumerate(manifest["shards"]):
        if (out_dir / f"{name}.json").is_file():
            shards_skipped += 1
            continue
        shard_records = ordered[index * shard_size:(index + 1) * shard_size]
        shard_skips = SkipReport()
        ids, grids, scales = [], [], []
        for batch_ids, pixels in _load_batches(shard_records, spec.image_size, batch_size, workers, shard_skips):
            with torch.inference_mode(), torch.autocast(device.type, dtype=torch.bfloat16,
                                                        enabled=bf16 and device.type == "cuda"):
                grid = backbone(backbone.preprocess(pixels.to(device, non_blocking=True)))
            grid = grid.float().cpu().numpy()
            if storage == "int8":
                q, scale = quantize_int8(grid)
                grids.append(q)
                scales.append(scale)
            else:
                grids.append(grid.astype(np.float16))
            ids.extend(batch_ids)
            if progress is not None:
                progress(written + len(ids), len(ordered))
        array = np.concatenate(grids) if grids else np.zeros((0, manifest["num_locations"], spec.channels),
                                                             np.int8 if storage == "int8" else np.float16)
        _save_npy(out_dir / f"{name}.npy", array)
        if storage == "int8":
            scale_array = np.concatenate(scales) if scales else np.zeros((0, spec.channels), np.float16)
            _save_npy(out_dir / f"{name}.scale.npy", scale_array)
        _write_json(out_dir / f"{name}.json", {"image_ids": ids, "skipped": shard_skips.to_dict()})
        skipped.merge(shard_skips)
        written += len(ids)
    seconds = time.perf_counter() - start

    # The manifest's skip count covers all shards, also those of earlier runs.
    total_skips = SkipReport()
    for name in manifest["shards"]:
        shard = json.loads((out_dir / f"{name}.json").read_text())
        for reason, count in shard["skipped"]["counts"].items():
            total_skips.counts[reason] += count
            total_skips.examples.setdefault(reason, []).extend(shard["skipped"]["examples"].get(reason, []))
    stored = sum(len(json.loads((out_dir / f"{n}.json").read_text())["image_ids"]) for n in manifest["shards"])
    _write_json(manifest_path, {**manifest, "complete": True, "images_stored": stored, "skipped": total_skips.to_dict()})
    return ExtractionReport(len(ordered), written, skipped, len(manifest["shards"]) - shards_skipped, shards_skipped,
                            seconds)


class FeatureCache:
    """Read access to a finished cache: rows are memory-mapped, looked up by image id."""

    def __init__(self, folder: str | Path):
        self.folder = Path(folder)
        path = self.folder / MANIFEST
        if not path.is_file():
            raise FileNotFoundError(f"{path}: no feature cache here; make one with `captioner extract`")
        self.manifest = json.loads(path.read_text())
        if self.manifest.get("format_version") != FORMAT_VERSION:
            raise ValueError(f"{path}: format_version {self.manifest.get('format_version')!r} is not {FORMAT_VERSION}")
        if not self.manifest.get("complete"):
            raise ValueError(f"{path}: the cache is incomplete (extraction was interrupted); run the same "
                             "`captioner extract` command again to finish it")
        self.storage = self.manifest["storage"]
        self._arrays: list[np.ndarray] = []
        self._scales: list[np.ndarray | None] = []
        self.index: dict[str, tuple[int, int]] = {}
        for shard, name in enumerate(self.manifest["shards"]):
            ids = json.loads((self.folder / f"{name}.json").read_text())["image_ids"]
            array = np.load(self.folder / f"{name}.npy", mmap_mode="r")
            if array.shape[0] != len(ids):
                raise ValueError(f"{self.folder / name}.npy: {array.shape[0]} rows but {len(ids)} image ids")
            self._arrays.append(array)
            self._scales.append(np.load(self.folder / f"{name}.scale.npy", mmap_mode="r")
                                if self.storage == "int8" else None)
            for row, image_id in enumerate(ids):
                self.index[image_id] = (shard, row)

    @property
    def encoder(self) -> dict:
        return self.manifest["encoder"]

    @property
    def num_locations(self) -> int:
        return self.manifest["num_locations"]

    @property
    def channels(self) -> int:
        return self.manifest["channels"]

    def __contains__(self, image_id: str) -> bool:
        return image_id in self.index

    def __len__(self) -> int:
        return len(self.index)

    def check_encoder(self, spec: dict, weights_hash: str | None = None) -> None:
        """Raise CacheMismatchError unless the cache was made by encoder `spec` (and `weights_hash`)."""
        for key, value in _as_json(spec).items():
            if self.encoder.get(key) != value:
                raise CacheMismatchError(
                    f"{self.folder}: the cache holds features of {self.encoder}, the model's encoder has {key}={value!r} "
                    f"(cache: {self.encoder.get(key)!r}); extract a cache with this encoder or change the model")
        if weights_hash is not None and self.manifest["weights_hash"] != weights_hash:
            raise CacheMismatchError(
                f"{self.folder}: the cache was made with encoder weights {self.manifest['weights_hash']}, the model's "
                f"encoder has {weights_hash}; extract a cache with these weights")

    def get(self, image_ids: Sequence[str], dtype: torch.dtype = torch.float32) -> torch.Tensor:
        """Feature grids (n, L, D) of `image_ids`, dequantised, as `dtype`."""
        out = np.empty((len(image_ids), self.num_locations, self.channels), np.float32)
        for i, image_id in enumerate(image_ids):
            shard, row = self.index[image_id]
            if self.storage == "int8":
                out[i] = dequantize_int8(self._arrays[shard][row:row + 1], self._scales[shard][row:row + 1])[0]
            else:
                out[i] = self._arrays[shard][row]
        return torch.from_numpy(out).to(dtype)


__all__ = ["CacheMismatchError", "ExtractionReport", "FeatureCache", "extract_features", "quantize_int8",
           "dequantize_int8", "STORAGE_TYPES"]
