"""`captioner extract`: run a pretrained backbone over a data set once, into a feature cache."""

from __future__ import annotations

import math
import platform
import sys
import time
from pathlib import Path

import torch

from captioner.config import ExperimentConfig
from captioner.data.datasets import read_records, split_records
from captioner.data.feature_cache import ExtractionReport, extract_features
from captioner.files import write_json
from captioner.models.backbones import build_backbone
from captioner.models.encoder import backbone_name


def run_extraction(config: ExperimentConfig, out_dir: str | Path, storage: str = "float16", shard_size: int = 1024,
                   batch_size: int = 64, device: str = "cpu", workers: int = 4, decoder: str = "auto",
                   progress: bool = True) -> ExtractionReport:
    """Extract the grids of every image of every split that `config.data` names with the backbone of
    `config.model.encoder`, into `out_dir`, decoding images with `decoder` ("auto": on the GPU when
    `device` is one, else with PIL); writes `out_dir/extraction.json` with the speed and the decoder."""
    if config.data.dataset == "scenes":
        raise ValueError("data.dataset: the built-in scenes data is encoded by small_cnn while training; "
                         "extract features of a data set on disk (flickr8k, karpathy, coco, huggingface)")
    encoder = config.model.encoder
    records = read_records(config.data)
    splits = split_records(records, config.data.limit_images)
    everything = [record for items in splits.values() for record in items]
    backbone = build_backbone(backbone_name(encoder), encoder.layer or None, encoder.image_size,
                              pretrained=encoder.pretrained)
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise RuntimeError("--device cuda but PyTorch sees no CUDA GPU")
    last = [0.0]

    def show(done: int, total: int) -> None:
        now = time.perf_counter()
        if progress and (now - last[0] > 5 or done == total):
            last[0] = now
            print(f"  {done}/{total} images", file=sys.stderr)

    report = extract_features(everything, backbone, out_dir, storage=storage, shard_size=shard_size,
                              batch_size=batch_size, device=device, workers=workers, decoder=decoder,
                              bf16=device.startswith("cuda"), channels_last=device.startswith("cuda"), progress=show)
    report.skipped.merge(records.skipped)
    summary = {
        "data": records.source,
        "splits": {name: len(items) for name, items in splits.items()},
        "encoder": backbone.spec.to_dict(),
        "storage": storage,
        "images": report.images,
        "written_this_run": report.written,
        "shards_written": report.shards_done,
        "shards_already_done": report.shards_skipped,
        "seconds": report.seconds,
        "images_per_second": _number(report.images_per_second),
        "first_batch_seconds": _number(report.first_batch_seconds),
        "images_per_second_after_first_batch": _number(report.images_per_second_after_first_batch),
        "device": torch.cuda.get_device_name(torch.device(device)) if device.startswith("cuda") else
        f"cpu ({torch.get_num_threads()} threads, {platform.processor() or platform.machine()})",
        "batch_size": batch_size,
        "workers": workers,
        "decoder": report.decoder,
        "torch": torch.__version__,
        "skipped": report.skipped.to_dict(full=True),
        "damaged_shards_redone": report.damaged,
    }
    write_json(Path(out_dir) / "extraction.json", summary)
    return report


def _number(value: float) -> float | None:
    """JSON has no NaN: None where nothing was measured (e.g. every shard was already done)."""
    return None if math.isnan(value) else value
