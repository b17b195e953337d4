"""`captioner extract`: run a pretrained backbone over a data set once, into a feature cache.

extraction.json records, besides the speed of the loop, `phases`: when each step of the process
ended, in seconds since the process started (`clock`: how that start is known), and the whole
process's seconds and images/s up to the moment the file is written."""

from __future__ import annotations

import math
import os
import platform
import sys
import threading
import time
from pathlib import Path

_IMPORTED_AT = time.perf_counter()  # before torch: the fallback start of the process's clock


def process_start() -> tuple[float, str]:
    """(perf_counter value at which this process started, how it is known): from /proc/self/stat and
    /proc/uptime (10 ms ticks), else psutil, else when `captioner` (the cli, or this module) was imported."""
    try:
        ticks = os.sysconf("SC_CLK_TCK")
        with open("/proc/self/stat") as handle:
            fields = handle.read().rsplit(")", 1)[1].split()
        started = int(fields[19]) / ticks  # field 22 (starttime), seconds after boot
        with open("/proc/uptime") as handle:
            uptime = float(handle.read().split()[0])
        now = time.perf_counter()
        return now - (uptime - started), "/proc/self/stat starttime"
    except (OSError, ValueError, IndexError):
        pass
    try:
        import psutil

        age = time.time() - psutil.Process().create_time()
        return time.perf_counter() - age, "psutil create_time"
    except Exception:  # noqa: BLE001
        pass
    cli = sys.modules.get("captioner.cli")
    imported = getattr(cli, "_IMPORTED_AT", None)
    if imported is not None:
        return imported, "captioner.cli imported"
    return _IMPORTED_AT, "captioner.extract imported"


class Phases:
    """Seconds since the process started at which each named phase ended."""

    def __init__(self):
        self.origin, self.clock = process_start()
        self.seconds: dict[str, float] = {}

    def mark(self, name: str, at: float | None = None) -> None:
        self.seconds.setdefault(name, round((time.perf_counter() if at is None else at) - self.origin, 4))

    def now(self) -> float:
        return time.perf_counter() - self.origin


import torch  # noqa: E402

from captioner.config import ExperimentConfig  # noqa: E402
from captioner.data.datasets import read_records, split_records  # noqa: E402
from captioner.data.feature_cache import (ExtractionOptions, ExtractionReport, extract_features,  # noqa: E402
                                          resolve_decoder, warm_up_device)
from captioner.files import write_json  # noqa: E402
from captioner.models.backbones import backbone_spec, build_backbone  # noqa: E402
from captioner.models.encoder import backbone_name  # noqa: E402


def default_batch_size(device: str) -> int:
    """64, on a GPU as on a CPU. Measured on an H200 (eval/bench/extract-cold/), once the JPEG decode
    waits for the CUDA stream (captioner.data.gpu_decode): batch 64 ran 2,812-2,995 images/s over the
    loop and 10.5-12.3 s for the whole process; batch 256 1,869-2,456 images/s and 11.3-15.4 s."""
    return 64


