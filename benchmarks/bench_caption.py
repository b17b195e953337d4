"""Captioning speed for the whole path: read and decode the image file, resize, encode, beam search.

    python -m benchmarks.bench_caption MODEL IMAGES... [--device cuda] [--batch-sizes 1 32] [--limit 200]

Images per second over `--limit` files (after one untimed warm-up batch), for each batch size,
with the model's decoding settings (beam 3 unless overridden). A benchmark, not a test: the
output JSON (--out) records the machine, versions and settings with the numbers.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import platform
import time
from pathlib import Path

import torch

import captioner
from captioner.data.images import find_images
from captioner.inference import caption_files
from benchmarks.timing import sync



def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("model")
    parser.add_argument("images", nargs="+", help="files, folders or globs")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--batch-sizes", type=int, nargs="+", default=[1, 32])
    parser.add_argument("--limit", type=int, default=200)
    parser.add_argument("--beam-size", type=int)
    parser.add_argument("--threads", type=int, help="torch threads on the CPU (default: torch's)")
    parser.add_argument("--out", type=Path)
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    model = captioner.load(args.model, device)
    decode = model.decoding if args.beam_size is None else dataclasses.replace(model.decoding, beam_size=args.beam_size)
    paths = find_images(args.images)[: args.limit]
    results = []
    for batch_size in args.batch_sizes:
        list(caption_files(model, paths[:batch_size], decode, device, batch_size))  # warm-up
        sync(device)
        start = time.perf_counter()
        count = sum(1 for _ in caption_files(model, paths, decode, device, batch_size))
        sync(device)
        seconds = time.perf_counter() - start
        row = {"batch_size": batch_size, "images": count, "seconds": seconds, "images_per_second": count / seconds}
        print(json.dumps(row), flush=True)
        results.append(row)
    report = {
        "model": str(args.model), "decoding": dataclasses.asdict(decode), "device":
        torch.cuda.get_device_name(device) if device.type == "cuda" else
        f"cpu: {platform.processor() or platform.machine()}, {torch.get_num_threads()} torch threads",
        "torch": torch.__version__, "path": "file -> PIL decode (JPEG draft) -> resize -> backbone -> beam search",
        "results": results,
    }
    if args.out:
        args.out.write_text(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
