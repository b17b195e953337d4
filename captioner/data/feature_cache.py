"""An on-disk cache of feature grids: sharded, memory-mapped, float16 or int8, resumable.

Layout of a cache folder:

    manifest.json          encoder spec, weights hash, storage type, the shard plan, what was skipped,
                           the image decoder used ("pil", "gpu", or "gpu+pil" for a run resumed with the other)
    shard-00000.npy        (n, L, D) float16, or int8 with
    shard-00000.scale.npy  (n, D) float16 per-image, per-channel scales (int8 only): x = q * scale
    shard-00000.json       the image ids of the rows, the images of this shard that were skipped, its decoder

A shard is written to temporary files and renamed, its .json last, so a shard whose .json exists
is complete; a re-run skips those. RAM stays bounded by one shard whatever the data set size.
The manifest names the encoder (backbone, layer, resolution, preprocessing, weights hash), and
`FeatureCache.check_encoder` refuses a model built on anything else. The decoder is a note only:
PIL and GPU decoding give pixels within about a grey level of each other (captioner.data.gpu_decode),
so their caches are interchangeable.
"""

from __future__ import annotations

import hashlib
import itertools
import json
import time
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from captioner.data.gpu_decode import ReadImage, assemble_batch, read_for_decode_jpeg, read_with_pil
from captioner.data.records import ImageRecord, SkipReport
from captioner.files import atomic_write, write_json

FORMAT_VERSION = 1
MANIFEST = "manifest.json"
STORAGE_TYPES = ("float16", "int8")
DECODERS = ("auto", "pil", "gpu")


class CacheMismatchError(ValueError):
    """A feature cache was made with another encoder, weights or image list than asked for."""


def _save_npy(path: Path, array: np.ndarray) -> None:
    def write(temporary: Path) -> None:
        with open(temporary, "wb") as handle:
            np.save(handle, array)
    atomic_write(path, write)


def _write_json(path: Path, data: dict) -> None:
    write_json(path, data, indent=1)


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
    decoder: str
    # Seconds until the first batch's grids were back on the host, and its size: the first batch pays
    # for the device's one-time start-up (decoder library, kernel loading), the rest run at speed.
    first_batch_seconds: float = float("nan")
    first_batch_images: int = 0

    @property
    def images_per_second(self) -> float:
        return self.written / self.seconds if self.seconds > 0 else float("nan")

    @property
    def images_per_second_after_first_batch(self) -> float:
        rest = self.seconds - self.first_batch_seconds
        return (self.written - self.first_batch_images) / rest if rest > 0 else float("nan")


def resolve_decoder(decoder: str, device: str | torch.device) -> str:
    """"auto" -> "gpu" on a CUDA device, else "pil"; "pil" and "gpu" stay as they are.

    "pil" decodes with PIL on CPU threads; "gpu" decodes JPEGs in batches with torchvision on the
    extraction device (nvjpeg on CUDA; on a CPU device torchvision's CPU decoder, which tests use)."""
    if decoder not in DECODERS:
        raise ValueError(f"decoder must be one of {DECODERS}, got {decoder!r}")
    if decoder == "auto":
        return "gpu" if torch.device(device).type == "cuda" else "pil"
    return decoder