def run_extraction(config: ExperimentConfig, out_dir: str | Path, storage: str = "float16", shard_size: int = 1024,
                   batch_size: int | None = None, device: str = "cpu", workers: int = 4, decoder: str = "auto",
                   progress: bool = True, options: ExtractionOptions | None = None, early_cuda: bool = True,
                   phases: Phases | None = None, mirror: bool = False) -> ExtractionReport:
    """Extract the grids of every image of every split that `config.data` names with the backbone of
    `config.model.encoder`, into `out_dir`, decoding images with `decoder` ("auto": on the GPU when
    `device` is one, else with PIL); writes `out_dir/extraction.json` with the speed, the decoder and
    the phases of the process. `options`: the speed switches (ExtractionOptions; None: the defaults);
    `early_cuda`: start CUDA, cuDNN and nvjpeg in a background thread while the records are read and
    the backbone is built; `mirror`: encode the images mirrored left to right (a cache for flip
    augmentation, data.mirrored_features)."""
    phases = phases or Phases()
    phases.mark("imports_done")
    if config.data.dataset == "scenes":
        raise ValueError("data.dataset: the built-in scenes data is encoded by small_cnn while training; "
                         "extract features of a data set on disk (flickr8k, karpathy, coco, huggingface)")
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise RuntimeError("--device cuda but PyTorch sees no CUDA GPU")
    batch_size = batch_size or default_batch_size(device)
    options = options or ExtractionOptions()
    resolved = options.resolved(torch.device(device))
    decoder = resolve_decoder(decoder, device)
    starter: threading.Thread | None = None
    start_error: list[BaseException] = []
    if early_cuda and device.startswith("cuda"):
        def start_cuda() -> None:
            try:
                warm_up_device(torch.device(device), decoder, resolved.precision, resolved.channels_last)
                phases.mark("cuda_started")
            except BaseException as error:  # noqa: BLE001: reported, and the main thread carries on
                start_error.append(error)
        starter = threading.Thread(target=start_cuda, name="cuda-start", daemon=True)
        starter.start()
    try:
        encoder = config.model.encoder
        records = read_records(config.data)
        splits = split_records(records, config.data.limit_images)
        everything = [record for items in splits.values() for record in items]
        phases.mark("records_read")
        name, layer = backbone_name(encoder), encoder.layer or None
        built: list = []

        def build():
            backbone = build_backbone(name, layer, encoder.image_size, pretrained=encoder.pretrained)
            built.append(backbone)
            if starter is not None:
                starter.join()
            return backbone

        if name.startswith("hf:"):  # the spec needs the model's config: build it first
            spec, source = None, build()
        else:
            spec, source = backbone_spec(name, layer, encoder.image_size), build

        last = [0.0]

        def show(done: int, total: int) -> None:
            now = time.perf_counter()
            if progress and (now - last[0] > 5 or done == total):
                last[0] = now
                print(f"  {done}/{total} images", file=sys.stderr)

        report = extract_features(everything, source, out_dir, storage=storage, shard_size=shard_size,
                                  batch_size=batch_size, device=device, workers=workers, decoder=decoder,
                                  progress=show, options=options, spec=spec, mark=phases.mark, mirror=mirror)
    except BaseException:
        # a CUDA start-up thread still running when the interpreter exits can hang it: let it finish first
        if starter is not None:
            starter.join(timeout=120)
        raise
    backbone = built[0]
    report.skipped.merge(records.skipped)
    whole = phases.now()
    loop_ips = report.images_per_second
    summary = {
        "data": records.source,
        "splits": {name: len(items) for name, items in splits.items()},
        "encoder": backbone.spec.to_dict(),
        "storage": storage,
        "mirrored": mirror,
        "images": report.images,
        "written_this_run": report.written,
        "shards_written": report.shards_done,
        "shards_already_done": report.shards_skipped,
        "seconds": report.seconds,
        "images_per_second": _number(loop_ips),
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
        "options": {**resolved.to_dict(), "early_cuda": bool(starter is not None)},
        "cuda_start_error": repr(start_error[0]) if start_error else None,
        "jpeg_decode_via": _jpeg_decode_via(report.decoder),
        "torchvision_imported": "torchvision" in sys.modules,
        "phases": {
            "clock": phases.clock,
            "seconds_since_process_start": dict(phases.seconds),
            "whole_process_seconds": round(whole, 4),
            "images_per_second_whole_process": _number(report.written / whole if whole > 0 else float("nan")),
            "images_per_second_loop": _number(loop_ips),
        },
    }
    write_json(Path(out_dir) / "extraction.json", summary)
    return report


def _jpeg_decode_via(decoder: str) -> str | None:
    if decoder != "gpu":
        return None
    from captioner.data.gpu_decode import decoder_source

    return decoder_source()


def _number(value: float) -> float | None:
    """JSON has no NaN: None where nothing was measured (e.g. every shard was already done)."""
    return None if math.isnan(value) else value
