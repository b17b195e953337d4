"""Data sets as splits of images with reference captions, ready for batching."""

from __future__ import annotations

import warnings
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from captioner.config import DataConfig
from captioner.data.batching import CaptionBatch, encode_captions
from captioner.data.feature_cache import CacheMismatchError, FeatureCache
from captioner.data.images import ImageReadError, normalize_images, read_image
from captioner.data.records import CaptionRecords, ImageRecord, SkipReport
from captioner.data.scenes import ScenesSpec, make_scene_splits
from captioner.data.vocabulary import Vocabulary


class CachedFeatures:
    """Backbone grids of a list of images, read from a feature cache: rows come from the memory-mapped
    shards when indexed, or from RAM after `preload` (float16, (N, L, C)). A subclass may hold more
    than one cache of the same images (`caches`): row k * N + i is image i in cache k."""

    def __init__(self, cache: FeatureCache, image_ids: Sequence[str]):
        self.cache = cache
        self.image_ids = list(image_ids)
        self.loaded: torch.Tensor | None = None

    @property
    def caches(self) -> list[FeatureCache]:
        return [self.cache]

    def preload(self) -> "CachedFeatures":
        """Read every row into RAM, after checking the checksums of the shards they come from (each
        shard once per cache; FeatureCacheError naming a damaged file). Rows with NaN or infinite
        values are refused (FeatureCache.get); without preloading, that check runs batch by batch."""
        for cache in self.caches:
            cache.verify(self.image_ids)
        parts = [cache.get(self.image_ids, torch.float16) for cache in self.caches]
        self.loaded = parts[0] if len(parts) == 1 else torch.cat(parts)
        return self

    def __len__(self) -> int:
        return len(self.caches) * len(self.image_ids)

    def __getitem__(self, indices) -> torch.Tensor:
        indices = _index_list(indices, len(self))
        if self.loaded is not None:
            return self.loaded[indices].float()
        n, caches = len(self.image_ids), self.caches
        if len(caches) == 1:
            return self.cache.get([self.image_ids[i] for i in indices])
        out = torch.empty((len(indices), self.cache.num_locations, self.cache.channels))
        for k, cache in enumerate(caches):
            rows = [p for p, i in enumerate(indices) if i // n == k]
            if rows:
                out[rows] = cache.get([self.image_ids[indices[p] % n] for p in rows])
        return out


class MirroredFeatures(CachedFeatures):
    """The grids of a training split's N images and of the same images mirrored left to right (a cache
    made by `captioner extract --mirror`): row i < N is image i, row N + i its mirror image. What flip
    augmentation (data.flip_probability) indexes; `preload` holds both, in that order, as `loaded`."""

    def __init__(self, cache: FeatureCache, mirror: FeatureCache, image_ids: Sequence[str]):
        super().__init__(cache, image_ids)
        self.mirror = mirror

    @property
    def caches(self) -> list[FeatureCache]:
        return [self.cache, self.mirror]


class ImageFiles:
    """Image files read when indexed, as uint8 (n, 3, S, S): the inputs of a fine-tuned backbone."""

    def __init__(self, paths: Sequence[Path], image_size: int):
        self.paths = list(paths)
        self.image_size = image_size

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, indices) -> torch.Tensor:
        indices = _index_list(indices, len(self))
        with ThreadPoolExecutor(max_workers=4) as pool:
            pixels = list(pool.map(lambda i: read_image(self.paths[i], self.image_size), indices))
        return torch.from_numpy(np.stack(pixels)).permute(0, 3, 1, 2).contiguous()


def _index_list(indices, length: int) -> list[int]:
    if isinstance(indices, slice):
        return list(range(length))[indices]
    if isinstance(indices, torch.Tensor):
        return indices.tolist()
    return [int(i) for i in indices]


