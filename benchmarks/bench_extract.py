"""Feature-extraction speed, end to end, with each image decoder: PIL on CPU threads and GPU decoding.

    python -m benchmarks.bench_extract --images DIR --out bench.json [--device cuda] [--workers 16]
    python -m benchmarks.bench_extract --images DIR --out smoke.json --device cpu --limit 16   (smoke check)

Times `extract_features` (read files, decode, resize, backbone, float16 shards on disk) over every
image under DIR (recursively; --limit keeps the first N), once per decoder, into a scratch cache that
is deleted afterwards; the encoder is the Flickr8k runs' (`model.encoder` of --config: EfficientNet-Lite0
block15 at 224 px), with bf16 autocast and channels_last on CUDA as `captioner extract` uses. Before the timed runs, one
untimed pass over all the images warms the page cache and one batch per decoder warms up cuDNN and
nvjpeg, so neither decoder pays for the disk or for start-up. Unreadable files are skipped and counted,
as in `captioner extract`. Also times the backbone alone on a batch already on the device: the
ceiling that decoding can at best reach. Writes images/s, the card, versions and this command line to
--out and prints a table. A benchmark, not a test.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shlex
import shutil
import sys
import tempfile
import time
from pathlib import Path

import torch
import torchvision

from captioner.config import load_config
from captioner.data.feature_cache import extract_features
from captioner.data.images import find_images
from captioner.data.records import ImageRecord
from captioner.models.backbones import build_backbone
from captioner.models.encoder import backbone_name
from benchmarks.timing import sync

ROOT = Path(__file__).resolve().parents[1]



def _device_name(device: torch.device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    return f"cpu: {platform.processor() or platform.machine()}, {torch.get_num_threads()} torch threads"


def _backbone_ceiling(backbone, device: torch.device, batch_size: int, repeats: int) -> float:
    """Images/s of preprocess + backbone alone on a random uint8 batch already on `device`, with the
    settings `captioner extract` uses there."""
    size = backbone.spec.image_size
    pixels = torch.randint(0, 256, (batch_size, 3, size, size), dtype=torch.uint8, device=device)
    memory_format = torch.channels_last if device.type == "cuda" else torch.contiguous_format
    backbone = backbone.to(memory_format=memory_format)

    def run() -> None:
        with torch.inference_mode(), torch.autocast(device.type, dtype=torch.bfloat16, enabled=device.type == "cuda"):
            backbone(backbone.preprocess(pixels).contiguous(memory_format=memory_format)).half()

    run()
    sync(device)
    start = time.perf_counter()
    for _ in range(repeats):
        run()
    sync(device)
    return repeats * batch_size / (time.perf_counter() - start)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--images", type=Path, required=True, help="folder of images (searched recursively)")
    parser.add_argument("--out", type=Path, required=True, help="JSON file for the results")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--decoders", nargs="+", choices=("pil", "gpu"), default=["pil", "gpu"])
    parser.add_argument("--workers", type=int, default=os.cpu_count() or 4,
                        help="reader threads (with pil they also decode); default: all cores")
    parser.add_argument("--batch-size", type=int, default=256)
    parser.add_argument("--shard-size", type=int, default=1024)
    parser.add_argument("--limit", type=int, default=0, help="only the first N images (0: all)")
    parser.add_argument("--config", type=Path, default=ROOT / "eval" / "flickr8k" / "wsram.yaml",
                        help="YAML whose model.encoder is benchmarked (default: the Flickr8k runs')")
    parser.add_argument("--scratch", type=Path, help="folder for the scratch caches (default: a temporary one)")
    args = parser.parse_args()
    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        parser.error("--device cuda but PyTorch sees no CUDA GPU")

    paths = find_images([str(args.images)])
    if args.limit:
        paths = paths[:args.limit]
    if not paths:
        parser.error(f"{args.images}: no image files found")
    records = [ImageRecord(str(path.relative_to(args.images)), path, (), "train") for path in paths]
    encoder = load_config(args.config).model.encoder
    backbone = build_backbone(backbone_name(encoder), encoder.layer or None, encoder.image_size,
                              pretrained=encoder.pretrained).to(device)
    on_gpu = device.type == "cuda"  # bf16 autocast and channels_last, as `captioner extract` does there
    for path in paths:  # warm the page cache: both decoders then read from memory
        path.read_bytes()

    scratch = Path(tempfile.mkdtemp(prefix="bench-extract-", dir=args.scratch))
    results = []
    try:
        for decoder in args.decoders:
            settings = dict(batch_size=args.batch_size, device=device, workers=args.workers, decoder=decoder,
                            bf16=on_gpu, channels_last=on_gpu)
            extract_features(records[:args.batch_size], backbone, scratch / f"warm-{decoder}", **settings)
            sync(device)
            start = time.perf_counter()
            report = extract_features(records, backbone, scratch / decoder, shard_size=args.shard_size, **settings)
            sync(device)
            seconds = time.perf_counter() - start
            results.append({"decoder": report.decoder, "workers": args.workers, "images": report.images,
                            "written": report.written, "skipped": report.skipped.to_dict(), "seconds": seconds,
                            "images_per_second": report.written / seconds})
            shutil.rmtree(scratch / decoder)
        ceiling = _backbone_ceiling(backbone, device, min(args.batch_size, len(records)),
                                    repeats=10 if device.type == "cuda" else 2)
    finally:
        shutil.rmtree(scratch, ignore_errors=True)

    encoder_spec = backbone.spec.to_dict()
    summary = {
        "command": shlex.join([sys.executable, *sys.argv]),
        "device": _device_name(device),
        "cpu_cores": os.cpu_count(),
        "torch": torch.__version__,
        "torchvision": torchvision.__version__,
        "encoder": encoder_spec,
        "bf16_autocast": on_gpu,
        "channels_last": on_gpu,
        "batch_size": args.batch_size,
        "shard_size": args.shard_size,
        "images_found": len(paths),
        "path": "file -> decode (pil: CPU threads; gpu: torchvision.io.decode_jpeg on the device) -> square "
                "resize -> backbone -> float16 shards on disk",
        "results": results,
        "backbone_only_images_per_second": ceiling,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(summary, indent=2))

    print(f"{summary['device']}; torch {torch.__version__}, torchvision {torchvision.__version__}; "
          f"{encoder_spec['name']} {encoder_spec['layer']} at {encoder_spec['image_size']} px, batch {args.batch_size}")
    print(f"{'decoder':8} {'workers':>7} {'images':>7} {'skipped':>7} {'seconds':>8} {'images/s':>9}")
    for row in results:
        print(f"{row['decoder']:8} {row['workers']:>7} {row['written']:>7} {row['skipped']['total']:>7} "
              f"{row['seconds']:>8.2f} {row['images_per_second']:>9.1f}")
    print(f"{'backbone only, batch on the device':>41} {ceiling:>9.1f}")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