def _load_batches(batches: Sequence[tuple[int, Sequence[ImageRecord]]], image_size: int, workers: int,
                  decoder: str, device: torch.device
                  ) -> Iterator[tuple[int, list[str], torch.Tensor | None, SkipReport]]:
    """For each (shard index, records) of `batches`: (shard index, ids, uint8 (n, 3, S, S) or None, skips).

    `workers` threads read the files (and with "pil" decode them; PIL releases the GIL while decoding),
    each a slice of the batch, the next batch while the caller works on this one, across shard
    boundaries too: one task per file would spend more time handing the GIL around than reading.
    With "gpu" the JPEGs are decoded on `device` (see captioner.data.gpu_decode) and the pixels are
    already there; with "pil" they are on the CPU. Unreadable files are counted in skips and left out."""
    read = read_for_decode_jpeg if decoder == "gpu" else read_with_pil
    assemble_on = device if decoder == "gpu" else torch.device("cpu")
    workers = max(1, workers)

    def read_slice(records: Sequence[ImageRecord]) -> list[ReadImage]:
        return [read(record.image_id, record.path, image_size) for record in records]

    with ThreadPoolExecutor(max_workers=workers) as pool:
        def submit(index: int) -> list[Future]:
            if index >= len(batches):
                return []
            records = batches[index][1]
            step = -(-len(records) // workers)
            return [pool.submit(read_slice, records[first:first + step]) for first in range(0, len(records), step)]

        ahead = submit(0)
        for index, (shard, _) in enumerate(batches):
            current, ahead = ahead, submit(index + 1)
            skips = SkipReport()
            reads = [read for future in current for read in future.result()]
            ids, pixels = assemble_batch(reads, image_size, assemble_on, skips)
            yield shard, ids, pixels, skips


def extract_features(records: Sequence[ImageRecord], backbone, out_dir: str | Path, storage: str = "float16",
                     shard_size: int = 1024, batch_size: int = 64, device: str | torch.device = "cpu",
                     workers: int = 4, decoder: str = "auto", bf16: bool = False, channels_last: bool = False,
                     progress: Callable[[int, int], None] | None = None) -> ExtractionReport:
    """Run `backbone` on every distinct image of `records` and store the grids under `out_dir`.

    `decoder` (see resolve_decoder) is how images are decoded; the manifest notes it, but it is no part
    of what a cache must match: PIL and GPU decoding give pixels within about a grey level. `bf16`
    (autocast, CUDA only) and `channels_last` (the backbone's and its inputs' memory layout) are for
    speed on a GPU and change the features by rounding only. Resumable: shards already complete are skipped, after checking that the folder was made by the
    same encoder, weights, storage type and image list (CacheMismatchError otherwise)."""
    if storage not in STORAGE_TYPES:
        raise ValueError(f"storage must be one of {STORAGE_TYPES}, got {storage!r}")
    if shard_size <= 0 or batch_size <= 0:
        raise ValueError("shard_size and batch_size must be positive")
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    device = torch.device(device)
    decoder = resolve_decoder(decoder, device)
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

    memory_format = torch.channels_last if channels_last else torch.contiguous_format
    backbone = backbone.to(device, memory_format=memory_format).eval()
    todo = [index for index, name in enumerate(manifest["shards"]) if not (out_dir / f"{name}.json").is_file()]
    batches = []
    for index in todo:
        shard_records = ordered[index * shard_size:(index + 1) * shard_size]
        batches.extend((index, shard_records[first:first + batch_size])
                       for first in range(0, len(shard_records), batch_size))
    skipped = SkipReport()
    start = time.perf_counter()
    written = 0
    first_batch: tuple[float, int] | None = None
    loaded = _load_batches(batches, spec.image_size, workers, decoder, device)
    for index, shard_batches in itertools.groupby(loaded, key=lambda batch: batch[0]):
        name = manifest["shards"][index]
        shard_skips = SkipReport()
        ids, grids, scales = [], [], []
        for _, batch_ids, pixels, batch_skips in shard_batches:
            shard_skips.merge(batch_skips)
            if pixels is None:
                continue
            with torch.inference_mode(), torch.autocast(device.type, dtype=torch.bfloat16,
                                                        enabled=bf16 and device.type == "cuda"):
                inputs = backbone.preprocess(pixels.to(device, non_blocking=True))
                grid = backbone(inputs.contiguous(memory_format=memory_format))
            if storage == "int8":
                q, scale = quantize_int8(grid.float().cpu().numpy())
                grids.append(q)
                scales.append(scale)
            else:
                grids.append(grid.to(torch.float16).cpu().numpy())  # half the bytes to copy, no CPU conversion
            ids.extend(batch_ids)
            if first_batch is None:
                first_batch = (time.perf_counter() - start, len(batch_ids))
            if progress is not None:
                progress(written + len(ids), len(ordered))
        array = np.concatenate(grids) if grids else np.zeros((0, manifest["num_locations"], spec.channels),
                                                             np.int8 if storage == "int8" else np.float16)
        _save_npy(out_dir / f"{name}.npy", array)
        if storage == "int8":
            scale_array = np.concatenate(scales) if scales else np.zeros((0, spec.channels), np.float16)
            _save_npy(out_dir / f"{name}.scale.npy", scale_array)
        _write_json(out_dir / f"{name}.json", {"image_ids": ids, "skipped": shard_skips.to_dict(), "decoder": decoder})
        skipped.merge(shard_skips)
        written += len(ids)
    seconds = time.perf_counter() - start

    # The manifest's skip count covers all shards, also those of earlier runs.
    shards = [json.loads((out_dir / f"{name}.json").read_text()) for name in manifest["shards"]]
    total_skips = SkipReport()
    for shard in shards:
        for reason, count in shard["skipped"]["counts"].items():
            total_skips.counts[reason] += count
            total_skips.examples.setdefault(reason, []).extend(shard["skipped"]["examples"].get(reason, []))
    stored = sum(len(shard["image_ids"]) for shard in shards)
    # A note, not checked on resume or use: shards made before decoders were recorded were decoded by PIL.
    decoders = "+".join(sorted({shard.get("decoder", "pil") for shard in shards}))
    _write_json(manifest_path, {**manifest, "complete": True, "images_stored": stored, "skipped": total_skips.to_dict(),
                                "decoder": decoders})
    return ExtractionReport(len(ordered), written, skipped, len(todo), len(manifest["shards"]) - len(todo), seconds,
                            decoder, *(first_batch or (float("nan"), 0)))


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
           "dequantize_int8", "resolve_decoder", "DECODERS", "STORAGE_TYPES"]
