"""Seconds for one training epoch of the real Trainer on a real feature cache (a benchmark, not a test).

    python -m benchmarks.bench_epoch eval/flickr8k/wsram.yaml --set data.features=CACHE --epochs 3 --out epoch.json

Builds the Trainer of a config (its data, vocabulary, GPU-resident cache, length-bucketed sampler,
compiled kernels, fused optimiser) and runs `--epochs` whole epochs through the same calls as
`Trainer.train` (sampler plan, grid gather, `Trainer.train_shard`), without validation. Each epoch is
timed between device synchronisations, so its seconds are the wall time the GPU needed for it,
launch overheads included. The first epoch includes torch.compile and Triton autotuning: it is
reported, and the mean is over the others. Prints and writes one JSON record.

Started by torchrun (`torchrun --standalone --nproc-per-node 2 -m benchmarks.bench_epoch ...`), the
Trainer shares every batch across the processes as in `captioner train` (the same global batch:
strong scaling), and rank 0 reports.
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import time
from pathlib import Path

import torch

from captioner import distributed
from captioner.config import load_config
from captioner.train import Trainer
from benchmarks.timing import sync



def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("config")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE")
    parser.add_argument("--epochs", type=int, default=3, help="epochs to run; the first is the warm-up")
    parser.add_argument("--work", type=Path, default=Path("runs/bench-epoch"))
    parser.add_argument("--out", type=Path)
    args = parser.parse_args()
    if args.epochs < 2:
        parser.error("--epochs must be at least 2 (the first one compiles)")
    config = load_config(args.config, args.overrides + ["train.progress_bar=false"])
    trainer = Trainer(config, args.work)
    device = trainer.device
    samples = config.estimator.samples if config.estimator.name == "wsram" else 1
    trainer.model.train()
    epochs = []
    for epoch in range(args.epochs):
        plan = trainer.sampler.plan(epoch, device)
        sync(device)
        trainer.distributed.barrier()
        start = time.perf_counter()
        captions = 0
        for index in range(len(plan)):
            shard = plan.batch(index)
            trainer.train_shard(shard)
            captions += shard.total
        sync(device)
        seconds = time.perf_counter() - start
        record = {"epoch": epoch + 1, "seconds": seconds, "updates": len(plan), "captions": captions,
                  "caption_samples": captions * samples, "caption_samples_per_second": captions * samples / seconds}
        if trainer.distributed.is_main:
            print(json.dumps(record), flush=True)
        epochs.append(record)
    distributed.shutdown()
    if not trainer.distributed.is_main:
        return
    timed = epochs[1:]
    mean = sum(e["seconds"] for e in timed) / len(timed)
    result = {
        "command": " ".join([f"torchrun --nproc-per-node {trainer.distributed.world_size}"
                             if distributed.launched_by_torchrun() else "python"] + sys.argv),
        "processes": trainer.distributed.world_size, "config": args.config, "overrides": args.overrides,
        "estimator": config.estimator.name, "samples_per_caption": samples,
        "batch_size": config.train.batch_size, "captions_per_image": config.train.captions_per_image,
        "length_bucketing": config.train.length_bucketing, "compile": config.train.compile,
        "attention_kernel": config.research.attention_kernel, "bf16": config.train.bf16,
        "device": torch.cuda.get_device_name(device) if device.type == "cuda" else platform.processor() or "cpu",
        "torch": torch.__version__,
        "peak_gpu_gib": torch.cuda.max_memory_allocated(device) / 2**30 if device.type == "cuda" else None,
        "epochs": epochs, "mean_epoch_seconds_after_first": mean,
        "caption_samples_per_second_after_first": sum(e["caption_samples"] for e in timed) / sum(
            e["seconds"] for e in timed),
    }
    print(json.dumps({k: v for k, v in result.items() if k != "epochs"}), flush=True)
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