@dataclass
class CaptionSplit:
    """One split: model inputs (normalised images, cached backbone grids or image files) and the
    reference captions of each image.

    input_kind says what `inputs[indices]` returns: "images" (what CaptionModel.encode reads) or
    "features" (backbone grids (n, L, C) for CaptionModel.encode_inputs)."""

    name: str
    inputs: torch.Tensor | CachedFeatures | ImageFiles
    captions: list[list[str]]
    image_ids: list
    input_kind: str = "images"
    word_cells: list[list[list[int]]] | None = None  # per image, per caption, per token (scenes only)
    raw_images: np.ndarray | None = None  # uint8 (N, S, S, 3), for pictures and demos (scenes only)
    paths: list[Path] | None = None  # image files (data sets on disk)
    skipped: SkipReport = field(default_factory=SkipReport)  # left out of this split while loading
    # What the data set's reader skipped (one report shared by the splits of a data set on disk)
    source_skipped: SkipReport | None = None

    def __len__(self) -> int:
        return len(self.image_ids)

    def batch(self, indices: Sequence[int], vocabulary: Vocabulary, max_length: int | None,
              generator: torch.Generator | None = None, captions_per_image: int = 0) -> CaptionBatch:
        """Images `indices` with their captions (training captions cut to `max_length` words): all of
        them, or `captions_per_image` of each drawn without replacement with `generator`."""
        indices = [int(i) for i in indices]
        captions, cells, owner = [], [], []
        for position, i in enumerate(indices):
            chosen = range(len(self.captions[i]))
            if 0 < captions_per_image < len(self.captions[i]):
                chosen = torch.randperm(len(self.captions[i]), generator=generator)[:captions_per_image].tolist()
            captions.extend(self.captions[i][c] for c in chosen)
            owner.extend([position] * len(chosen))
            if self.word_cells is not None:
                cells.extend(self.word_cells[i][c] for c in chosen)
        text = encode_captions(captions, vocabulary, max_length, cells if self.word_cells is not None else None)
        return CaptionBatch(self.inputs[indices], torch.tensor(owner), text, [self.image_ids[i] for i in indices],
                            self.input_kind)


def load_scenes(config: DataConfig) -> dict[str, CaptionSplit]:
    scenes = config.scenes
    spec = ScenesSpec(
        train=scenes.train_size, val=scenes.val_size, test=scenes.test_size, image_size=scenes.image_size,
        min_objects=scenes.min_objects, max_objects=scenes.max_objects, seed=scenes.seed,
    )
    splits = {}
    for name, examples in make_scene_splits(spec).items():
        raw = np.stack([e.image for e in examples])
        splits[name] = CaptionSplit(
            name=name,
            inputs=normalize_images(raw),
            captions=[list(e.captions) for e in examples],
            image_ids=[e.image_id for e in examples],
            word_cells=[[list(c) for c in e.word_cells] for e in examples],
            raw_images=raw,
        )
    return splits


def read_records(config: DataConfig) -> CaptionRecords:
    """The records of the data set on disk that `config` names (not the built-in scenes)."""
    from captioner.data import sources

    root = Path(config.root) if config.root else None
    if config.dataset == "flickr8k":
        return sources.read_flickr8k(root)
    if config.dataset == "karpathy":
        return sources.read_karpathy(Path(config.annotations), root, restval=config.restval,
                                     check_images=config.check_image_files)
    if config.dataset == "coco":
        year = config.coco_year
        return sources.read_coco(
            {"train": root / "annotations" / f"captions_train{year}.json",
             "val": root / "annotations" / f"captions_val{year}.json"},
            {"train": root / f"train{year}", "val": root / f"val{year}"})
    if config.dataset == "huggingface":
        # Images embedded in the parquet files are written once, next to the feature cache.
        materialize = Path(config.features).parent / "hf-images" if config.features else None
        return sources.read_hf_dataset(config.hf_name, image_root=root, materialize_dir=materialize)
    raise ValueError(f"data.dataset: {config.dataset!r} is not a data set on disk")


def split_records(records: CaptionRecords, limit: int = 0) -> dict[str, list[ImageRecord]]:
    """train / val / test record lists. The official COCO annotations have no public test captions:
    there the official val images serve as val and test (use Karpathy's split for the standard protocol)."""
    splits = {name: list(items) for name, items in records.splits.items() if items}
    if "test" not in splits and "val" in splits:
        splits["test"] = splits["val"]
    missing = [name for name in ("train", "val", "test") if name not in splits]
    if missing:
        raise ValueError(f"{records.source}: no images in split(s) {', '.join(missing)}")
    if limit:
        splits = {name: items[:limit] for name, items in splits.items()}
    return splits


def _extraction_skips(cache: FeatureCache) -> dict[str, str]:
    """Image path -> why extraction left it out, from the cache manifest's skip record."""
    skipped = cache.manifest.get("skipped") or {}
    found: dict[str, str] = {}
    for reason, details in (skipped.get("details") or skipped.get("examples") or {}).items():
        for detail in details:
            found.setdefault(str(detail).split(": ", 1)[0], reason)
    return found


