"""COCO at scale, dry run: one WS-RAM epoch of the real Trainer over a synthetic feature cache the
size of COCO Karpathy train (a benchmark, not a test).

    python -m benchmarks.coco_dry_run --out DIR --work SCRATCH --grid 7
    python -m benchmarks.coco_dry_run --out DIR --work SCRATCH --grid 14 \\
        --coco-annotations COCO/annotations/captions_val2017.json
    python -m benchmarks.coco_dry_run --out DIR --work SCRATCH --images 5000 --grid 14   # a smaller run

What it does, in SCRATCH/coco-dry-run-gridG/ (deleted at the end, also after a failure, unless --keep):
1. Writes a Karpathy-format split file (dataset_coco_synthetic.json): `--images` training images
   (113,287 as Karpathy's COCO train + restval), `--val-images` and `--test-images` more, 5 captions
   each. Caption lengths (PTB tokens, as the Trainer counts them) are drawn from the real captions of
   `--coco-annotations` (an official COCO caption file) when given, otherwise from FIXED_LENGTHS, the
   lengths of the 395 captions of the 79-image COCO val2017 sample (mean 10.5 tokens, 7-25). Words
   are drawn uniformly from a `--vocabulary`-word vocabulary of letter-only words. The texts come from
   a pool of `--distinct-captions` distinct captions (0: every caption its own text): the PTB
   tokenizer is pure Python (about 0.1 ms a real caption on a 2-core VM, 0.01 ms a synthetic one) and
   caches each distinct text, so a pool keeps the Trainer's start-up short. What all-distinct COCO
   captions would cost is projected in the report (`tokenize_projected_seconds_all_distinct`, from
   the tokenizer's time on the real captions of --coco-annotations when given, else on the pool).
2. Writes a feature cache of those images with `captioner.data.feature_cache.write_cache`: the format
   `captioner extract` writes (manifest, shards of `--shard-size` rows, int8 grids with per-image,
   per-channel float16 scales, sha256 checksums of every file, computed while writing and reported:
   `cache_hash_seconds`), grids of grid x grid x 2048 (ResNet-101 layer4 at 32 x grid px: 7 at 224,
   14 at 448). The values are random (finite, never all zero) and not meaningful: one block of
   random int8 rows (and scales) is drawn once and every shard is a view of it at one of 8 row
   offsets, so writing runs at the speed of the disk and of sha256 (`--workers` threads). The
   manifest names the encoder the Trainer's model has, and the weights hash of its backbone: the
   backbone is built without pretrained weights (model.encoder.pretrained=false: the grids are
   synthetic, and the GPU host cannot download weights), seeded with train.seed exactly as the
   Trainer builds it, so that the Trainer's own cache check (FeatureCache.check_encoder) passes.
   At full size the cache takes 11.8 GB (grid 7) or 46.0 GB (grid 14); the free space is checked first.
3. Builds `captioner.train.Trainer` (the object `captioner train` uses) on that data: data.dataset
   karpathy with data.check_image_files=false (the reader does not look for image files; the cache
   decides which images are used), the model of eval/flickr8k/wsram.yaml at COCO sizes (feature,
   attention and embedding 512, hidden 1024, proposal reader 512, as benchmarks/bench_train.py's
   `coco` shape; vocabulary 10,000 + 4 special tokens), WS-RAM K = 5, `--batch-size` 64 images x
   all 5 captions an update, and runs `Trainer.train()` for one epoch (train.epochs=1): every batch,
   then the end-of-epoch validation on the `--val-images` images (beam 1, 2 samples for the bound)
   and the checkpoints. `--set KEY=VALUE` overrides any setting last.

   Which grids stay resident is the Trainer's rule (captioner.data.datasets.load_disk_dataset): a
   split is preloaded (then moved to the GPU) when its grids take at most data.preload_limit_gib
   (default 8) GiB as float16, else every batch is read from the memory-mapped shards, dequantised on
   the host and copied over (Trainer.gather_inputs). COCO train at 14x14 is 84.7 GiB as float16 and
   streams; at 7x7 it is 21.2 GiB and streams too under the default limit (`--preload-limit-gib 24`
   makes it GPU-resident; preloading dequantises the whole split through float32 first, about 45 GB of
   host RAM at full size). The shards were just written, so the streamed epoch reads them from the
   page cache (128 GiB RAM holds 45 GB), not from the disk.

What is measured (the Trainer is subclassed only to observe: `gather_inputs` is timed, and CUDA
events are recorded after it and after each update; nothing it computes changes):
- `epoch_seconds`: from the start of `Trainer.train()` to the end of its last update, the device
  synchronised; it includes the first updates' torch.compile and CUDA-graph capture.
  `second_half_seconds`: the second half of the updates, between two synchronisations: the steady
  rate, from which `projected_epoch_seconds` and `projected_30_epoch_seconds` (= this epoch + 29
  steady ones; validation not included) follow;
- `gpu_update_seconds` and `gpu_busy_share`: the sum over updates of the GPU time from the event
  after the batch's grids were gathered to the event after the update, over the epoch's wall time:
  near 1 the GPU never waits. Over the whole epoch it counts the first updates' compilation (host
  time between the two events) as busy; the `*_second_half` figures, over the steady second half,
  are the ones to read. `data_seconds` / `data_share` (and `*_second_half`, `data_ms_median`): host
  time in gather_inputs (reading the shards, dequantising, checking, copying; with pageable memory
  the copy also waits for the GPU to finish the previous update, so for resident grids or a GPU-bound
  run this is mostly that wait);
- peak GPU memory (torch.cuda.max_memory_allocated and max_memory_reserved), peak host RSS
  (resource.getrusage: it counts the pages of the memory-mapped shards the process touched, which
  are file-backed and reclaimable; `rss_*_gib_at_end` split them, from /proc/self/status);
- the cache's bytes on disk and write seconds, the card (torch.cuda.get_device_name) and torch.

Writes DIR/coco_dry_run-gridG.json (strict JSON) and prints one summary line. Progress goes to
stdout, flushed. On the CPU it runs at tiny sizes, e.g. (tests/test_coco_dry_run.py):

    python -m benchmarks.coco_dry_run --out DIR --work SCRATCH --device cpu --images 48 --grid 2 \\
        --backbone efficientnet-lite0 --layer block0 --vocabulary 40 --set data.min_word_count=1 ...
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import resource
import shutil
import sys
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import torch

from captioner.config import load_config
from captioner.data.datasets import CachedFeatures
from captioner.data.feature_cache import CacheWriteReport, write_cache
from captioner.data.sampler import ShardBatch
from captioner.data.vocabulary import tokenize
from captioner.files import write_json
from captioner.models.backbones import Backbone, backbone_spec, build_backbone
from captioner.models.encoder import backbone_name
from captioner.train import Trainer, TrainerCallback

REPO = Path(__file__).resolve().parents[1]
FLICKR8K_CONFIG = REPO / "eval" / "flickr8k" / "wsram.yaml"
KARPATHY_COCO_TRAIN = 113_287  # Karpathy's COCO train + restval images
# PTB-token length -> count, of the 395 captions of the 79 images of the COCO val2017 sample
# (captions_val2017.json of coco-mini; mean 10.49 tokens): the lengths drawn without --coco-annotations.
FIXED_LENGTHS = {7: 2, 8: 64, 9: 89, 10: 89, 11: 52, 12: 36, 13: 25, 14: 19, 15: 8, 16: 2, 17: 2, 19: 2, 20: 2,
                 21: 2, 25: 1}
OFFSETS = 8  # distinct row offsets of the random block that the shards are views of
GIB = 2**30


def say(message: str) -> None:
    print(f"coco_dry_run: {message}", flush=True)


# ---- the synthetic data ------------------------------------------------------------------------


def caption_lengths(annotations: Path | None) -> tuple[np.ndarray, np.ndarray, str, float | None]:
    """(lengths, probabilities, where they come from, seconds the tokenizer took per caption): the
    PTB-token lengths of the captions of an official COCO caption file (and the tokenizer's time on
    them, real text), or FIXED_LENGTHS (and None)."""
    seconds = None
    if annotations is None:
        counts = Counter(FIXED_LENGTHS)
        source = "fixed: the 395 captions of the 79-image COCO val2017 sample (FIXED_LENGTHS)"
    else:
        try:
            data = json.loads(annotations.read_text(encoding="utf-8"))
        except (OSError, ValueError) as error:
            raise SystemExit(f"{annotations}: not a readable COCO caption file ({error})") from None
        if not isinstance(data, dict) or not isinstance(data.get("annotations"), list):
            raise SystemExit(f'{annotations}: no "annotations" list; expected an official COCO caption file')
        texts = [entry["caption"] for entry in data["annotations"]
                 if isinstance(entry, dict) and isinstance(entry.get("caption"), str)]
        tokenize("warm the tokenizer up")  # its scanner is built on first use
        start = time.perf_counter()
        counts = Counter(len(tokenize(text)) for text in texts)
        seconds = (time.perf_counter() - start) / max(len(texts), 1)
        counts.pop(0, None)
        if not counts:
            raise SystemExit(f"{annotations}: no captions with words")
        source = f"{annotations.name}: {sum(counts.values())} captions"
    lengths = np.array(sorted(counts))
    weights = np.array([counts[length] for length in lengths], dtype=np.float64)
    return lengths, weights / weights.sum(), source, seconds


def vocabulary_words(size: int) -> list[str]:
    """`size` distinct letter-only words ("vaaa", "vaab", ...), which the PTB tokenizer keeps as they are."""
    width = max(3, math.ceil(math.log(max(size, 2), 26)))
    letters = np.array(list("abcdefghijklmnopqrstuvwxyz"))
    digits = (np.arange(size)[:, None] // 26 ** np.arange(width - 1, -1, -1)) % 26
    return ["v" + "".join(row) for row in letters[digits]]


def write_split_file(path: Path, counts: dict[str, int], captions_per_image: int, words: list[str],
                     lengths: np.ndarray, probabilities: np.ndarray, distinct: int,
                     rng: np.random.Generator) -> tuple[list[str], list[str]]:
    """Karpathy's format, images of split "train", "val", "test" in that order; (image ids, the pool
    of distinct caption texts)."""
    images = sum(counts.values())
    total = images * captions_per_image
    pool_size = total if distinct <= 0 else min(distinct, total)
    vocabulary = np.array(words)
    pool_lengths = rng.choice(lengths, size=pool_size, p=probabilities)
    pool_words = rng.integers(0, len(words), size=int(pool_lengths.sum()))
    ends = np.cumsum(pool_lengths)
    pool = [" ".join(vocabulary[pool_words[end - length:end]]) for end, length in zip(ends, pool_lengths)]
    chosen = np.arange(total) if pool_size == total else rng.integers(0, pool_size, size=total)
    entries, ids = [], []
    image = 0
    for split, count in counts.items():
        for _ in range(count):
            first = image * captions_per_image
            entries.append({"filepath": "train2014", "filename": f"COCO_synthetic_{image:012d}.jpg",
                            "cocoid": image, "split": split,
                            "sentences": [{"raw": pool[k]} for k in chosen[first:first + captions_per_image]]})
            ids.append(str(image))
            image += 1
    path.write_text(json.dumps({"dataset": "coco-synthetic", "images": entries}))
    return ids, pool


def synthetic_shards(images: int, shard_size: int, locations: int, channels: int,
                     rng: np.random.Generator) -> Iterator[tuple[np.ndarray, np.ndarray]]:
    """int8 grids and float16 scales for `images` rows, shard by shard: views of one random block
    (values in -127..127, scales in [0.01, 0.05]) at OFFSETS row offsets."""
    rows = min(shard_size, images) + OFFSETS - 1
    grids = rng.integers(-127, 128, size=(rows, locations, channels), dtype=np.int8)
    grids[:, 0, 0] = 1  # no row is all zeros (a reader takes such a row for damage)
    scales = rng.uniform(0.01, 0.05, size=(rows, channels)).astype(np.float16)
    for index, first in enumerate(range(0, images, shard_size)):
        count, offset = min(shard_size, images - first), index % OFFSETS
        yield grids[offset:offset + count], scales[offset:offset + count]


def trainer_backbone(config) -> Backbone:
    """The backbone the Trainer's model will have: built after torch.manual_seed(train.seed), as the
    Trainer does before building its model (whose encoder, and in it the backbone, is built first)."""
    encoder = config.model.encoder
    torch.manual_seed(config.train.seed)
    return build_backbone(backbone_name(encoder), encoder.layer or None, encoder.image_size,
                          pretrained=encoder.pretrained)


# ---- the instrumented Trainer --------------------------------------------------------------------


class ObservedTrainer(Trainer):
    """The Trainer, with the time spent gathering each batch's grids counted and, on CUDA, an event
    recorded once they are gathered (the update's start on the GPU). Nothing else differs."""

    def __init__(self, *args, **kwargs):
        self.data_seconds: list[float] = []  # per update
        self.captions_run = 0
        self.image_reads = 0
        self.started: list[torch.cuda.Event] = []
        super().__init__(*args, **kwargs)

    def gather_inputs(self, shard: ShardBatch) -> torch.Tensor:
        start = time.perf_counter()
        inputs = super().gather_inputs(shard)
        self.data_seconds.append(time.perf_counter() - start)
        self.captions_run += shard.stop - shard.start
        self.image_reads += len(shard.host_images)
        if self.device.type == "cuda":
            event = torch.cuda.Event(enable_timing=True)
            event.record()
            self.started.append(event)
        return inputs


class EpochClock(TrainerCallback):
    """Records an event after every update, synchronises at the middle and the end of the epoch, and
    prints progress about every tenth of it."""

    def __init__(self, trainer: ObservedTrainer, start: float):
        self.trainer, self.start = trainer, start
        self.updates = trainer.sampler.batches_per_epoch
        self.middle = self.updates // 2 if self.updates >= 4 else None
        self.ended: list[torch.cuda.Event] = []
        self.middle_time: float | None = None
        self.end_time: float | None = None
        self.every = max(1, self.updates // 10)

    def _sync(self) -> float:
        if self.trainer.device.type == "cuda":
            torch.cuda.synchronize(self.trainer.device)
        return time.perf_counter()

    def after_update(self, trainer: Trainer) -> None:
        if trainer.device.type == "cuda":
            event = torch.cuda.Event(enable_timing=True)
            event.record()
            self.ended.append(event)
        done = trainer.batch_in_epoch
        if done == self.middle:
            self.middle_time = self._sync()
        if done == self.updates and self.end_time is None:
            self.end_time = self._sync()
        if done % self.every == 0 or done == self.updates:
            say(f"epoch: {done:,}/{self.updates:,} updates, {time.perf_counter() - self.start:.1f} s")


# ---- the run -------------------------------------------------------------------------------------


def overrides(args, annotations: Path, cache: Path, image_root: Path, image_size: int) -> list[str]:
    settings = [
        "data.dataset=karpathy", f"data.annotations={annotations}", f"data.root={image_root}",
        f"data.features={cache}", "data.check_image_files=false", "data.limit_images=0",
        f"model.encoder.name={args.backbone}", f"model.encoder.layer={args.layer}",
        f"model.encoder.image_size={image_size}", "model.encoder.pretrained=false", "model.encoder.fine_tune=false",
        "model.encoder.feature_dim=512", "model.embedding_dim=512", "model.attention_dim=512",
        "model.hidden_dim=1024", "model.proposal_hidden_dim=512",
        "estimator.name=wsram", "estimator.samples=5",
        "train.epochs=1", "train.max_steps=0", f"train.batch_size={args.batch_size}", "train.captions_per_image=0",
        f"train.device={args.device}", "train.progress_bar=false", "train.validation_samples=2",
        "train.validation_beam_size=1", "train.checkpoint_every=0", f"train.seed={args.seed}",
    ]
    if args.preload_limit_gib is not None:
        settings.append(f"data.preload_limit_gib={args.preload_limit_gib}")
    return settings + list(args.set)


def rss_at_end() -> dict[str, float | None]:
    """Resident memory now, anonymous and file-backed (mapped shards), from /proc/self/status."""
    found: dict[str, float | None] = {"rss_anon_gib_at_end": None, "rss_file_gib_at_end": None}
    status = Path("/proc/self/status")
    if status.is_file():
        for line in status.read_text().splitlines():
            key, _, value = line.partition(":")
            if key in ("RssAnon", "RssFile"):
                found[f"rss_{key[3:].lower()}_gib_at_end"] = int(value.split()[0]) * 1024 / GIB
    return found


def check_arguments(parser: argparse.ArgumentParser, args) -> None:
    for name in ("images", "grid", "vocabulary", "captions_per_image", "batch_size", "shard_size", "workers",
                 "val_images", "test_images"):
        if getattr(args, name) <= 0:
            parser.error(f"--{name.replace('_', '-')} must be positive, got {getattr(args, name)}")
    if args.distinct_captions < 0:
        parser.error(f"--distinct-captions must be 0 (all distinct) or positive, got {args.distinct_captions}")
    if args.device.startswith("cuda") and not torch.cuda.is_available():
        parser.error(f"--device {args.device}: PyTorch sees no CUDA GPU; use --device cpu")
    if args.coco_annotations is not None and not args.coco_annotations.is_file():
        parser.error(f"--coco-annotations {args.coco_annotations}: no such file")
    try:
        probe = backbone_spec(args.backbone, args.layer, 224)
        backbone_spec(args.backbone, args.layer, args.grid * (224 // probe.grid))
    except (ValueError, RuntimeError) as error:
        parser.error(f"--backbone {args.backbone} --layer {args.layer} --grid {args.grid}: {error}")


def run(args, folder: Path) -> dict:
    began = time.perf_counter()
    rng = np.random.default_rng(args.seed)
    stride = 224 // backbone_spec(args.backbone, args.layer, 224).grid
    image_size = args.grid * stride
    annotations, cache, image_root = folder / "dataset_coco_synthetic.json", folder / "cache", folder / "images"
    config = load_config(str(FLICKR8K_CONFIG), overrides(args, annotations, cache, image_root, image_size))
    backbone = trainer_backbone(config)
    spec, weights_hash = backbone.spec, backbone.weights_hash()
    del backbone
    counts = {"train": args.images, "val": args.val_images, "test": args.test_images}
    total_images = sum(counts.values())
    cache_bytes = total_images * spec.num_locations * spec.channels + total_images * spec.channels * 2
    free = shutil.disk_usage(folder).free
    if cache_bytes > 0.95 * free:
        raise SystemExit(f"{folder}: the cache needs about {cache_bytes / 1e9:.1f} GB, the disk has "
                         f"{free / 1e9:.1f} GB free; use fewer --images or another --work")

    start = time.perf_counter()
    lengths, probabilities, lengths_source, real_tokenize = caption_lengths(args.coco_annotations)
    image_ids, pool = write_split_file(annotations, counts, args.captions_per_image, vocabulary_words(args.vocabulary),
                                       lengths, probabilities, args.distinct_captions, rng)
    split_file_seconds = time.perf_counter() - start
    say(f"{annotations.name}: {total_images:,} images ({args.images:,} train), "
        f"{total_images * args.captions_per_image:,} captions from {len(pool):,} distinct texts "
        f"({lengths_source}), {split_file_seconds:.1f} s")
    # The tokenizer's cost, measured on the pool (whose tokens the Trainer then finds cached).
    tokenize("warm the tokenizer up")  # its scanner is built on first use
    start = time.perf_counter()
    pool_tokens = sum(len(tokenize(text)) for text in pool)
    tokenize_seconds = time.perf_counter() - start

    say(f"writing the cache: {total_images:,} images of {spec.grid}x{spec.grid}x{spec.channels} int8, "
        f"about {cache_bytes / 1e9:.1f} GB, {args.workers} writer threads")
    shown = [0.0]

    def progress(done: int, total: int) -> None:
        if done == total or done / total >= shown[0] + 0.1:
            shown[0] = done / total
            say(f"cache: {done:,}/{total:,} images, {time.perf_counter() - start:.1f} s")

    start = time.perf_counter()
    report: CacheWriteReport = write_cache(
        cache, image_ids, synthetic_shards(total_images, args.shard_size, spec.num_locations, spec.channels, rng),
        spec, weights_hash, storage="int8", shard_size=args.shard_size, workers=args.workers,
        origin="synthetic: benchmarks.coco_dry_run (random values)", progress=progress)
    say(f"cache written: {report.bytes / 1e9:.2f} GB in {report.seconds:.1f} s ({report.bytes_per_second / 1e9:.2f} "
        f"GB/s; sha256 {report.hash_seconds:.1f} thread-seconds)")

    device = torch.device(config.train.device)
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    start = time.perf_counter()
    trainer = ObservedTrainer(config, folder / "run")
    build_seconds = time.perf_counter() - start
    train = trainer.splits["train"]
    loaded = train.inputs.loaded if isinstance(train.inputs, CachedFeatures) else None
    grids = ("streamed from memory-mapped shards" if loaded is None else
             "GPU-resident" if loaded.device.type == "cuda" else "preloaded in host RAM")
    samples = config.estimator.samples
    captions = sum(len(c) for c in train.captions)
    say(f"Trainer built in {build_seconds:.1f} s: vocabulary {len(trainer.vocabulary):,}, "
        f"{trainer.sampler.batches_per_epoch:,} updates of {trainer.sampler.batch_captions} captions x K={samples}, "
        f"grids {grids}, CUDA graphs {'on' if trainer.graphs is not None else 'off: ' + trainer.graphs_off_reason}")

    if device.type == "cuda":
        torch.cuda.synchronize(device)
    start = time.perf_counter()
    clock = EpochClock(trainer, start)
    summary = trainer.train([clock])
    train_call_seconds = time.perf_counter() - start
    if clock.end_time is None:
        raise RuntimeError("the epoch did not reach its last update; see the log above")
    epoch_seconds = clock.end_time - start
    updates = clock.updates
    spans = [begin.elapsed_time(end) / 1000 for begin, end in zip(trainer.started, clock.ended)] \
        if device.type == "cuda" else None
    middle = clock.middle if clock.middle_time is not None else 0
    if clock.middle_time is not None:
        second_half = clock.end_time - clock.middle_time
        steady_update = second_half / (updates - clock.middle)
    else:
        second_half, steady_update = None, epoch_seconds / updates
    half_wall = second_half if second_half is not None else epoch_seconds

    def share(seconds: list[float] | None, first: int, wall: float) -> tuple[float | None, float | None]:
        return (None, None) if seconds is None else (sum(seconds[first:]), sum(seconds[first:]) / wall)

    gpu_update_seconds, gpu_busy_share = share(spans, 0, epoch_seconds)
    gpu_half_seconds, gpu_half_share = share(spans, middle, half_wall)
    data_half_seconds, data_half_share = share(trainer.data_seconds, middle, half_wall)
    projected_epoch = steady_update * updates
    caption_samples = captions * samples
    result = {
        "command": " ".join(["python -m benchmarks.coco_dry_run"] + sys.argv[1:]),
        "device": torch.cuda.get_device_name(device) if device.type == "cuda" else platform.processor() or "cpu",
        "torch": torch.__version__, "cuda": torch.version.cuda, "python": platform.python_version(),
        "host_cpus": os.cpu_count(),
        "grid": spec.grid, "locations": spec.num_locations, "channels": spec.channels, "storage": "int8",
        "backbone": f"{spec.name} {spec.layer} at {spec.image_size} px (random weights, grids synthetic)",
        "images": len(train), "val_images": len(trainer.splits["val"]), "test_images": len(trainer.splits["test"]),
        "captions": captions, "captions_per_image": args.captions_per_image, "samples_per_caption": samples,
        "caption_samples": caption_samples, "vocabulary": len(trainer.vocabulary),
        "caption_lengths": lengths_source, "mean_caption_tokens": pool_tokens / len(pool),
        "max_caption_length": config.data.max_caption_length, "distinct_caption_texts": len(pool),
        "batch_images": config.train.batch_size, "batch_captions": trainer.sampler.batch_captions,
        "caption_samples_per_update": trainer.sampler.batch_captions * samples,
        "updates": updates, "updates_run": summary["step"], "captions_run": trainer.captions_run,
        "image_reads": trainer.image_reads, "skipped_updates": summary["skipped_updates"],
        "model": {"feature_dim": config.model.encoder.feature_dim, "embedding_dim": config.model.embedding_dim,
                  "attention_dim": config.model.attention_dim, "hidden_dim": config.model.hidden_dim,
                  "proposal_hidden_dim": config.model.proposal_hidden_dim},
        "bf16": config.train.bf16 and device.type == "cuda", "compile": config.train.compile and device.type == "cuda",
        "cuda_graphs": trainer.graphs is not None, "cuda_graphs_off_reason": trainer.graphs_off_reason,
        "grids": grids, "preload_limit_gib": config.data.preload_limit_gib,
        "train_grids_float16_gib": len(train) * spec.num_locations * spec.channels * 2 / GIB,
        "cache_bytes": report.bytes, "cache_shards": report.shards, "cache_write_seconds": report.seconds,
        "cache_write_gb_per_second": report.bytes_per_second / 1e9, "cache_hash_seconds": report.hash_seconds,
        "cache_checksums": "sha256 of every file, computed while writing", "cache_writer_threads": args.workers,
        "split_file_seconds": split_file_seconds,
        "tokenize_seconds_per_caption": tokenize_seconds / len(pool),
        "tokenize_seconds_per_real_caption": real_tokenize,
        "tokenize_projected_seconds_all_distinct": (real_tokenize or tokenize_seconds / len(pool)) * captions,
        "trainer_build_seconds": build_seconds,
        "epoch_seconds": epoch_seconds,
        "caption_samples_per_second": caption_samples / epoch_seconds,
        "second_half_seconds": second_half,
        "steady_caption_samples_per_second": trainer.sampler.batch_captions * samples / steady_update,
        "projected_epoch_seconds": projected_epoch,
        "projected_30_epoch_seconds": epoch_seconds + 29 * projected_epoch,
        "projected_30_epoch_hours": (epoch_seconds + 29 * projected_epoch) / 3600,
        "gpu_update_seconds": gpu_update_seconds, "gpu_busy_share": gpu_busy_share,
        "gpu_update_seconds_second_half": gpu_half_seconds, "gpu_busy_share_second_half": gpu_half_share,
        "data_seconds": sum(trainer.data_seconds), "data_share": sum(trainer.data_seconds) / epoch_seconds,
        "data_seconds_second_half": data_half_seconds, "data_share_second_half": data_half_share,
        "gpu_update_ms_median": float(np.median(spans[middle:])) * 1000 if spans else None,
        "data_ms_median": float(np.median(trainer.data_seconds[middle:])) * 1000,
        "after_epoch_seconds": train_call_seconds - epoch_seconds,
        "validation": {key: value for key, value in (summary["history"] or [{}])[-1].items()
                       if key in ("Bleu_4", "bound_prior", "bound_proposal")},
        "peak_gpu_allocated_gib": torch.cuda.max_memory_allocated(device) / GIB if device.type == "cuda" else None,
        "peak_gpu_reserved_gib": torch.cuda.max_memory_reserved(device) / GIB if device.type == "cuda" else None,
        "peak_host_rss_gib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024 / GIB,
        **rss_at_end(),
        "warnings": summary["warnings"],
        "total_seconds": time.perf_counter() - began,
    }
    del trainer
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter, epilog=__doc__)
    parser.add_argument("--out", type=Path, required=True, help="folder for coco_dry_run-gridG.json")
    parser.add_argument("--work", type=Path, required=True, help="scratch folder (the cache goes in a new subfolder)")
    parser.add_argument("--images", type=int, default=KARPATHY_COCO_TRAIN, help="training images (default: COCO's)")
    parser.add_argument("--val-images", type=int, default=16, help="validation images (evaluated once, at the end)")
    parser.add_argument("--test-images", type=int, default=16, help="test images (loaded, never evaluated)")
    parser.add_argument("--captions-per-image", type=int, default=5)
    parser.add_argument("--grid", type=int, default=7, help="grid side: 7 (224 px) or 14 (448 px) for ResNet-101")
    parser.add_argument("--backbone", default="resnet101")
    parser.add_argument("--layer", default="layer4")
    parser.add_argument("--vocabulary", type=int, default=10_000, help="words the captions are drawn from")
    parser.add_argument("--distinct-captions", type=int, default=50_000,
                        help="distinct caption texts the captions are drawn from (0: all distinct)")
    parser.add_argument("--coco-annotations", type=Path, help="an official COCO caption file for the lengths")
    parser.add_argument("--batch-size", type=int, default=64, help="images an update (all their captions)")
    parser.add_argument("--shard-size", type=int, default=1024, help="rows a cache shard")
    parser.add_argument("--workers", type=int, default=min(8, os.cpu_count() or 1), help="cache writer threads")
    parser.add_argument("--preload-limit-gib", type=float, help="data.preload_limit_gib (default: the config's, 8)")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="config override, applied last")
    parser.add_argument("--keep", action="store_true", help="keep the scratch folder")
    args = parser.parse_args()
    check_arguments(parser, args)
    folder = args.work / f"coco-dry-run-grid{args.grid}"
    if folder.exists():
        parser.error(f"{folder} exists (a kept or interrupted run?): delete it or use another --work")
    created_work = not args.work.exists()
    folder.mkdir(parents=True)
    try:
        result = run(args, folder)
    finally:
        if not args.keep:
            shutil.rmtree(folder, ignore_errors=True)
            if created_work and args.work.is_dir() and not any(args.work.iterdir()):
                args.work.rmdir()
    result["scratch_kept"] = str(folder) if args.keep else None
    args.out.mkdir(parents=True, exist_ok=True)
    path = args.out / f"coco_dry_run-grid{result['grid']}.json"
    write_json(path, result, indent=1)
    busy = f"GPU busy {result['gpu_busy_share_second_half']:.0%} (second half)" \
        if result["gpu_busy_share_second_half"] is not None else "no GPU"
    memory = f"peak GPU {result['peak_gpu_allocated_gib']:.1f} GiB" if result["peak_gpu_allocated_gib"] is not None \
        else f"peak RSS {result['peak_host_rss_gib']:.1f} GiB"
    print(f"coco_dry_run grid {result['grid']}: {result['images']:,} images, {result['captions']:,} captions, "
          f"1 epoch {result['epoch_seconds']:.1f} s ({result['caption_samples_per_second']:,.0f} caption-samples/s, "
          f"steady {result['steady_caption_samples_per_second']:,.0f}), {busy}, data {result['data_share_second_half']:.0%}, "
          f"grids {result['grids']}, cache {result['cache_bytes'] / 1e9:.1f} GB in {result['cache_write_seconds']:.0f} s, "
          f"{memory}, 30 epochs ~{result['projected_30_epoch_hours']:.2f} h -> {path}", flush=True)


if __name__ == "__main__":
    main()
