"""An on-disk cache of feature grids: sharded, memory-mapped, float16 or int8, resumable, checksummed.

Layout of a cache folder:

    manifest.json          encoder spec, weights hash, storage type, the shard plan, what was skipped,
                           the image decoder used ("pil", "gpu", or "gpu+pil" for a run resumed with the other),
                           and "checksums": {"shard-00000.json": {"bytes": n, "sha256": hex}, ...}
    shard-00000.npy        (n, L, D) float16, or int8 with
    shard-00000.scale.npy  (n, D) float16 per-image, per-channel scales (int8 only): x = q * scale
    shard-00000.json       the image ids of the rows, the images of this shard that were skipped, its decoder,
                           "cache_key" (which encoder, weights, storage and image list it belongs to) and
                           "files": {"shard-00000.npy": {"bytes": n, "sha256": hex}, ...}, the checksums of
                           its arrays, computed over the bytes as they were written

A shard is written to temporary files and renamed, its .json last, so a shard whose .json exists
is complete; a re-run skips those after checking them in full (sizes, headers, checksums), and
redoes a damaged one. RAM stays bounded by one shard whatever the data set size.

Opening a cache (`FeatureCache`) checks every shard cheaply: the .json parses and matches the
manifest's checksum, each .npy has a readable header with the expected dtype and shape and exactly
the size that header implies. The arrays' checksums are checked in full when a split is preloaded
(`FeatureCache.verify`), by `verify_cache` (`captioner extract --verify`), and for a shard whose
rows turn out to be all zeros. Rows with NaN or infinite values are refused when read (`get`),
naming the shard file and the row; extraction never stores such rows (they are skipped, counted).
Caches written before checksums open with a warning (`UncheckedCacheWarning`).

`extract_features` makes a cache from image files; `write_cache` stores grids computed elsewhere
(e.g. the synthetic COCO-sized cache of benchmarks/coco_dry_run.py) in the same layout, with the same
checksums and records, as a new cache.

The manifest names the encoder (backbone, layer, resolution, preprocessing, weights hash), and
`FeatureCache.check_encoder` refuses a model built on anything else. The decoder is a note only:
PIL and GPU decoding give pixels within about a grey level of each other (captioner.data.gpu_decode),
so their caches are interchangeable.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import threading
import time
import warnings
from collections.abc import Callable, Iterable, Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

from captioner.data.gpu_decode import ReadImage, assemble_batch, decode_jpegs, read_for_decode_jpeg, read_with_pil
from captioner.data.records import ImageRecord, SkipReport
from captioner.errors import CaptionerError
from captioner.files import atomic_write, json_text
from captioner.outputs import writing


FORMAT_VERSION = 1
MANIFEST = "manifest.json"
STORAGE_TYPES = ("float16", "int8")
DECODERS = ("auto", "pil", "gpu")


CHECKSUM = "sha256"
_CHUNK = 8 << 20
# What to do about a damaged shard: extraction re-checks every shard and redoes the damaged ones.
REPAIR = ("re-run the `captioner extract` command that made this cache (same config and arguments): it checks "
          "every shard and redoes only the damaged ones")
NON_FINITE_REASON = "non-finite features (NaN or inf from the backbone, or beyond float16's range)"


class CacheMismatchError(CaptionerError, ValueError):
    """A feature cache was made with another encoder, weights or image list than asked for."""


class FeatureCacheError(CaptionerError, ValueError):
    """A feature cache is damaged, incomplete or unreadable; the message names the file and the fix."""


class UncheckedCacheWarning(UserWarning):
    """A feature cache (or some of its shards) was written before shards carried checksums."""


class _ShardDamage(Exception):
    """One file of a shard is missing or not what extraction wrote."""

    def __init__(self, path: Path, problem: str):
        super().__init__(f"{path}: {problem}")
        self.path, self.problem = path, problem


def _checksum_of(data: bytes) -> dict:
    return {"bytes": len(data), CHECKSUM: hashlib.new(CHECKSUM, data).hexdigest()}


def _checksum_file(path: Path) -> dict:
    digest, size = hashlib.new(CHECKSUM), 0
    with open(path, "rb") as handle:
        while chunk := handle.read(_CHUNK):
            digest.update(chunk)
            size += len(chunk)
    return {"bytes": size, CHECKSUM: digest.hexdigest()}


class _HashingWriter:
    """A binary file that also hashes and counts what is written to it (np.save writes through it);
    `hash_seconds` is the time spent hashing."""

    def __init__(self, handle):
        self.handle, self.digest, self.size = handle, hashlib.new(CHECKSUM), 0
        self.hash_seconds = 0.0

    def write(self, data) -> int:
        view = memoryview(data).cast("B")
        start = time.perf_counter()
        self.digest.update(view)
        self.hash_seconds += time.perf_counter() - start
        self.size += len(view)
        return self.handle.write(view)

    def record(self) -> dict:
        return {"bytes": self.size, CHECKSUM: self.digest.hexdigest()}


def _save_npy(path: Path, array: np.ndarray, hash_seconds: list[float] | None = None) -> dict:
    """Write `array` to `path` atomically; its checksum record {"bytes", "sha256"}. The seconds
    spent hashing are appended to `hash_seconds` when given."""
    written: list[dict] = []

    def write(temporary: Path) -> None:
        with open(temporary, "wb") as handle:
            hashing = _HashingWriter(handle)
            np.save(hashing, array)
            written.append(hashing.record())
            if hash_seconds is not None:
                hash_seconds.append(hashing.hash_seconds)
    with writing(path):
        atomic_write(path, write)
    return written[-1]


def _write_json(path: Path, data: dict) -> dict:
    """Strict JSON written atomically; the checksum record of the bytes written."""
    encoded = (json_text(data, path, indent=1) + "\n").encode()
    with writing(path):
        atomic_write(path, lambda temporary: temporary.write_bytes(encoded))
    return _checksum_of(encoded)


def _cache_key(manifest: dict) -> str:
    """What a shard must have been made for: encoder, weights, storage, shard size and image list (and
    that the images were mirrored, for a mirrored cache: the keys of other caches are as before)."""
    keys = ("format_version", "encoder", "weights_hash", "storage", "shard_size", "plan_hash")
    keys += ("mirrored",) if manifest.get("mirrored") else ()
    text = json.dumps({key: manifest.get(key) for key in keys}, sort_keys=True)
    return hashlib.sha256(text.encode()).hexdigest()[:16]


# numpy parses a .npy header with ast.literal_eval, and CPython 3.11's AST constructor keeps its
# recursion depth per interpreter, not per thread: headers parsed in several threads at once can
# fail with "SystemError: AST constructor recursion depth mismatch" (python/cpython#106905). The
# shard checks run in threads, so every header is parsed under this lock; reading and hashing the
# arrays, the costly part, stays parallel.
_NPY_HEADERS = threading.Lock()


def _load_npy(path: Path) -> np.ndarray:
    """np.load(path, mmap_mode="r"), safe to call from several threads at once."""
    with _NPY_HEADERS:
        return np.load(path, mmap_mode="r")


def _npy_layout(path: Path) -> tuple[tuple[int, ...], np.dtype, int]:
    """(shape, dtype, size in bytes that the header implies) of a .npy file, from its header alone."""
    with open(path, "rb") as handle:
        version = np.lib.format.read_magic(handle)
        read = np.lib.format.read_array_header_1_0 if version == (1, 0) else np.lib.format.read_array_header_2_0
        with _NPY_HEADERS:
            shape, _, dtype = read(handle)
        offset = handle.tell()
    return tuple(shape), dtype, offset + int(np.prod(shape, dtype=np.int64)) * dtype.itemsize


def _check_npy(path: Path, shape: tuple[int, ...], dtype: np.dtype, written: dict | None) -> None:
    """Cheap checks of one array file: there, a readable header, the expected dtype and shape, and
    exactly the size the header implies (and that extraction recorded)."""
    if not path.is_file():
        raise _ShardDamage(path, "missing")
    size = path.stat().st_size
    try:
        found_shape, found_dtype, needed = _npy_layout(path)
    except (ValueError, OSError, EOFError, SyntaxError) as error:
        raise _ShardDamage(path, f"not a readable .npy array ({size} bytes; header: {error})") from None
    if found_dtype != dtype or found_shape != shape:
        raise _ShardDamage(path, f"holds {found_dtype} {found_shape}, expected {np.dtype(dtype)} {shape}")
    if size != needed:
        raise _ShardDamage(path, f"{size} bytes, but its header needs {needed}: "
                                 + ("truncated" if size < needed else "bytes added at the end"))
    if written is not None and size != written.get("bytes"):
        raise _ShardDamage(path, f"{size} bytes, extraction wrote {written.get('bytes')}")


def _read_shard_record(folder: Path, name: str, checksums: dict | None) -> dict:
    """The shard's .json, checked against the manifest's checksum of it when there is one."""
    path = folder / f"{name}.json"
    if not path.is_file():
        raise _ShardDamage(path, "missing")
    data = path.read_bytes()
    try:
        record = json.loads(data)
    except (ValueError, UnicodeDecodeError) as error:
        raise _ShardDamage(path, f"not valid JSON ({len(data)} bytes, {error}); truncated?") from None
    expected = (checksums or {}).get(path.name)
    if expected is not None and _checksum_of(data) != {key: expected.get(key) for key in ("bytes", CHECKSUM)}:
        raise _ShardDamage(path, "changed since extraction (its checksum does not match the manifest's)")
    if not isinstance(record, dict) or not isinstance(record.get("image_ids"), list) \
            or not all(isinstance(image_id, str) for image_id in record["image_ids"]):
        raise _ShardDamage(path, 'has no "image_ids" list of strings')
    return record


def _check_shard(folder: Path, name: str, manifest: dict, checksums: dict | None) -> dict:
    """Cheap checks of one shard (see FeatureCache); its record. _ShardDamage if anything is off."""
    record = _read_shard_record(folder, name, checksums)
    rows, files = len(record["image_ids"]), record.get("files") or {}
    locations, channels = manifest["num_locations"], manifest["channels"]
    int8 = manifest["storage"] == "int8"
    _check_npy(folder / f"{name}.npy", (rows, locations, channels), np.dtype(np.int8 if int8 else np.float16),
               files.get(f"{name}.npy"))
    if int8:
        _check_npy(folder / f"{name}.scale.npy", (rows, channels), np.dtype(np.float16),
                   files.get(f"{name}.scale.npy"))
    return record


def _check_checksums(folder: Path, record: dict) -> int:
    """Recompute the checksum of every array file the shard's record lists; _ShardDamage on a
    mismatch. The bytes read."""
    read = 0
    for file_name, written in (record.get("files") or {}).items():
        path = folder / file_name
        if not path.is_file():
            raise _ShardDamage(path, "missing")
        found = _checksum_file(path)
        read += found["bytes"]
        if found[CHECKSUM] != written.get(CHECKSUM) or found["bytes"] != written.get("bytes"):
            raise _ShardDamage(path, f"changed since extraction: its {CHECKSUM} does not match the one written "
                                     "at extraction")
    return read


def _damage_message(folder: Path, damage: Sequence[_ShardDamage]) -> str:
    first = damage[0]
    others = f" (and {len(damage) - 1} other damaged shard file(s): " + \
        ", ".join(str(d.path) for d in damage[1:6]) + (", ..." if len(damage) > 6 else "") + ")" \
        if len(damage) > 1 else ""
    return f"{first.path}: {first.problem}{others}; the feature cache {folder} is damaged: {REPAIR}"


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
    # Shards of an earlier run found damaged (path -> what was wrong) and written again by this run.
    damaged: dict[str, str] = field(default_factory=dict)

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


def quantize_int8_torch(features: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """quantize_int8 on a tensor, on its device (float32 arithmetic, round half to even, as numpy):
    the same int8 values and float16 scales bit for bit, 4x fewer bytes to copy to the host."""
    features = features.float()
    peak = features.abs().amax(dim=1)  # (n, D)
    scale = (peak / 127.0).to(torch.float16)
    safe = torch.where(scale > 0, scale.float(), torch.ones((), dtype=torch.float32, device=scale.device))
    q = torch.clamp(torch.round(features / safe[:, None, :]), -127, 127).to(torch.int8)
    return q, scale


def _device_payload(grid: torch.Tensor, storage: str) -> tuple[torch.Tensor, ...]:
    """What extraction keeps of a batch, computed on the grid's device: (finite rows, int8, scales)
    or (finite rows, float16), with exactly the host path's values and finiteness."""
    if storage == "int8":
        values = grid.float()
        finite = torch.isfinite(values.flatten(1)).all(dim=1)
        q, scale = quantize_int8_torch(torch.where(finite[:, None, None], values, torch.zeros((), device=grid.device)))
        finite &= torch.isfinite(scale.float()).all(dim=1)
        return finite, q, scale
    values = grid.to(torch.float16)
    return torch.isfinite(values.flatten(1)).all(dim=1), values