def load_disk_dataset(config: DataConfig, model_config=None) -> dict[str, CaptionSplit]:
    """Splits of a data set on disk, with cached backbone grids (or image files when the encoder is
    fine-tuned). Images the cache lacks (unreadable at extraction) are left out and counted; one
    warning names every split's, each image once (a split that is another's images, as COCO's val
    serving as test, is not reported twice). `skip_summary(splits)` gathers it all for metrics.json."""
    records = read_records(config)
    fine_tune = model_config is not None and model_config.encoder.fine_tune
    cache = None if fine_tune else FeatureCache(config.features)
    mirror = _mirror_cache(config, cache) if cache is not None and config.flip_probability > 0 else None
    why = _extraction_skips(cache) if cache is not None else {}
    mirror_why = _extraction_skips(mirror) if mirror is not None else {}
    splits: dict[str, CaptionSplit] = {}
    done: dict[int, tuple[str, list[ImageRecord], SkipReport]] = {}  # id(items) -> first split of those images
    messages = []
    for name, items in split_records(records, config.limit_images).items():
        if id(items) in done:
            first, kept, skipped = done[id(items)]
        else:
            skipped = SkipReport()
            kept = []
            for record in items:
                if cache is not None and record.image_id not in cache:
                    reason = why.get(str(record.path))
                    skipped.add("not in the feature cache (unreadable at extraction)",
                                f"{record.path}" + (f" (extraction: {reason})" if reason else ""))
                    continue
                if mirror is not None and name == "train" and record.image_id not in mirror:
                    reason = mirror_why.get(str(record.path))
                    skipped.add("not in the mirrored feature cache (unreadable at its extraction)",
                                f"{record.path}" + (f" (extraction: {reason})" if reason else ""))
                    continue
                if cache is None:
                    try:
                        read_image(record.path, 8)
                    except ImageReadError as error:
                        skipped.add("unreadable image", str(error))
                        continue
                kept.append(record)
            if not kept:
                raise ValueError(f"{records.source}: split {name!r} has no usable images ({skipped.summary()})")
            done[id(items)] = (name, kept, skipped)
            if skipped.total:
                messages.append(f"{name}: {skipped.summary()}")
        ids = [r.image_id for r in kept]
        if cache is not None:
            inputs = MirroredFeatures(cache, mirror, ids) if mirror is not None and name == "train" else \
                CachedFeatures(cache, ids)
            kind = "features"
            if len(inputs) * cache.num_locations * cache.channels * 2 <= config.preload_limit_gib * 2**30:
                inputs.preload()
        else:
            inputs, kind = ImageFiles([r.path for r in kept], model_config.encoder.image_size), "images"
        splits[name] = CaptionSplit(name=name, inputs=inputs, captions=[list(r.captions) for r in kept],
                                    image_ids=ids, input_kind=kind, paths=[r.path for r in kept], skipped=skipped,
                                    source_skipped=records.skipped)
    if messages:
        warnings.warn(f"{records.source}: " + " || ".join(messages), stacklevel=2)
    return splits


def _mirror_cache(config: DataConfig, cache: FeatureCache) -> FeatureCache:
    """The cache of mirrored images that flip augmentation reads: made by `captioner extract --mirror`
    with the encoder and weights of `cache` (CacheMismatchError naming the folder otherwise)."""
    mirror = FeatureCache(config.mirrored_features)
    if cache.mirrored:
        raise CacheMismatchError(f"{cache.folder}: data.features holds mirrored images (made with `captioner extract "
                                 "--mirror`); flip augmentation needs the unmirrored cache there")
    if not mirror.mirrored:
        raise CacheMismatchError(f"{mirror.folder}: data.mirrored_features holds unmirrored images; make the cache "
                                 "of mirrored images with `captioner extract --mirror --out FOLDER`")
    mirror.check_encoder(cache.encoder, cache.manifest["weights_hash"])
    return mirror


def skip_summary(splits: dict[str, CaptionSplit]) -> dict:
    """What was left out of the data of `splits`, for a run's metrics.json: "total" and "counts" per
    reason over the reader and every split (each item once), then "reading" (the data set reader's
    record) and "splits" (per split, what loading left out), each with every item once in "details"."""
    total = SkipReport()
    reading = next((split.source_skipped for split in splits.values() if split.source_skipped is not None), None)
    if reading is not None:
        total.merge(reading)
    for split in splits.values():
        total.merge(split.skipped)
    return {"total": total.total, "counts": dict(total.counts),
            "reading": reading.to_dict(full=True) if reading is not None else None,
            "splits": {name: split.skipped.to_dict(full=True) for name, split in splits.items()}}


def load_dataset(config: DataConfig, model_config=None) -> dict[str, CaptionSplit]:
    """The train / val / test splits named by `config.dataset`."""
    if config.dataset == "scenes":
        return load_scenes(config)
    return load_disk_dataset(config, model_config)
