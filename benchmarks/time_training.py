"""Seconds per update and per validation pass of a training config, to plan a run's budget.

    python -m benchmarks.time_training eval/flickr8k/wsram.yaml eval/flickr8k/var.yaml --set train.device=cuda

Builds each config's Trainer on its data (a feature cache for pretrained encoders), times
`--updates` updates after `--warmup` untimed ones, and one validation pass; prints one JSON line
per config (and writes them to --out). A planning tool, not a benchmark of the fast path.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch

from captioner.config import load_config
from captioner.train import Trainer
from benchmarks.timing import sync



def time_config(path: str, overrides: list[str], updates: int, warmup: int, out_dir: Path) -> dict:
    config = load_config(path, overrides + ["train.progress_bar=false"])
    trainer = Trainer(config, out_dir / Path(path).stem)
    train = trainer.splits["train"]
    t = config.train
    generator = torch.Generator().manual_seed(0)
    order = torch.randperm(len(train), generator=generator)

    def step(i: int) -> None:
        indices = order[(i * t.batch_size) % len(train):][: t.batch_size]
        batch = train.batch(indices, trainer.vocabulary, config.data.max_caption_length, generator,
                            t.captions_per_image)
        trainer.train_step(batch)

    for i in range(warmup):
        step(i)
    sync(trainer.device)
    start = time.perf_counter()
    for i in range(updates):
        step(warmup + i)
    sync(trainer.device)
    per_update = (time.perf_counter() - start) / updates
    start = time.perf_counter()
    trainer.validate()
    sync(trainer.device)
    validation = time.perf_counter() - start
    batches = -(-len(train) // t.batch_size)
    return {
        "config": path, "estimator": config.estimator.name, "layer": config.model.encoder.layer,
        "hidden_dim": config.model.hidden_dim, "batch_size": t.batch_size, "updates_per_epoch": batches,
        "seconds_per_update": per_update, "seconds_per_validation": validation,
        "seconds_per_epoch": per_update * batches + validation,
        "device": torch.cuda.get_device_name(trainer.device) if trainer.device.type == "cuda" else "cpu",
        "peak_gpu_gib": torch.cuda.max_memory_allocated(trainer.device) / 2**30 if trainer.device.type == "cuda" else None,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("configs", nargs="+")
    parser.add_argument("--set", dest="overrides", action="append", default=[])
    parser.add_argument("--updates", type=int, default=20)
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--work", type=Path, default=Path("runs/timing"))
    parser.add_argument("--out", type=Path)
    args = parser.parse_args()
    lines = []
    for path in args.configs:
        result = time_config(path, args.overrides, args.updates, args.warmup, args.work)
        print(json.dumps(result), flush=True)
        lines.append(json.dumps(result))
    if args.out:
        args.out.write_text("\n".join(lines) + "\n")


if __name__ == "__main__":
    main()