def _host_payload(grid: torch.Tensor, storage: str) -> tuple[np.ndarray, ...]:
    """The old path: the grid copied to the host (a sync), finiteness and int8 quantisation in numpy."""
    if storage == "int8":
        values = grid.float().cpu().numpy()
    else:
        values = grid.to(torch.float16).cpu().numpy()  # half the bytes to copy, no CPU conversion
    finite = np.isfinite(values.reshape(len(values), -1)).all(axis=1)
    if storage == "int8":
        q, scale = quantize_int8(np.where(finite[:, None, None], values, 0.0))
        finite &= np.isfinite(scale.astype(np.float32)).all(axis=1)
        return finite, q, scale
    return finite, values


class _BatchReader:
    """Reads the files of `batches` in `workers` threads (and with "pil" decodes them; PIL releases
    the GIL while decoding), each a slice of a batch, up to `prefetch` batches ahead of the caller,
    across shard boundaries too: one task per file would spend more time handing the GIL around
    than reading. Reading starts when this is made (so it overlaps whatever the caller does next,
    e.g. building the backbone and starting CUDA); iterating gives, for each (shard index, records)
    of `batches`, (shard index, ids, uint8 (n, 3, S, S) or None, skips). With "gpu" the JPEGs are
    decoded on `device` (see captioner.data.gpu_decode) and the pixels are already there; with "pil"
    they are on the CPU. Unreadable files are counted in skips and left out."""

    def __init__(self, batches: Sequence[tuple[int, Sequence[ImageRecord]]], image_size: int, workers: int,
                 decoder: str, device: torch.device, prefetch: int = 1):
        self.batches, self.image_size, self.decoder, self.device = batches, image_size, decoder, device
        self.read = read_for_decode_jpeg if decoder == "gpu" else read_with_pil
        self.workers, self.prefetch = max(1, workers), max(1, prefetch)
        self.pool = ThreadPoolExecutor(max_workers=self.workers)
        self.pending: list[list[Future]] = []
        self.submitted = 0
        self.first_read: float | None = None  # perf_counter when the first batch's files were all read
        self._fill()

    def _read_slice(self, records: Sequence[ImageRecord]) -> list[ReadImage]:
        return [self.read(record.image_id, record.path, self.image_size) for record in records]

    def _fill(self) -> None:
        while self.submitted < len(self.batches) and len(self.pending) < self.prefetch:
            records = self.batches[self.submitted][1]
            step = -(-len(records) // self.workers)
            self.pending.append([self.pool.submit(self._read_slice, records[first:first + step])
                                 for first in range(0, len(records), step)])
            self.submitted += 1

    def __iter__(self) -> Iterator[tuple[int, list[str], torch.Tensor | None, SkipReport]]:
        assemble_on = self.device if self.decoder == "gpu" else torch.device("cpu")
        try:
            for shard, _ in self.batches:
                current = self.pending.pop(0)
                self._fill()
                reads = [read for future in current for read in future.result()]
                if self.first_read is None:
                    self.first_read = time.perf_counter()
                skips = SkipReport()
                ids, pixels = assemble_batch(reads, self.image_size, assemble_on, skips)
                yield shard, ids, pixels, skips
        finally:
            self.close()

    def close(self) -> None:
        for futures in self.pending:
            for future in futures:
                future.cancel()
        self.pool.shutdown(wait=True)


def _load_batches(batches: Sequence[tuple[int, Sequence[ImageRecord]]], image_size: int, workers: int,
                  decoder: str, device: torch.device, prefetch: int = 1
                  ) -> Iterator[tuple[int, list[str], torch.Tensor | None, SkipReport]]:
    """For each (shard index, records) of `batches`: (shard index, ids, uint8 (n, 3, S, S) or None, skips),
    read `prefetch` batches ahead (see _BatchReader; 1 is the old behaviour)."""
    return iter(_BatchReader(batches, image_size, workers, decoder, device, prefetch))


PRECISIONS = ("bf16", "fp16", "fp32")
_AUTOCAST = {"bf16": torch.bfloat16, "fp16": torch.float16}


@dataclass
class ExtractionOptions:
    """Speed switches of `extract_features`; none changes the layout of the cache, and the features
    only by rounding (precision). None means "the default for the device" (the fast one on CUDA).

    precision: autocast dtype on CUDA ("bf16", "fp16") or "fp32" (no autocast); on a CPU always fp32.
    channels_last: the backbone's and its inputs' memory layout.
    prefetch: batches whose files are read ahead (1: the old behaviour; default 8 on CUDA, 2 on a CPU).
    early_read: start reading the files before the backbone's weights are hashed and it is moved to the
        device (only for a folder with no manifest yet: a resumed run first checks what is done).
    warmup: one dummy batch through the decoder and the backbone before the loop (cuDNN, kernel and
        nvjpeg start-up, while the reader threads read ahead).
    device_quantize: finiteness, float16 conversion and int8 quantisation on the device (the same
        values bit for bit), so only the stored bytes cross to the host.
    async_copy: copy each batch to pinned host memory without waiting, and finish the previous batch
        on the host while the device works on this one (no per-batch host sync); CUDA only.
    background_write: shards converted, hashed and written in a background thread."""

    precision: str | None = None
    channels_last: bool | None = None
    prefetch: int | None = None
    early_read: bool = True
    warmup: bool | None = None
    device_quantize: bool | None = None
    async_copy: bool | None = None
    background_write: bool = True

    def resolved(self, device: torch.device) -> "ExtractionOptions":
        cuda = device.type == "cuda"
        precision = (self.precision or ("bf16" if cuda else "fp32")) if cuda else "fp32"
        if precision not in PRECISIONS:
            raise ValueError(f"precision must be one of {PRECISIONS}, got {self.precision!r}")
        return ExtractionOptions(
            precision=precision,
            channels_last=cuda if self.channels_last is None else self.channels_last,
            prefetch=max(1, (8 if cuda else 2) if self.prefetch is None else self.prefetch),
            early_read=self.early_read,
            warmup=cuda if self.warmup is None else self.warmup,
            device_quantize=cuda if self.device_quantize is None else self.device_quantize,
            async_copy=cuda and (True if self.async_copy is None else self.async_copy),
            background_write=self.background_write)

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


def _tiny_jpeg() -> torch.Tensor:
    import io

    buffer = io.BytesIO()
    Image.new("RGB", (16, 16), (120, 60, 200)).save(buffer, "JPEG")
    return torch.frombuffer(bytearray(buffer.getvalue()), dtype=torch.uint8)


def warm_up_device(device: torch.device, decoder: str = "gpu", precision: str = "bf16",
                   channels_last: bool = True) -> None:
    """CUDA context, cuDNN and nvjpeg start-up on a tiny input (no backbone needed): what the first
    batch would pay for otherwise; meant for a background thread while files are read and the
    backbone is built. Nothing on a CPU device."""
    if device.type != "cuda":
        return
    torch.zeros(1, device=device)
    if decoder == "gpu":
        decode_jpegs([_tiny_jpeg()], device)
    layout = torch.channels_last if channels_last else torch.contiguous_format
    with torch.inference_mode(), torch.autocast("cuda", dtype=_AUTOCAST.get(precision, torch.bfloat16),
                                                enabled=precision in _AUTOCAST):
        x = torch.zeros((2, 3, 16, 16), device=device).contiguous(memory_format=layout)
        w = torch.zeros((8, 3, 3, 3), device=device).contiguous(memory_format=layout)
        F.conv2d(x, w, padding=1)
    torch.cuda.synchronize(device)


def _warm_up_backbone(backbone, device: torch.device, batch_size: int, decoder: str, autocast_dtype,
                      autocast: bool, memory_format) -> None:
    """One dummy batch of the real shape through the backbone (cuDNN picks its kernels per shape,
    lazily loaded kernels load), and one tiny JPEG through the decoder; waits for the device."""
    if decoder == "gpu":
        decode_jpegs([_tiny_jpeg()], device)
    size = backbone.spec.image_size
    with torch.inference_mode(), torch.autocast(device.type, dtype=autocast_dtype, enabled=autocast):
        pixels = torch.zeros((batch_size, 3, size, size), dtype=torch.uint8, device=device)
        backbone(backbone.preprocess(pixels).contiguous(memory_format=memory_format))
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def extract_features(records: Sequence[ImageRecord], backbone, out_dir: str | Path, storage: str = "float16",
                     shard_size: int = 1024, batch_size: int = 64, device: str | torch.device = "cpu",
                     workers: int = 4, decoder: str = "auto", bf16: bool = False, channels_last: bool = False,
                     progress: Callable[[int, int], None] | None = None, options: ExtractionOptions | None = None,
                     spec=None, mark: Callable[..., None] | None = None, mirror: bool = False) -> ExtractionReport:
    """Run `backbone` on every distinct image of `records` and store the grids under `out_dir`.

    `decoder` (see resolve_decoder) is how images are decoded; the manifest notes it, but it is no part
    of what a cache must match: PIL and GPU decoding give pixels within about a grey level. `bf16`
    (autocast, CUDA only) and `channels_last` (the backbone's and its inputs' memory layout) are for
    speed on a GPU and change the features by rounding only. Resumable: shards already complete are
    skipped, after checking that the folder was made by the same encoder, weights, storage type and
    image list (CacheMismatchError otherwise) and that each shard is intact (sizes, headers and
    checksums); a damaged shard is written again and named in the report's `damaged`. Images whose
    grid holds NaN or infinite values (after the float16 conversion) are skipped, counted.

    `options` (ExtractionOptions) are the speed switches; when given, its precision and
    channels_last replace `bf16` and `channels_last`. `backbone` may also be a function that builds
    it (then `spec`, its BackboneSpec, is needed), so that files are read while it is built. `mark`,
    when given, is called with the name of each phase as it ends (for timing a fresh process).
    `mirror`: encode every image mirrored left to right (the manifest says "mirrored": true), the
    cache that training's flip augmentation reads (data.mirrored_features)."""
    if storage not in STORAGE_TYPES:
        raise ValueError(f"storage must be one of {STORAGE_TYPES}, got {storage!r}")
    if shard_size <= 0 or batch_size <= 0:
        raise ValueError("shard_size and batch_size must be positive")
    mark = mark or (lambda name, at=None: None)
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    device = torch.device(device)
    decoder = resolve_decoder(decoder, device)
    if options is None:
        options = ExtractionOptions(precision="bf16" if bf16 else "fp32", channels_last=channels_last)
    options = options.resolved(device)
    if callable(backbone) and not isinstance(backbone, torch.nn.Module):
        if spec is None:
            raise ValueError("extract_features: a backbone given as a function to build it needs its spec")
        build = backbone
    else:
        build, spec = None, backbone.spec
    unique: dict[str, ImageRecord] = {}
    for record in records:
        unique.setdefault(record.image_id, record)
    ordered = list(unique.values())
    image_ids = [r.image_id for r in ordered]
    shard_names = [f"shard-{i:05d}" for i in range((len(ordered) + shard_size - 1) // shard_size)]
    manifest_path = out_dir / MANIFEST

    def plan(todo: Sequence[int]) -> list[tuple[int, Sequence[ImageRecord]]]:
        batches = []
        for index in todo:
            shard_records = ordered[index * shard_size:(index + 1) * shard_size]
            batches.extend((index, shard_records[first:first + batch_size])
                           for first in range(0, len(shard_records), batch_size))
        return batches

    reader: _BatchReader | None = None
    early_todo: list[int] | None = None
    if options.early_read and not manifest_path.exists() and not any(out_dir.glob("shard-*.json")):
        # A new folder: every shard is to do, so reading can start before the backbone exists.
        early_todo = list(range(len(shard_names)))
        reader = _BatchReader(plan(early_todo), spec.image_size, workers, decoder, device, options.prefetch)
    try:
        if build is not None:
            backbone = build()
        mark("backbone_built")
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
            "shards": shard_names,
        }
        if mirror:
            manifest["mirrored"] = True
        existing = _existing_manifest(manifest_path)
        if existing is not None:
            for key in ("format_version", "encoder", "weights_hash", "storage", "shard_size", "plan_hash", "mirrored"):
                if existing.get(key) != manifest.get(key):
                    raise CacheMismatchError(
                        f"{manifest_path}: this cache was made with {key}={existing.get(key)!r}, this run asks for "
                        f"{manifest.get(key)!r}; use another folder (or delete this one) to make a new cache")
        key = _cache_key(manifest)
        old_checksums = (existing or {}).get("checksums") or {}
        problems = _shard_problems(out_dir, manifest, key, old_checksums, vouched=existing is not None,
                                   workers=workers)
        todo = [index for index, name in enumerate(manifest["shards"]) if name in problems]
        if reader is not None and todo != early_todo:  # something appeared meanwhile: read what is to do
            reader.close()
            reader = None
        damaged = {str(problem.path): problem.problem for problem in problems.values() if problem is not None}
        kept_checksums = {file_name: record for file_name, record in old_checksums.items()
                          if file_name.endswith(".json") and file_name[:-len(".json")] not in problems}
        _write_json(manifest_path, {**manifest, "complete": False, "checksums": kept_checksums})

        memory_format = torch.channels_last if options.channels_last else torch.contiguous_format
        backbone = backbone.to(device, memory_format=memory_format).eval()
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        mark("moved_to_device")
        autocast = device.type == "cuda" and options.precision in _AUTOCAST
        autocast_dtype = _AUTOCAST.get(options.precision, torch.bfloat16)
        if reader is None:
            reader = _BatchReader(plan(todo), spec.image_size, workers, decoder, device, options.prefetch)
        if options.warmup and todo:
            _warm_up_backbone(backbone, device, min(batch_size, len(ordered)), decoder, autocast_dtype, autocast,
                              memory_format)
            mark("warmup_done")
        return _extraction_loop(reader, backbone, out_dir, manifest, key, storage, device, options, decoder,
                                autocast, autocast_dtype, memory_format, unique, ordered, todo, damaged, progress,
                                mark, mirror)
    finally:
        if reader is not None:
            reader.close()


@dataclass
class _ShardState:
    ids: list[str] = field(default_factory=list)
    grids: list[np.ndarray] = field(default_factory=list)
    scales: list[np.ndarray] = field(default_factory=list)
    skips: SkipReport = field(default_factory=SkipReport)


def _extraction_loop(reader: _BatchReader, backbone, out_dir: Path, manifest: dict, key: str, storage: str,
                     device: torch.device, options: ExtractionOptions, decoder: str, autocast: bool, autocast_dtype,
                     memory_format, unique: dict[str, ImageRecord], ordered: list[ImageRecord], todo: list[int],
                     damaged: dict[str, str], progress, mark, mirror: bool = False) -> ExtractionReport:
    spec = backbone.spec
    skipped = SkipReport()
    start = time.perf_counter()
    written = 0
    stored = [0]  # images finished on the host so far, for progress
    first_batch: list[tuple[float, int]] = []
    shards: dict[int, _ShardState] = {}
    writer = ThreadPoolExecutor(max_workers=1) if options.background_write else None
    writes: list[tuple[int, Future | None, int]] = []
    failed: list[BaseException] = []

    def write_shard(index: int, state: _ShardState) -> None:
        if failed:  # an earlier shard failed: write nothing after it (the run stops there)
            return
        try:
            name = manifest["shards"][index]
            int8 = storage == "int8"
            array = np.concatenate(state.grids) if state.grids else np.zeros(
                (0, manifest["num_locations"], spec.channels), np.int8 if int8 else np.float16)
            files = {f"{name}.npy": _save_npy(out_dir / f"{name}.npy", array)}
            if int8:
                scale_array = np.concatenate(state.scales) if state.scales else np.zeros((0, spec.channels), np.float16)
                files[f"{name}.scale.npy"] = _save_npy(out_dir / f"{name}.scale.npy", scale_array)
            _write_json(out_dir / f"{name}.json", {"image_ids": state.ids, "skipped": state.skips.to_dict(full=True),
                                                   "decoder": decoder, "cache_key": key, "files": files})
        except BaseException as error:
            failed.append(error)
            raise

    def finish_shard(index: int) -> None:
        state = shards.pop(index)
        if writer is None:
            write_shard(index, state)
        else:
            if failed:
                raise failed[0]
            writes.append((index, writer.submit(write_shard, index, state), len(state.ids)))
        skipped.merge(state.skips)
        nonlocal written
        written += len(state.ids)

    def finish_batch(shard: int, batch_ids: list[str], payload, event) -> None:
        """The batch's arrays on the host: rows kept, skips counted, into its shard."""
        state = shards[shard]
        if event is not None:
            event.synchronize()
        arrays = [part.numpy() if isinstance(part, torch.Tensor) else part for part in payload]
        finite, kept = arrays[0].astype(bool), arrays[1:]
        if not finite.all():  # never stored: a NaN row would give a NaN loss at training time
            for image_id in (i for i, ok in zip(batch_ids, finite) if not ok):
                state.skips.add(NON_FINITE_REASON, str(unique[image_id].path))
            batch_ids = [i for i, ok in zip(batch_ids, finite) if ok]
            kept = [part[finite] for part in kept]
        state.grids.append(kept[0])
        if storage == "int8":
            state.scales.append(kept[1])
        state.ids.extend(batch_ids)
        if not first_batch:
            first_batch.append((time.perf_counter() - start, len(batch_ids)))
            mark("first_batch_encoded")
        stored[0] += len(batch_ids)
        if progress is not None:
            progress(written + sum(len(s.ids) for s in shards.values()), len(ordered))

    pending: list[tuple[int, list[str], tuple, object]] = []  # batches on their way to the host
    current_shard: int | None = None

    def drain(keep: int) -> None:
        while len(pending) > keep:
            finish_batch(*pending.pop(0))

    try:
        for number, (shard, batch_ids, pixels, batch_skips) in enumerate(reader):
            if number == 0:
                if reader.first_read is not None:
                    mark("first_batch_read", reader.first_read)
                if device.type == "cuda":
                    torch.cuda.synchronize(device)
                mark("first_batch_decoded")
            if shard != current_shard:
                drain(0)
                if current_shard is not None:
                    finish_shard(current_shard)
                current_shard = shard
                shards[shard] = _ShardState()
            shards[shard].skips.merge(batch_skips)
            if pixels is None:
                continue
            with torch.inference_mode(), torch.autocast(device.type, dtype=autocast_dtype, enabled=autocast):
                pixels = pixels.to(device, non_blocking=True)
                inputs = backbone.preprocess(pixels.flip(-1) if mirror else pixels)
                grid = backbone(inputs.contiguous(memory_format=memory_format))
            if options.device_quantize:
                with torch.inference_mode():
                    payload = _device_payload(grid, storage)
                event = None
                if options.async_copy:
                    host = tuple(torch.empty(part.shape, dtype=part.dtype, pin_memory=True) for part in payload)
                    for target, part in zip(host, payload):
                        target.copy_(part, non_blocking=True)
                    event = torch.cuda.Event()
                    event.record()
                    payload = host
                else:
                    payload = tuple(part.cpu() for part in payload)
            else:
                payload, event = _host_payload(grid, storage), None
            pending.append((shard, batch_ids, payload, event))
            drain(1 if options.async_copy else 0)
        drain(0)
        if current_shard is not None:
            finish_shard(current_shard)
        mark("loop_end")
        seconds = time.perf_counter() - start
        for _, future, _ in writes:
            future.result()
    finally:
        if writer is not None:
            writer.shutdown(wait=True)
    mark("files_written")

    # The manifest's skip count covers all shards, also those of earlier runs; its checksums cover
    # every shard's .json, whose own checksums cover the arrays.
    checksums, records = {}, []
    for name in manifest["shards"]:
        data = (out_dir / f"{name}.json").read_bytes()
        checksums[f"{name}.json"] = _checksum_of(data)
        records.append(json.loads(data))
    total_skips = SkipReport()
    for shard_record in records:
        total_skips.merge(SkipReport.from_dict(shard_record["skipped"]))
    stored_total = sum(len(shard_record["image_ids"]) for shard_record in records)
    # A note, not checked on resume or use: shards made before decoders were recorded were decoded by PIL.
    decoders = "+".join(sorted({shard_record.get("decoder", "pil") for shard_record in records}))
    _write_json(out_dir / MANIFEST, {**manifest, "complete": True, "images_stored": stored_total,
                                     "skipped": total_skips.to_dict(full=True), "decoder": decoders,
                                     "checksums": checksums})
    mark("manifest_done")
    return ExtractionReport(len(ordered), written, skipped, len(todo), len(manifest["shards"]) - len(todo), seconds,
                            decoder, *(first_batch[0] if first_batch else (float("nan"), 0)), damaged=damaged)


ShardArrays = np.ndarray | tuple[np.ndarray, np.ndarray]


@dataclass
class CacheWriteReport:
    """What `write_cache` wrote: rows and shards, bytes on disk (arrays, shard records and manifest),
    wall seconds, and the seconds spent computing the sha256 checksums (summed over the threads
    that wrote, so it can exceed the wall time)."""

    folder: Path
    images: int
    shards: int
    bytes: int
    seconds: float
    hash_seconds: float

    @property
    def bytes_per_second(self) -> float:
        return self.bytes / self.seconds if self.seconds > 0 else float("nan")


def write_cache(out_dir: str | Path, image_ids: Sequence[str], shards: Iterable[ShardArrays], spec,
                weights_hash: str, storage: str = "float16", shard_size: int = 1024, workers: int = 4,
                origin: str = "write_cache", progress: Callable[[int, int], None] | None = None) -> CacheWriteReport:
    """Store grids computed elsewhere as a new feature cache in `out_dir`: the layout, manifest, shard
    records and checksums of `extract_features`' caches, so that `FeatureCache` opens it with all its
    checks and `check_encoder` accepts it for a model whose backbone has `spec` (a BackboneSpec) and
    weights hash `weights_hash` (Backbone.weights_hash()).

    image_ids: the ids of the rows, in order (distinct strings). shards: one item per shard of
    `shard_size` rows (the last one holds the rest), in order: for storage "float16" a float16
    (n, L, C) array, for "int8" the pair (int8 (n, L, C), float16 (n, C) scales) that quantize_int8
    returns, with L = spec.grid ** 2 and C = spec.channels. Items are only read (they may be views of
    one array). `workers` threads write shards at once (file writes and sha256 release the GIL), at
    most `workers` items held at a time; every array is hashed as it is written, as extraction does.
    The manifest's "origin" records `origin` (a note, as "decoder" is for extracted caches).

    ValueError for bad arguments, and for a shard of the wrong dtype or shape or with NaN or infinite
    values (naming the shard: no cache holds such rows); FeatureCacheError when `out_dir` already
    holds a cache (this makes new caches only; extraction is the resumable writer)."""
    if storage not in STORAGE_TYPES:
        raise ValueError(f"write_cache: storage must be one of {STORAGE_TYPES}, got {storage!r}")
    if not isinstance(shard_size, int) or shard_size <= 0:
        raise ValueError(f"write_cache: shard_size must be a positive integer, got {shard_size!r}")
    if not isinstance(workers, int) or workers <= 0:
        raise ValueError(f"write_cache: workers must be a positive integer, got {workers!r}")
    image_ids = list(image_ids)
    if not image_ids:
        raise ValueError("write_cache: no image ids given; a cache holds at least one row")
    if not all(isinstance(image_id, str) for image_id in image_ids):
        raise ValueError("write_cache: image ids must be strings")
    if len(set(image_ids)) != len(image_ids):
        raise ValueError(f"write_cache: {len(image_ids) - len(set(image_ids))} repeated image id(s); each row needs "
                         "its own id")
    if not isinstance(weights_hash, str) or not weights_hash:
        raise ValueError(f"write_cache: weights_hash must be the backbone's weights hash (a string), got "
                         f"{weights_hash!r}")
    out_dir = Path(out_dir)
    manifest_path = out_dir / MANIFEST
    if manifest_path.exists():
        raise FeatureCacheError(f"{manifest_path}: a feature cache is already here; write_cache makes new caches "
                                "only: use another folder, or delete this one")
    out_dir.mkdir(parents=True, exist_ok=True)
    locations, channels = spec.grid * spec.grid, spec.channels
    manifest = {
        "format_version": FORMAT_VERSION,
        "encoder": _as_json(spec.to_dict()),
        "weights_hash": weights_hash,
        "storage": storage,
        "num_locations": locations,
        "channels": channels,
        "shard_size": shard_size,
        "images_planned": len(image_ids),
        "plan_hash": _plan_hash(image_ids),
        "shards": [f"shard-{i:05d}" for i in range((len(image_ids) + shard_size - 1) // shard_size)],
    }
    key = _cache_key(manifest)
    _write_json(manifest_path, {**manifest, "complete": False, "checksums": {}})
    nothing_skipped = SkipReport().to_dict(full=True)

    def checked(index: int, item: ShardArrays) -> tuple[np.ndarray, np.ndarray | None]:
        name, rows = manifest["shards"][index], len(image_ids[index * shard_size:(index + 1) * shard_size])
        where = f"write_cache: shard {index} ({name}, rows {index * shard_size}-{index * shard_size + rows - 1})"
        if storage == "int8":
            if not (isinstance(item, tuple) and len(item) == 2):
                raise ValueError(f"{where}: int8 storage takes (int8 grids, float16 scales) pairs, got "
                                 f"{type(item).__name__}")
            grids, scales = item
        else:
            grids, scales = item, None
        wanted = [(grids, np.int8 if storage == "int8" else np.float16, (rows, locations, channels), "grids")]
        if scales is not None:
            wanted.append((scales, np.float16, (rows, channels), "scales"))
        for array, dtype, shape, what in wanted:
            if not isinstance(array, np.ndarray) or array.dtype != dtype or array.shape != shape:
                found = f"{array.dtype} {array.shape}" if isinstance(array, np.ndarray) else type(array).__name__
                raise ValueError(f"{where}: {what} must be {np.dtype(dtype)} {shape}, got {found}")
        finite_source = scales if scales is not None else grids
        for first in range(0, rows, 64):
            block = finite_source[first:first + 64].reshape(min(64, rows - first), -1)
            finite = np.isfinite(block).all(axis=1)
            if not finite.all():
                raise ValueError(f"{where}: row {index * shard_size + first + int(np.flatnonzero(~finite)[0])} holds "
                                 "NaN or infinite values; a feature cache never stores such rows")
        return grids, scales

    def write_shard(index: int, grids: np.ndarray, scales: np.ndarray | None) -> tuple[int, int, float]:
        name = manifest["shards"][index]
        hashing: list[float] = []
        files = {f"{name}.npy": _save_npy(out_dir / f"{name}.npy", grids, hashing)}
        if scales is not None:
            files[f"{name}.scale.npy"] = _save_npy(out_dir / f"{name}.scale.npy", scales, hashing)
        ids = image_ids[index * shard_size:(index + 1) * shard_size]
        record = _write_json(out_dir / f"{name}.json", {"image_ids": ids, "skipped": nothing_skipped,
                                                       "decoder": "none", "cache_key": key, "files": files})
        return len(ids), sum(file["bytes"] for file in files.values()) + record["bytes"], sum(hashing)

    start = time.perf_counter()
    written = size = 0
    hash_seconds = 0.0
    pending: list[Future] = []
    count = 0

    def collect(future: Future) -> None:
        nonlocal written, size, hash_seconds
        rows, nbytes, hashed = future.result()
        written, size, hash_seconds = written + rows, size + nbytes, hash_seconds + hashed
        if progress is not None:
            progress(written, len(image_ids))

    with ThreadPoolExecutor(max_workers=workers) as pool:
        for index, item in enumerate(shards):
            if index >= len(manifest["shards"]):
                raise ValueError(f"write_cache: `shards` gave more than the {len(manifest['shards'])} shard(s) that "
                                 f"{len(image_ids)} images in shards of {shard_size} make")
            pending.append(pool.submit(write_shard, index, *checked(index, item)))
            count += 1
            while len(pending) >= workers:
                collect(pending.pop(0))
        while pending:
            collect(pending.pop(0))
    if count != len(manifest["shards"]):
        raise ValueError(f"write_cache: `shards` gave {count} shard(s), {len(image_ids)} images in shards of "
                         f"{shard_size} make {len(manifest['shards'])}; the cache in {out_dir} is left incomplete")
    checksums = {f"{name}.json": _checksum_of((out_dir / f"{name}.json").read_bytes()) for name in manifest["shards"]}
    final = _write_json(manifest_path, {**manifest, "complete": True, "images_stored": written,
                                        "skipped": nothing_skipped, "decoder": "none", "origin": origin,
                                        "checksums": checksums})
    return CacheWriteReport(out_dir, written, count, size + final["bytes"], time.perf_counter() - start, hash_seconds)


def _existing_manifest(path: Path) -> dict | None:
    """The manifest of an earlier run, or None when there is none or it is damaged (then it is
    written again, and shards count as done only if their own records say they belong to this cache)."""
    if not path.is_file():
        return None
    try:
        existing = json.loads(path.read_bytes())
        if isinstance(existing, dict):
            return existing
    except (ValueError, UnicodeDecodeError):
        pass
    warnings.warn(f"{path}: damaged (not a JSON object); writing it again; every shard is checked against its "
                  "own record", stacklevel=3)
    return None


def _shard_problems(folder: Path, manifest: dict, key: str, checksums: dict, vouched: bool,
                    workers: int) -> dict[str, _ShardDamage | None]:
    """The shards of the plan that must be (re)written: name -> None (not written yet) or what is
    wrong with the one there. Shards are checked in full (checksums), `workers` at a time."""
    def problem(name: str) -> tuple[str, _ShardDamage | None, bool]:
        if not (folder / f"{name}.json").is_file():
            return name, None, False
        try:
            record = _check_shard(folder, name, manifest, checksums)
            if record.get("cache_key", key if vouched else None) != key:
                raise _ShardDamage(folder / f"{name}.json", "belongs to another cache (another encoder, weights, "
                                   "storage or image list)" if record.get("cache_key") else
                                   "carries no cache key and no manifest vouches for it")
            if record.get("files"):
                _check_checksums(folder, record)
            else:  # an earlier version's shard: no checksums, but NaN rows at least are found
                _scan_finite(folder / f"{name}.npy", folder / f"{name}.scale.npy", manifest["storage"])
        except _ShardDamage as damage:
            return name, damage, False
        return name, None, True

    with ThreadPoolExecutor(max_workers=max(1, min(workers, os.cpu_count() or 1))) as pool:
        checked = list(pool.map(problem, manifest["shards"]))
    return {name: damage for name, damage, done in checked if not done}


class FeatureCache:
    """Read access to a finished cache: rows are memory-mapped, looked up by image id.

    Opening checks every shard cheaply (its .json parses and matches the manifest's checksum; each
    .npy is there, with a readable header of the expected dtype and shape, and exactly the size that
    header implies): FeatureCacheError naming the file otherwise. `verify` checks the arrays'
    checksums in full; `get` refuses rows with NaN or infinite values."""

    def __init__(self, folder: str | Path):
        self.folder = Path(folder)
        path = self.folder / MANIFEST
        if not path.is_file():
            raise FileNotFoundError(f"{path}: no feature cache here; make one with `captioner extract`")
        self.manifest = _read_manifest(path)
        if self.manifest.get("format_version") != FORMAT_VERSION:
            raise FeatureCacheError(f"{path}: format_version {self.manifest.get('format_version')!r} is not "
                                    f"{FORMAT_VERSION}")
        if not self.manifest.get("complete"):
            raise FeatureCacheError(f"{path}: the cache is incomplete (extraction was interrupted); run the same "
                                    "`captioner extract` command again to finish it")
        self.storage = self.manifest["storage"]
        self.checksums: dict | None = self.manifest.get("checksums")
        self._arrays: list[np.ndarray] = []
        self._scales: list[np.ndarray | None] = []
        self._records: list[dict] = []
        self._intact: dict[int, _ShardDamage | None] = {}  # shard -> result of its full check
        self._zero_rows_warned: set[int] = set()
        self.index: dict[str, tuple[int, int]] = {}
        for shard, name in enumerate(self.manifest["shards"]):
            try:
                record = _check_shard(self.folder, name, self.manifest, self.checksums)
            except _ShardDamage as damage:
                raise FeatureCacheError(_damage_message(self.folder, [damage])) from None
            self._records.append(record)
            self._arrays.append(_load_npy(self.folder / f"{name}.npy"))
            self._scales.append(_load_npy(self.folder / f"{name}.scale.npy")
                                if self.storage == "int8" else None)
            for row, image_id in enumerate(record["image_ids"]):
                self.index[image_id] = (shard, row)
        # Shards written before checksums: opened, but damage that keeps sizes cannot be found.
        self.unchecked = [name for name, record in zip(self.manifest["shards"], self._records)
                          if not record.get("files")]
        if self.checksums is None or self.unchecked:
            which = "this feature cache was" if self.checksums is None or len(self.unchecked) == len(self._records) \
                else f"{len(self.unchecked)} shard(s) of this feature cache ({', '.join(self.unchecked[:3])}"  \
                     f"{', ...' if len(self.unchecked) > 3 else ''}) were"
            warnings.warn(f"{self.folder}: {which} written before shards carried checksums: it opens, and truncation "
                          "and NaN or infinite values are still found, but other damage inside a shard cannot be; "
                          "`captioner extract --verify` checks what it can, and extracting again into a new folder "
                          "adds checksums", UncheckedCacheWarning, stacklevel=2)

    def _npy_path(self, shard: int) -> Path:
        return self.folder / f"{self.manifest['shards'][shard]}.npy"

    def shard_damage(self, shard: int) -> "_ShardDamage | None":
        """The full check of shard `shard` (its arrays against the checksums written at extraction),
        once per shard; None when intact or when the shard has no checksums."""
        if shard not in self._intact:
            try:
                _check_checksums(self.folder, self._records[shard])
                self._intact[shard] = None
            except _ShardDamage as damage:
                self._intact[shard] = damage
        return self._intact[shard]

    def verify(self, image_ids: Sequence[str] | None = None, workers: int = 4) -> None:
        """Check the checksums of every shard holding one of `image_ids` (all shards when None), each
        shard once per FeatureCache, `workers` at a time; FeatureCacheError naming the damaged files."""
        shards = range(len(self._records)) if image_ids is None else \
            sorted({self.index[image_id][0] for image_id in image_ids if image_id in self.index})
        pending = [shard for shard in shards if shard not in self._intact and self._records[shard].get("files")]
        if pending:
            with ThreadPoolExecutor(max_workers=max(1, min(workers, len(pending), os.cpu_count() or 1))) as pool:
                list(pool.map(self.shard_damage, pending))
        damage = [self._intact[shard] for shard in shards if self._intact.get(shard) is not None]
        if damage:
            raise FeatureCacheError(_damage_message(self.folder, damage))

    @property
    def encoder(self) -> dict:
        return self.manifest["encoder"]

    @property
    def num_locations(self) -> int:
        return self.manifest["num_locations"]

    @property
    def mirrored(self) -> bool:
        """Whether the images were mirrored left to right before the backbone (`captioner extract --mirror`)."""
        return bool(self.manifest.get("mirrored"))

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
        """Feature grids (n, L, D) of `image_ids`, dequantised, as `dtype`. FeatureCacheError naming the
        shard file and row when a row holds NaN or infinite values, or is all zeros in a shard whose
        checksum no longer matches."""
        out = np.empty((len(image_ids), self.num_locations, self.channels), np.float32)
        for i, image_id in enumerate(image_ids):
            shard, row = self.index[image_id]
            if self.storage == "int8":
                with np.errstate(invalid="ignore", over="ignore"):
                    out[i] = dequantize_int8(self._arrays[shard][row:row + 1], self._scales[shard][row:row + 1])[0]
            else:
                out[i] = self._arrays[shard][row]
        self._check_rows(out, image_ids)
        return torch.from_numpy(out).to(dtype)

    def _check_rows(self, out: np.ndarray, image_ids: Sequence[str]) -> None:
        flat = out.reshape(len(out), -1)
        finite, nonzero = np.empty(len(out), bool), np.empty(len(out), bool)
        for first in range(0, len(out), 256):
            block = flat[first:first + 256]
            finite[first:first + 256] = np.isfinite(block).all(axis=1)
            nonzero[first:first + 256] = block.any(axis=1)
        if not finite.all():
            bad = np.flatnonzero(~finite)
            shard, row = self.index[image_ids[bad[0]]]
            where = f"{self._npy_path(shard)}: row {row} (image {image_ids[bad[0]]})" + \
                (f" and {len(bad) - 1} other row(s) read with it" if len(bad) > 1 else "")
            damage = self.shard_damage(shard)
            if damage is not None:
                raise FeatureCacheError(f"{where} holds NaN or infinite values: {damage.path} {damage.problem}; "
                                        f"the feature cache {self.folder} is damaged: {REPAIR}")
            if self._records[shard].get("files"):
                raise FeatureCacheError(f"{where} holds NaN or infinite values, yet the shard's checksum matches what "
                                        "extraction wrote; extract the cache again into a new folder (extraction "
                                        "now skips such images)")
            raise FeatureCacheError(f"{where} holds NaN or infinite values; this shard has no checksums (written by "
                                    "an earlier version), so damage cannot be told from what was written: extract "
                                    "the cache again into a new folder")
        if not nonzero.all():
            # A real backbone's grid is never exactly zero everywhere; zeros written over a shard are.
            for position in np.flatnonzero(~nonzero):
                shard, row = self.index[image_ids[position]]
                damage = self.shard_damage(shard)
                if damage is not None:
                    raise FeatureCacheError(f"{self._npy_path(shard)}: row {row} (image {image_ids[position]}) is all "
                                            f"zeros: {damage.path} {damage.problem}; the feature cache {self.folder} "
                                            f"is damaged: {REPAIR}")
                if not self._records[shard].get("files") and shard not in self._zero_rows_warned:
                    self._zero_rows_warned.add(shard)
                    warnings.warn(f"{self._npy_path(shard)}: row {row} (image {image_ids[position]}) is all zeros, "
                                  "which a damaged shard would give; this shard has no checksums to tell, "
                                  "see `captioner extract --verify`", UncheckedCacheWarning, stacklevel=3)


def _read_manifest(path: Path) -> dict:
    try:
        manifest = json.loads(path.read_bytes())
    except (ValueError, UnicodeDecodeError) as error:
        raise FeatureCacheError(f"{path}: damaged, not valid JSON ({error}); {REPAIR}") from None
    missing = [key for key in ("format_version", "storage", "shards", "num_locations", "channels", "encoder")
               if not isinstance(manifest, dict) or key not in manifest]
    if missing:
        raise FeatureCacheError(f"{path}: damaged, it lacks {', '.join(missing)}; {REPAIR}")
    return manifest


@dataclass
class VerifyReport:
    """What `verify_cache` found: `damaged` maps a file to what is wrong with it."""

    folder: Path
    shards: int = 0
    bytes_checked: int = 0
    seconds: float = 0.0
    complete: bool = False
    damaged: dict[str, str] = field(default_factory=dict)
    unchecked: list[str] = field(default_factory=list)  # shards without checksums (an earlier version's)

    @property
    def ok(self) -> bool:
        return self.complete and not self.damaged


def verify_cache(folder: str | Path, workers: int = 4) -> VerifyReport:
    """Check every file of the cache in `folder` in full: the manifest, each shard's .json against the
    manifest's checksum, each array's header, size and checksum. Shards written before checksums get
    the cheap checks and a scan for NaN and infinite values instead, and are listed in `unchecked`."""
    folder = Path(folder)
    path = folder / MANIFEST
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no feature cache here; make one with `captioner extract`")
    start = time.perf_counter()
    report = VerifyReport(folder)
    try:
        manifest = _read_manifest(path)
    except FeatureCacheError as error:
        report.damaged[str(path)] = str(error).split(": ", 1)[1]
        return report
    report.complete = bool(manifest.get("complete"))
    checksums = manifest.get("checksums")
    report.shards = len(manifest["shards"])

    def check(name: str) -> tuple[str, _ShardDamage | None, int, bool]:
        try:
            record = _check_shard(folder, name, manifest, checksums)
            if record.get("files"):
                return name, None, _check_checksums(folder, record), True
            return name, None, _scan_finite(folder / f"{name}.npy", folder / f"{name}.scale.npy",
                                            manifest["storage"]), False
        except _ShardDamage as damage:
            return name, damage, 0, True

    with ThreadPoolExecutor(max_workers=max(1, min(workers, os.cpu_count() or 1))) as pool:
        for name, damage, read, has_checksums in pool.map(check, manifest["shards"]):
            report.bytes_checked += read
            if damage is not None:
                report.damaged[str(damage.path)] = damage.problem
            if not has_checksums or checksums is None:
                report.unchecked.append(name)
    report.seconds = time.perf_counter() - start
    return report


def _scan_finite(npy: Path, scale: Path, storage: str) -> int:
    """For shards without checksums: _ShardDamage at the first row with NaN or infinite values.
    The bytes read."""
    target = scale if storage == "int8" else npy
    array = _load_npy(target)
    flat = array.reshape(len(array), -1)
    for first in range(0, len(flat), 64):
        finite = np.isfinite(flat[first:first + 64].astype(np.float32)).all(axis=1)
        if not finite.all():
            raise _ShardDamage(target, f"row {first + int(np.flatnonzero(~finite)[0])} holds NaN or infinite values")
    return target.stat().st_size


__all__ = ["CacheMismatchError", "CacheWriteReport", "ExtractionReport", "FeatureCache", "FeatureCacheError",
           "UncheckedCacheWarning", "VerifyReport", "ExtractionOptions", "extract_features", "quantize_int8",
           "quantize_int8_torch", "dequantize_int8", "warm_up_device", "PRECISIONS",
           "resolve_decoder", "verify_cache", "write_cache", "DECODERS", "STORAGE_TYPES"]
